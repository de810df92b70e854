//! The test-run child process, parent side: what to exec, prepared before the fork, and a guard
//! that kills the child and everything it started unless it was reaped, like `kill_on_drop`
//! (tokio's process support is not among this crate's tokio features, and a group kill also
//! catches what a script started).

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::InstallError;

/// The test-run child, leader of its own process group.
pub(super) struct ChildGuard {
    pid: Pid,
    reaped: bool,
}

enum Waited {
    Running,
    /// `None`: the status was collected elsewhere.
    Exited(Option<ExitStatus>),
}

impl ChildGuard {
    pub(super) fn new(pid: u32) -> Self {
        ChildGuard {
            pid: Pid::from_raw(pid as i32),
            reaped: false,
        }
    }

    /// Waits for the exit; `None` when someone else collected the status first (the child is
    /// registered as owned, so upshift's own reaper does not).
    ///
    /// On Linux a pidfd turns readable the moment the child exits, so the test run's result is
    /// known at once; polling (1, 2, 4 … 20 ms apart) found a 3 ms test run only at 7 ms, on
    /// the path of every upgrade. Without pidfds (before Linux 5.3, or elsewhere) it polls.
    pub(super) async fn wait(&mut self) -> io::Result<Option<ExitStatus>> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(exit) = exit_notifier(self.pid) {
            loop {
                if let Waited::Exited(status) = self.try_wait()? {
                    return Ok(status);
                }
                exit.readable().await?.clear_ready();
            }
        }
        let mut pause = Duration::from_millis(1);
        loop {
            if let Waited::Exited(status) = self.try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Peeks at the exit without reaping: while the child is a zombie its pid, and so its process
    /// group, cannot be reused, so the group can be cleared of descendants that would otherwise
    /// keep the pipes open. Then reaps.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn try_wait(&mut self) -> io::Result<Waited> {
        use nix::sys::wait::{waitid, Id};
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.pid), flags) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => Ok(Waited::Running),
            Ok(_) => {
                let _ = killpg(self.pid, Signal::SIGKILL);
                Ok(Waited::Exited(self.reap(None)?))
            }
            Err(Errno::ECHILD) => Ok(Waited::Exited(self.reap(None)?)),
            Err(e) => Err(e.into()),
        }
    }

    /// Elsewhere there is no portable peek: reaping is the only way to learn of the exit, and
    /// descendants are left alone.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn try_wait(&mut self) -> io::Result<Waited> {
        match self.reap(Some(WaitPidFlag::WNOHANG))? {
            None if !self.reaped => Ok(Waited::Running),
            status => Ok(Waited::Exited(status)),
        }
    }

    fn reap(&mut self, flags: Option<WaitPidFlag>) -> io::Result<Option<ExitStatus>> {
        if self.reaped {
            return Ok(None);
        }
        let mut status: libc::c_int = 0;
        loop {
            // SAFETY: waitpid writes only to `status`.
            let r = unsafe {
                libc::waitpid(
                    self.pid.as_raw(),
                    &mut status,
                    flags.map_or(0, |f| f.bits()),
                )
            };
            match r {
                0 => return Ok(None),
                r if r > 0 => {
                    self.reaped = true;
                    crate::children::release(self.pid.as_raw() as u32);
                    return Ok(Some(ExitStatus::from_raw(status)));
                }
                _ => match Errno::last() {
                    Errno::EINTR => continue,
                    Errno::ECHILD => {
                        tracing::warn!(pid = %self.pid, "the test run's exit was collected elsewhere");
                        self.reaped = true;
                        crate::children::release(self.pid.as_raw() as u32);
                        return Ok(None);
                    }
                    e => return Err(e.into()),
                },
            }
        }
    }

    pub(super) async fn kill_and_reap(&mut self) {
        if self.reaped {
            return;
        }
        let _ = killpg(self.pid, Signal::SIGKILL);
        // SIGKILL is prompt; if the child is stuck in the kernel, Drop's thread reaps it later.
        for _ in 0..200 {
            match self.reap(Some(WaitPidFlag::WNOHANG)) {
                Ok(None) if !self.reaped => tokio::time::sleep(Duration::from_millis(5)).await,
                _ => return,
            }
        }
    }
}

