//! The S3 test bed (the `s3` feature): a real s3s-fs server (an S3-compatible server that checks SigV4) as a child
//! process on 127.0.0.1, a byte-counting proxy in front of it that can also inject faults, and a
//! publishing client (aws-sdk-s3 on the same rustls + ring HTTP client) that writes straight to
//! the server.
//!
//! Everything runs on a runtime of its own, so the synchronous `Source` methods of the
//! conformance suite can publish from inside any test runtime.

use crate::hello;
pub mod moto;
pub mod proxy;

use std::future::Future;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use aws_smithy_http_client::tls;

pub use crate::hello::Scratch as TempDir;
pub use crate::servers::s3s_fs::{s3s_fs_or_skip, S3sFs, ACCESS_KEY, SECRET_KEY};
pub use proxy::{Mode, Proxy};

/// The bucket every test publishes into.
pub const BUCKET: &str = "releases";
/// The release's key.
pub const KEY: &str = "myapp/linux/myapp";

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
