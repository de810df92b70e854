//! Counting at the origin: one [`Hit`] per request as the server saw it (nginx's access log, the
//! GitHub fixture's request log) or as a counting proxy in front of it saw it (s3s-fs, which
//! logs nothing), and the figures made from them: totals by status, requests per 1 s bucket, the
//! peak number of responses in progress at once.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use upshift_testkit::s3::proxy::Exchange;

/// One request at the origin. Times are Unix seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// When the request arrived.
    pub start: f64,
    /// When its response ended: sent, or cut when the client went away.
    pub end: f64,
    /// Which of a server's origins answered (`api`, `objects` for the GitHub fixture), else "".
    pub origin: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Response body bytes sent (for a transfer cut short, what was sent of it).
    pub body_bytes: u64,
    /// All response bytes, headers included, where the origin says (nginx, the proxy).
    pub bytes_sent: Option<u64>,
    /// The request's `User-Agent`, where the origin logs it (the GitHub fixture), else "".
    pub agent: String,
}

/// A line of the bench's nginx access log (`log_format counting` in `nginx.rs`): `$msec`,
/// `$request_time`, `$status`, `$request_method`, `$uri`, `$bytes_sent`, `$body_bytes_sent`,
/// tab-separated. nginx logs a request when it ends, so its start is `$msec - $request_time`.
pub fn parse_nginx(line: &str) -> Option<Hit> {
    let f: Vec<&str> = line.split('\t').collect();
    let [msec, took, status, method, uri, sent, body] = f.as_slice() else {
        return None;
    };
    let end: f64 = msec.parse().ok()?;
    let took: f64 = took.parse().ok()?;
    Some(Hit {
        start: end - took,
        end,
        origin: String::new(),
        method: method.to_string(),
        path: uri.to_string(),
        status: status.parse().ok()?,
        body_bytes: body.parse().ok()?,
        bytes_sent: Some(sent.parse().ok()?),
        agent: String::new(),
    })
}

/// Every request in an nginx access log.
pub fn read_nginx(path: &std::path::Path) -> Vec<Hit> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(parse_nginx)
        .collect()
}

/// One exchange of the counting proxy.
pub fn from_exchange(e: &Exchange) -> Hit {
    Hit {
        start: unix(e.started),
        end: unix(e.finished),
        origin: String::new(),
        method: e.method.clone(),
        path: e.path.clone(),
        status: e.status,
        body_bytes: e.body_bytes,
        bytes_sent: Some(e.response_head_bytes + e.body_bytes),
        agent: String::new(),
    }
}

/// A line of the GitHub fixture's `/_fixture/log` (JSON; `at_ms`, `done_ms` in Unix
/// milliseconds). A response still in progress (`done_ms` 0) ends "now" for the sweep.
pub fn parse_fixture(line: &str) -> Option<Hit> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let ms = |k: &str| v[k].as_u64().map(|m| m as f64 / 1e3);
    let start = ms("at_ms")?;
    let end = ms("done_ms").filter(|e| *e > 0.0).unwrap_or(start);
    Some(Hit {
        start,
        end: end.max(start),
        origin: v["origin"].as_str()?.to_string(),
        method: v["method"].as_str()?.to_string(),
        path: v["path"].as_str()?.to_string(),
        status: u16::try_from(v["status"].as_u64()?).ok()?,
        body_bytes: v["body_bytes"].as_u64()?,
        bytes_sent: None,
        agent: v["user_agent"].as_str().unwrap_or_default().to_string(),
    })
}

pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Totals over some hits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    pub requests: u64,
    pub body_bytes: u64,
    /// Headers included, where every hit says; else `None`.
    pub bytes_sent: Option<u64>,
    /// Requests by `METHOD status` (`GET 304`).
    pub by_status: BTreeMap<String, u64>,
}

