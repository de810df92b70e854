//! Raw GitHub REST requests through octocrab's client (its typed builders buffer uploads in
//! memory and hide statuses), GitHub's error messages turned into actionable ones, and the
//! streaming upload body.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use octocrab::{OctoBody, Octocrab};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use upshift::fetch::error_chain;

use crate::progress::Counter;
use crate::Error;

const JSON: &str = "application/vnd.github+json";
/// The largest JSON answer or small asset read.
const READ_LIMIT: usize = 16 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;

/// A client for one API base (or one upload origin), with what error messages need.
#[derive(Clone)]
pub(crate) struct Api {
    client: Octocrab,
    /// The same client without the token: for redirects off the API's origin (GitHub sends
    /// asset downloads to its storage host, which must never see the token).
    anonymous: Octocrab,
    /// Shown in front of paths in messages.
    base: String,
    timeout: Duration,
    /// `owner/repo`, for hints.
    repo: String,
}

impl Api {
    /// A client for `base` (`https://api.github.com`, `https://HOST/api/v3`, an upload origin)
    /// sending `token`. Needs the tokio runtime (octocrab's client spawns a task).
    pub fn new(base: &str, token: &str, timeout: Duration, repo: &str) -> Result<Api, Error> {
        let uri: http::Uri = base
            .parse()
            .ok()
            .filter(|u: &http::Uri| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            })
            .ok_or_else(|| Error::Usage(format!("--github-api {base:?}: not an http(s) URL")))?;
        // octocrab panics on a token that is no header value: check first, never echo it.
        if HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
            return Err(Error::Github(
                "the token contains characters that cannot be sent in a header".into(),
            ));
        }
        // The process-wide rustls provider: ring (an error only means one is installed).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = octocrab::OctocrabBuilder::new()
            .base_uri(uri.clone())
            .and_then(|b| b.upload_uri(uri))
            .map_err(|e| Error::Github(format!("API base {base}: {e}")))?
            .set_connect_timeout(Some(timeout));
        let anonymous = octocrab::OctocrabBuilder::new()
            .set_connect_timeout(Some(timeout))
            .build()
            .map_err(|e| Error::Github(format!("building the API client: {}", error_chain(&e))))?;
        let client = builder
            .personal_token(token.to_string())
            .build()
            .map_err(|e| Error::Github(format!("building the API client: {}", error_chain(&e))))?;
        Ok(Api {
            client,
            anonymous,
            base: base.trim_end_matches('/').to_string(),
            timeout,
            repo: repo.to_string(),
        })
    }

    /// The URL shown for a target (a path on this base, or a full URL).
    pub fn shown(&self, target: &str) -> String {
        match target.starts_with('/') {
            true => format!("{}{target}", self.base),
            false => target.split('?').next().unwrap_or(target).to_string(),
        }
    }

    /// Sends a request with an optional JSON body; the status and the whole answer.
    pub async fn call(
        &self,
        method: Method,
        target: &str,
        json: Option<&Value>,
        accept: Option<&'static str>,
    ) -> Result<(StatusCode, Vec<u8>), Error> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(accept.unwrap_or(JSON)));
        let send = async {
            let response = match method {
                Method::GET => return self.get_following(target, headers).await,
                Method::POST => self.client._post(target, json).await,
                Method::PATCH => self.client._patch(target, json).await,
                Method::DELETE => self.client._delete(target, None::<&()>).await,
                _ => return Err(Error::Github(format!("unsupported method {method}"))),
            };
            let response = response.map_err(|e| {
                Error::Github(format!(
                    "{method} {}: {}",
                    self.shown(target),
                    error_chain(&e)
                ))
            })?;
            let status = response.status();
            let body = read_limited(response.into_body(), READ_LIMIT)
                .await
                .map_err(|e| Error::Github(format!("{method} {}: {e}", self.shown(target))))?;
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, send)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Github(format!(
                    "{method} {}: no answer within {} s",
                    self.shown(target),
                    self.timeout.as_secs()
                )))
            })
    }

    /// A GET that follows redirects itself (octocrab's `follow-redirect` is off): at most 5
    /// hops, never from https to http, the token only on the API's own origin.
    async fn get_following(
        &self,
        target: &str,
        headers: HeaderMap,
    ) -> Result<(StatusCode, Vec<u8>), Error> {
        let mut url = target.to_string();
        for _ in 0..=5 {
            let on_api = url.starts_with('/') || same_origin(&url, &self.base);
            let client = if on_api {
                &self.client
            } else {
                &self.anonymous
            };
            let response = client
                ._get_with_headers(&url, Some(headers.clone()))
                .await
                .map_err(|e| {
                    Error::Github(format!("GET {}: {}", self.shown(&url), error_chain(&e)))
                })?;
            let status = response.status();
            let location = (response.headers().get(http::header::LOCATION))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match location.filter(|_| status.is_redirection()) {
                Some(next) => {
                    let from_https = url.starts_with("https://")
                        || (url.starts_with('/') && self.base.starts_with("https://"));
                    if from_https && next.starts_with("http://") {
                        return Err(Error::Github(format!(
                            "GET {}: redirected from https to plain http ({}); not followed",
                            self.shown(&url),
                            self.shown(&next)
                        )));
                    }
                    url = next;
                }
                None => {
                    let body = read_limited(response.into_body(), READ_LIMIT)
                        .await
                        .map_err(|e| Error::Github(format!("GET {}: {e}", self.shown(&url))))?;
                    return Ok((status, body));
                }
            }
        }
        Err(Error::Github(format!(
            "GET {}: more than 5 redirects",
            self.shown(target)
        )))
    }

    /// Sends a request whose body streams `len` bytes from `body` (an upload).
    pub async fn upload(
        &self,
        url: &str,
        content_type: &str,
        len: u64,
        body: OctoBody,
    ) -> Result<(StatusCode, Vec<u8>), Error> {
        let shown = self.shown(url);
        let request = http::Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(ACCEPT, JSON)
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, len)
            .body(body)
            .map_err(|e| Error::Github(format!("POST {shown}: {e}")))?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| Error::Github(format!("POST {shown}: {}", error_chain(&e))))?;
        let status = response.status();
        let body =
            tokio::time::timeout(self.timeout, read_limited(response.into_body(), READ_LIMIT))
                .await
                .unwrap_or_else(|_| Err("the answer was not read in time".into()))
                .map_err(|e| Error::Github(format!("POST {shown}: {e}")))?;
        Ok((status, body))
    }

    /// The error for an unexpected answer: status, GitHub's message and validation errors, and
    /// a hint about what to do.
    pub fn status_error(
        &self,
        method: &str,
        target: &str,
        status: StatusCode,
        body: &[u8],
    ) -> Error {
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let mut message = json
            .as_ref()
            .and_then(|v| v.get("message")?.as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
        let details: Vec<String> = json
            .as_ref()
            .and_then(|v| v.get("errors")?.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let get = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
                let text = format!("{} {} {}", get("resource"), get("field"), get("code"));
                match get("message") {
                    "" => text.trim().to_string(),
                    m => format!("{} ({m})", text.trim()),
                }
            })
            .collect();
        if !details.is_empty() {
            message = format!("{message}: {}", details.join(", "));
        }
        let status_text = match status.canonical_reason() {
            Some(reason) if reason.eq_ignore_ascii_case(message.trim()) => status.to_string(),
            _ => format!("{status}: {message}"),
        };
        let hint = match status.as_u16() {
            401 => {
                " (the token was refused: check GITHUB_TOKEN or --github-token-file)".to_string()
            }
            403 if message.to_ascii_lowercase().contains("rate limit") => {
                " (rate limited: wait, or use a token with a higher limit)".to_string()
            }
            403 => format!(
                " (the token needs write access to {}'s contents: a fine-grained token with \
                 \"Contents: read and write\", or a classic token with the repo scope)",
                self.repo
            ),
            404 => format!(" (no repository {}, or the token cannot see it)", self.repo),
            _ => String::new(),
        };
        Error::Github(format!(
            "{method} {}: {status_text}{hint}",
            self.shown(target)
        ))
    }
}

