//! The test run: execute the staged binary once, before it replaces anything, and have it prove
//! that it runs on this machine and is an upshift program.
//!
//! The parent passes a random token and a pipe descriptor in the environment; an upshift program
//! writes the token to that pipe at the top of [`Upgrader::run`](crate::Upgrader::run) and exits 0
//! before the application starts. Unlike comparing all of stdout with a token (overseer's way),
//! whatever the program prints elsewhere cannot break the handshake.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::time::Instant;

use super::child::{ChildGuard, ExecPlan};
use super::InstallError;

/// The handshake token; its presence (with [`FD_ENV`]) makes a process a test run.
pub(crate) const TOKEN_ENV: &str = "UPSHIFT_TEST_RUN_TOKEN";
/// The descriptor number to write the token to.
pub(crate) const FD_ENV: &str = "UPSHIFT_TEST_RUN_FD";

/// Where the child finds the handshake pipe. A test run inherits no listeners, so the first
/// descriptor after stdio is free.
const CHILD_FD: RawFd = 3;

/// How much of the child's stderr is kept for the error message.
const STDERR_TAIL: usize = 2048;

/// How long the pipes may stay open after the child exited (a descendant holding them) before
/// the result is decided on what was read.
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// The exit status of a test run whose handshake descriptor is unusable (`EX_SOFTWARE`).
const EXIT_BAD_FD: i32 = 70;

/// Runs `path` as a test run and waits at most `timeout` for it to answer and exit 0.
///
/// `args` are the master's own arguments: a program that insists on its flags must get as far as
/// `Upgrader::run`, where the handshake is answered before anything else happens.
pub(crate) async fn test_run(
    path: &Path,
    args: &[std::ffi::OsString],
    timeout: Duration,
) -> Result<(), InstallError> {
    let token = super::random_hex();
    let deadline = Instant::now() + timeout;
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| InstallError::io("creating the test-run pipe", e.into()))?;
    let plan = ExecPlan::new(
        path,
        args,
        &[(TOKEN_ENV, token.clone()), (FD_ENV, CHILD_FD.to_string())],
    )?;
    let mut cmd = Command::new(path);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let write_fd = write_end.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (setpgid, fcntl, dup2, execve) on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || plan.exec_in_child(write_fd, CHILD_FD));
    }
    let mut child = spawn(&mut cmd).await?;
    drop(write_end);
    let mut guard = ChildGuard::new(child.id());
    let stderr = child.stderr.take().map(OwnedFd::from);
    drop(child);

    let (exited_tx, exited_rx) = watch::channel(false);
    let run = async {
        let (status, handshake, stderr) = tokio::join!(
            async {
                let status = guard.wait().await;
                let _ = exited_tx.send(true);
                status
            },
            read_pipe(Some(read_end), 256, exited_rx.clone()),
            read_pipe(stderr, STDERR_TAIL, exited_rx.clone()),
        );
        (status, handshake, stderr)
    };
    let (status, handshake, stderr) = match tokio::time::timeout_at(deadline, run).await {
        Ok(done) => done,
        Err(_) => {
            guard.kill_and_reap().await;
            return Err(InstallError::TestRunTimeout(timeout));
        }
    };
    let status = status.map_err(|e| InstallError::io("waiting for the test run", e))?;
    let answered = handshake == token.as_bytes() || handshake == format!("{token}\n").as_bytes();
    match status {
        Some(status) if !status.success() => Err(InstallError::TestRunFailed {
            status,
            stderr_tail: String::from_utf8_lossy(&stderr).into_owned(),
        }),
        _ if answered => Ok(()),
        _ => Err(InstallError::NotUpshift),
    }
}

/// Child side: when this process is a test run, answers the handshake and exits 0 at once, before
/// the application binds a socket or does anything else. Called first thing in
/// [`Upgrader::run`](crate::Upgrader::run) and `run_async`.
///
/// Reports a broken handshake with `eprintln!` rather than tracing: this runs before the
/// application could have installed a subscriber, and the parent shows the stderr it reads.
pub(crate) fn answer_test_run_if_asked() {
    let (Some(token), Some(fd)) = (std::env::var_os(TOKEN_ENV), std::env::var_os(FD_ENV)) else {
        return;
    };
    let fd: Option<RawFd> = fd.to_str().and_then(|s| s.parse().ok());
    let written = match fd {
        Some(fd) if fd >= 0 => write_token(fd, token.as_bytes()),
        _ => Err(io::Error::from_raw_os_error(libc::EBADF)),
    };
    match written {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!(
                "upshift: this process was started as a test run but cannot answer on {FD_ENV}={:?}: {e}",
                std::env::var_os(FD_ENV).unwrap_or_default()
            );
            std::process::exit(EXIT_BAD_FD)
        }
    }
}

fn write_token(fd: RawFd, token: &[u8]) -> io::Result<()> {
    let mut line = token.to_vec();
    line.push(b'\n');
    let mut rest = &line[..];
    while !rest.is_empty() {
        // SAFETY: write(2) on a descriptor number reads only from `rest`; a bad number is EBADF.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        rest = &rest[n as usize..];
    }
    Ok(())
}

/// Starts the child, retrying briefly on `ETXTBSY`: another thread that forked while the staged
/// file was still open for writing holds a copy of that descriptor until it execs. The child is
/// registered as owned, so a master that reaps orphans leaves its status to [`ChildGuard`].
async fn spawn(cmd: &mut Command) -> Result<std::process::Child, InstallError> {
    let mut tries = 0;
    loop {
        match crate::children::spawn_owned(cmd) {
            Ok(child) => return Ok(child),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 10 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOEXEC) => {
                return Err(InstallError::NotExecutable(e.to_string()))
            }
            Err(e) => return Err(InstallError::io("starting the release for a test run", e)),
        }
    }
}

/// Reads a pipe to EOF keeping the last `keep` bytes; stops early once the child has exited and
/// the grace period has passed (a left-over descendant may hold the pipe open).
async fn read_pipe(fd: Option<OwnedFd>, keep: usize, mut exited: watch::Receiver<bool>) -> Vec<u8> {
    let Some(mut rx) = fd.and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok()) else {
        return Vec::new();
    };
    let grace = async {
        let _ = exited.wait_for(|e| *e).await;
        tokio::time::sleep(PIPE_GRACE).await;
    };
    tokio::pin!(grace);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            read = read_some(&mut rx, &mut buf) => match read {
                Some(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.len() > keep {
                        out.drain(..out.len() - keep);
                    }
                }
                None => return out,
            },
            _ = &mut grace => return out,
        }
    }
}

async fn read_some(rx: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> Option<usize> {
    loop {
        match rx.read(buf).await {
            Ok(0) => return None,
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}
