//! Running `wrk` and reading its report.
//!
//! wrk prints `Socket errors: connect N, read N, write N, timeout N` and
//! `Non-2xx or 3xx responses: N` only when they are non-zero, so their absence means 0. A small
//! Lua `done()` adds a machine-readable line with p99.9, the maximum and the same counters, which
//! cross-checks the text.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::procs::Guard;

const WRK: &str = "wrk";
const MARK: &str = "UPSHIFT-BENCH-WRK";

const DONE_LUA: &str = r#"-- written by upshift-bench: one machine-readable line after wrk's own report
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "UPSHIFT-BENCH-WRK requests=%.0f duration_us=%.0f connect=%.0f read=%.0f write=%.0f status=%.0f timeout=%.0f p50_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"#;

/// Appended to [`DONE_LUA`] when responses are counted per build: a `response()` that counts each
/// body's BUILD_ID (`hello from <BUILD_ID> ...`) per thread, summed over the threads in `done()`.
/// Defining `response()` makes wrk hand every body to Lua, which costs throughput: scenarios that
/// count say so and measure it against a run without counting.
const COUNT_LUA: &str = r#"
-- written by upshift-bench: responses per BUILD_ID, one more machine-readable line
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) counts = {}; unmatched = 0 end
response = function(status, headers, body)
  local id = body and string.match(body, "^hello from (%S+)")
  if id then counts[id] = (counts[id] or 0) + 1 else unmatched = unmatched + 1 end
end
local write_summary = done
done = function(summary, latency, requests)
  write_summary(summary, latency, requests)
  local total, other = {}, 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do total[k] = (total[k] or 0) + v end
    other = other + t:get("unmatched")
  end
  local keys = {}
  for k in pairs(total) do table.insert(keys, k) end
  table.sort(keys)
  io.write("UPSHIFT-BENCH-BUILDS")
  for _, k in ipairs(keys) do io.write(string.format(" %s=%.0f", k, total[k])) end
  io.write(string.format(" unmatched=%.0f\n", other))
end
"#;
const BUILDS_MARK: &str = "UPSHIFT-BENCH-BUILDS";

/// How wrk's connections are used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// Keep-alive connections, wrk's default.
    KeepAlive,
    /// `-H 'Connection: close'`: a new connection per request.
    Close,
}

impl Load {
    /// From a `keep-alive|close|both` option.
    pub fn choose(opt: Option<&str>) -> &'static [Load] {
        match opt {
            Some("keep-alive") => &[Load::KeepAlive],
            Some("close") => &[Load::Close],
            _ => &[Load::KeepAlive, Load::Close],
        }
    }

    /// The request headers wrk is given for it.
    pub fn headers(self) -> Vec<String> {
        match self {
            Load::KeepAlive => Vec::new(),
            Load::Close => vec!["Connection: close".to_string()],
        }
    }
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Load::KeepAlive => "keep-alive",
            Load::Close => "close",
        })
    }
}

/// What [`start_with`] adds to a plain keep-alive `GET /` run.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// Request headers (`-H`), such as `Connection: close` (a new connection per request).
    pub headers: Vec<String>,
    /// Count responses per BUILD_ID (see [`builds`]).
    pub count_builds: bool,
}

/// Responses per BUILD_ID and how many bodies did not match `hello from <BUILD_ID>`, from the
/// line the counting script prints; `None` when the run did not count.
pub fn builds(out: &str) -> Option<(std::collections::BTreeMap<String, u64>, u64)> {
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix(BUILDS_MARK))?;
    let mut counts = std::collections::BTreeMap::new();
    let mut unmatched = 0;
    for kv in line.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        if k == "unmatched" {
            unmatched = v;
        } else {
            counts.insert(k.to_string(), v);
        }
    }
    Some((counts, unmatched))
}

pub struct Config {
    pub threads: u64,
    pub connections: u64,
    pub duration: Duration,
}

impl Config {
    /// From the common options (`--threads`, `--connections`, `--duration`); wrk takes whole
    /// seconds, so the duration is rounded up to one.
    pub fn from_opts(opts: &crate::opts::Opts) -> Result<Config, String> {
        Ok(Config {
            threads: opts.count("--threads")?,
            connections: opts.count("--connections")?,
            duration: Duration::from_secs(opts.secs("--duration")?.as_secs_f64().ceil() as u64),
        })
    }

    /// The wrk arguments, as shown in reports.
    pub fn args(&self) -> Vec<String> {
        vec![
            format!("-t{}", self.threads),
            format!("-c{}", self.connections),
            format!("-d{}s", self.duration.as_secs()),
            "--latency".into(),
        ]
    }
}

/// A wrk run in progress.
pub struct Running {
    guard: Guard,
    out: PathBuf,
    err: PathBuf,
    limit: Duration,
}

