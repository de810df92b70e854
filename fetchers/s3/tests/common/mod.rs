//! The S3 test bed: a real s3s-fs server (an S3-compatible server that checks SigV4) as a child
//! process on 127.0.0.1, a byte-counting proxy in front of it that can also inject faults, and a
//! publishing client (aws-sdk-s3 on the same rustls + ring HTTP client) that writes straight to
//! the server.
//!
//! Everything runs on a runtime of its own, so the synchronous `Source` methods of the
//! conformance suite can publish from inside any test runtime.

#![allow(dead_code)]

/// The hello end-to-end harness, shared by every fetcher crate.
// Only the hello_upgrade test uses it.
#[allow(unused_imports)]
pub use upshift_fetcher_conformance::hello;
pub mod moto;
pub mod proxy;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use aws_smithy_http_client::tls;
use upshift_fetcher_conformance::Loopback;
use upshift_s3::S3Fetcher;

#[allow(unused_imports)]
pub use proxy::{Mode, Proxy};

pub const ACCESS_KEY: &str = "upshift-test-access-key";
pub const SECRET_KEY: &str = "upshift-test-secret-key-0123456789";
pub const BUCKET: &str = "releases";
pub const KEY: &str = "myapp/linux/myapp";

/// The s3s-fs binary: `$S3S_FS`, else `s3s-fs` on the PATH, else `~/.cargo/bin/s3s-fs`.
/// Whether s3s-fs is here to run; if not, the calling test is reported as skipped (or fails,
/// under `scripts/test`).
pub fn s3s_fs_or_skip() -> bool {
    let found = find_s3s_fs().is_some();
    if !found {
        upshift_fetcher_conformance::skip::skip_without(
            "s3s-fs",
            "cargo install s3s-fs --version 0.14.1 --features binary --locked, or set S3S_FS",
            None,
        );
    }
    found
}

fn s3s_fs_binary() -> PathBuf {
    find_s3s_fs().unwrap_or_else(|| {
        panic!(
            "s3s-fs not found (the upshift-s3 tests run against it): install it with \
             `cargo install s3s-fs --version 0.14.1 --features binary --locked`, or set S3S_FS"
        )
    })
}

