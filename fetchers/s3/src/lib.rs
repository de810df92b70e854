//! An [upshift] release fetcher for Amazon S3 and S3-compatible stores (MinIO, Cloudflare
//! R2, Ceph, Garage, s3s).
//!
//! [`S3Fetcher`] watches one object. An unchanged object costs one `HEAD` request per poll and no
//! body bytes: the object's ETag is compared with the one seen last. When it changes, the expected
//! sha256 is taken, in this order, from
//!
//! 1. the object's own S3 SHA256 checksum (uploaded with `--checksum-algorithm SHA256`) when it
//!    is the sha256 of the file: a single-part upload's,
//! 2. its user metadata `x-amz-meta-sha256` (lower- or upper-case hex),
//! 3. a sidecar object, by default `<key>.sha256` (`sha256sum` output, plain, `--tag` or escaped,
//!    or bare hex; read as every upshift fetcher reads one: [`upshift::fetch::checksum`]),
//!
//! A multipart upload's SHA256 checksum is a checksum of its parts' checksums, not the file's
//! sha256, and is never used: the object is multipart when S3 says `x-amz-checksum-type:
//! COMPOSITE`, when the checksum ends in `-N`, or when the ETag does (moto sends neither of the
//! first two). The AWS CLI uploads files over 8 MB in parts, so give it the metadata too (see the
//! recipe below). With none of the three, the release is refused (see below) and the fetcher
//! logs, once per object version, what is missing, e.g. "object uploaded in 3 parts: its SHA256
//! checksum covers the parts, not the file; no x-amz-meta-sha256; no s3://b/app.sha256".
//! (Verifying a multipart object against its parts' checksums is not done: neither moto nor
//! s3s-fs reports them, and S3 reports them only through GetObjectAttributes.)
//!
//! and a detached minisign signature from `<key>.minisig` if there is one. If that checksum is the
//! installed binary's, nothing is downloaded. Otherwise the object is streamed with a `GET`
//! (`If-Match` the ETag just seen, so an object overwritten in between is noticed) and handed to
//! upshift's install pipeline, which checks the digest and signature.
//!
//! A new release may come with a patch from the build the host runs (a delta release,
//! `upshift-publish --delta-from`): `<key>.from-<sha256 prefix>.zst` beside the object, found
//! with one `HEAD` (see [`S3Fetcher::deltas`]). Then the release is offered with the patch and
//! the object is requested only if the pipeline cannot use the patch.
//!
//! A release's identity is the object's ETag without quotes (with `@<version id>` in a versioned
//! bucket); its [`source`](upshift::fetch::Release::source) is that and the object's size. A
//! release the pipeline refused ([`Current::was_rejected_from`]) costs one `HEAD` per poll while
//! the object stays as it is: neither the object nor its `.sha256` / `.minisig` is read again
//! (those are looked at again every 15 minutes, so that a checksum or signature published or
//! corrected beside an unchanged object is still noticed). A release whose body was read to the
//! end and that is not installed afterwards, the pipeline saying nothing, is taken as rejected
//! too (then each poll also re-reads the side objects). A transfer that failed or was abandoned
//! midway is offered again at the next check.
//!
//! When the object has no checksum and no signature and the pipeline requires one
//! ([`Current::requires_checksum`]), it is not downloaded: the release is offered, from the
//! `HEAD` alone, with an empty body for the pipeline to refuse unread.
//!
//! TLS is rustls with the *ring* provider; neither aws-lc nor OpenSSL is in the dependency tree.
//!
//! # Transport
//!
//! Without a minisign key, the checksum (S3's, the metadata or the sidecar) comes over the same
//! channel as the object, so a plain `http://` endpoint would let anyone on the network path
//! replace both. An `http://` [`endpoint`](S3Fetcher::endpoint) (or one from the AWS
//! configuration, `AWS_ENDPOINT_URL`) is refused unless a key is configured or the operator opted
//! in with `Upgrader::allow_insecure_transport(true)` (meant for loopback test servers): at
//! startup by [`Fetcher::apply_policy`], with a message naming the endpoint and the fixes, and
//! at each check for a fetcher never given a policy (the strict [`TrustPolicy::default`]). The
//! SDK's HTTP client follows no redirects (S3 answers a wrong region with an error, not a
//! redirect that would be followed), so no request ever leaves the configured endpoint.
//!
//! ```no_run
//! use std::time::Duration;
//! use upshift_s3::S3Fetcher;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fetcher = S3Fetcher::from_url("s3://releases/myapp/linux-x86_64/myapp")?
//!     .region("eu-central-1")
//!     .interval(Duration::from_secs(30));
//! upshift::Upgrader::new()
//!     .listen("127.0.0.1:8080")
//!     .fetcher(fetcher)
//!     .run(|_state| { /* serve */ })?;
//! # Ok(())
//! # }
//! ```
//!
//! Publishing a release, with the AWS CLI, at any size:
//!
//! ```sh
//! aws s3 cp myapp s3://releases/myapp/linux-x86_64/myapp --checksum-algorithm SHA256 \
//!     --metadata sha256=$(sha256sum myapp | cut -d' ' -f1)
//! # or with a sidecar, written first:
//! sha256sum myapp > myapp.sha256
//! aws s3 cp myapp.sha256 s3://releases/myapp/linux-x86_64/myapp.sha256
//! aws s3 cp myapp s3://releases/myapp/linux-x86_64/myapp
//! ```
//!
//! `--checksum-algorithm SHA256` alone is enough only up to 8 MB (the CLI's multipart threshold,
//! `multipart_threshold` in its configuration): above, the object's checksum is a composite and,
//! without the metadata or the sidecar, the release is refused. `upshift-publish --s3` sets both.
//! The SDK validates a GET against the object's checksum only where it is a full-object one (a
//! composite it cannot check, and it would warn on every GET).

