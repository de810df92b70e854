//! How long the poll loop waits after errors and rate limits: bounded, so that neither a run of
//! failures nor a hostile `Retry-After` silences upgrades for long.

use std::time::Duration;

/// The longest pause between attempts after repeated fetch errors.
pub(super) const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(600);

/// The longest a source's rate limit is waited out before it is asked again: GitHub's hourly
/// quota resets within an hour, and a `Retry-After` of a week (a misconfigured proxy, a hostile
/// origin) must not silence upgrades for that long.
pub(crate) const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60 * 60);

pub(super) fn rate_limit_wait(fetcher: &str, asked: Duration) -> Duration {
    if asked > MAX_RATE_LIMIT_WAIT {
        tracing::warn!(
            fetcher,
            ?asked,
            waiting = ?MAX_RATE_LIMIT_WAIT,
            "the source asks to wait longer than upshift waits out a rate limit; asking again sooner"
        );
    }
    asked.min(MAX_RATE_LIMIT_WAIT)
}

pub(super) fn error_backoff(errors: u32, interval: Duration) -> Duration {
    let exp = Duration::from_secs(1).saturating_mul(1u32 << errors.min(10));
    exp.min(MAX_ERROR_BACKOFF.max(interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn error_backoff_grows_and_is_capped() {
        let i = Duration::from_secs(60);
        assert_eq!(error_backoff(1, i), Duration::from_secs(2));
        assert_eq!(error_backoff(3, i), Duration::from_secs(8));
        assert_eq!(error_backoff(30, i), MAX_ERROR_BACKOFF);
    }

    #[test]
    pub(super) fn rate_limit_waits_are_capped() {
        let short = Duration::from_secs(90);
        assert_eq!(rate_limit_wait("f", short), short);
        let week = Duration::from_secs(7 * 24 * 3600);
        assert_eq!(rate_limit_wait("f", week), MAX_RATE_LIMIT_WAIT);
    }
}