fn find_s3s_fs() -> Option<PathBuf> {
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

/// A private directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "upshift-s3-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// s3s-fs as a child process, killed (by PID) on drop.
pub struct S3sFs {
    child: Child,
    pub addr: SocketAddr,
    _root: TempDir,
}

impl S3sFs {
    /// Starts s3s-fs on 127.0.0.1 on a port the kernel picks, with SigV4 checked against
    /// [`ACCESS_KEY`] / [`SECRET_KEY`], and waits until it accepts connections.
    pub fn start() -> S3sFs {
        let root = TempDir::new("root");
        let bin = s3s_fs_binary();
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .env("RUST_LOG", "s3s_fs=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        // s3s-fs logs "server is running at http://ADDR" once it listens; the rest of its output
        // is drained so that it never blocks on a full pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("server is running at http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("s3s-fs did not report its address within 30 s: {e}")
            }
        };
        let addr: SocketAddr = addr
            .parse()
            .unwrap_or_else(|e| panic!("s3s-fs reported the address {addr:?}: {e}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "s3s-fs does not accept on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        S3sFs {
            child,
            addr,
            _root: root,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An aws-sdk-s3 client for `endpoint` with the given credentials, path-style, on the same
/// rustls + ring HTTP client as the fetcher.
pub fn client(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(access_key, secret_key, None, None, "test"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .http_client(http)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// How a published object vouches for its sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vouch {
    /// A `<key>.sha256` sidecar object, written before the object.
    Sidecar,
    /// `x-amz-meta-sha256` on the object.
    Metadata,
    /// S3's own SHA256 checksum (`ChecksumAlgorithm::Sha256`), computed by the uploader and
    /// verified by the server.
    S3Checksum,
}

/// A fetcher for [`KEY`] at `endpoint` (a loopback server), with test credentials and short
/// timeouts.
pub fn fetcher_for(endpoint: &str) -> S3Fetcher {
    S3Fetcher::new(BUCKET, KEY)
        .endpoint(endpoint)
        .region("us-east-1")
        .credentials(ACCESS_KEY, SECRET_KEY, None)
        .interval(Duration::from_millis(200))
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        // s3s-fs on 127.0.0.1 speaks plain http: the opt-in `Upgrader::run` would hand over.
        .loopback()
}

/// The environment of a `hello` master: credentials and region for the standard AWS chain, which
/// must not look any further (instance metadata, the user's profile files).
pub fn hello_aws_env() -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        (
            "AWS_CONFIG_FILE",
            "/nonexistent/upshift-hello-e2e/aws-config",
        ),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/upshift-hello-e2e/aws-credentials",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `hello --s3 s3://BUCKET/KEY --s3-endpoint <endpoint>` as a master, logging at `rust_log`.
pub fn start_hello(endpoint: &str, rust_log: &str) -> hello::Hello {
    let args = [
        "--s3".to_string(),
        format!("s3://{BUCKET}/{KEY}"),
        "--s3-endpoint".to_string(),
        endpoint.to_string(),
        // The test servers on 127.0.0.1 speak plain http, which needs the opt-in without a key.
        "--allow-insecure-transport".to_string(),
    ];
    hello::Hello::start(&hello::hello_binary(), &args, &hello_aws_env(), rust_log)
}

/// The whole test bed: server, proxy, publisher, and the runtime they run on.
pub struct Bed {
    rt: Option<tokio::runtime::Runtime>,
    pub server: S3sFs,
    pub proxy: Proxy,
    pub publisher: aws_sdk_s3::Client,
}

impl Bed {
    /// [`Bed::start`], or `None` (the test reported as skipped) where s3s-fs is not installed.
    pub fn start_or_skip() -> Option<Bed> {
        s3s_fs_or_skip().then(Bed::start)
    }

    /// Starts s3s-fs and the proxy and creates [`BUCKET`].
    pub fn start() -> Bed {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("s3-test-bed")
            .enable_all()
            .build()
            .expect("test runtime");
        let server = S3sFs::start();
        let proxy = Proxy::start(rt.handle().clone(), server.addr, BUCKET, KEY);
        let publisher = client(&server.url(), ACCESS_KEY, SECRET_KEY);
        let bed = Bed {
            rt: Some(rt),
            server,
            proxy,
            publisher,
        };
        let p = bed.publisher.clone();
        bed.block(async move { p.create_bucket().bucket(BUCKET).send().await })
            .unwrap_or_else(|e| {
                panic!(
                    "create bucket: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
        bed
    }

    /// Runs `f` to completion on the bed's runtime, from any context (a test's runtime too).
    pub fn block<F>(&self, f: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let handle = self.rt.as_ref().expect("runtime").handle().clone();
        std::thread::scope(|s| match s.spawn(move || handle.block_on(f)).join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    }

    /// The proxy's URL: what fetchers are pointed at.
    pub fn endpoint(&self) -> String {
        self.proxy.url()
    }

    /// A fetcher for [`KEY`] through the proxy, with test credentials and short timeouts.
    pub fn fetcher(&self) -> S3Fetcher {
        fetcher_for(&self.endpoint())
    }

    pub fn put(&self, key: &str, bytes: &[u8]) {
        self.put_with(key, bytes, |r| r);
    }

    /// PUTs `bytes` at `key`, with `f` adding to the request.
    pub fn put_with(
        &self,
        key: &str,
        bytes: &[u8],
        f: impl FnOnce(
            aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
        ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
    ) {
        let req = f(self
            .publisher
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(ByteStream::from(bytes.to_vec())));
        self.block(async move { req.send().await })
            .unwrap_or_else(|e| panic!("PUT {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
    }

    pub fn delete(&self, key: &str) {
        let req = self.publisher.delete_object().bucket(BUCKET).key(key);
        // Deleting a missing key succeeds in S3; s3s-fs may say NoSuchKey, which is fine too.
        let _ = self.block(async move { req.send().await });
    }

    /// Publishes `bytes` at [`KEY`], vouched for by `sha256` as `vouch` says (with `None`, no
    /// checksum at all: the sidecar is removed first).
    pub fn publish(&self, bytes: &[u8], sha256: Option<&str>, vouch: Vouch) {
        let sidecar = format!("{KEY}.sha256");
        match (sha256, vouch) {
            (Some(sha), Vouch::Sidecar) => {
                self.put(&sidecar, format!("{sha}  myapp\n").as_bytes());
                self.put(KEY, bytes);
            }
            (Some(sha), Vouch::Metadata) => {
                self.delete(&sidecar);
                let sha = sha.to_string();
                self.put_with(KEY, bytes, |r| r.metadata("sha256", sha));
            }
            (Some(_), Vouch::S3Checksum) => {
                self.delete(&sidecar);
                self.put_with(KEY, bytes, |r| {
                    r.checksum_algorithm(ChecksumAlgorithm::Sha256)
                });
            }
            (None, _) => {
                self.delete(&sidecar);
                self.put(KEY, bytes);
            }
        }
    }

    pub fn remove(&self) {
        self.delete(KEY);
        self.delete(&format!("{KEY}.sha256"));
        self.delete(&format!("{KEY}.minisig"));
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.proxy.shutdown();
        if let Some(rt) = self.rt.take() {
            // Dropping a runtime inside another one's async context panics; this does not.
            rt.shutdown_background();
        }
    }
}
