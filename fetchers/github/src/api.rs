//! Talking to the REST API through octocrab's client: raw requests (to see status, ETag and
//! rate-limit headers), error mapping, bounded body reads and the streaming release body.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::Body as _;
use http_body_util::combinators::BoxBody;
use octocrab::Octocrab;
use tokio::io::{AsyncRead, ReadBuf};
use upshift::fetch::{transport, FetchError, TrustPolicy};

use crate::transport::{followed_elsewhere, redirect_target, MAX_REDIRECTS};

/// A response body as octocrab's client hands it over.
pub(crate) type Body = BoxBody<Bytes, octocrab::Error>;

/// How long to wait after a 429 or a secondary rate limit that says nothing more precise (GitHub:
/// "wait for at least one minute").
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// The client plus what every error message needs.
#[derive(Clone)]
pub(crate) struct Api {
    pub client: Octocrab,
    /// For URLs off the API's origin (a redirect to the storage host): no token.
    pub elsewhere: Octocrab,
    /// The fetcher's name (`github:owner/repo`): every error starts with it.
    pub name: String,
    /// The API base (`https://api.github.com`), to show full URLs in errors.
    pub base: String,
    pub timeout: Duration,
    /// Whether plain `http://` may be used (redirects included).
    pub policy: TrustPolicy,
}

impl Api {
    /// The URL shown in logs and errors for a request target (a path, or a full next-page URL).
    /// A URL off the API (a presigned storage URL) loses its query string.
    pub fn shown(&self, target: &str) -> String {
        if target.starts_with('/') {
            format!("{}{}", self.base, target)
        } else if target.starts_with(&format!("{}/", self.base)) {
            target.to_string()
        } else {
            transport::redact_url(target)
        }
    }

    /// An error about the request to `target`.
    pub fn error(&self, target: &str, detail: impl std::fmt::Display) -> FetchError {
        FetchError::Source(format!(
            "{}: GET {}: {detail}",
            self.name,
            self.shown(target)
        ))
    }

    /// `GET target` (a path relative to the API base, or an absolute URL on it) with `headers`,
    /// through octocrab's client: the token goes only to the API's authority. Redirects are
    /// followed here, each hop bounded by the timeout until its response head arrives, never
    /// from `https://` to `http://` (see `transport.rs`); the URLs they lead to are logged
    /// without their query string.
    pub async fn get(
        &self,
        target: &str,
        headers: HeaderMap,
    ) -> Result<http::Response<Body>, FetchError> {
        if !target.starts_with('/') {
            // A URL the API handed over (a next page): held to the same rule as a redirect
            // from the API base.
            transport::check_redirect(&self.policy, &self.base, target)
                .map_err(|e| self.error(target, e))?;
        }
        let mut at = target.to_string();
        for hop in 0..=MAX_REDIRECTS {
            let response = self.get_once(&at, headers.clone()).await?;
            let full = match at.starts_with('/') {
                true => format!("{}{at}", self.base),
                false => at.clone(),
            };
            followed_elsewhere(&self.policy, &full, &response).map_err(|e| self.error(&at, e))?;
            let Some(next) =
                redirect_target(&self.policy, &full, &response).map_err(|e| self.error(&at, e))?
            else {
                return Ok(response);
            };
            if hop == MAX_REDIRECTS {
                break;
            }
            tracing::debug!(
                fetcher = %self.name,
                from = %self.shown(&at),
                to = %self.shown(&next),
                status = response.status().as_u16(),
                "following a redirect"
            );
            at = next;
        }
        Err(self.error(target, format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// One `GET`, bounded by the timeout until the response head arrives.
    async fn get_once(
        &self,
        target: &str,
        headers: HeaderMap,
    ) -> Result<http::Response<Body>, FetchError> {
        let on_api = target.starts_with('/') || same_origin(target, &self.base);
        let client = if on_api {
            &self.client
        } else {
            &self.elsewhere
        };
        let request = client._get_with_headers(target, Some(headers));
        let response = match tokio::time::timeout(self.timeout, request).await {
            Err(_) => {
                return Err(self.error(target, format!("no response within {:?}", self.timeout)))
            }
            Ok(Err(e)) => return Err(self.error(target, error_chain(&e))),
            Ok(Ok(r)) => r,
        };
        let h = response.headers();
        tracing::trace!(
            fetcher = %self.name,
            url = %self.shown(target),
            status = response.status().as_u16(),
            ratelimit_remaining = header_str(h, "x-ratelimit-remaining").unwrap_or("-"),
            ratelimit_limit = header_str(h, "x-ratelimit-limit").unwrap_or("-"),
            "response"
        );
        Ok(response)
    }

    /// The error for an unexpected status: `RateLimited` for GitHub's rate limits, else a
    /// `Source` error with GitHub's message.
    pub async fn status_error(&self, target: &str, response: http::Response<Body>) -> FetchError {
        let status = response.status();
        let headers = response.headers().clone();
        let body = self.collect(response.into_body(), 64 * 1024).await.ok();
        let message = body
            .as_deref()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|v| v.get("message")?.as_str().map(str::to_string));
        if let Some(delay) = rate_limit_delay(status, &headers, message.as_deref(), now_epoch()) {
            if delay > MAX_RATE_LIMIT_WAIT {
                return self.error(target, beyond_wait(status, delay, SystemTime::now()));
            }
            tracing::warn!(
                fetcher = %self.name,
                url = %self.shown(target),
                status = status.as_u16(),
                retry_in = ?delay,
                "rate limited by the GitHub API"
            );
            return FetchError::RateLimited(delay);
        }
        match message {
            Some(m) => self.error(target, format!("{status}: {m}")),
            None => self.error(target, status),
        }
    }
}

/// Whether the absolute URLs `a` and `b` have the same scheme and authority.
fn same_origin(a: &str, b: &str) -> bool {
    match (a.parse::<http::Uri>(), b.parse::<http::Uri>()) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme() && a.authority().is_some() && a.authority() == b.authority()
        }
        _ => false,
    }
}

