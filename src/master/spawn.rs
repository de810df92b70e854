//! The parent side of the handoff: starting a worker process with the listening sockets and a
//! control socket, by re-executing the program as it was invoked.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;

use crate::env::WorkerEnv;
use crate::error::Error;
use crate::fds::{FdPlan, FIRST_INHERITED_FD};
use crate::listener::BoundSocket;

/// How to start a worker: fixed for the master's life, captured when it starts.
#[derive(Debug)]
pub(crate) struct Launch {
    /// The program path as invoked (argv[0] made absolute against the start directory, symlinks
    /// kept), so that a deploy which flips `current -> releases/vN` and sends SIGUSR2 runs vN.
    pub(crate) program: PathBuf,
    /// argv[0] exactly as given, for the master's own re-exec (`ps` shows the same command).
    pub(crate) arg0: OsString,
    pub(crate) args: Vec<OsString>,
    pub(crate) cwd: PathBuf,
    pub(crate) master_pid: u32,
    pub(crate) drain_timeout: Duration,
    pub(crate) restart_signal: i32,
    /// The master's build id, passed to every worker it starts.
    pub(crate) master_build: Option<String>,
}

/// A worker process just started: its pid and the master's end of its control socket.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: Pid,
    pub(crate) control: tokio::net::UnixStream,
}

impl Launch {
    pub(crate) fn capture(
        drain_timeout: Duration,
        restart_signal: i32,
        master_build: Option<String>,
    ) -> Result<Self, Error> {
        let cwd = std::env::current_dir().map_err(|e| {
            Error::io(
                "cannot read the current directory to re-execute workers from it",
                e,
            )
        })?;
        let mut argv = std::env::args_os();
        let arg0 = argv.next().unwrap_or_default();
        let program = resolve_invoked(&arg0, &cwd)?;
        Ok(Launch {
            program,
            arg0,
            args: argv.collect(),
            cwd,
            master_pid: std::process::id(),
            drain_timeout,
            restart_signal,
            master_build,
        })
    }

    /// Starts worker `generation` with `sockets` at fds 3.. and the control socket after them.
    pub(crate) fn spawn(&self, generation: u64, sockets: &[BoundSocket]) -> Result<Spawned, Error> {
        let spawn_err = |e| Error::Spawn {
            path: self.program.display().to_string(),
            source: e,
        };
        let (master_end, worker_end): (OwnedFd, OwnedFd) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| spawn_err(e.into()))?;

        let mut sources: Vec<i32> = sockets.iter().map(|s| s.fd.as_raw_fd()).collect();
        sources.push(worker_end.as_raw_fd());
        let plan = FdPlan::new(sources);
        let env = WorkerEnv {
            generation,
            master_pid: self.master_pid,
            listeners: sockets.iter().map(|s| (s.kind, s.name.clone())).collect(),
            control_fd: FIRST_INHERITED_FD + sockets.len() as i32,
            drain_timeout: self.drain_timeout,
            restart_signal: self.restart_signal,
            master_build: self.master_build.clone(),
        };

        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .current_dir(&self.cwd)
            .envs(env.encode());
        let master_pid = self.master_pid as libc::pid_t;
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
        // (fcntl, dup2, prctl, getppid) on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                plan.apply_in_child()?;
                crate::fds::restore_default_signals();
                stop_with_parent(master_pid)
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        drop(worker_end);
        // The master never waits through `Child`: the reaper collects every exit by pid.
        let pid = Pid::from_raw(child.id() as i32);
        drop(child);

        crate::fds::set_nonblocking(master_end.as_raw_fd()).map_err(spawn_err)?;
        let control =
            tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(master_end))
                .map_err(spawn_err)?;
        Ok(Spawned { pid, control })
    }
}

/// Makes the worker receive SIGTERM (and so drain) when the master dies, even by SIGKILL. The
/// death signal fires when the *thread* that forked exits, which is why the master runs on one
/// thread that lives as long as it does.
#[cfg(target_os = "linux")]
fn stop_with_parent(master_pid: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: prctl and getppid are async-signal-safe syscalls.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The master may have died between fork and prctl; then nobody would send the signal.
        if libc::getppid() != master_pid {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Elsewhere the worker notices the master's death by EOF on its control socket.
#[cfg(not(target_os = "linux"))]
fn stop_with_parent(_master_pid: libc::pid_t) -> std::io::Result<()> {
    Ok(())
}

/// argv[0] made absolute without resolving symlinks; a bare name is looked up in PATH like a shell.
fn resolve_invoked(arg0: &std::ffi::OsStr, cwd: &Path) -> Result<PathBuf, Error> {
    let as_path = Path::new(arg0);
    if arg0.is_empty() {
        return std::env::current_exe()
            .map_err(|e| Error::io("cannot find this program's path", e));
    }
    if as_path.components().count() > 1 || as_path.is_absolute() {
        return Ok(if as_path.is_absolute() {
            as_path.to_path_buf()
        } else {
            cwd.join(as_path)
        });
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = if dir.is_absolute() {
                dir.join(as_path)
            } else {
                cwd.join(dir).join(as_path)
            };
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    std::env::current_exe().map_err(|e| Error::io("cannot find this program's path", e))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoked_path_keeps_symlinks_and_is_absolute() {
        let cwd = Path::new("/srv/app");
        assert_eq!(
            resolve_invoked("current/bin/app".as_ref(), cwd).unwrap(),
            Path::new("/srv/app/current/bin/app")
        );
        assert_eq!(
            resolve_invoked("/opt/x/app".as_ref(), cwd).unwrap(),
            Path::new("/opt/x/app")
        );
        let sh = resolve_invoked("sh".as_ref(), cwd).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
    }
}
