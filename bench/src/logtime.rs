//! Server log lines with their timestamps, to split a measured interval into the library's
//! phases. `tracing-subscriber`'s default format starts each line with an RFC 3339 UTC time
//! (`2026-01-02T03:04:05.123456Z`), taken from the same system clock the harness reads.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Line {
    pub at: SystemTime,
    pub text: String,
}

/// The log's lines that start with a timestamp, in order.
pub fn read(log: &Path) -> Vec<Line> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let ts = l.split_whitespace().next()?;
            Some(Line {
                at: parse_rfc3339_utc(ts)?,
                text: l.to_string(),
            })
        })
        .collect()
}

/// The first line at or after `from` (and before `until`, if given) containing `needle`.
pub fn first_after<'a>(
    lines: &'a [Line],
    from: SystemTime,
    until: Option<SystemTime>,
    needle: &str,
) -> Option<&'a Line> {
    lines
        .iter()
        .filter(|l| l.at >= from && until.is_none_or(|u| l.at < u))
        .find(|l| l.text.contains(needle))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`.
pub fn parse_rfc3339_utc(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let (hms, frac) = match time.split_once('.') {
        Some((h, f)) => (h, f),
        None => (time, ""),
    };
    let mut t = hms.split(':');
    let h: i64 = t.next()?.parse().ok()?;
    let m: i64 = t.next()?.parse().ok()?;
    let sec: i64 = t.next()?.parse().ok()?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        let n: u32 = digits.parse().ok()?;
        n * 10u32.pow(9 - digits.len() as u32)
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + h * 3600 + m * 60 + sec;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `b - a` in milliseconds (negative if b is earlier).
pub fn ms_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_timestamps() {
        let t = parse_rfc3339_utc("2026-11-24T13:35:28.162096Z").unwrap();
        let d = t.duration_since(UNIX_EPOCH).unwrap();
        // date -u -d 2026-11-24T13:35:28Z +%s
        assert_eq!(d.as_secs(), 1_795_527_328);
        assert_eq!(d.subsec_micros(), 162_096);
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        assert!(parse_rfc3339_utc("INFO").is_none());
    }
}