#![warn(missing_docs)]

mod delta;
mod digest;
mod errors;
mod get;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{Credentials, Region, ResponseChecksumValidation};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
use aws_smithy_http_client::tls;
use get::{Got, ObjectGet};
use upshift::fetch::body::{BodyError, BoundedBody};
use upshift::fetch::{
    transport, Current, FetchError, Fetcher, Format, Origin, Release, TrustPolicy,
};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_REGION: &str = "us-east-1";
/// The largest `.sha256` / `.minisig` object read.
const SIDE_OBJECT_LIMIT: u64 = 64 * 1024;
/// How often a check starts over when the object changes between its HEAD and its GET.
const RACE_ATTEMPTS: usize = 3;
/// How long the side objects of a refused, unchanged object go unread: a checksum or signature
/// published or corrected beside it is noticed within this time.
const VOUCH_RECHECK: Duration = Duration::from_secs(15 * 60);

/// Watches an S3 object for new releases. See the [crate documentation](crate).
///
/// Configuration is a builder; nothing touches the network until the first
/// [`check`](Fetcher::check), which loads the AWS configuration (region, credentials) once and
/// reuses the client afterwards.
///
/// ```no_run
/// use upshift::fetch::Fetcher;
/// use upshift_s3::S3Fetcher;
///
/// let fetcher = S3Fetcher::new("releases", "myapp/linux/myapp.tar.gz");
/// assert_eq!(fetcher.name(), "s3://releases/myapp/linux/myapp.tar.gz");
/// let _boxed: Box<dyn Fetcher> = Box::new(fetcher);
/// ```
pub struct S3Fetcher {
    bucket: String,
    key: String,
    name: String,
    region: Option<String>,
    endpoint: Option<String>,
    path_style: Option<bool>,
    credentials: Option<Credentials>,
    checksum_key: Option<String>,
    interval: Duration,
    timeout: Duration,
    connect_timeout: Duration,
    client: Option<Connected>,
    seen: Option<Seen>,
    /// Whether "no such object" was logged since the object was last there.
    missing_logged: bool,
    /// What the configuration allows ([`Fetcher::apply_policy`]); strict until told otherwise.
    policy: TrustPolicy,
    /// Whether to look for a patch from the running build ([`S3Fetcher::deltas`]).
    deltas: bool,
}

impl fmt::Debug for S3Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the credentials, not even the access key id.
        f.debug_struct("S3Fetcher")
            .field("name", &self.name)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .field("explicit_credentials", &self.credentials.is_some())
            .field("checksum_key", &self.sidecar_key())
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("deltas", &self.deltas)
            .finish_non_exhaustive()
    }
}

/// The client, built on the first check.
struct Connected {
    s3: aws_sdk_s3::Client,
    /// For errors: the endpoint URL, or "AWS S3 (region)".
    endpoint: String,
}

/// What an earlier check learned about one version of the object (one ETag).
struct Seen {
    etag: String,
    identity: String,
    sha256: Option<String>,
    /// Whether `sha256` came from the sidecar object (which can change without the ETag).
    from_sidecar: bool,
    signature: Option<String>,
    /// Raised when this version is settled: it is the installed one, or its body was handed out
    /// and read to the end (the pipeline installed or rejected it). Not raised when a transfer
    /// failed or the release was dropped unread: then the next check offers it again.
    settled: Arc<AtomicBool>,
    /// When `sha256` and `signature` were last read.
    vouched_at: Instant,
}

impl Seen {
    fn is_installed(&self, current: &Current) -> bool {
        current.identity.as_deref() == Some(self.identity.as_str())
            || same_digest(self.sha256.as_deref(), &current.sha256)
    }

    /// Whether the pipeline refused this version, as it is now (`source`).
    fn is_refused(&self, current: &Current, source: &str) -> bool {
        current.was_rejected_from(
            &self.identity,
            self.sha256.as_deref(),
            self.signature.as_deref(),
            Some(source),
        )
    }
}

