//! What /proc says about a process the harness started: memory (VmRSS, VmHWM, smaps), CPU time,
//! open descriptors, threads and children. Every reader returns `None` once the process is gone,
//! so a sampler never fails a run because a worker exited between two reads.

use std::collections::BTreeMap;

/// A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`, `RssAnon`, ...), or a plain number
/// (`Threads`).
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS")
}

/// The resident-set high-water mark since the process started or since [`reset_hwm`].
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM")
}

/// Resets VmHWM to the current RSS (`echo 5 > /proc/<pid>/clear_refs`, Linux ≥ 4.0), so that a
/// peak can be measured over one operation.
pub fn reset_hwm(pid: u32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

pub fn threads(pid: u32) -> Option<u64> {
    status_field(pid, "Threads")
}

/// How many descriptors the process has open.
pub fn fd_count(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.flatten().count())
}

/// Its children (any thread may have forked them: the master forks from its own thread), from
/// /proc/<pid>/task/*/children.
pub fn children(pid: u32) -> Option<Vec<u32>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut out = Vec::new();
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|s| s.parse::<u32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// User + system CPU seconds of the whole process (every thread, live or exited), from the
/// utime and stime fields of /proc/<pid>/stat; the resolution is one clock tick (10 ms).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces: state is field 3, utime 14.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / if hz > 0.0 { hz } else { 100.0 })
}

/// CPU seconds on record in /proc/<pid>/task/*/schedstat (nanosecond resolution), summed over
/// the live threads: a finer cross-check of [`cpu_secs`], which misses threads that exited.
pub fn sched_secs(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut ns = 0u64;
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Some(ns as f64 / 1e9)
}

/// Thread names and how many threads carry each (`tokio-rt-worker ×5`).
pub fn thread_names(pid: u32) -> Vec<(String, usize)> {
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(n) = std::fs::read_to_string(t.path().join("comm")) {
                *names.entry(n.trim().to_string()).or_default() += 1;
            }
        }
    }
    names.into_iter().collect()
}

/// /proc/<pid>/smaps_rollup, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rollup {
    pub rss: u64,
    /// Proportional set size: pages shared with other processes (the worker maps the same
    /// binary) count for a share.
    pub pss: u64,
    /// Unique set size: pages no other process maps (Private_Clean + Private_Dirty).
    pub uss: u64,
    pub anon: u64,
}

impl Rollup {
    pub fn file_backed(&self) -> u64 {
        self.rss.saturating_sub(self.anon)
    }
}

pub fn rollup(pid: u32) -> Option<Rollup> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(Rollup {
        rss: get("Rss"),
        pss: get("Pss"),
        uss: get("Private_Clean") + get("Private_Dirty"),
        anon: get("Anonymous"),
    })
}

/// The figures that must not grow in a long-lived process: descriptors, memory (VmRSS and the
/// smaps rollup), threads and children, read together.
#[derive(Clone, Copy, Debug, Default)]
pub struct Vitals {
    pub fds: usize,
    /// VmRSS, KiB.
    pub rss: u64,
    pub rollup: Rollup,
    pub threads: u64,
    pub children: usize,
}

pub fn vitals(pid: u32) -> Option<Vitals> {
    Some(Vitals {
        fds: fd_count(pid)?,
        rss: rss_kib(pid)?,
        rollup: rollup(pid)?,
        threads: threads(pid)?,
        children: children(pid)?.len(),
    })
}

/// Hex sha256 of the file the process runs: /proc/<pid>/exe opens that very file, even when the
/// path it was started from has been replaced since.
pub fn exe_sha256(pid: u32) -> Option<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(format!("/proc/{pid}/exe")).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    Some(hex::encode(h.finalize()))
}

/// One kind of mapping in a memory breakdown, in KiB.
#[derive(Clone, Debug, Default)]
pub struct Share {
    pub what: String,
    pub size: u64,
    pub rss: u64,
    pub anon: u64,
    pub pss: u64,
}

