//! The test run: execute the staged binary once, before it replaces anything, and have it prove
//! that it runs on this machine and is an upshift program.
//!
//! The parent passes a random token and a pipe descriptor in the environment; an upshift program
//! writes the token to that pipe at the top of [`Upgrader::run`](crate::Upgrader::run) and exits 0
//! before the application starts. Unlike comparing all of stdout with a token (overseer's way),
//! whatever the program prints elsewhere cannot break the handshake.
//!
//! When the candidate is to take over the master itself (master re-exec), the parent also asks
//! whether it reads the master's handover document: it passes the version it writes in
//! [`HANDOVER_ENV`], and a candidate that reads it answers `<token> handover <n>` instead of
//! `<token>`. Both directions stay compatible: an older candidate ignores the variable and
//! answers the bare token (and is refused only if the parent needed more), and an older parent
//! never sets it, so it gets the bare token it expects.

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
/// The handover document version the candidate must read; set only when the parent needs it to.
pub(crate) const HANDOVER_ENV: &str = "UPSHIFT_TEST_RUN_HANDOVER";
/// Between the token and the handover version in the answer.
const HANDOVER_WORD: &str = "handover";

/// Where the child finds the handshake pipe. A test run inherits no listeners, so the first
/// descriptor after stdio is free.
const CHILD_FD: RawFd = 3;

/// How much of the child's stderr is kept for the error message.
const STDERR_TAIL: usize = 2048;

/// How long the pipes may stay open after the child exited (a descendant holding them) before
/// the result is decided on what was read.
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// The exit status of a test run asked to take over the master whose configuration does not load
/// (`EX_CONFIG`).
const EXIT_CONFIG: i32 = 78;

/// The exit status of a test run whose handshake descriptor is unusable (`EX_SOFTWARE`).
const EXIT_BAD_FD: i32 = 70;

/// Runs `path` as a test run and waits at most `timeout` for it to answer and exit 0.
///
/// `args` are the master's own arguments: a program that insists on its flags must get as far as
/// `Upgrader::run`, where the handshake is answered before anything else happens.
///
/// With `handover: Some(n)` the candidate must also say that it reads version `n` of the
/// master's handover document, or it fails with [`InstallError::HandoverIncompatible`].
pub(crate) async fn test_run(
    path: &Path,
    args: &[std::ffi::OsString],
    timeout: Duration,
    handover: Option<u32>,
) -> Result<(), InstallError> {
    let token = super::random_hex();
    let deadline = Instant::now() + timeout;
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| InstallError::io("creating the test-run pipe", e.into()))?;
    let mut env = vec![(TOKEN_ENV, token.clone()), (FD_ENV, CHILD_FD.to_string())];
    if let Some(version) = handover {
        env.push((HANDOVER_ENV, version.to_string()));
    }
    let plan = ExecPlan::new(path, args, &env)?;
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
    match status {
        Some(status) if !status.success() => Err(InstallError::TestRunFailed {
            status,
            stderr_tail: String::from_utf8_lossy(&stderr).into_owned(),
        }),
        _ => judge(&handshake, &token, handover),
    }
}

/// The verdict on what a test run that exited 0 wrote on its pipe.
pub(super) fn judge(
    handshake: &[u8],
    token: &str,
    handover: Option<u32>,
) -> Result<(), InstallError> {
    let Some(reads) = parse_answer(handshake, token) else {
        return Err(InstallError::NotUpshift);
    };
    match handover {
        Some(version) if reads != Some(version) => {
            Err(InstallError::HandoverIncompatible { version })
        }
        _ => Ok(()),
    }
}

/// `Some(handover)` when `handshake` is the answer to `token`: `<token>` or
/// `<token> handover <n>`, with or without its newline. Words after the token that this version
/// does not know are allowed (the token alone proves an upshift program), so that a later
/// version may say more.
pub(super) fn parse_answer(handshake: &[u8], token: &str) -> Option<Option<u32>> {
    let line = handshake.strip_suffix(b"\n").unwrap_or(handshake);
    let rest = line.strip_prefix(token.as_bytes())?;
    if rest.is_empty() {
        return Some(None);
    }
    let words = std::str::from_utf8(rest.strip_prefix(b" ")?).ok()?;
    let mut words = words.split(' ');
    while let Some(word) = words.next() {
        if word == HANDOVER_WORD {
            return Some(words.next().and_then(parse_version));
        }
    }
    Some(None)
}

/// A version number as the handshake writes it: decimal digits only.
fn parse_version(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Child side: when this process is a test run, answers the handshake and exits 0 at once, before
/// the application binds a socket or does anything else. Called first thing in
/// [`Upgrader::run`](crate::Upgrader::run) and `run_async`.
///
/// Reports a broken handshake with `eprintln!` rather than tracing: this runs before the
/// application could have installed a subscriber, and the parent shows the stderr it reads.
pub(crate) fn answer_test_run_if_asked(can_take_over: impl FnOnce() -> Result<(), String>) {
    let (Some(token), Some(fd)) = (std::env::var_os(TOKEN_ENV), std::env::var_os(FD_ENV)) else {
        return;
    };
    let fd: Option<RawFd> = fd.to_str().and_then(|s| s.parse().ok());
    let handover = std::env::var_os(HANDOVER_ENV);
    let line = answer_line(
        token.as_bytes(),
        handover.as_deref(),
        crate::master::handover::READS,
    );
    if readable(handover.as_deref(), crate::master::handover::READS).is_some() {
        // Asked whether it can become the master: only if its own configuration loads too.
        if let Err(why) = can_take_over() {
            eprintln!("upshift: this build cannot take over the master: its configuration does not load: {why}");
            std::process::exit(EXIT_CONFIG)
        }
    }
    let written = match fd {
        Some(fd) if fd >= 0 => write_all(fd, &line),
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

/// The handover version the parent asked about, if this build reads it.
fn readable(asked: Option<&std::ffi::OsStr>, reads: &[u32]) -> Option<u32> {
    (asked.and_then(|v| v.to_str()))
        .and_then(parse_version)
        .filter(|v| reads.contains(v))
}

/// The answer to the handshake, newline included: the token, and `handover <n>` when the parent
/// asked for version `n` (`asked`, the value of [`HANDOVER_ENV`]) and this build `reads` it.
/// Anything else asked (a version this build cannot read, garbage) gets the bare token, exactly
/// what a build without handover support answers, so the parent decides alike for both.
pub(super) fn answer_line(token: &[u8], asked: Option<&std::ffi::OsStr>, reads: &[u32]) -> Vec<u8> {
    let mut line = token.to_vec();
    if let Some(version) = readable(asked, reads) {
        line.extend_from_slice(format!(" {HANDOVER_WORD} {version}").as_bytes());
    }
    line.push(b'\n');
    line
}

fn write_all(fd: RawFd, line: &[u8]) -> io::Result<()> {
    let mut rest = line;
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