/// What a HEAD says about the object.
struct Head {
    /// The ETag as sent (quoted), for `If-Match`; `None` if the store sent none.
    raw_etag: Option<String>,
    /// The ETag without quotes, or a stand-in made of size and modification time.
    etag: String,
    identity: String,
    /// From S3's SHA256 checksum (a full-object one) or the `sha256` metadata.
    sha256: Option<String>,
    /// What S3's SHA256 checksum is: whether the GET may ask the SDK to validate it, and, when
    /// nothing gives the sha256, why.
    checksum: digest::S3Checksum,
    /// The part count the ETag shows (`<hex>-N`): a multipart upload.
    etag_parts: Option<u32>,
    size: Option<u64>,
}

impl Head {
    /// [`Release::source`]: the version of the object and its size.
    fn source(&self) -> String {
        match self.size {
            Some(size) => format!("etag:{} size:{size}", self.identity),
            None => format!("etag:{}", self.identity),
        }
    }
}

#[allow(clippy::large_enum_variant)] // one per check, moved once: boxing would buy nothing
enum Step {
    Done(Option<Release>),
    /// The object changed between HEAD and GET.
    Raced,
}

impl S3Fetcher {
    /// Watches `key` in `bucket`. Never fails; an empty bucket or key is reported by the first
    /// check.
    ///
    /// ```no_run
    /// use upshift_s3::S3Fetcher;
    /// let fetcher = S3Fetcher::new("releases", "myapp/myapp");
    /// ```
    pub fn new(bucket: impl Into<String>, key: impl Into<String>) -> Self {
        let bucket = bucket.into();
        let key = key.into();
        S3Fetcher {
            name: format!("s3://{bucket}/{key}"),
            bucket,
            key,
            region: None,
            endpoint: None,
            path_style: None,
            credentials: None,
            checksum_key: None,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            client: None,
            seen: None,
            missing_logged: false,
            policy: TrustPolicy::default(),
            deltas: true,
        }
    }

