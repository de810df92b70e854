//! s3s-fs, an S3-compatible server that checks SigV4, as a child process on 127.0.0.1 (port
//! picked by the kernel, address read from its output): the finder, the command line and the
//! address reader shared by the fetcher's and publisher's tests ([`S3sFs`]) and by the bench
//! (which holds the child in its own interrupt-aware guard).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::hello::Scratch;
use crate::procs::ChildGuard;

/// The access key the tests' s3s-fs checks signatures against.
pub const ACCESS_KEY: &str = "upshift-test-access-key";
/// The secret key paired with [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "upshift-test-secret-key-0123456789";
/// How to install s3s-fs.
pub const INSTALL: &str =
    "cargo install s3s-fs --version 0.14.1 --features binary --locked, or set S3S_FS";

/// The s3s-fs binary: `$S3S_FS`, else `s3s-fs` on the `PATH`, else `~/.cargo/bin/s3s-fs`.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("S3S_FS") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("s3s-fs"))
        .chain([Path::new(&home).join(".cargo/bin/s3s-fs")])
        .find(|candidate| candidate.is_file())
}

/// Whether s3s-fs is here to run; if not, the calling test is reported as skipped (or fails,
/// under `scripts/test`).
pub fn s3s_fs_or_skip() -> bool {
    let found = find().is_some();
    if !found {
        crate::skip::skip_without("s3s-fs", INSTALL, None);
    }
    found
}

/// `s3s-fs` serving `root` on 127.0.0.1, port 0, checking SigV4 against the keys; its stdout
/// piped (for [`read_address`]), stdin and stderr closed.
pub fn command(bin: &Path, root: &Path, access_key: &str, secret_key: &str) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--host", "127.0.0.1", "--port", "0"])
        .args(["--access-key", access_key, "--secret-key", secret_key])
        .arg(root)
        .env("RUST_LOG", "s3s_fs=info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

/// Reads s3s-fs's output until it says `server is running at http://ADDR` (at most 30 s), then
/// waits (at most 10 s) until ADDR accepts. A thread drains the rest of the output, into `log`
/// if given, so that s3s-fs never blocks on a full pipe.
pub fn read_address(
    stdout: ChildStdout,
    mut log: Option<std::fs::File>,
) -> Result<SocketAddr, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(log) = log.as_mut() {
                let _ = writeln!(log, "{line}");
            }
            if let Some(rest) = line.split("server is running at http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr);
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|e| format!("s3s-fs did not report its address within 30 s: {e}"))?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("s3s-fs reported the address {addr:?}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() >= deadline {
            return Err(format!("s3s-fs does not accept on {addr}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(addr)
}

/// s3s-fs on a private root, killed (by PID) on drop.
pub struct S3sFs {
    child: ChildGuard,
    /// Where it listens.
    pub addr: SocketAddr,
    _root: Scratch,
}

impl S3sFs {
    /// Starts s3s-fs checking SigV4 against [`ACCESS_KEY`] / [`SECRET_KEY`] and waits until it
    /// accepts connections; panics (naming the install command) if it cannot.
    pub fn start() -> S3sFs {
        let root = Scratch::new("s3s-fs");
        let bin = find().unwrap_or_else(|| panic!("s3s-fs not found: {INSTALL}"));
        let mut cmd = command(&bin, root.path(), ACCESS_KEY, SECRET_KEY);
        let mut child = ChildGuard::new(
            cmd.stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display())),
        );
        let stdout = child.stdout().expect("piped stdout");
        let addr = read_address(stdout, None).unwrap_or_else(|e| panic!("{e}"));
        S3sFs {
            child,
            addr,
            _root: root,
        }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether s3s-fs still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }
}
