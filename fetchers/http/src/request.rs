//! GET requests: redirects followed by hand (so that configured headers never leave the release
//! URL's origin), statuses classified, errors naming the URL.

use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue, LOCATION};
use reqwest::{Method, Response, StatusCode, Url};
use tokio::time::Instant;
use upshift::fetch::body::BodyError;
use upshift::fetch::retry::{self, Retry};
use upshift::fetch::{transport, FetchError, TrustPolicy};

use crate::body::Validators;
use crate::meta::{self, redact};

/// The most redirects followed for one request (reqwest's default limit too).
const MAX_REDIRECTS: usize = 10;

pub(crate) struct Getter<'a> {
    pub(crate) client: reqwest::Client,
    /// The release URL: configured headers go only to its origin.
    pub(crate) origin: &'a Url,
    pub(crate) headers: &'a [(HeaderName, HeaderValue)],
    /// Whether plain `http://` may be used; an `https://` to `http://` redirect never is.
    pub(crate) policy: TrustPolicy,
}

/// The answer to the release `GET`.
#[allow(clippy::large_enum_variant)] // one per check, moved once: boxing would buy nothing
pub(crate) enum Got {
    NotModified,
    Missing,
    /// `200`, and the URL that answered (after redirects).
    Ok(Response, Url),
}

/// A small document: checksum or signature.
pub(crate) enum Doc {
    NotModified,
    Missing,
    Found {
        text: String,
        validators: Validators,
    },
}

/// `GET <requested>`, and ` (redirected to <final>)` when it was.
fn describe(requested: &Url, at: &Url) -> String {
    describe_method(&Method::GET, requested, at)
}

fn describe_method(method: &Method, requested: &Url, at: &Url) -> String {
    match requested == at {
        true => format!("{method} {}", redact(requested)),
        false => format!(
            "{method} {} (redirected to {})",
            redact(requested),
            redact(at)
        ),
    }
}

fn send_error(what: &str, e: reqwest::Error, timeout: Duration) -> FetchError {
    if e.is_timeout() {
        return FetchError::Source(format!("{what}: timed out (limit {timeout:?})"));
    }
    let kind = meta::io_kind(&e);
    let chain = meta::error_chain(&e.without_url());
    match kind {
        Some(kind) => FetchError::Io {
            what: what.to_string(),
            source: std::io::Error::new(kind, chain),
        },
        None => FetchError::Source(format!("{what}: {chain}")),
    }
}

