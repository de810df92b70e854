//! One reading of "when may I ask again" for every fetcher: `Retry-After` (delta-seconds or an
//! HTTP-date), GitHub's `x-ratelimit-remaining: 0` with `x-ratelimit-reset` (epoch seconds), and
//! the status codes that are worth retrying. Delays are at least a second and at most
//! [`MAX_WAIT`], so a hostile or broken server cannot park a fetcher for a day; a longer request
//! is reported as such ([`Retry::TooLong`]) for the fetcher to turn into an error.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::FetchError;

/// The longest wait honoured. GitHub's hourly quota resets within the hour; anything longer
/// comes from a proxy or a skewed clock.
pub const MAX_WAIT: Duration = Duration::from_secs(60 * 60);

/// What a failed response says about retrying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The server said when: retry after this delay (1 s to [`MAX_WAIT`]); report it as
    /// [`FetchError::RateLimited`](super::FetchError::RateLimited).
    After(Duration),
    /// The server asked for more than [`MAX_WAIT`] (the delay it asked for): report an error
    /// saying when, and let the error backoff retry meanwhile.
    TooLong(Duration),
    /// Transient (429, 5xx, 408) without a usable delay: retry with the caller's backoff.
    Backoff,
    /// Asking the same thing again will get the same answer until something changes (a 4xx).
    Fatal,
}

impl Retry {
    /// The error a fetcher returns when the server said when: [`Retry::After`] is
    /// [`FetchError::RateLimited`]; [`Retry::TooLong`] a [`FetchError::Source`] starting with
    /// `what` and saying until when ([`too_long`]). `None` for the others: the caller's own
    /// status error.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use upshift::fetch::{retry::Retry, FetchError};
    /// let now = SystemTime::now();
    /// let e = Retry::After(Duration::from_secs(7)).into_error("GET x: HTTP 429", now);
    /// assert!(matches!(e, Some(FetchError::RateLimited(d)) if d == Duration::from_secs(7)));
    /// assert!(Retry::Backoff.into_error("GET x: HTTP 502", now).is_none());
    /// ```
    pub fn into_error(self, what: &str, now: SystemTime) -> Option<FetchError> {
        match self {
            Retry::After(d) => Some(FetchError::RateLimited(d)),
            Retry::TooLong(d) => Some(FetchError::Source(format!("{what}: {}", too_long(d, now)))),
            Retry::Backoff | Retry::Fatal => None,
        }
    }
}

/// What to say about a wait longer than [`MAX_WAIT`] asked at `now`: until when (never a panic,
/// however far), and that the error backoff retries meanwhile.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use upshift::fetch::retry::too_long;
/// let msg = too_long(Duration::from_secs(86_400), UNIX_EPOCH);
/// assert!(msg.starts_with("rate limited until Fri, 02 Jan 1970 00:00:00 GMT (86400s from now)"));
/// ```
pub fn too_long(delay: Duration, now: SystemTime) -> String {
    let until = now
        .checked_add(delay)
        .filter(|t| {
            t.duration_since(UNIX_EPOCH)
                .is_ok_and(|d| d.as_secs() < 253_402_300_800)
        })
        .map_or_else(|| "the far future".to_string(), httpdate::fmt_http_date);
    format!(
        "rate limited until {until} ({}s from now), longer than the {}s upshift waits out a rate \
         limit; the check is retried with the error backoff meanwhile",
        delay.as_secs(),
        MAX_WAIT.as_secs()
    )
}