    /// Parses `s3://bucket/key` (the key may contain `/`; it is taken literally, as the AWS CLI
    /// does). Anything else is a [`FetchError::Source`] saying what is wrong.
    ///
    /// ```
    /// use upshift::fetch::Fetcher;
    /// use upshift_s3::S3Fetcher;
    ///
    /// let fetcher = S3Fetcher::from_url("s3://releases/myapp/linux/myapp").unwrap();
    /// assert_eq!(fetcher.name(), "s3://releases/myapp/linux/myapp");
    /// assert!(S3Fetcher::from_url("https://releases/myapp").is_err());
    /// assert!(S3Fetcher::from_url("s3://releases/").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Self, FetchError> {
        let bad = |why: &str| {
            FetchError::Source(format!(
                "invalid S3 URL {url:?}: {why} (expected s3://bucket/key)"
            ))
        };
        let rest = match url.get(..5) {
            Some(scheme) if scheme.eq_ignore_ascii_case("s3://") => &url[5..],
            _ => return Err(bad("it does not start with s3://")),
        };
        let Some((bucket, key)) = rest.split_once('/') else {
            return Err(bad("there is no key after the bucket"));
        };
        if let Some(why) = bucket_problem(bucket) {
            return Err(bad(&why));
        }
        if let Some(why) = key_problem(key) {
            return Err(bad(&why));
        }
        Ok(S3Fetcher::new(bucket, key))
    }

    /// The AWS region. Default: the standard AWS chain (`AWS_REGION`, the profile, IMDS), else
    /// `us-east-1`. Set it for a custom endpoint to skip that lookup (`auto` for R2).
    ///
    /// ```no_run
    /// use upshift_s3::S3Fetcher;
    /// let fetcher = S3Fetcher::new("releases", "myapp").region("eu-west-1");
    /// ```
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// A custom endpoint (MinIO, R2, Ceph, a test server), like
    /// `https://minio.internal:9000` or `https://<account>.r2.cloudflarestorage.com`. Implies
    /// path-style addressing unless [`path_style`](Self::path_style) says otherwise. Use
    /// `https://`: a plain `http://` endpoint is refused without a minisign key unless the
    /// operator opts in (`Upgrader::allow_insecure_transport(true)`, for a loopback test server
    /// such as `http://127.0.0.1:9000`); see [Transport](crate#transport).
    ///
    /// ```no_run
    /// use upshift_s3::S3Fetcher;
    /// let fetcher = S3Fetcher::new("releases", "myapp")
    ///     .endpoint("https://minio.internal:9000")
    ///     .region("us-east-1");
    /// ```
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// Path-style (`https://host/bucket/key`) rather than virtual-hosted-style
    /// (`https://bucket.host/key`) requests. Default: path-style with a custom
    /// [`endpoint`](Self::endpoint), virtual-hosted-style on AWS.
    ///
    /// ```no_run
    /// use upshift_s3::S3Fetcher;
    /// let fetcher = S3Fetcher::new("releases", "myapp")
    ///     .endpoint("https://s3.example.com")
    ///     .path_style(false);
    /// ```
    pub fn path_style(mut self, yes: bool) -> Self {
        self.path_style = Some(yes);
        self
    }

    /// Explicit credentials. Default: the standard AWS chain: environment
    /// (`AWS_ACCESS_KEY_ID`...), the shared profile files (static keys, `role_arn` with a
    /// `source_profile`, web identity), web identity tokens, the ECS and EC2 instance metadata
    /// endpoints. (SSO profiles and `credential_process` are not compiled in.) Credentials are
    /// never logged.
    ///
    /// ```no_run
    /// use upshift_s3::S3Fetcher;
    /// let key = std::env::var("RELEASES_KEY").unwrap_or_default();
    /// let secret = std::env::var("RELEASES_SECRET").unwrap_or_default();
    /// let fetcher = S3Fetcher::new("releases", "myapp").credentials(key, secret, None);
    /// ```
    pub fn credentials(
        mut self,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        self.credentials = Some(Credentials::new(
            access_key,
            secret_key,
            session_token,
            None,
            "upshift-s3",
        ));
        self
    }

    /// The sidecar object holding the expected sha256, used when the object has neither a
    /// single-part S3 SHA256 checksum nor `x-amz-meta-sha256`. Default `<key>.sha256`.
    ///
    /// ```no_run
    /// use upshift_s3::S3Fetcher;
    /// let fetcher = S3Fetcher::new("releases", "myapp/myapp").checksum_key("myapp/SHA256SUM");
    /// ```
    pub fn checksum_key(mut self, key: impl Into<String>) -> Self {
        self.checksum_key = Some(key.into());
        self
    }

    /// The poll interval ([`Fetcher::interval`]). Default 60 s.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use upshift::fetch::Fetcher;
    /// use upshift_s3::S3Fetcher;
    /// let fetcher = S3Fetcher::new("releases", "myapp").interval(Duration::from_secs(15));
    /// assert_eq!(Fetcher::interval(&fetcher), Duration::from_secs(15));
    /// ```
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }

    /// How long a request may wait for the response to start, and how long a download may go
    /// without receiving data. Default 30 s. (Failed requests are retried by the SDK's standard
    /// retry policy, three attempts, before the check fails.)
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use upshift_s3::S3Fetcher;
    /// let fetcher = S3Fetcher::new("releases", "myapp").timeout(Duration::from_secs(10));
    /// ```
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// How long establishing a connection (TCP and TLS) may take. Default 10 s.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use upshift_s3::S3Fetcher;
    /// let fetcher = S3Fetcher::new("releases", "myapp").connect_timeout(Duration::from_secs(3));
    /// ```
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Whether to look for a patch from the running build before downloading a new release
    /// (default: yes). `upshift-publish --delta-from OLD` writes, beside the object,
    /// `<key>.from-<sha256 prefix of OLD>.zst` with its sha256 the way it gives the release
    /// its own (`x-amz-meta-sha256` and S3's SHA256 checksum, the `.sha256` sidecar or a line in
    /// the [`checksum_key`](Self::checksum_key) list) and its `.minisig`. When a check finds a
    /// new release with a sha256 and the patch for the build this host runs, the object itself
    /// is not requested: the pipeline downloads the patch, rebuilds the release from it and
    /// checks the result against the release's own sha256 and signature, and downloads the
    /// object only when that fails. A look costs one `HEAD` of the patch (a `404` when there is
    /// none), and its `.minisig` when the release is signed; it happens only when there is a new
    /// release, never on an unchanged poll.
    ///
    /// ```
    /// // Always download the full release.
    /// let fetcher = upshift_s3::S3Fetcher::new("releases", "myapp/myapp").deltas(false);
    /// # let _ = fetcher;
    /// ```
    pub fn deltas(mut self, on: bool) -> Self {
        self.deltas = on;
        self
    }

    /// Refuses a configured plain `http://` endpoint where the policy does not allow it.
    fn require_tls(&self) -> Result<(), FetchError> {
        match &self.endpoint {
            Some(url) => transport::require_tls(&self.policy, "S3 endpoint", url)
                .map_err(|e| FetchError::Source(format!("{}: {e}", self.name))),
            None => Ok(()),
        }
    }

    fn sidecar_key(&self) -> String {
        self.checksum_key
            .clone()
            .unwrap_or_else(|| format!("{}.sha256", self.key))
    }

    fn minisig_key(&self) -> String {
        format!("{}.minisig", self.key)
    }

    fn locate(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// Builds the client on first use: the AWS configuration chain, with our rustls + ring HTTP
    /// client for S3 and for the credential providers (STS, ECS, IMDS) alike.
    async fn connect(&mut self) -> Result<(aws_sdk_s3::Client, String), FetchError> {
        if let Some(c) = &self.client {
            return Ok((c.s3.clone(), c.endpoint.clone()));
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts);
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(credentials) = &self.credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        let sdk = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&sdk);
        let region = match sdk.region() {
            Some(r) => r.to_string(),
            None => {
                config = config.region(Region::from_static(DEFAULT_REGION));
                DEFAULT_REGION.to_string()
            }
        };
        if let Some(url) = &self.endpoint {
            config = config.endpoint_url(url.clone());
        }
        let path_style = self.path_style.unwrap_or(self.endpoint.is_some());
        // Response checksums are validated where a GET asks for them (`checksum_mode`), not on
        // every GET: see the release's GET.
        config = config
            .force_path_style(path_style)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        let endpoint = match self.endpoint.as_deref().or(sdk.endpoint_url()) {
            Some(url) => {
                // The AWS configuration's endpoint (AWS_ENDPOINT_URL) is known only now.
                transport::require_tls(&self.policy, "S3 endpoint", url)
                    .map_err(|e| FetchError::Source(format!("{}: {e}", self.name)))?;
                transport::redact_url(url)
            }
            None => format!("AWS S3 {region}"),
        };
        tracing::debug!(
            fetcher = %self.name,
            %region,
            %endpoint,
            path_style,
            explicit_credentials = self.credentials.is_some(),
            "S3 client configured"
        );
        let s3 = aws_sdk_s3::Client::from_conf(config.build());
        self.client = Some(Connected {
            s3: s3.clone(),
            endpoint: endpoint.clone(),
        });
        Ok((s3, endpoint))
    }

    /// HEADs the object: `None` if there is none.
    async fn head(
        &self,
        s3: &aws_sdk_s3::Client,
        endpoint: &str,
    ) -> Result<Option<Head>, FetchError> {
        self.head_of(s3, endpoint, &self.key).await
    }

    /// HEADs the object at `key` (the release's, a patch's): `None` if there is none.
    async fn head_of(
        &self,
        s3: &aws_sdk_s3::Client,
        endpoint: &str,
        key: &str,
    ) -> Result<Option<Head>, FetchError> {
        let what = format!("HEAD {}", self.locate(key));
        let result = s3
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await;
        let out = match result {
            Ok(out) => out,
            Err(e) if errors::is_not_found(&e) => return Ok(None),
            // A HEAD's error has no body, so no code: ask a 1-byte GET why.
            Err(e) if errors::is_unexplained_refusal(&e) => {
                return self.explain_refusal(s3, endpoint, key, &what, e).await;
            }
            Err(e) => return Err(errors::convert(e, &what, endpoint)),
        };
        let raw_etag = out.e_tag().map(str::to_string);
        let etag = match raw_etag.as_deref().map(unquote) {
            Some(e) if !e.is_empty() => e.to_string(),
            _ => format!(
                "size-{}-modified-{}",
                out.content_length().unwrap_or(-1),
                out.last_modified().map_or(0, |t| t.secs())
            ),
        };
        let identity = match out.version_id() {
            Some(v) if !v.is_empty() && v != "null" => format!("{etag}@{v}"),
            _ => etag.clone(),
        };
        let etag_parts = raw_etag
            .as_deref()
            .map(unquote)
            .and_then(digest::part_count);
        let kind = digest::classify(
            out.checksum_sha256(),
            out.checksum_type().map(ChecksumType::as_str),
            raw_etag.as_deref(),
        );
        let checksum = match &kind {
            digest::S3Checksum::Full(hex) => Some(hex.clone()),
            _ => None,
        };
        let metadata = match out.metadata().and_then(|m| m.get("sha256")) {
            None => None,
            Some(v) => Some(digest::hex_digest(v).ok_or_else(|| {
                FetchError::Source(format!(
                    "{}: x-amz-meta-sha256 is not a sha256 digest: {:?}",
                    self.locate(key),
                    truncate(v, 80)
                ))
            })?),
        };
        if let (Some(c), Some(m)) = (&checksum, &metadata) {
            if c != m {
                tracing::warn!(
                    fetcher = %self.name,
                    object = %self.locate(key),
                    s3_checksum = %c,
                    metadata = %m,
                    "the object's SHA256 checksum and x-amz-meta-sha256 disagree; using the checksum"
                );
            }
        }
        Ok(Some(Head {
            raw_etag,
            etag,
            identity,
            sha256: checksum.or(metadata),
            checksum: kind,
            etag_parts,
            size: out.content_length().and_then(|l| u64::try_from(l).ok()),
        }))
    }

    async fn explain_refusal(
        &self,
        s3: &aws_sdk_s3::Client,
        endpoint: &str,
        key: &str,
        what: &str,
        head_error: aws_sdk_s3::error::SdkError<
            aws_sdk_s3::operation::head_object::HeadObjectError,
        >,
    ) -> Result<Option<Head>, FetchError> {
        let status = errors::status(&head_error).unwrap_or(0);
        let probe = s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range("bytes=0-0")
            .send()
            .await;
        match probe {
            // Without s3:ListBucket, S3 answers a HEAD of a missing key with 403.
            Err(e) if errors::is_not_found(&e) => Ok(None),
            Err(e) if e.code().is_some() => Err(errors::convert(
                e,
                &format!("{what} (HTTP {status}, reason from a 1-byte GET)"),
                endpoint,
            )),
            _ => Err(errors::convert(head_error, what, endpoint)),
        }
    }

    /// Reads a small side object (`.sha256`, `.minisig`): `None` if it does not exist (or, as S3
    /// says for missing keys without s3:ListBucket, access is denied).
    async fn side_object(
        &self,
        s3: &aws_sdk_s3::Client,
        endpoint: &str,
        key: &str,
    ) -> Result<Option<String>, FetchError> {
        let what = format!("GET {}", self.locate(key));
        let get = s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled);
        let out = match get.send().await {
            Ok(out) => out,
            Err(e) if errors::is_not_found(&e) => return Ok(None),
            Err(e) if e.code() == Some("AccessDenied") => {
                tracing::debug!(object = %self.locate(key), "access denied; taken as absent");
                return Ok(None);
            }
            Err(e) => return Err(errors::convert(e, &what, endpoint)),
        };
        let too_big = |len: u64| {
            FetchError::Source(format!(
                "{what}: {len} bytes or more, more than a checksum or signature file may have \
                 ({SIDE_OBJECT_LIMIT})"
            ))
        };
        if let Some(len) = out
            .content_length()
            .and_then(|l| u64::try_from(l).ok())
            .filter(|&l| l > SIDE_OBJECT_LIMIT)
        {
            return Err(too_big(len));
        }
        // Read as it streams, stopping at the limit: a body without Content-Length (chunked)
        // is never held whole before it is measured. Within `timeout` in all.
        let body = BoundedBody::new(Box::pin(out.body.into_async_read()), what.clone())
            .total(self.timeout)
            .max_bytes(SIDE_OBJECT_LIMIT);
        let bytes = body.read_to_vec().await.map_err(|e| match e {
            BodyError::TooLarge { cap, .. } => too_big(cap.saturating_add(1)),
            e => FetchError::from(e),
        })?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| FetchError::Source(format!("{what}: not UTF-8 text")))
    }

    /// The digest in the sidecar object, `None` without one; a malformed one fails the check.
    async fn sidecar(
        &self,
        s3: &aws_sdk_s3::Client,
        endpoint: &str,
    ) -> Result<Option<String>, FetchError> {
        Ok(self
            .sidecar_doc(s3, endpoint)
            .await?
            .map(|(digest, _)| digest))
    }

    /// [`sidecar`](Self::sidecar), with the object's text.
    async fn sidecar_doc(
        &self,
        s3: &aws_sdk_s3::Client,
        endpoint: &str,
    ) -> Result<Option<(String, String)>, FetchError> {
        let key = self.sidecar_key();
        match self.side_object(s3, endpoint, &key).await? {
            None => Ok(None),
            Some(text) => {
                let digest = digest::from_sidecar(&text, &self.locate(&key), file_name(&self.key))?;
                Ok(Some((digest, text)))
            }
        }
    }

    /// Whether what vouches for an already seen version changed: a corrected checksum or
    /// signature makes a rejected release a new candidate.
    async fn vouching_changed(
        &self,
        s3: &aws_sdk_s3::Client,
        endpoint: &str,
        head: &Head,
        seen: &Seen,
    ) -> Result<bool, FetchError> {
        let sha256 = match (&head.sha256, seen.from_sidecar) {
            (Some(h), _) => Some(h.clone()),
            (None, true) => self.sidecar(s3, endpoint).await?,
            (None, false) => None,
        };
        if sha256 != seen.sha256 {
            return Ok(true);
        }
        let signature = self.side_object(s3, endpoint, &self.minisig_key()).await?;
        Ok(signature != seen.signature)
    }

    fn note_missing(&mut self) {
        self.seen = None;
        if !self.missing_logged {
            self.missing_logged = true;
            tracing::info!(fetcher = %self.name, "no such object (yet)");
        }
    }

    async fn check_once(&mut self, current: &Current) -> Result<Step, FetchError> {
        let (s3, endpoint) = self.connect().await?;
        let Some(head) = self.head(&s3, &endpoint).await? else {
            self.note_missing();
            return Ok(Step::Done(None));
        };
        self.missing_logged = false;
        let source = head.source();

        if let Some(seen) = self.seen.as_ref().filter(|s| s.etag == head.etag) {
            if seen.is_installed(current) {
                return Ok(Step::Done(None));
            }
            if seen.is_refused(current, &source) {
                // Refused, and the object is as it was: this HEAD decides, unless it is time to
                // look at what vouches for it again.
                if seen.vouched_at.elapsed() < VOUCH_RECHECK {
                    tracing::trace!(fetcher = %self.name, identity = %head.identity, "refused before, unchanged");
                    return Ok(Step::Done(None));
                }
                if !self.vouching_changed(&s3, &endpoint, &head, seen).await? {
                    if let Some(seen) = self.seen.as_mut() {
                        seen.vouched_at = Instant::now();
                    }
                    return Ok(Step::Done(None));
                }
            } else if seen.settled.load(Ordering::Acquire)
                && !self.vouching_changed(&s3, &endpoint, &head, seen).await?
            {
                // Handed out in full and not installed: rejected; the pipeline remembers it.
                return Ok(Step::Done(None));
            }
            // Otherwise the last transfer did not complete, or what vouches for it changed:
            // offer it again.
        }

        if current.identity.as_deref() == Some(head.identity.as_str()) {
            self.seen = Some(settled(&head, head.sha256.clone(), false, None));
            return Ok(Step::Done(None));
        }
        // The checksum object's text, when this check read it: it may name the patch too.
        let mut sums = None;
        let (sha256, from_sidecar) = match &head.sha256 {
            Some(s) => (Some(s.clone()), false),
            None => match self.sidecar_doc(&s3, &endpoint).await? {
                Some((digest, text)) => {
                    sums = Some(text);
                    (Some(digest), true)
                }
                None => (None, true),
            },
        };
        if same_digest(sha256.as_deref(), &current.sha256) {
            tracing::debug!(fetcher = %self.name, identity = %head.identity, "the installed release");
            self.seen = Some(settled(&head, sha256, from_sidecar, None));
            return Ok(Step::Done(None));
        }
        let signature = self
            .side_object(&s3, &endpoint, &self.minisig_key())
            .await?;
        let file_name = file_name(&self.key);
        let seen = |settled: bool| Seen {
            etag: head.etag.clone(),
            identity: head.identity.clone(),
            sha256: sha256.clone(),
            from_sidecar,
            signature: signature.clone(),
            settled: Arc::new(AtomicBool::new(settled)),
            vouched_at: Instant::now(),
        };
        if current.was_rejected_from(
            &head.identity,
            sha256.as_deref(),
            signature.as_deref(),
            Some(&source),
        ) {
            tracing::debug!(fetcher = %self.name, identity = %head.identity, "refused before; not downloaded");
            self.seen = Some(seen(true));
            return Ok(Step::Done(None));
        }
        if sha256.is_none() && signature.is_none() && current.requires_checksum {
            // The pipeline refuses a remote release that nothing vouches for before reading a
            // byte of it: offer it from the HEAD alone. Not settled: until the pipeline says it
            // refused it, the next check offers it again (still without a download). Once
            // refused, the release is not offered again while it stays as it is, so this is said
            // once per object version.
            tracing::warn!(
                fetcher = %self.name,
                identity = %head.identity,
                "no sha256 for the release: {}; publish one (x-amz-meta-sha256 or the sidecar) or \
                 a signature",
                digest::missing_sha256(
                    &head.checksum,
                    head.etag_parts,
                    &self.locate(&self.sidecar_key())
                )
            );
            self.seen = Some(seen(false));
            return Ok(Step::Done(Some(Release {
                identity: head.identity.clone(),
                sha256: None,
                signature: None,
                size_hint: head.size,
                format: Format::from_name(file_name),
                origin: Origin::Remote,
                body: Box::new(tokio::io::empty()),
                local_file: None,
                delta: None,
                rollout_percent: None,
                version: None,
                source: Some(source),
            })));
        }

        // A patch from the running build, if one is published: then the object itself, which
        // its HEAD already described, is requested only if the patch does not work.
        let patch = match &sha256 {
            Some(_) if self.deltas => {
                let signed = signature.is_some();
                self.find_patch(&s3, &endpoint, current, sums.as_deref(), signed)
                    .await?
            }
            _ => None,
        };
        let object = ObjectGet {
            s3,
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            endpoint,
            raw_etag: head.raw_etag.clone(),
            etag: head.etag.clone(),
            validate: matches!(head.checksum, digest::S3Checksum::Full(_)),
            stall: self.timeout,
        };
        let settled_flag = Arc::new(AtomicBool::new(false));
        // Raised when the body was read to its end, complete.
        let delivered = settled_flag.clone();
        let on_complete: Box<dyn FnOnce() + Send> =
            Box::new(move || delivered.store(true, Ordering::Release));
        let (body, size_hint, delta) = match patch {
            Some(patch) => {
                let delta = patch.into_delta(object.clone());
                (object.lazy(Some(on_complete)), head.size, Some(delta))
            }
            None => match object.send(Some(on_complete)).await? {
                Got::Body(body, size) => (body, size, None),
                Got::Missing => {
                    self.note_missing();
                    return Ok(Step::Done(None));
                }
                Got::Changed => return Ok(Step::Raced),
            },
        };
        tracing::debug!(
            fetcher = %self.name,
            identity = %head.identity,
            sha256 = sha256.as_deref().unwrap_or("-"),
            signed = signature.is_some(),
            size = ?size_hint,
            patch = delta.as_ref().map_or("-", |d| d.name.as_str()),
            "new release"
        );
        self.seen = Some(Seen {
            settled: settled_flag,
            ..seen(false)
        });
        Ok(Step::Done(Some(Release {
            identity: head.identity,
            sha256,
            signature,
            size_hint,
            format: Format::from_name(file_name),
            origin: Origin::Remote,
            body,
            local_file: None,
            delta,
            rollout_percent: None,
            version: None,
            source: Some(source),
        })))
    }
}