/// The longest rate-limit wait reported as [`FetchError::RateLimited`], as long as upshift's
/// master waits one out: GitHub's hourly quota resets within the hour, so a longer wait comes from
/// something else (a proxy, a skewed clock) and is an error instead, saying when the limit ends.
pub(crate) const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60 * 60);

/// The error for a rate limit that lasts longer than [`MAX_RATE_LIMIT_WAIT`].
pub(crate) fn beyond_wait(status: StatusCode, delay: Duration, now: SystemTime) -> String {
    let until = httpdate::fmt_http_date(now + delay);
    format!(
        "{status}: rate limited until {until} ({}s from now), longer than the {}s upshift waits \
         out a rate limit; the check is retried with the error backoff meanwhile (a GITHUB_TOKEN \
         raises the limit from 60 to 5,000 requests an hour)",
        delay.as_secs(),
        MAX_RATE_LIMIT_WAIT.as_secs()
    )
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    header_str(headers, name)?.trim().parse().ok()
}

fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How long GitHub asks us to wait, if this response is a rate limit: `Retry-After` (seconds) if
/// present; with `x-ratelimit-remaining: 0` until `x-ratelimit-reset` (epoch seconds); a minute
/// for a 429 or a secondary rate limit that says neither. At least one second.
pub(crate) fn rate_limit_delay(
    status: StatusCode,
    headers: &HeaderMap,
    message: Option<&str>,
    now: u64,
) -> Option<Duration> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let at_least_1s = |secs: u64| Duration::from_secs(secs.max(1));
    if let Some(secs) = header_u64(headers, "retry-after") {
        return Some(at_least_1s(secs));
    }
    if header_u64(headers, "x-ratelimit-remaining") == Some(0) {
        return Some(match header_u64(headers, "x-ratelimit-reset") {
            Some(reset) => at_least_1s(reset.saturating_sub(now)),
            None => DEFAULT_RATE_LIMIT_WAIT,
        });
    }
    let secondary = message.is_some_and(|m| m.to_ascii_lowercase().contains("rate limit"));
    (status == StatusCode::TOO_MANY_REQUESTS || secondary).then_some(DEFAULT_RATE_LIMIT_WAIT)
}

/// The `rel="next"` URL of a `Link` header.
pub(crate) fn next_link(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::LINK)?.to_str().ok()?;
    for link in value.split(',') {
        let Some((url, params)) = link.split_once(';') else {
            continue;
        };
        let is_next = params.split(';').any(|p| {
            p.trim()
                .strip_prefix("rel=")
                .is_some_and(|v| v.trim_matches('"').split_whitespace().any(|r| r == "next"))
        });
        if is_next {
            let url = url.trim().trim_start_matches('<').trim_end_matches('>');
            return Some(url.to_string());
        }
    }
    None
}

/// The error and its sources, `: `-joined, without repeats (octocrab's and hyper's errors repeat
/// their source in their own message at times).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

impl Api {
    /// Reads a whole body, refusing more than `limit` bytes, within the timeout.
    pub async fn collect(&self, mut body: Body, limit: usize) -> Result<Vec<u8>, String> {
        let read = async {
            let mut out = Vec::new();
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                let frame = frame.map_err(|e| error_chain(&e))?;
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > limit {
                        return Err(format!("the response is larger than {limit} bytes"));
                    }
                    out.extend_from_slice(&data);
                }
            }
            Ok(out)
        };
        tokio::time::timeout(self.timeout, read)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the response was not read within {:?}",
                    self.timeout
                ))
            })
    }
}