/// The delay a `Retry-After` value asks for, from `now`: delta-seconds or an HTTP-date. A date
/// in the past is zero; garbage (negative, fractional, not a date) is `None`. Not capped: see
/// [`classify`].
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use upshift::fetch::retry::retry_after;
/// let now = SystemTime::now();
/// assert_eq!(retry_after("120", now), Some(Duration::from_secs(120)));
/// assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::ZERO));
/// assert_eq!(retry_after("-5", now), None);
/// ```
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The delay until GitHub's `x-ratelimit-reset` (epoch seconds), from `now`: zero when past,
/// `None` for garbage.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use upshift::fetch::retry::ratelimit_reset;
/// let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
/// assert_eq!(ratelimit_reset("1000120", now), Some(Duration::from_secs(120)));
/// assert_eq!(ratelimit_reset("5", now), Some(Duration::ZERO));
/// ```
pub fn ratelimit_reset(value: &str, now: SystemTime) -> Option<Duration> {
    let reset = value.trim().parse::<u64>().ok()?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now)))
}

/// What a failed response (its status and a header lookup) says about retrying: the server's
/// delay (`Retry-After`; with `x-ratelimit-remaining: 0`, `x-ratelimit-reset`) on a 403, 429 or
/// 503; else a back-off for 408, 429 and 5xx; else fatal. A 403 is a rate limit only when a
/// header says so (GitHub); GitHub's secondary limits, said in the body, are the caller's to
/// read.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use upshift::fetch::retry::{classify, Retry, MAX_WAIT};
/// let headers = |pairs: &'static [(&'static str, &'static str)]| {
///     move |name: &str| pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
/// };
/// let now = SystemTime::now();
/// assert_eq!(classify(429, headers(&[("retry-after", "7")]), now), Retry::After(Duration::from_secs(7)));
/// assert_eq!(classify(503, headers(&[("retry-after", "0")]), now), Retry::After(Duration::from_secs(1)));
/// assert_eq!(classify(503, headers(&[("retry-after", "86400")]), now), Retry::TooLong(Duration::from_secs(86400)));
/// assert_eq!(classify(503, headers(&[("retry-after", "soon")]), now), Retry::Backoff);
/// assert_eq!(classify(403, headers(&[]), now), Retry::Fatal);
/// assert!(MAX_WAIT >= Duration::from_secs(60));
/// ```
pub fn classify<'h>(
    status: u16,
    header: impl Fn(&str) -> Option<&'h str>,
    now: SystemTime,
) -> Retry {
    let asked = match status {
        403 | 429 | 503 => server_delay(&header, now),
        _ => None,
    };
    match asked {
        Some(d) if d > MAX_WAIT => Retry::TooLong(d),
        Some(d) => Retry::After(d.max(Duration::from_secs(1))),
        None => match status {
            408 | 429 | 500..=599 => Retry::Backoff,
            _ => Retry::Fatal,
        },
    }
}

