//! Talking to the REST API through octocrab's client: raw requests (to see status, ETag and
//! rate-limit headers), error mapping, bounded body reads and the streaming release body.

use std::io;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT};
use http::{HeaderMap, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyDataStream, BodyExt};
use octocrab::Octocrab;
use tokio_util::io::StreamReader;
use upshift::fetch::body::{self as shared_body, BoundedBody};
use upshift::fetch::retry::{self, Retry};
use upshift::fetch::{error_chain, transport, FetchError, ReleaseBody, TrustPolicy};

use crate::transport::{followed_elsewhere, redirect_target, MAX_REDIRECTS};
use crate::{WithContext, OCTET_STREAM};

/// A response body as octocrab's client hands it over.
pub(crate) type Body = BoxBody<Bytes, octocrab::Error>;

/// How long to wait after a 429 or a secondary rate limit that says nothing more precise (GitHub:
/// "wait for at least one minute").
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// The `User-Agent` every request sends: GitHub refuses requests without one and asks for one
/// naming the application, so its logs and rate-limit support can tell upshift apart.
pub(crate) const USER_AGENT: &str = concat!("upshift-github/", env!("CARGO_PKG_VERSION"));

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

    /// Starts downloading the asset at `path` (its endpoint, named `name`): `GET` with `Accept:
    /// application/octet-stream`, following GitHub's redirect to its storage host.
    pub async fn open_asset(
        &self,
        path: &str,
        name: &str,
    ) -> Result<http::Response<Body>, FetchError> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(OCTET_STREAM));
        let response = self.get(path, headers).await?;
        if response.status() != StatusCode::OK {
            return Err(self
                .status_error(path, response)
                .await
                .with_context(&format!("asset {name}")));
        }
        Ok(response)
    }

    /// One `GET`, bounded by the timeout until the response head arrives.
    async fn get_once(
        &self,
        target: &str,
        mut headers: HeaderMap,
    ) -> Result<http::Response<Body>, FetchError> {
        // Per request: octocrab's builder has no setting for it. Its own `octocrab` value is
        // appended after this one, which servers (GitHub, the fixture) read first.
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static(USER_AGENT),
        );
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
        let now = SystemTime::now();
        match rate_limit(status, &headers, message.as_deref(), now) {
            Some(Retry::After(delay)) => {
                tracing::warn!(
                    fetcher = %self.name,
                    url = %self.shown(target),
                    status = status.as_u16(),
                    retry_in = ?delay,
                    "rate limited by the GitHub API"
                );
                return FetchError::RateLimited(delay);
            }
            Some(Retry::TooLong(delay)) => {
                return self.error(target, beyond_wait(status, delay, now));
            }
            _ => {}
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

/// The error for a rate limit that lasts longer than upshift waits one out
/// ([`retry::MAX_WAIT`]): GitHub's hourly quota resets within the hour, so a longer wait comes
/// from something else (a proxy, a skewed clock).
pub(crate) fn beyond_wait(status: StatusCode, delay: Duration, now: SystemTime) -> String {
    format!(
        "{status}: {} (a GITHUB_TOKEN raises the limit from 60 to 5,000 requests an hour)",
        retry::too_long(delay, now)
    )
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()
}

/// Whether this response is one of GitHub's rate limits, and how long it asks us to wait: the
/// shared reading of `Retry-After` and `x-ratelimit-reset` ([`retry::classify`]); else a minute
/// for a 429, an exhausted quota without a reset, or a secondary rate limit (said in the body's
/// `message`). `None` for anything else (a 403 with quota left is a permission problem).
pub(crate) fn rate_limit(
    status: StatusCode,
    headers: &HeaderMap,
    message: Option<&str>,
    now: SystemTime,
) -> Option<Retry> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let said = retry::classify(status.as_u16(), |n| header_str(headers, n), now);
    if matches!(said, Retry::After(_) | Retry::TooLong(_)) {
        return Some(said);
    }
    let exhausted = header_str(headers, "x-ratelimit-remaining").is_some_and(|v| v.trim() == "0");
    let secondary = message.is_some_and(|m| m.to_ascii_lowercase().contains("rate limit"));
    (status == StatusCode::TOO_MANY_REQUESTS || exhausted || secondary)
        .then_some(Retry::After(DEFAULT_RATE_LIMIT_WAIT))
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

impl Api {
    /// Reads a whole body, refusing more than `limit` bytes, within the timeout.
    pub async fn collect(&self, body: Body, limit: usize) -> Result<Vec<u8>, String> {
        body_reader(body, "the response")
            .total(self.timeout)
            .max_bytes(limit as u64)
            .read_to_vec()
            .await
            .map_err(|e| e.to_string())
    }
}

/// A response body as the shared bounded reader reads it, streamed as it arrives.
pub(crate) type Reader = BoundedBody<
    StreamReader<
        BodyDataStream<http_body_util::combinators::MapErr<Body, fn(octocrab::Error) -> io::Error>>,
        Bytes,
    >,
>;

/// `body` as a [`BoundedBody`] about `what`, with no limits set yet.
pub(crate) fn body_reader(body: Body, what: impl Into<String>) -> Reader {
    let to_io: fn(octocrab::Error) -> io::Error = |e| io::Error::other(error_chain(&e));
    BoundedBody::new(
        StreamReader::new(BodyDataStream::new(body.map_err(to_io))),
        what,
    )
}

/// An asset to read, owned: the release's asset read at once, or, beside a patch, on its first
/// read ([`shared_body::lazy`]), and the patch itself. Streamed through the shared bounded
/// reader: cut after the timeout without data, and held to the asset's listed size.
#[derive(Clone)]
pub(crate) struct AssetGet {
    pub api: Api,
    /// The asset endpoint, relative to the API base.
    pub path: String,
    pub name: String,
    /// The size the release document lists.
    pub size: u64,
    /// What the body is, in its errors (`github:o/r: release TAG asset NAME`).
    pub what: String,
}

impl AssetGet {
    /// The body, requested now.
    pub async fn open(&self) -> Result<ReleaseBody, FetchError> {
        let response = self.api.open_asset(&self.path, &self.name).await?;
        Ok(Box::new(
            body_reader(response.into_body(), self.what.clone())
                .stall(self.api.timeout)
                .expect_len(Some(self.size)),
        ))
    }

    /// The body, requested on its first read: nothing is asked of GitHub while it is not read.
    pub fn lazy(self) -> ReleaseBody {
        shared_body::lazy(async move {
            self.open()
                .await
                .map_err(|e| io::Error::other(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::UNIX_EPOCH;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn rate_limits() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let after = |s| Some(Retry::After(Duration::from_secs(s)));
        let exhausted = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1000120"),
        ]);
        assert_eq!(
            rate_limit(StatusCode::FORBIDDEN, &exhausted, None, now),
            after(120)
        );
        assert_eq!(
            rate_limit(StatusCode::TOO_MANY_REQUESTS, &exhausted, None, now),
            after(120)
        );
        // A reset already past still waits a second; an exhausted quota without a reset, a minute.
        let past = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "5")]);
        assert_eq!(
            rate_limit(StatusCode::FORBIDDEN, &past, None, now),
            after(1)
        );
        let no_reset = headers(&[("x-ratelimit-remaining", "0")]);
        assert_eq!(
            rate_limit(StatusCode::FORBIDDEN, &no_reset, None, now),
            after(60)
        );
        let retry = headers(&[("retry-after", "7"), ("x-ratelimit-remaining", "12")]);
        assert_eq!(
            rate_limit(StatusCode::FORBIDDEN, &retry, None, now),
            after(7)
        );
        // A plain 403 (no permission) is not a rate limit; a 429 always is.
        let some_left = headers(&[("x-ratelimit-remaining", "12")]);
        assert_eq!(
            rate_limit(StatusCode::FORBIDDEN, &some_left, Some("Forbidden"), now),
            None
        );
        assert_eq!(
            rate_limit(StatusCode::TOO_MANY_REQUESTS, &some_left, None, now),
            after(60)
        );
        let secondary = Some("You have exceeded a secondary rate limit.");
        assert_eq!(
            rate_limit(StatusCode::FORBIDDEN, &some_left, secondary, now),
            after(60)
        );
        assert_eq!(
            rate_limit(StatusCode::INTERNAL_SERVER_ERROR, &exhausted, None, now),
            None
        );
        // A day away: too long to wait out.
        let day = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1086400"),
        ]);
        assert_eq!(
            rate_limit(StatusCode::FORBIDDEN, &day, None, now),
            Some(Retry::TooLong(Duration::from_secs(86_400)))
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
