//! Turning the SDK's errors into [`FetchError`]s that say which object, which operation and which
//! endpoint failed, with S3's error code and message.

use std::error::Error as StdError;
use std::io;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use upshift::fetch::{error_chain, retry, FetchError};

/// How long to back off when S3 throttles and says nothing more precise.
const THROTTLE_DELAY: Duration = Duration::from_secs(5);

/// Error codes S3 and S3-compatible stores use for "slow down".
const THROTTLE_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "TooManyRequests",
];

/// The HTTP status of a service's answer, if there was one.
pub(crate) fn status<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// The service answered "no such object" (a HEAD's bare 404, or `NoSuchKey` / `NoSuchVersion`).
pub(crate) fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    match err {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            matches!(err.code(), Some("NoSuchKey" | "NotFound" | "NoSuchVersion"))
                || (status(err) == Some(404) && err.code() != Some("NoSuchBucket"))
        }
        _ => false,
    }
}

/// The service refused the request without saying why (a HEAD carries no error document).
pub(crate) fn is_unexplained_refusal<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    matches!(err, SdkError::ServiceError(_))
        && err
            .code()
            .is_none_or(|c| c == "Forbidden" || c == "BadRequest")
        && matches!(status(err), Some(400 | 403))
}

/// Converts an SDK error from `what` (`HEAD s3://bucket/key`) against `endpoint`.
pub(crate) fn convert<E>(err: SdkError<E>, what: &str, endpoint: &str) -> FetchError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => service_error(err, what),
        SdkError::DispatchFailure(d) => {
            let kind = io_kind(&err).unwrap_or(if d.is_timeout() {
                io::ErrorKind::TimedOut
            } else {
                io::ErrorKind::Other
            });
            FetchError::Io {
                what: format!("{what} (endpoint {endpoint})"),
                source: io::Error::new(kind, error_chain(&err)),
            }
        }
        SdkError::TimeoutError(_) => FetchError::Io {
            what: format!("{what} (endpoint {endpoint})"),
            source: io::Error::new(io::ErrorKind::TimedOut, error_chain(&err)),
        },
        _ => FetchError::Source(format!("{what}: {}", DisplayErrorContext(&err))),
    }
}

fn service_error<E>(err: SdkError<E>, what: &str) -> FetchError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let status = status(&err);
    let code = err.code().map(str::to_string);
    let throttled = matches!(status, Some(429 | 503))
        || code.as_deref().is_some_and(|c| THROTTLE_CODES.contains(&c));
    if throttled {
        let headers = err.raw_response().map(|r| r.headers());
        let header = |name: &str| headers.and_then(|h| h.get(name));
        let retry = retry::classify(status.unwrap_or(503), header, SystemTime::now());
        let said = retry.into_error(&format!("{what}: S3 asks to slow down"), SystemTime::now());
        tracing::warn!(
            operation = what,
            code = code.as_deref().unwrap_or("-"),
            ?retry,
            "S3 asks to slow down"
        );
        return said.unwrap_or(FetchError::RateLimited(THROTTLE_DELAY));
    }
    let status = status.map_or_else(String::new, |s| format!("HTTP {s} "));
    let hint = code
        .as_deref()
        .and_then(hint)
        .map_or_else(String::new, |h| format!(" ({h})"));
    match (code, err.message().filter(|m| !m.trim().is_empty())) {
        (Some(code), Some(message)) => {
            FetchError::Source(format!("{what}: {status}{code}: {message}{hint}"))
        }
        (Some(code), None) => FetchError::Source(format!("{what}: {status}{code}{hint}")),
        (None, _) => FetchError::Source(format!("{what}: {status}{}", DisplayErrorContext(&err))),
    }
}

/// What to look at for the common configuration errors.
fn hint(code: &str) -> Option<&'static str> {
    Some(match code {
        "SignatureDoesNotMatch" => "check the secret key",
        "InvalidAccessKeyId" | "NotSignedUp" => "check the access key id",
        "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired" => {
            "the session token is expired or invalid"
        }
        "AccessDenied" => "the credentials lack s3:GetObject on the object",
        "NoSuchBucket" => "check the bucket name and the region or endpoint",
        "PermanentRedirect"
        | "AuthorizationHeaderMalformed"
        | "IllegalLocationConstraintException" => "the bucket is in another region",
        "RequestTimeTooSkewed" => "this machine's clock is off",
        _ => return None,
    })
}

/// The kind of the first `std::io::Error` in the error's chain (connection refused, reset...).
fn io_kind(err: &(dyn StdError + 'static)) -> Option<io::ErrorKind> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        next = e.source();
    }
    None
}