impl Getter<'_> {
    /// Sends `GET url` (conditional on `validators`) and follows redirects, all within `timeout`
    /// (which keeps running while the caller reads the body). Configured headers are sent while
    /// every URL so far is of the release URL's origin. A plain `http://` URL is sent only where
    /// the policy allows it, and a redirect from `https://` to `http://` is never followed.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        validators: Option<&Validators>,
        timeout: Duration,
    ) -> Result<(Response, Url), FetchError> {
        let deadline = Instant::now() + timeout;
        transport::require_tls(&self.policy, "request", url.as_str())?;
        let mut at = url.clone();
        let mut trusted = meta::same_origin(url, self.origin);
        for hop in 0..=MAX_REDIRECTS {
            let what = describe_method(&method, url, &at);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FetchError::Source(format!(
                    "{what}: timed out (limit {timeout:?})"
                )));
            }
            let mut req = self
                .client
                .request(method.clone(), at.clone())
                .timeout(left);
            if trusted {
                for (name, value) in self.headers {
                    req = req.header(name.clone(), value.clone());
                }
            }
            if let Some(v) = validators {
                req = v.apply(req);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| send_error(&what, e, timeout))?;
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok((resp, at));
            }
            let Some(location) = resp.headers().get(LOCATION) else {
                return Ok((resp, at)); // a 3xx without a target: classified as a bad status
            };
            let next = location
                .to_str()
                .ok()
                .and_then(|l| at.join(l).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    FetchError::Source(format!(
                        "{what}: HTTP {} redirects to an invalid or non-HTTP location",
                        resp.status()
                    ))
                })?;
            if hop == MAX_REDIRECTS {
                return Err(FetchError::Source(format!(
                    "{what}: more than {MAX_REDIRECTS} redirects"
                )));
            }
            transport::check_redirect(&self.policy, at.as_str(), next.as_str())
                .map_err(|e| FetchError::Source(format!("{what}: {e}")))?;
            trusted = trusted && meta::same_origin(&next, self.origin);
            tracing::debug!(
                from = %redact(&at),
                to = %redact(&next),
                status = resp.status().as_u16(),
                headers_sent = trusted,
                "following a redirect"
            );
            at = next;
        }
        // The loop returns on every path: its last round either answers or errs.
        Err(FetchError::Source(format!(
            "{}: more than {MAX_REDIRECTS} redirects",
            describe_method(&method, url, &at)
        )))
    }

    /// The release file: `304` (when conditional), `404`/`410`, or `200` with its body unread.
    pub(crate) async fn release(
        &self,
        url: &Url,
        validators: Option<&Validators>,
        timeout: Duration,
    ) -> Result<Got, FetchError> {
        let (resp, at) = self.send(Method::GET, url, validators, timeout).await?;
        match classify(Method::GET, &resp, url, &at, validators.is_some())? {
            Class::NotModified => Ok(Got::NotModified),
            Class::Missing => Ok(Got::Missing),
            Class::Ok => Ok(Got::Ok(resp, at)),
        }
    }

    /// `HEAD` of the release file: what a `GET` would say about it, without its body. A server
    /// that refuses `HEAD` (a URL signed for `GET` only, as presigned S3 URLs are) is asked with
    /// a `GET` instead, whose body the caller drops unread.
    pub(crate) async fn head(&self, url: &Url, timeout: Duration) -> Result<Got, FetchError> {
        let (resp, at) = self.send(Method::HEAD, url, None, timeout).await?;
        if matches!(
            resp.status(),
            StatusCode::FORBIDDEN | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
        ) {
            tracing::debug!(url = %redact(&at), status = resp.status().as_u16(), "HEAD refused; asking with a GET left unread");
            return self.release(url, None, timeout).await;
        }
        match classify(Method::HEAD, &resp, url, &at, false)? {
            Class::NotModified => Ok(Got::NotModified),
            Class::Missing => Ok(Got::Missing),
            Class::Ok => Ok(Got::Ok(resp, at)),
        }
    }

    /// A small text document, read whole (at most `limit` bytes) within `timeout`.
    pub(crate) async fn small_doc(
        &self,
        url: &Url,
        validators: Option<&Validators>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Doc, FetchError> {
        let (resp, at) = self.send(Method::GET, url, validators, timeout).await?;
        match classify(Method::GET, &resp, url, &at, validators.is_some())? {
            Class::NotModified => return Ok(Doc::NotModified),
            Class::Missing => return Ok(Doc::Missing),
            Class::Ok => {}
        }
        let what = describe(url, &at);
        let validators = Validators::of(resp.headers());
        let bytes = crate::body::reader(resp, what.clone())
            .max_bytes(limit as u64)
            .read_to_vec()
            .await
            .map_err(|e| match e {
                BodyError::TooLarge { cap, .. } => FetchError::Source(format!(
                    "{what}: larger than {cap} bytes; not a checksum or signature file"
                )),
                e => FetchError::from(e),
            })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| FetchError::Source(format!("{what}: not UTF-8 text")))?;
        Ok(Doc::Found { text, validators })
    }
}

enum Class {
    NotModified,
    Missing,
    Ok,
}

fn classify(
    method: Method,
    resp: &Response,
    url: &Url,
    at: &Url,
    conditional: bool,
) -> Result<Class, FetchError> {
    let status = resp.status();
    match status {
        StatusCode::OK => Ok(Class::Ok),
        StatusCode::NOT_MODIFIED if conditional => Ok(Class::NotModified),
        StatusCode::NOT_FOUND | StatusCode::GONE => {
            tracing::debug!(url = %redact(at), status = status.as_u16(), "not found");
            Ok(Class::Missing)
        }
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
            let now = std::time::SystemTime::now();
            let retry = retry::classify(status.as_u16(), header, now);
            if let Retry::After(d) = retry {
                tracing::debug!(url = %redact(at), status = status.as_u16(), retry_after = ?d, "rate limited");
            }
            let what = format!("{}: HTTP {status}", describe_method(&method, url, at));
            Err(retry
                .into_error(&what, now)
                .unwrap_or_else(|| bad_status(&method, url, at, status)))
        }
        _ => Err(bad_status(&method, url, at, status)),
    }
}

fn bad_status(method: &Method, url: &Url, at: &Url, status: StatusCode) -> FetchError {
    FetchError::Source(format!(
        "{}: HTTP {status}",
        describe_method(method, url, at)
    ))
}