/// A pidfd for `pid`, registered with the runtime; `None` where the kernel has none (the caller
/// then polls).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn exit_notifier(pid: Pid) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor was just returned to us and nothing else owns it.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) };
    // Deprecated in tokio 1.54 for descriptors the `AsyncFd` does not own; this one owns it, and
    // the replacement does not exist in the oldest tokio this crate supports.
    #[allow(deprecated)]
    let registered = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE);
    registered.ok()
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let _ = killpg(self.pid, Signal::SIGKILL);
        let pid = self.pid;
        // SIGKILL ends it promptly, but a blocking wait does not belong in a destructor that may
        // run on an async thread.
        let reaper = std::thread::Builder::new()
            .name("upshift-reap".into())
            .spawn(move || {
                while let Err(Errno::EINTR) = waitpid(pid, None) {}
                crate::children::release(pid.as_raw() as u32);
            });
        if reaper.is_err() {
            // Without the thread nobody would reap it; the orphan reaper (if any) may take it.
            crate::children::release(pid.as_raw() as u32);
        }
    }
}

/// Everything `execve` needs, built before the fork: the child may not allocate.
pub(super) struct ExecPlan {
    path: CString,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into the heap buffers of `path` and `_strings`, which the plan owns
// and never changes; moving a CString does not move its buffer.
unsafe impl Send for ExecPlan {}
// SAFETY: as above; the plan is only read.
unsafe impl Sync for ExecPlan {}

impl ExecPlan {
    /// `path` with `args`, this process's environment, and `extra` replacing any inherited
    /// variables of the same names.
    pub(super) fn new(
        path: &Path,
        args: &[OsString],
        extra: &[(&str, String)],
    ) -> Result<Self, InstallError> {
        let nul = |_| {
            InstallError::io(
                format!("preparing the test run of {}", path.display()),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a NUL byte in the path or environment",
                ),
            )
        };
        let path_c = CString::new(path.as_os_str().as_bytes()).map_err(nul)?;
        let mut env: Vec<OsString> = std::env::vars_os()
            .filter(|(k, _)| extra.iter().all(|(name, _)| k != name))
            .map(|(k, v)| {
                let mut kv = k;
                kv.push("=");
                kv.push(v);
                kv
            })
            .collect();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| OsString::from(format!("{k}={v}"))),
        );
        let mut strings = vec![path_c.clone()];
        for arg in args {
            strings.push(CString::new(arg.clone().into_vec()).map_err(nul)?);
        }
        let argc = strings.len();
        for kv in env {
            strings.push(CString::new(kv.into_vec()).map_err(nul)?);
        }
        let mut argv: Vec<*const libc::c_char> =
            strings[..argc].iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<_> = strings[argc..].iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(ExecPlan {
            path: path_c,
            _strings: strings,
            argv,
            envp,
        })
    }

    /// In the forked child: own process group, `fd` moved to `at`, every other descriptor above
    /// stdio made close-on-exec, then `execve` itself. The candidate is not vetted yet: whatever
    /// the master inherited without close-on-exec (a shell's or a supervisor's stray descriptors)
    /// must not reach it. std would use `execvp`, which runs a file the kernel refuses (`ENOEXEC`) as a shell script;
    /// garbage or a foreign binary must fail instead.
    pub(super) fn exec_in_child(&self, fd: RawFd, at: RawFd) -> io::Result<()> {
        // SAFETY: plain syscalls on descriptor numbers and on pointers into `self`, which lives
        // until exec; all are async-signal-safe.
        unsafe {
            crate::fds::restore_default_signals();
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // dup2(3, 3) would keep close-on-exec: move the descriptor out of the way first.
            let mut fd = fd;
            if fd == at {
                fd = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, at + 1);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::dup2(fd, at) < 0 {
                return Err(io::Error::last_os_error());
            }
            crate::fds::cloexec_from(at + 1);
            libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
        }
        Err(io::Error::last_os_error())
    }
}
