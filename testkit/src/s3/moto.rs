//! moto (`moto_server`, an S3 emulator in Python that reports checksums the way S3 does, almost)
//! as a child process on 127.0.0.1, and the real AWS CLI (`aws`) to publish to it or to s3s-fs
//! the way a user does. Both come from pip (`scripts/test` installs them).
//!
//! Without either program a test is skipped, saying why, unless `UPSHIFT_REQUIRE_MOTO=1` (set by
//! `scripts/test`) makes that a failure.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{ACCESS_KEY, BUCKET, SECRET_KEY};
use crate::procs::ChildGuard;

/// How long one `aws` command may take: a 270 MB upload to moto takes about 10 s alone.
const CLI_TIMEOUT: Duration = Duration::from_secs(180);

/// moto_server, killed (by PID) on drop (by its guard).
pub struct Moto {
    child: ChildGuard,
    pub addr: SocketAddr,
}

impl Moto {
    /// Starts moto on a free loopback port and creates [`BUCKET`], or `None` (the test is
    /// skipped, saying why) when moto or the AWS CLI is not installed.
    pub fn start() -> Option<Moto> {
        if !present(&[("moto_server", "--help"), ("aws", "--version")]) {
            return None;
        }
        let addr = free_port();
        let child = ChildGuard::new(
            Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting moto_server: {e}")),
        );
        let mut moto = Moto { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = moto.child.try_wait() {
                panic!("moto_server exited before listening on {addr}: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server does not accept on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        aws(&moto.url(), &["s3api", "create-bucket", "--bucket", BUCKET]).ok();
        Some(moto)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Whether the AWS CLI is installed (for a test against s3s-fs); without, says so (or fails the
/// test when `UPSHIFT_REQUIRE_MOTO=1`).
pub fn cli_present() -> bool {
    present(&[("aws", "--version")])
}

/// Whether each `(command, harmless argument)` runs; without, says which do not (or fails the
/// test when `UPSHIFT_REQUIRE_MOTO=1`).
fn present(tools: &[(&str, &str)]) -> bool {
    let runs = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(cmd, arg)| !runs(cmd, arg))
        .map(|(cmd, _)| *cmd)
        .collect();
    if missing.is_empty() {
        return true;
    }
    crate::skip::skip_without(
        &missing.join(" and "),
        "python3 -m pip install 'moto[server]==5.2.1' 'awscli==1.45.11'",
        Some("UPSHIFT_REQUIRE_MOTO"),
    );
    false
}

/// A loopback port nothing listens on right now.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address")
}

/// What an `aws` command did.
pub struct Cli(Output);

impl Cli {
    /// Its stdout, failing the test (with stderr) if the command failed.
    pub fn ok(self) -> String {
        assert!(
            self.0.status.success(),
            "aws failed ({}): {}",
            self.0.status,
            String::from_utf8_lossy(&self.0.stderr)
        );
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
}

/// Runs the AWS CLI against `endpoint` with the test credentials (and nothing from this user's
/// configuration), within [`CLI_TIMEOUT`] (then it is killed by PID).
pub fn aws(endpoint: &str, args: &[&str]) -> Cli {
    let mut child = Command::new("aws")
        .args(["--endpoint-url", endpoint])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/upshift-tests/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/upshift-tests/aws-credentials",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting aws: {e}"));
    let deadline = Instant::now() + CLI_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("aws {args:?} did not finish within {CLI_TIMEOUT:?}");
            }
        }
    }
    Cli(child.wait_with_output().expect("aws's output"))
}

/// `aws s3 cp FILE s3://BUCKET/KEY --checksum-algorithm SHA256 EXTRA...`: the README's recipe
/// (a multipart upload above 8 MB).
pub fn cp(endpoint: &str, file: &Path, key: &str, extra: &[&str]) {
    let target = format!("s3://{BUCKET}/{key}");
    let mut args = vec!["s3", "cp", file.to_str().expect("a UTF-8 path"), &target];
    args.extend(["--checksum-algorithm", "SHA256", "--no-progress"]);
    args.extend(extra);
    aws(endpoint, &args).ok();
}

/// The object's ETag without quotes, as the CLI shows it.
pub fn etag(endpoint: &str, key: &str) -> String {
    let out = aws(
        endpoint,
        &["s3api", "head-object", "--bucket", BUCKET, "--key", key],
    )
    .ok();
    let line = out
        .lines()
        .find(|l| l.contains("\"ETag\""))
        .unwrap_or_else(|| panic!("no ETag in {out}"));
    line.split(':')
        .nth(1)
        .unwrap_or_default()
        .trim()
        .trim_end_matches(',')
        .replace(['"', '\\'], "")
}