/// A response body as `AsyncRead`, streamed as it arrives. A body that ends before `expected`
/// bytes is an error, as are a transport error and a stall of more than `stall` with no data
/// (all named after `what`).
pub(crate) struct BodyReader {
    body: Body,
    chunk: Bytes,
    done: bool,
    received: u64,
    expected: Option<u64>,
    stall: Duration,
    /// Armed while waiting for data.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    what: String,
}

impl BodyReader {
    pub fn new(body: Body, expected: Option<u64>, stall: Duration, what: String) -> BodyReader {
        BodyReader {
            body,
            chunk: Bytes::new(),
            done: false,
            received: 0,
            expected,
            stall,
            timer: None,
            what,
        }
    }
}

impl AsyncRead for BodyReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.chunk.is_empty() {
                let n = this.chunk.len().min(out.remaining());
                out.put_slice(&this.chunk.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.done || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let polled = Pin::new(&mut this.body).poll_frame(cx);
            if !polled.is_pending() {
                this.timer = None;
            }
            match polled {
                Poll::Pending => {
                    let stall = this.stall;
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                    if timer.as_mut().poll(cx).is_ready() {
                        this.done = true;
                        let msg = format!(
                            "{}: no data for {stall:?} after {} bytes",
                            this.what, this.received
                        );
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, msg)));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.received += data.len() as u64;
                        this.chunk = data;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    let msg = format!("{}: {}", this.what, error_chain(&e));
                    return Poll::Ready(Err(io::Error::other(msg)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    if let Some(expected) = this.expected.filter(|&e| this.received < e) {
                        let msg = format!(
                            "{}: the transfer ended after {} of {expected} bytes",
                            this.what, this.received
                        );
                        return Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn rate_limits() {
        let now = 1_000_000;
        let exhausted = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1000120"),
        ]);
        let d = rate_limit_delay(StatusCode::FORBIDDEN, &exhausted, None, now);
        assert_eq!(d, Some(Duration::from_secs(120)));
        let d = rate_limit_delay(StatusCode::TOO_MANY_REQUESTS, &exhausted, None, now);
        assert_eq!(d, Some(Duration::from_secs(120)));
        // A reset already past still waits a second.
        let past = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "5")]);
        let d = rate_limit_delay(StatusCode::FORBIDDEN, &past, None, now);
        assert_eq!(d, Some(Duration::from_secs(1)));
        let retry = headers(&[("retry-after", "7"), ("x-ratelimit-remaining", "12")]);
        let d = rate_limit_delay(StatusCode::FORBIDDEN, &retry, None, now);
        assert_eq!(d, Some(Duration::from_secs(7)));
        // A plain 403 (no permission) is not a rate limit; a 429 always is.
        let some_left = headers(&[("x-ratelimit-remaining", "12")]);
        assert_eq!(
            rate_limit_delay(StatusCode::FORBIDDEN, &some_left, Some("Forbidden"), now),
            None
        );
        assert_eq!(
            rate_limit_delay(StatusCode::TOO_MANY_REQUESTS, &some_left, None, now),
            Some(DEFAULT_RATE_LIMIT_WAIT)
        );
        let secondary = Some("You have exceeded a secondary rate limit.");
        assert_eq!(
            rate_limit_delay(StatusCode::FORBIDDEN, &some_left, secondary, now),
            Some(DEFAULT_RATE_LIMIT_WAIT)
        );
        assert_eq!(
            rate_limit_delay(StatusCode::INTERNAL_SERVER_ERROR, &exhausted, None, now),
            None
        );
    }

    #[test]
    fn a_wait_beyond_the_cap_is_an_error_naming_the_reset() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let msg = beyond_wait(StatusCode::FORBIDDEN, Duration::from_secs(86_400), now);
        assert!(
            msg.contains("rate limited until Tue, 13 Jan 1970 13:46:40 GMT"),
            "{msg}"
        );
        assert!(
            msg.contains("(86400s from now), longer than the 3600s"),
            "{msg}"
        );
    }

    #[test]
    fn links() {
        let h = headers(&[(
            "link",
            r#"<https://api.github.com/repositories/1/releases?page=2>; rel="next", <https://api.github.com/repositories/1/releases?page=4>; rel="last""#,
        )]);
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/repositories/1/releases?page=2")
        );
        let last_page = headers(&[(
            "link",
            r#"<https://x/r?page=1>; rel="first", <https://x/r?page=3>; rel="prev""#,
        )]);
        assert_eq!(next_link(&last_page), None);
        assert_eq!(next_link(&HeaderMap::new()), None);
    }
}
