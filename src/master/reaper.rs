//! Collecting exited children. The master never waits through `std::process::Child`; on every
//! SIGCHLD it asks the kernel about each worker it knows, so no exit is missed when signals
//! coalesce. As PID 1 (in a container) it also reaps orphans re-parented to it.

use std::fmt;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

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

/// Reaps whichever of `known` have exited, and when this process is PID 1 every other exited child
/// as well (those are logged and dropped).
pub(crate) fn reap(known: &[Pid]) -> Vec<(Pid, Exit)> {
    let mut out = Vec::new();
    if std::process::id() == 1 {
        // Stops at "children exist but none has exited" (no exit in the status) and at ECHILD.
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            match exit_of(status) {
                Some((pid, exit)) if known.contains(&pid) => out.push((pid, exit)),
                Some((pid, exit)) => tracing::debug!(%pid, %exit, "reaped an orphan"),
                None => break,
            }
        }
        return out;
    }
    for &pid in known {
        if let Ok(status) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            if let Some(found) = exit_of(status) {
                out.push(found);
            }
        }
    }
    out
}

fn exit_of(status: WaitStatus) -> Option<(Pid, Exit)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid, Exit::Code(code))),
        WaitStatus::Signaled(pid, sig, _) => Some((pid, Exit::Signal(sig))),
        _ => None,
    }
}