impl Tally {
    pub fn of<'a>(hits: impl IntoIterator<Item = &'a Hit>) -> Tally {
        let mut t = Tally {
            bytes_sent: Some(0),
            ..Tally::default()
        };
        for h in hits {
            t.requests += 1;
            t.body_bytes += h.body_bytes;
            t.bytes_sent = t.bytes_sent.zip(h.bytes_sent).map(|(a, b)| a + b);
            *t.by_status
                .entry(format!("{} {}", h.method, h.status))
                .or_default() += 1;
        }
        t
    }

    /// `GET 304: 950, HEAD 200: 12`.
    pub fn statuses(&self) -> String {
        let parts: Vec<String> = self
            .by_status
            .iter()
            .map(|(k, n)| format!("{k}: {}", crate::stats::int(*n as f64)))
            .collect();
        match parts.is_empty() {
            true => "–".into(),
            false => parts.join(", "),
        }
    }
}

/// Requests that arrived in each 1 s bucket from `from` on, `buckets` of them.
pub fn per_second<'a>(
    hits: impl IntoIterator<Item = &'a Hit>,
    from: f64,
    buckets: usize,
) -> Vec<u32> {
    let mut out = vec![0u32; buckets];
    for h in hits {
        let at = h.start - from;
        if at >= 0.0 && (at as usize) < buckets {
            out[at as usize] += 1;
        }
    }
    out
}

/// The most responses in progress at the same moment (a response is in progress from its
/// request's arrival to its last byte).
pub fn peak_concurrency<'a>(hits: impl IntoIterator<Item = &'a Hit>) -> usize {
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for h in hits {
        edges.push((h.start, 1));
        edges.push((h.end.max(h.start), -1));
    }
    // Ends before starts at the same instant: back-to-back requests do not overlap.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        peak = peak.max(now);
    }
    peak as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(start: f64, end: f64) -> Hit {
        Hit {
            start,
            end,
            origin: String::new(),
            method: "GET".into(),
            path: "/a".into(),
            status: 200,
            body_bytes: 10,
            bytes_sent: Some(100),
            agent: String::new(),
        }
    }

    #[test]
    fn nginx_lines() {
        let h = parse_nginx("1700000010.250\t0.250\t304\tGET\t/idle/app.sha256\t180\t0")
            .expect("a counting line");
        assert_eq!(h.status, 304);
        assert_eq!(h.path, "/idle/app.sha256");
        assert_eq!((h.body_bytes, h.bytes_sent), (0, Some(180)));
        assert!((h.start - 1_700_000_010.0).abs() < 1e-6);
        // A default-format line, or a truncated one, is not a hit.
        assert!(parse_nginx("127.0.0.1 - - [x] \"GET / HTTP/1.1\" 200 5").is_none());
        assert!(parse_nginx("1700000010.250\t0.250\t304").is_none());
    }

    #[test]
    fn fixture_lines() {
        let line = r#"{"origin":"objects","method":"GET","path":"/o/1","status":200,"body_bytes":7,"request_bytes":0,"user_agent":"upshift-github/0.1.0","at_ms":1700000000500,"done_ms":1700000001500}"#;
        let h = parse_fixture(line).expect("a log line");
        assert_eq!(
            (h.origin.as_str(), h.status, h.body_bytes),
            ("objects", 200, 7)
        );
        assert_eq!(h.agent, "upshift-github/0.1.0");
        assert!((h.end - h.start - 1.0).abs() < 1e-9);
        let open = line.replace("1700000001500", "0");
        let h = parse_fixture(&open).expect("a response in progress");
        assert_eq!(h.end, h.start);
    }

    #[test]
    fn buckets_tallies_and_overlap() {
        let hits = [
            hit(10.2, 11.0),
            hit(10.9, 10.95),
            hit(12.0, 15.0),
            hit(15.0, 16.0),
        ];
        assert_eq!(per_second(&hits, 10.0, 4), vec![2, 0, 1, 0]);
        // [10.2, 11.0] holds [10.9, 10.95]; the last starts as the third ends.
        assert_eq!(peak_concurrency(&hits), 2);
        let t = Tally::of(&hits);
        assert_eq!((t.requests, t.body_bytes, t.bytes_sent), (4, 40, Some(400)));
        assert_eq!(t.statuses(), "GET 200: 4");
    }
}