/// What wrk reported.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    pub non2xx: u64,
    pub p50_us: f64,
    pub p75_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    /// From the Lua `done()` line.
    pub p999_us: Option<f64>,
    pub max_us: Option<f64>,
}

impl Report {
    pub fn socket_errors(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }

    /// The raw-data fields of a run, from `requests=` to `max_us=`, as the scenarios' raw
    /// lines write them.
    pub fn raw_fields(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        format!(
            "requests={} seconds={:.2} rps={:.2} connect={} read={} write={} timeout={} \
             non2xx={} p50_us={:.0} p99_us={:.0} p999_us={} max_us={}",
            self.requests,
            self.seconds,
            self.rps,
            self.connect,
            self.read,
            self.write,
            self.timeout,
            self.non2xx,
            self.p50_us,
            self.p99_us,
            opt(self.p999_us),
            opt(self.max_us),
        )
    }
}

pub fn version() -> String {
    match Command::new(WRK).arg("-v").output() {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            let first = text.lines().next().unwrap_or("").trim();
            first
                .split(" Copyright")
                .next()
                .unwrap_or(first)
                .to_string()
        }
        Err(e) => format!("wrk not found: {e}"),
    }
}

/// Starts wrk against `http://<addr>/`; its output goes to files in `dir`.
pub fn start(cfg: &Config, addr: SocketAddr, dir: &Path, tag: &str) -> Result<Running, String> {
    start_with(cfg, addr, dir, tag, &Extra::default())
}

/// [`start`] with request headers and, optionally, per-build counting.
pub fn start_with(
    cfg: &Config,
    addr: SocketAddr,
    dir: &Path,
    tag: &str,
    extra: &Extra,
) -> Result<Running, String> {
    let (name, text) = if extra.count_builds {
        ("done-count.lua", format!("{DONE_LUA}{COUNT_LUA}"))
    } else {
        ("done.lua", DONE_LUA.to_string())
    };
    let script = dir.join(name);
    if !script.exists() {
        std::fs::write(&script, text).map_err(|e| format!("{}: {e}", script.display()))?;
    }
    let out = dir.join(format!("wrk-{tag}.out"));
    let err = dir.join(format!("wrk-{tag}.err"));
    let mut cmd = Command::new(WRK);
    cmd.args(cfg.args());
    for h in &extra.headers {
        cmd.arg("-H").arg(h);
    }
    cmd.arg("-s")
        .arg(&script)
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?,
        ))
        .stderr(Stdio::from(
            File::create(&err).map_err(|e| format!("{}: {e}", err.display()))?,
        ));
    let guard = Guard::spawn(&mut cmd, "wrk", Duration::from_secs(5))
        .map_err(|e| format!("{e} (wrk is the Debian package `wrk`: apt-get install wrk)"))?;
    Ok(Running {
        guard,
        out,
        err,
        limit: cfg.duration + Duration::from_secs(30),
    })
}

impl Running {
    /// Waits for wrk to finish and parses its report.
    pub fn finish(mut self) -> Result<(Report, String), String> {
        let status = self.guard.wait_for(self.limit);
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        let Some(status) = status else {
            return Err(format!(
                "wrk did not finish in {:?}:\n{out}{err}",
                self.limit
            ));
        };
        if !status.success() {
            return Err(format!("wrk exited with {status}:\n{out}{err}"));
        }
        let report = parse(&out).map_err(|e| format!("{e}; wrk printed:\n{out}{err}"))?;
        Ok((report, out))
    }
}

/// `635.91us`, `1.20ms`, `2.00s`, `1.00m`, `1.00h` → microseconds.
fn time_us(s: &str) -> Option<f64> {
    let (num, mult) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mult)
}

