//! A CPU profile of running server processes: `perf record` (sampling, no call graphs) while a
//! load runs, summarised as the functions with the most samples of their own ("self time").
//! Where `perf` is missing or the kernel forbids it, the profile is reported as not taken, with
//! the reason: never an empty table that looks like a result.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One line of a profile: a function's share of the samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Percent of all samples taken in the profiled processes.
    pub percent: f64,
    /// The file the code is in (`app`, `libc.so.6`, `[kernel.kallsyms]`).
    pub dso: String,
    /// The function, demangled; `[k]` marks kernel code.
    pub symbol: String,
}

/// Samples `pids` at `hz` for `during` while `load` runs (it is called once perf is recording
/// and must return when the load is over), then returns the `top` functions by self time.
pub fn record<T>(
    pids: &[u32],
    during: Duration,
    data: &Path,
    top: usize,
    load: impl FnOnce() -> Result<T, String>,
) -> Result<(Vec<Frame>, T), String> {
    let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    let perf = Command::new("perf")
        .args(["record", "-q", "-F", "999", "-o"])
        .arg(data)
        .args(["-p", &list.join(","), "--", "sleep"])
        .arg(format!("{}", during.as_secs_f64()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run perf: {e} (perf is the Debian package linux-perf)"))?;
    // perf attaches within a few milliseconds; the load then runs inside the window.
    std::thread::sleep(Duration::from_millis(200));
    let loaded = load();
    let out = perf
        .wait_with_output()
        .map_err(|e| format!("waiting for perf: {e}"))?;
    let loaded = loaded?;
    if !out.status.success() {
        return Err(format!(
            "perf record failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let report = Command::new("perf")
        .args(["report", "-q", "--stdio", "--no-children", "-g", "none"])
        .args(["--sort", "dso,sym", "--percent-limit", "0.1", "-i"])
        .arg(data)
        .output()
        .map_err(|e| format!("cannot run perf report: {e}"))?;
    if !report.status.success() {
        return Err(format!(
            "perf report failed ({}): {}",
            report.status,
            String::from_utf8_lossy(&report.stderr).trim()
        ));
    }
    let frames = parse_report(&String::from_utf8_lossy(&report.stdout));
    if frames.is_empty() {
        return Err("perf recorded no samples of these processes".into());
    }
    Ok((frames.into_iter().take(top).collect(), loaded))
}

/// Reads `perf report --stdio -q --sort dso,sym` lines: `  12.34%  app  [.] tokio::…`.
pub fn parse_report(text: &str) -> Vec<Frame> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let (percent, rest) = line.split_once('%')?;
            let percent: f64 = percent.trim().parse().ok()?;
            let rest = rest.trim_start();
            let (dso, rest) = rest.split_once(char::is_whitespace)?;
            let rest = rest.trim_start();
            let (kind, symbol) = rest.split_once(char::is_whitespace)?;
            let symbol = symbol.trim();
            let symbol = match kind {
                "[k]" => format!("{symbol} [k]"),
                _ => symbol.to_string(),
            };
            Some(Frame {
                percent,
                dso: dso.to_string(),
                symbol,
            })
        })
        .collect()
}

/// A short, table-safe form of a demangled Rust symbol: generic arguments and the hash suffix
/// dropped (`<hyper::proto::h1::conn::Conn<I,B,T>>::poll_read` → `hyper::…::Conn::poll_read`).
pub fn short_symbol(symbol: &str) -> String {
    let mut out = String::with_capacity(symbol.len());
    let mut depth = 0usize;
    for c in symbol.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            _ if depth <= 1 => out.push(c),
            _ => {}
        }
    }
    let out = out.trim_start_matches(' ').to_string();
    // `::h0123456789abcdef` is rustc's hash, noise in a table.
    let out = match out.rfind("::h") {
        Some(i)
            if out[i + 3..].len() == 16 && out[i + 3..].chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            out[..i].to_string()
        }
        _ => out,
    };
    out.replace('|', "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perf_report_is_read_line_by_line() {
        let text = "     9.87%  app               [.] tokio::runtime::task::raw::poll\n\
                    \x20    1.50%  [kernel.kallsyms]  [k] tcp_sendmsg_locked\n\
                    \n# comment\n";
        assert_eq!(
            parse_report(text),
            vec![
                Frame {
                    percent: 9.87,
                    dso: "app".into(),
                    symbol: "tokio::runtime::task::raw::poll".into()
                },
                Frame {
                    percent: 1.5,
                    dso: "[kernel.kallsyms]".into(),
                    symbol: "tcp_sendmsg_locked [k]".into()
                },
            ]
        );
    }

    #[test]
    fn symbols_lose_generics_and_hashes() {
        assert_eq!(
            short_symbol("<hyper::proto::h1::conn::Conn<I,B,T>>::poll_read_head"),
            "hyper::proto::h1::conn::Conn::poll_read_head"
        );
        assert_eq!(
            short_symbol("core::ptr::drop_in_place::h0123456789abcdef"),
            "core::ptr::drop_in_place"
        );
    }
}
