//! Who collects which child's exit status.
//!
//! A process that reaps orphans (PID 1 in a container, or a child subreaper) also has its own
//! children, and a status can be collected only once. The rule is that the code which started a
//! child and waits for it by pid owns its status: such children are registered here, and the
//! master's reaper (`master::reaper`) leaves them alone. Workers are the master's own and are
//! reaped by pid; every other exited child is an orphan and is reaped by the reaper.
//!
//! Registration happens under the same lock the reaper holds while it scans, around `spawn` itself,
//! so a child that exits at once is never mistaken for an orphan.

use std::io;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};

/// Pids of children whose owner waits for them.
static OWNED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn owned() -> MutexGuard<'static, Vec<u32>> {
    // The list stays consistent even if a holder panicked: every change is a single push or retain.
    OWNED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts `cmd` and records the child as owned by the caller, who must [`release`] it once it has
/// reaped it (or given up on it).
pub(crate) fn spawn_owned(cmd: &mut Command) -> io::Result<Child> {
    let mut owned = owned();
    let child = cmd.spawn()?;
    owned.push(child.id());
    Ok(child)
}

/// The owner of `pid` has collected its status. If this process reaps orphans, it is asked to scan
/// again: an orphan that exited while the owned child sat unreaped in front of it was not seen.
pub(crate) fn release(pid: u32) {
    owned().retain(|&p| p != pid);
    if reaps_orphans() {
        // The master's reaper runs on SIGCHLD; a process-directed one reaches its handler.
        // SAFETY: kill(2) on our own pid with a signal whose handler is installed or ignored.
        unsafe { libc::kill(libc::getpid(), libc::SIGCHLD) };
    }
}

/// Runs `f` with the owned pids, holding the lock so no owned child is started meanwhile.
pub(crate) fn with_owned<R>(f: impl FnOnce(&[u32]) -> R) -> R {
    let owned = owned();
    f(&owned)
}

/// Whether orphans are re-parented to this process: it is PID 1 of its namespace (a container) or
/// a child subreaper (set by whoever started it; the flag survives exec).
pub(crate) fn reaps_orphans() -> bool {
    if std::process::id() == 1 {
        return true;
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let mut flag: libc::c_int = 0;
        // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer we pass.
        let r = unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut flag as *mut libc::c_int) };
        if r == 0 && flag != 0 {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owned_child_is_listed_until_released() {
        let mut cmd = Command::new("true");
        let mut child = spawn_owned(&mut cmd).unwrap();
        let pid = child.id();
        assert!(with_owned(|o| o.contains(&pid)));
        child.wait().unwrap();
        release(pid);
        assert!(!with_owned(|o| o.contains(&pid)));
    }
}
