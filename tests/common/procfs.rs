//! Reading `/proc`: process state, parents and children, zombies, start times, open descriptors.

use std::collections::BTreeMap;

// The one `/proc/<pid>/stat` reader, shared with the other crates' tests.
pub use upshift_testkit::procs::{proc_stat, ProcStat};

/// All processes, as (pid, stat).
pub fn all_procs() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(proc_stat)
        .collect()
}

/// Children of `pid` that are not zombies.
pub fn live_children_of(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = all_procs()
        .into_iter()
        .filter(|p| p.ppid == pid && p.state != 'Z' && p.state != 'X')
        .map(|p| p.pid)
        .collect();
    v.sort_unstable();
    v
}

/// Children of `pid` that are zombies (exited, not yet reaped by `pid`).
pub fn zombie_children_of(pid: u32) -> Vec<u32> {
    all_procs()
        .into_iter()
        .filter(|p| p.ppid == pid && p.state == 'Z')
        .map(|p| p.pid)
        .collect()
}

/// Every descendant of `pid`, with its stat.
pub fn descendants_of(pid: u32) -> Vec<ProcStat> {
    let procs = all_procs();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for c in procs.iter().filter(|s| s.ppid == p) {
            if !out.iter().any(|o: &ProcStat| o.pid == c.pid) {
                out.push(*c);
                frontier.push(c.pid);
            }
        }
    }
    out
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some(s) if s.state != 'Z' && s.state != 'X')
}

/// Number of open descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `/proc/<pid>/fd` as `fd -> link target`, for diagnostics.
pub fn fd_listing(pid: u32) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.filter_map(|e| e.ok()) {
            if let Some(n) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                let target = std::fs::read_link(e.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "?".into());
                out.insert(n, target);
            }
        }
    }
    out
}
