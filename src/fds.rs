//! Where sockets cross exec.
//!
//! A worker finds its listening sockets at descriptors `3, 4, …, 3+N-1` and its control socket at
//! `3+N` (the numbers and names travel in the environment, see [`crate::env`]). Everything else the
//! master holds is close-on-exec and never reaches a worker.
//!
//! The child side of the handoff runs between `fork` and `exec`, where only async-signal-safe calls
//! are allowed: no allocation, no locks. [`FdPlan`] is therefore built in the parent and the child
//! only walks its fixed arrays.

use std::io;
use std::os::fd::RawFd;

/// The first descriptor number handed to a worker, as with systemd socket activation.
pub(crate) const FIRST_INHERITED_FD: RawFd = 3;

/// How descriptors are laid out in a new worker: `sources[i]` (a descriptor in the master) becomes
/// descriptor `FIRST_INHERITED_FD + i` in the worker.
#[derive(Debug, Clone)]
pub(crate) struct FdPlan {
    sources: Vec<RawFd>,
}

impl FdPlan {
    pub(crate) fn new(sources: Vec<RawFd>) -> Self {
        FdPlan { sources }
    }

    /// Runs in the forked child before exec. Two passes, because `dup2(fd, fd)` is a no-op that
    /// leaves close-on-exec set, and because a later source may sit at an earlier target's number:
    /// first every source is duplicated above the target range (close-on-exec, so the copies vanish
    /// at exec), then each copy is `dup2`ed onto its target, which clears close-on-exec there.
    ///
    /// # Safety
    /// Must only be called in a forked child before exec; it changes the descriptor table.
    pub(crate) unsafe fn apply_in_child(&self) -> io::Result<()> {
        let n = self.sources.len() as RawFd;
        let above = FIRST_INHERITED_FD + n;
        // A fixed-size stack array keeps this allocation-free; far more listeners than anyone
        // configures, and `Upgrader` refuses more.
        let mut moved = [0 as RawFd; MAX_INHERITED_FDS];
        for (i, &src) in self.sources.iter().enumerate() {
            let fd = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, above);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            moved[i] = fd;
        }
        for (i, &fd) in moved.iter().enumerate().take(self.sources.len()) {
            if libc::dup2(fd, FIRST_INHERITED_FD + i as RawFd) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // Whatever the master itself inherited without close-on-exec (a shell's stray fds, a
        // supervisor's pipes) must not reach the worker: only the planned descriptors do.
        cloexec_from(above);
        Ok(())
    }
}

/// Marks every descriptor from `first` up close-on-exec. Async-signal-safe: `close_range` where
/// the kernel has it (Linux 5.11+), else an `fcntl` per descriptor number up to the limit.
///
/// # Safety
/// Meant for a forked child before exec: descriptors that Rust objects in this process still own
/// would vanish at exec under them.
pub(crate) unsafe fn cloexec_from(first: RawFd) {
    #[cfg(target_os = "linux")]
    {
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        let r = libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        );
        if r == 0 {
            return;
        }
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
        limit.rlim_cur.min(65_536) as RawFd
    } else {
        1024
    };
    for fd in first..max {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

/// In a forked child before exec: dispositions the master set to "ignore" would survive exec;
/// a worker or test-run starts with the defaults. `signal` is async-signal-safe.
pub(crate) fn restore_default_signals() {
    // SAFETY: resetting a disposition to its default has no memory-safety requirements.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_DFL);
    }
}

/// The most descriptors (listeners plus the control socket) one worker can inherit.
pub(crate) const MAX_INHERITED_FDS: usize = 64;

/// Sets `O_NONBLOCK`; tokio panics on blocking sockets handed to `from_std`.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    update_flags(fd, libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK)
}

/// Sets `FD_CLOEXEC`, so a descriptor the worker took over does not leak into processes it spawns.
pub(crate) fn set_cloexec(fd: RawFd) -> io::Result<()> {
    update_flags(fd, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC)
}

/// Clears `FD_CLOEXEC`: the descriptor crosses the next exec (the master's own re-exec).
pub(crate) fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    change_flags(fd, libc::F_GETFD, libc::F_SETFD, |flags| {
        flags & !libc::FD_CLOEXEC
    })
}

fn update_flags(
    fd: RawFd,
    get: libc::c_int,
    set: libc::c_int,
    flag: libc::c_int,
) -> io::Result<()> {
    change_flags(fd, get, set, |flags| flags | flag)
}

/// Reads a descriptor's flags with `get` and, if `change` alters them, writes them with `set`.
fn change_flags(
    fd: RawFd,
    get: libc::c_int,
    set: libc::c_int,
    change: impl FnOnce(libc::c_int) -> libc::c_int,
) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number has no memory-safety requirements; errors are returned.
    let flags = unsafe { libc::fcntl(fd, get) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = change(flags);
    if new == flags {
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, set, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` is an open descriptor in this process.
pub(crate) fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}