#[async_trait::async_trait]
impl Fetcher for S3Fetcher {
    fn name(&self) -> &str {
        &self.name
    }

    /// One HEAD when the object is unchanged; see the [crate documentation](crate).
    async fn check(&mut self, current: &Current) -> Result<Option<Release>, FetchError> {
        if let Some(why) = bucket_problem(&self.bucket).or_else(|| key_problem(&self.key)) {
            return Err(FetchError::Source(format!("{}: {why}", self.name)));
        }
        self.require_tls()?;
        for _ in 0..RACE_ATTEMPTS {
            match self.check_once(current).await? {
                Step::Done(release) => return Ok(release),
                Step::Raced => {
                    tracing::debug!(fetcher = %self.name, "the object changed between HEAD and GET; looking again");
                    self.seen = None;
                }
            }
        }
        Err(FetchError::Source(format!(
            "{}: the object kept changing while it was being fetched",
            self.name
        )))
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    /// Refuses a plain `http://` endpoint unless the policy allows it (see
    /// [Transport](crate#transport)), keeps the policy for an endpoint the AWS configuration
    /// names, and warns once when no minisign key is configured.
    fn apply_policy(&mut self, policy: &TrustPolicy) -> Result<(), FetchError> {
        self.policy = *policy;
        if let Some(endpoint) = &self.endpoint {
            transport::require_tls(policy, "S3 endpoint", endpoint)?;
        }
        transport::warn_without_key(policy, &self.name);
        Ok(())
    }

    /// Forgets the object version last handed out, so the next check offers it again even if
    /// its body was read to the end (the disk filled up while it was written, say).
    fn deferred(&mut self, identity: &str) {
        if self.seen.as_ref().is_some_and(|s| s.identity == identity) {
            self.seen = None;
        }
    }
}

fn settled(head: &Head, sha256: Option<String>, from_sidecar: bool, sig: Option<String>) -> Seen {
    Seen {
        etag: head.etag.clone(),
        identity: head.identity.clone(),
        sha256,
        from_sidecar,
        signature: sig,
        settled: Arc::new(AtomicBool::new(true)),
        vouched_at: Instant::now(),
    }
}

fn same_digest(expected: Option<&str>, installed: &str) -> bool {
    expected.is_some_and(|e| e.trim().eq_ignore_ascii_case(installed.trim()))
}

/// The last segment of an object key: the published file's name.
fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// An ETag without its quotes (and weak marker).
fn unquote(etag: &str) -> &str {
    let e = etag.trim();
    let e = e.strip_prefix("W/").unwrap_or(e);
    e.trim_matches('"')
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn bucket_problem(bucket: &str) -> Option<String> {
    if bucket.is_empty() {
        return Some("the bucket name is empty".into());
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    bucket
        .chars()
        .find(|&c| !ok(c))
        .map(|c| format!("the bucket name {bucket:?} contains {c:?}"))
}

fn key_problem(key: &str) -> Option<String> {
    if key.is_empty() {
        return Some("the object key is empty".into());
    }
    if key.ends_with('/') {
        return Some(format!("the object key {key:?} names a folder, not a file"));
    }
    key.chars()
        .find(|c| c.is_control())
        .map(|c| format!("the object key {key:?} contains the control character {c:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let f = S3Fetcher::from_url("s3://my-bucket/a/b/app.tar.gz").expect("valid");
        assert_eq!(
            (f.bucket.as_str(), f.key.as_str()),
            ("my-bucket", "a/b/app.tar.gz")
        );
        assert_eq!(f.sidecar_key(), "a/b/app.tar.gz.sha256");
        let f = S3Fetcher::from_url("S3://b/k k").expect("valid");
        assert_eq!(f.key, "k k");
        for bad in [
            "",
            "s3:/",
            "s3://",
            "s3://bucket",
            "s3://bucket/",
            "s3:///key",
            "s3://bucket/dir/",
            "http://bucket/key",
            "bucket/key",
            "s3://buc ket/key",
            "s3://bucket/ke\ny",
            "s3\u{e9}://bucket/key",
        ] {
            let e = match S3Fetcher::from_url(bad) {
                Err(e) => e.to_string(),
                Ok(f) => panic!("{bad:?} parsed as {f:?}"),
            };
            assert!(e.contains("expected s3://bucket/key"), "{e}");
        }
    }

    #[test]
    fn etags() {
        assert_eq!(unquote("\"abc\""), "abc");
        assert_eq!(unquote("W/\"abc\""), "abc");
        assert_eq!(unquote("abc"), "abc");
    }

    #[test]
    fn debug_hides_credentials() {
        let f = S3Fetcher::new("b", "k").credentials("AKIDEXAMPLE", "SECRETEXAMPLE", None);
        let s = format!("{f:?}");
        assert!(
            !s.contains("AKIDEXAMPLE") && !s.contains("SECRETEXAMPLE"),
            "{s}"
        );
    }
}