/// Parses wrk's text report (and the Lua line, when present).
pub fn parse(out: &str) -> Result<Report, String> {
    let mut r = Report::default();
    let mut saw_requests = false;
    let mut saw_rps = false;
    let mut in_dist = false;
    let mut lua: Option<Vec<(String, f64)>> = None;
    for line in out.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix(MARK) {
            lua = Some(
                rest.split_whitespace()
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        Some((k.to_string(), v.parse().ok()?))
                    })
                    .collect(),
            );
            continue;
        }
        if t.starts_with("Latency Distribution") {
            in_dist = true;
            continue;
        }
        if in_dist {
            let mut parts = t.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some(p), Some(v)) if p.ends_with('%') => {
                    let v = time_us(v).ok_or_else(|| format!("bad latency {v:?}"))?;
                    match p {
                        "50%" => r.p50_us = v,
                        "75%" => r.p75_us = v,
                        "90%" => r.p90_us = v,
                        "99%" => r.p99_us = v,
                        _ => {}
                    }
                    continue;
                }
                _ => in_dist = false,
            }
        }
        if let Some(idx) = t.find(" requests in ") {
            // "123456 requests in 30.00s, 12.34MB read"
            r.requests = t[..idx]
                .trim()
                .parse()
                .map_err(|_| format!("bad request count in {t:?}"))?;
            let rest = &t[idx + " requests in ".len()..];
            let dur = rest.split(',').next().unwrap_or("");
            r.seconds = time_us(dur.trim()).map(|us| us / 1e6).unwrap_or(0.0);
            saw_requests = true;
        } else if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v
                .trim()
                .parse()
                .map_err(|_| format!("bad Requests/sec in {t:?}"))?;
            saw_rps = true;
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 12, write 0, timeout 3"
            for part in v.split(',') {
                let mut kv = part.split_whitespace();
                let (Some(k), Some(n)) = (kv.next(), kv.next()) else {
                    return Err(format!("bad socket errors line {t:?}"));
                };
                let n: u64 = n
                    .parse()
                    .map_err(|_| format!("bad socket errors line {t:?}"))?;
                match k {
                    "connect" => r.connect = n,
                    "read" => r.read = n,
                    "write" => r.write = n,
                    "timeout" => r.timeout = n,
                    _ => return Err(format!("unknown socket error kind in {t:?}")),
                }
            }
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non2xx = v
                .trim()
                .parse()
                .map_err(|_| format!("bad non-2xx line {t:?}"))?;
        }
    }
    if !saw_requests || !saw_rps {
        return Err("wrk's report has no request count or Requests/sec".into());
    }
    if r.p99_us == 0.0 && r.requests > 0 {
        return Err("wrk's report has no latency distribution (--latency)".into());
    }
    if let Some(kv) = lua {
        let get = |k: &str| kv.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        r.p999_us = get("p999_us");
        r.max_us = get("max_us");
        // The text and the Lua summary come from the same counters: disagreement means the text
        // was misread.
        for (name, text, lua) in [
            ("requests", r.requests, get("requests")),
            ("connect", r.connect, get("connect")),
            ("read", r.read, get("read")),
            ("write", r.write, get("write")),
            ("timeout", r.timeout, get("timeout")),
            ("non-2xx", r.non2xx, get("status")),
        ] {
            if let Some(l) = lua {
                if l as u64 != text {
                    return Err(format!(
                        "wrk's text says {name} = {text} but its Lua summary says {l}"
                    ));
                }
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 30s test @ http://127.0.0.1:40000/
  2 threads and 100 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.95ms    2.10ms  45.00ms   90.00%
    Req/Sec    28.00k     2.00k   35.00k    70.00%
  Latency Distribution
     50%  635.91us
     75%    1.20ms
     90%    3.50ms
     99%   10.01ms
  1671234 requests in 30.10s, 230.00MB read
  Socket errors: connect 0, read 12, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:  55523.72
Transfer/sec:      7.64MB
UPSHIFT-BENCH-WRK requests=1671234 duration_us=30100000 connect=0 read=12 write=0 status=7 timeout=3 p50_us=636 p99_us=10010 p999_us=25000 max_us=45000
";

    #[test]
    fn parses_a_full_report() {
        let r = parse(SAMPLE).unwrap();
        assert_eq!(r.requests, 1_671_234);
        assert!((r.seconds - 30.10).abs() < 1e-9);
        assert!((r.rps - 55523.72).abs() < 1e-9);
        assert_eq!((r.connect, r.read, r.write, r.timeout), (0, 12, 0, 3));
        assert_eq!(r.non2xx, 7);
        assert!((r.p50_us - 635.91).abs() < 1e-9);
        assert!((r.p99_us - 10_010.0).abs() < 1e-6);
        assert_eq!(r.p999_us, Some(25_000.0));
        assert_eq!(r.socket_errors(), 15);
    }

    #[test]
    fn absent_error_lines_mean_zero() {
        let text: String = SAMPLE
            .lines()
            .filter(|l| {
                !l.contains("Socket errors") && !l.contains("Non-2xx") && !l.starts_with(MARK)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let r = parse(&text).unwrap();
        assert_eq!(r.socket_errors(), 0);
        assert_eq!(r.non2xx, 0);
        assert_eq!(r.p999_us, None);
    }

    #[test]
    fn text_and_lua_must_agree() {
        let bad = SAMPLE.replace("read=12", "read=11");
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn build_counts() {
        let out = format!("{SAMPLE}UPSHIFT-BENCH-BUILDS b00=10 b01=5 unmatched=2\n");
        let (counts, unmatched) = builds(&out).unwrap();
        assert_eq!(counts.get("b00"), Some(&10));
        assert_eq!(counts.get("b01"), Some(&5));
        assert_eq!(unmatched, 2);
        assert!(builds(SAMPLE).is_none());
    }

    #[test]
    fn units() {
        assert_eq!(time_us("2.00s"), Some(2e6));
        assert_eq!(time_us("1.50m"), Some(90e6));
        assert_eq!(time_us("12.00us"), Some(12.0));
    }
}