fn server_delay<'h>(
    header: &impl Fn(&str) -> Option<&'h str>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(d) = header("retry-after").and_then(|v| retry_after(v, now)) {
        return Some(d);
    }
    let exhausted = header("x-ratelimit-remaining").is_some_and(|v| v.trim() == "0");
    match exhausted {
        true => header("x-ratelimit-reset").and_then(|v| ratelimit_reset(v, now)),
        false => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_forms_and_hostile_values() {
        let now = at(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(retry_after("7", now), secs(7));
        assert_eq!(retry_after(" 7 ", now), secs(7));
        assert_eq!(retry_after("0", now), secs(0));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now), secs(120));
        // A past date: now.
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), secs(0));
        // More digits than a u64: as long as can be, never a panic or a wrap to zero.
        assert_eq!(retry_after("99999999999999999999999", now), secs(u64::MAX));
        for garbage in [
            "-5",
            "1.5",
            "",
            "soon",
            "+3",
            "0x10",
            "Wed, 99 Oct 2015 07:30:00 GMT",
        ] {
            assert_eq!(retry_after(garbage, now), None, "{garbage:?}");
        }
    }

    #[test]
    fn ratelimit_reset_forms_and_hostile_values() {
        let now = at(1_000_000);
        assert_eq!(
            ratelimit_reset("1000120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(ratelimit_reset("5", now), Some(Duration::ZERO));
        assert_eq!(ratelimit_reset("-1", now), None);
        assert_eq!(ratelimit_reset("tomorrow", now), None);
        assert_eq!(
            ratelimit_reset("18446744073709551615", now),
            Some(Duration::from_secs(u64::MAX - 1_000_000))
        );
    }

    #[test]
    fn classification() {
        let now = at(1_000_000);
        let c = |status, pairs: &[(&str, &str)]| classify(status, lookup(pairs), now);
        let s = Duration::from_secs;
        assert_eq!(c(429, &[("retry-after", "7")]), Retry::After(s(7)));
        assert_eq!(c(503, &[("Retry-After", "7")]), Retry::After(s(7)));
        // GitHub's exhausted quota, on a 403 or a 429; Retry-After wins over the reset.
        let exhausted = [
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1000120"),
        ];
        assert_eq!(c(403, &exhausted), Retry::After(s(120)));
        assert_eq!(c(429, &exhausted), Retry::After(s(120)));
        let both = [
            ("retry-after", "9"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1000120"),
        ];
        assert_eq!(c(403, &both), Retry::After(s(9)));
        // A reset already past, or a zero delay, still waits a second.
        let past = [("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "5")];
        assert_eq!(c(403, &past), Retry::After(s(1)));
        // Quota left: a 403 is a permission problem.
        let left = [
            ("x-ratelimit-remaining", "12"),
            ("x-ratelimit-reset", "1000120"),
        ];
        assert_eq!(c(403, &left), Retry::Fatal);
        // A day, or u64::MAX seconds, or a date next year: too long, never a park.
        assert_eq!(
            c(503, &[("retry-after", "86400")]),
            Retry::TooLong(s(86_400))
        );
        assert!(matches!(
            c(429, &[("retry-after", "99999999999999999999")]),
            Retry::TooLong(_)
        ));
        assert!(matches!(
            c(429, &[("retry-after", "Fri, 01 Jan 2100 00:00:00 GMT")]),
            Retry::TooLong(_)
        ));
        let max = MAX_WAIT.as_secs().to_string();
        assert_eq!(
            c(429, &[("retry-after", max.as_str())]),
            Retry::After(MAX_WAIT)
        );
        // Garbage falls back to the status.
        assert_eq!(c(429, &[("retry-after", "-1")]), Retry::Backoff);
        assert_eq!(c(503, &[("retry-after", "later")]), Retry::Backoff);
        assert_eq!(c(403, &[("retry-after", "later")]), Retry::Fatal);
        // Retry-After on a status it does not belong to is not obeyed.
        assert_eq!(c(500, &[("retry-after", "7")]), Retry::Backoff);
        assert_eq!(c(404, &[("retry-after", "7")]), Retry::Fatal);
        for status in [408, 500, 502, 504] {
            assert_eq!(c(status, &[]), Retry::Backoff, "{status}");
        }
        for status in [400, 401, 403, 404, 410] {
            assert_eq!(c(status, &[]), Retry::Fatal, "{status}");
        }
    }

    #[test]
    fn a_wait_too_long_is_an_error_naming_when_even_at_the_end_of_time() {
        let now = at(1_000_000);
        let e = Retry::TooLong(Duration::from_secs(86_400)).into_error("GET x: HTTP 429", now);
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.starts_with("GET x: HTTP 429: rate limited until Tue, 13 Jan 1970 13:46:40 GMT (86400s from now), longer than the 3600s"),
            "{msg}"
        );
        // An x-ratelimit-reset of u64::MAX: no SystemTime overflow, no year 10000 date.
        let far = classify(
            403,
            lookup(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "18446744073709551615"),
            ]),
            now,
        );
        let Retry::TooLong(d) = far else {
            panic!("{far:?}")
        };
        assert!(too_long(d, now).contains("until the far future"));
        assert!(Retry::Fatal.into_error("GET x", now).is_none());
    }
}
