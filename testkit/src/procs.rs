//! Processes by PID: `/proc/<pid>/stat`, descendants, a kill that never hits a recycled PID, and
//! [`ChildGuard`], the one kill-on-drop guard every server launcher here holds its child in.

use std::fs;
use std::process::{Child, Command, ExitStatus, Stdio};

/// `/proc/<pid>/stat`: state, parent, start time (with the pid, it names one process for good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub state: char,
    pub ppid: u32,
    pub starttime: u64,
}

/// `/proc/<pid>/stat` of `pid`, or `None` if there is no such process.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = text.rfind(')')?;
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    Some(ProcStat {
        pid,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        starttime: rest.get(19)?.parse().ok()?,
    })
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some(s) if s.state != 'Z' && s.state != 'X')
}

/// Every descendant of `pid` now: its children, their children, and so on.
pub fn descendants_of(pid: u32) -> Vec<ProcStat> {
    let procs: Vec<ProcStat> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(proc_stat)
        .collect();
    let mut out: Vec<ProcStat> = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for c in procs.iter().filter(|s| s.ppid == p) {
            if !out.iter().any(|o| o.pid == c.pid) {
                out.push(*c);
                frontier.push(c.pid);
            }
        }
    }
    out
}

/// SIGKILL to `pid`, if it is still the process `seen` (same start time, not a zombie). Through
/// `kill(1)`: this file stays on the standard library.
pub fn kill_if_same(seen: &ProcStat) {
    if matches!(proc_stat(seen.pid), Some(now) if now.starttime == seen.starttime && now.state != 'Z')
    {
        let _ = Command::new("kill")
            .args(["-s", "KILL", &seen.pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process, SIGKILLed by its PID and reaped when dropped (or on [`ChildGuard::kill`]):
/// the one guard the server launchers of this crate hold their child in.
///
/// ```
/// let child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
/// let mut guard = upshift_testkit::procs::ChildGuard::new(child);
/// assert!(guard.is_running());
/// guard.kill();
/// assert!(!guard.is_running());
/// ```
#[derive(Debug)]
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Guards `child` from now on.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(Some(child))
    }

    /// The child's PID while it was not reaped.
    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// The child's piped stdout, taken (once).
    pub fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.0.as_mut().and_then(|c| c.stdout.take())
    }

    /// Whether the child was neither killed here nor seen to exit.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none() && self.0.is_some()
    }

    /// The child's exit status if it exited (it is reaped, and the guard is then empty).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.0.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if status.is_some() {
            self.0 = None;
        }
        status
    }

    /// SIGKILL (which also ends a stopped process) and reap; nothing if already gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
