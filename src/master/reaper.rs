//! Collecting exited children. The master never waits through `std::process::Child`; on every
//! SIGCHLD it asks the kernel about each worker it knows, so no exit is missed when signals
//! coalesce. As PID 1 (in a container) or a child subreaper it also reaps orphans re-parented to
//! it, but never a child whose status another part of the master waits for (see
//! [`crate::children`]): the test-run of a release is reaped by the code that started it.

use std::fmt;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// A bound on one scan, so a kernel that kept reporting a child nobody can reap could not spin the
/// master; the next SIGCHLD scans again.
const MAX_REAPED_PER_SCAN: usize = 4096;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(Signal),
}

impl Exit {
    /// The status a shell would report, which the master exits with.
    pub(crate) fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s as i32,
        }
    }

    pub(crate) fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => write!(f, "killed by {s}"),
        }
    }
}

/// Reaps whichever of `known` have exited and, when orphans are re-parented to this process, every
/// exited child that nobody owns (those are logged and dropped).
pub(crate) fn reap(known: &[Pid]) -> Vec<(Pid, Exit)> {
    let mut out = Vec::new();
    for &pid in known {
        if let Ok(status) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            if let Some(found) = exit_of(status) {
                out.push(found);
            }
        }
    }
    if crate::children::reaps_orphans() {
        reap_orphans(known, &mut out);
    }
    out
}

/// `waitpid(-1)` would take the status of whichever child exited first, including one whose owner
/// is about to wait for it by pid. So each exited child is first looked at without reaping it
/// (`WNOWAIT`), and left alone if it is owned. The kernel reports exited children in a fixed order,
/// so the scan stops at an owned one; its owner asks for a new scan once it has reaped it.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn reap_orphans(known: &[Pid], out: &mut Vec<(Pid, Exit)>) {
    use nix::sys::wait::{waitid, Id};
    crate::children::with_owned(|owned| {
        for _ in 0..MAX_REAPED_PER_SCAN {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let pid = match waitid(Id::All, flags) {
                Ok(status) => match status.pid() {
                    Some(pid) => pid,
                    None => return, // children exist, none has exited
                },
                Err(Errno::EINTR) => continue,
                Err(_) => return, // ECHILD: no children at all
            };
            if owned.contains(&(pid.as_raw() as u32)) {
                return;
            }
            if let Ok(status) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                match exit_of(status) {
                    Some((pid, exit)) if known.contains(&pid) => out.push((pid, exit)),
                    Some((pid, exit)) => tracing::debug!(%pid, %exit, "reaped an orphan"),
                    None => {}
                }
            }
        }
    })
}

/// Without a way to look before reaping, only what nobody owns can be taken: `waitpid(-1)` is not
/// safe while an owned child exists.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn reap_orphans(known: &[Pid], out: &mut Vec<(Pid, Exit)>) {
    crate::children::with_owned(|owned| {
        if !owned.is_empty() {
            return;
        }
        for _ in 0..MAX_REAPED_PER_SCAN {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(status) => match exit_of(status) {
                    Some((pid, exit)) if known.contains(&pid) => out.push((pid, exit)),
                    Some((pid, exit)) => tracing::debug!(%pid, %exit, "reaped an orphan"),
                    None => return,
                },
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    })
}

fn exit_of(status: WaitStatus) -> Option<(Pid, Exit)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, Exit::Code(code))),
        WaitStatus::Signaled(pid, sig, _) => Some((pid, Exit::Signal(sig))),
        _ => None,
    }
}