/// RSS grouped by what is mapped (from /proc/<pid>/smaps): the program's own text, read-only
/// data and data; shared libraries; the brk heap; anonymous mappings (thread stacks, malloc
/// arenas); the main stack. `exe` is the program's path as the harness started it.
pub fn breakdown(pid: u32, exe: &std::path::Path) -> Option<Vec<Share>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let exe = exe.to_string_lossy().to_string();
    let mut groups: BTreeMap<usize, Share> = BTreeMap::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        // A mapping header: `start-end perms offset dev inode [path]`.
        if first.contains('-') && !first.ends_with(':') {
            let perms = words.next().unwrap_or("");
            let path: String = words.skip(3).collect::<Vec<_>>().join(" ");
            current = Some(classify(&path, perms, &exe));
            continue;
        }
        let (Some(idx), Some(v)) = (current, words.next().and_then(|v| v.parse::<u64>().ok()))
        else {
            continue;
        };
        let share = groups.entry(idx).or_insert_with(|| Share {
            what: KINDS[idx].to_string(),
            ..Share::default()
        });
        match first {
            "Size:" => share.size += v,
            "Rss:" => share.rss += v,
            "Anonymous:" => share.anon += v,
            "Pss:" => share.pss += v,
            _ => {}
        }
    }
    Some(groups.into_values().filter(|s| s.rss > 0).collect())
}

const KINDS: [&str; 8] = [
    "program text (r-x: .text)",
    "program read-only data (r--: .rodata, .eh_frame, relocations, relocated .data.rel.ro)",
    "program data (rw-: .data, .bss, .got)",
    "shared libraries (libc, libm, libgcc_s, ld.so)",
    "[heap] (brk: the main thread's malloc arena)",
    "anonymous (thread stacks, other threads' malloc arenas, tokio)",
    "[stack] (main thread)",
    "other (vdso, vvar)",
];

fn classify(path: &str, perms: &str, exe: &str) -> usize {
    let path = path.trim_end_matches(" (deleted)");
    if !exe.is_empty() && path == exe {
        return match perms {
            p if p.contains('x') => 0,
            p if p.contains('w') => 2,
            _ => 1,
        };
    }
    match path {
        "" => 5,
        "[heap]" => 4,
        "[stack]" => 6,
        p if p.starts_with("[anon") => 5,
        p if p.contains(".so") => 3,
        _ => 7,
    }
}

/// Least-squares slope of `ys` over `xs` (units of y per unit of x); `None` for fewer than two
/// distinct x.
pub fn slope(xs: &[f64], ys: &[f64]) -> Option<f64> {
    let n = xs.len().min(ys.len()) as f64;
    if n < 2.0 {
        return None;
    }
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The standard error of [`slope`], from the residuals around the fitted line: how far the
/// slope of a noisy series could be from the true one. `None` for fewer than three points.
pub fn slope_stderr(xs: &[f64], ys: &[f64]) -> Option<f64> {
    let n = xs.len().min(ys.len());
    if n < 3 {
        return None;
    }
    let b = slope(xs, ys)?;
    let nf = n as f64;
    let mx = xs[..n].iter().sum::<f64>() / nf;
    let my = ys[..n].iter().sum::<f64>() / nf;
    let sxx: f64 = xs[..n].iter().map(|x| (x - mx) * (x - mx)).sum();
    let rss: f64 = xs[..n]
        .iter()
        .zip(&ys[..n])
        .map(|(x, y)| {
            let r = y - (my + b * (x - mx));
            r * r
        })
        .sum();
    Some((rss / (nf - 2.0) / sxx).sqrt())
}

/// `7.3 MiB` from KiB.
pub fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(threads(me).unwrap() >= 1);
        assert!(fd_count(me).unwrap() >= 3);
        assert!(cpu_secs(me).is_some());
        let v = vitals(me).unwrap();
        assert!(v.fds >= 3 && v.rss > 0 && v.threads >= 1);
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        use sha2::Digest;
        assert_eq!(
            exe_sha256(me).unwrap(),
            hex::encode(sha2::Sha256::digest(&exe))
        );
        let r = rollup(me).unwrap();
        assert!(r.rss >= r.anon);
        let exe = std::env::current_exe().unwrap();
        let b = breakdown(me, &exe).unwrap();
        assert!(b.iter().any(|s| s.what.starts_with("program text")));
    }

    #[test]
    fn slopes() {
        assert_eq!(slope(&[0.0, 1.0, 2.0], &[1.0, 3.0, 5.0]), Some(2.0));
        assert_eq!(slope(&[1.0], &[1.0]), None);
        assert_eq!(slope_stderr(&[0.0, 1.0, 2.0], &[1.0, 3.0, 5.0]), Some(0.0));
        // Residuals +1, −2, +1 around a flat line: s² = 6 / 1, Sxx = 2.
        let se = slope_stderr(&[0.0, 1.0, 2.0], &[1.0, -2.0, 1.0]).unwrap();
        assert!((se - 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(slope_stderr(&[0.0, 1.0], &[0.0, 1.0]), None);
    }
}