/// Reads a whole body, refusing more than `limit` bytes.
async fn read_limited<B>(mut body: B, limit: usize) -> Result<Vec<u8>, String>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + 'static,
{
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| error_chain(&e))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(format!("the answer is larger than {limit} bytes"));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// The body of an upload: a file read in chunks by a task of its own, each chunk counted as
/// the HTTP client takes it. A file that turns out shorter or longer than announced fails the
/// upload rather than sending something else.
pub(crate) struct FileBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    len: u64,
    sent: u64,
    counter: Option<Counter>,
}

impl FileBody {
    /// Streams `len` bytes of `path`, counting them into `counter`.
    pub fn new(path: PathBuf, len: u64, counter: Option<Counter>) -> FileBody {
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
        tokio::spawn(async move {
            let mut file = match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mut left = len;
            while left > 0 {
                let mut buf = vec![0u8; CHUNK.min(left as usize)];
                let n = match file.read(&mut buf).await {
                    Ok(0) => {
                        let e = io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank");
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                buf.truncate(n);
                left -= n as u64;
                if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                    return; // the request was dropped
                }
            }
        });
        if let Some(c) = &counter {
            c.reset();
        }
        FileBody {
            rx,
            len,
            sent: 0,
            counter,
        }
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.sent >= self.len {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                self.sent += bytes.len() as u64;
                if let Some(c) = &self.counter {
                    c.add(bytes.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the upload's reader stopped early",
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent)
    }
}

/// `%XX`-escapes everything but unreserved characters, for a query value.
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A path segment: like a query value (tags may hold `/` or `+`).
pub(crate) fn segment_escape(s: &str) -> String {
    query_escape(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(query_escape("app-1.0_x86~64"), "app-1.0_x86~64");
        assert_eq!(query_escape("a b+c/d"), "a%20b%2Bc%2Fd");
        assert_eq!(segment_escape("v1.0.0+build"), "v1.0.0%2Bbuild");
    }
}

/// Whether the absolute URL `a` has the scheme and authority of `base`.
fn same_origin(a: &str, base: &str) -> bool {
    match (a.parse::<http::Uri>(), base.parse::<http::Uri>()) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme() && a.authority().is_some() && a.authority() == b.authority()
        }
        _ => false,
    }
}
