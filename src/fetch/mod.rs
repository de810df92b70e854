//! Fetchers say *where and whether* a new release is; the install pipeline alone says *how to
//! install* it.
//!
//! A [`Fetcher`] is asked, relative to what is installed ([`Current`]), whether there is something
//! new. It answers `None`, or a [`Release`]: an identity, what it knows about integrity (sha256,
//! minisign signature), the packaging ([`Format`]) and a byte stream. Backends: [`FileFetcher`] in
//! this crate; `upshift-http`, `upshift-github` and `upshift-s3` as separate crates.

pub mod body;
pub mod checksum;
mod file;
pub mod retry;
pub mod transport;

use std::fmt;
use std::time::Duration;

pub use file::FileFetcher;
pub(crate) use file::Stamp;

/// An error and its sources, `: `-joined, each source left out when the text so far already
/// says it (HTTP clients often repeat their source in their own message). For error messages
/// that show the cause a user can act on ("connection refused", "certificate expired") rather
/// than a client's terse "error sending request".
///
/// ```
/// let inner = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// let outer = std::io::Error::new(std::io::ErrorKind::Other, inner);
/// assert_eq!(upshift::fetch::error_chain(&outer), "connection refused");
/// ```
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A short digest of what a source said about a release's bytes ([`Release::source`]): what the
/// release state keeps of it, so that an ETag or a file's stamp of any length or content fits one
/// line of the state file.
pub(crate) fn source_digest(source: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(source.as_bytes())[..8])
}

/// A boxed byte stream: a release's body.
pub type ReleaseBody = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// What is installed now, as a fetcher needs it to decide what is new.
///
/// ```
/// use upshift::fetch::Current;
///
/// let mut current = Current {
///     sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
///     identity: Some("v1.2.0".into()),
///     version: Some("1.2.0".into()),
///     rejected: Vec::new(),
///     requires_checksum: true,
/// };
/// // A floor of 1.2.0: only a strictly greater version may be offered.
/// assert!(current.accepts_version("v1.2.1"));
/// assert!(!current.accepts_version("1.2.0"));
/// assert!(!current.accepts_version("nightly"));
/// // The pipeline refused v1.3.0 (say, it crashed in its test run): a fetcher that finds it
/// // again with the same checksum and no signature need not download it.
/// current.rejected.push(Current::rejection_key("v1.3.0", Some("ab12"), None));
/// assert!(current.was_rejected("v1.3.0", Some("ab12"), None));
/// // A corrected checksum makes a new candidate.
/// assert!(!current.was_rejected("v1.3.0", Some("cd34"), None));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Current {
    /// Lower-case hex sha256 of the binary on disk.
    pub sha256: String,
    /// The identity of the release last installed by upshift (`None` before the first upgrade).
    pub identity: Option<String>,
    /// The version floor: the highest of the running build's version
    /// ([`Upgrader::version`](crate::Upgrader::version)) and the highest version this host ever
    /// accepted (persisted beside the binary, so it survives restarts). A fetcher that knows
    /// versions never offers one at or below it ([`Current::accepts_version`]); the pipeline
    /// refuses such a release before downloading it.
    pub version: Option<String>,
    /// Releases the pipeline refused or rolled back, as keys made by
    /// [`Current::rejection_key`] (bounded; oldest first). The poll loop would drop such a release
    /// unread; a fetcher that can tell one before starting its download (see
    /// [`Current::was_rejected`]) saves the transfer on every poll while it stays published.
    pub rejected: Vec<String>,
    /// Whether the pipeline refuses a release from the network that has neither a sha256 nor a
    /// signature. A fetcher that finds no checksum for a remote release should then not start
    /// its download: the pipeline would refuse it unread anyway.
    pub requires_checksum: bool,
}

impl Current {
    /// The key under which a refused release is remembered: its identity, its expected sha256
    /// and (a digest of) its signature. What vouches for the bytes is part of the key, because a
    /// checksum or signature corrected after the binary was published makes a new candidate.
    pub fn rejection_key(identity: &str, sha256: Option<&str>, signature: Option<&str>) -> String {
        use sha2::Digest;
        let signature = signature
            .map(|s| hex::encode(&sha2::Sha256::digest(s.as_bytes())[..8]))
            .unwrap_or_else(|| "-".into());
        let sha256 = sha256.map(str::to_ascii_lowercase);
        format!(
            "{identity}#{}#{signature}",
            sha256.as_deref().unwrap_or("-")
        )
    }

    /// Whether the release with this identity, expected sha256 and signature was refused before.
    pub fn was_rejected(
        &self,
        identity: &str,
        sha256: Option<&str>,
        signature: Option<&str>,
    ) -> bool {
        let key = Current::rejection_key(identity, sha256, signature);
        self.rejected.contains(&key)
    }

    /// Whether a release refused for a reason that may pass once its source changes (a checksum
    /// mismatch or a cut transfer, as when a file is read while it is being uploaded in place)
    /// is still what the source serves: same identity, checksum, signature and `source` (what
    /// [`Release::source`] said about the bytes: an ETag, a size and mtime). Also true when
    /// [`was_rejected`](Self::was_rejected) is. A fetcher may skip the download then.
    pub fn was_rejected_from(
        &self,
        identity: &str,
        sha256: Option<&str>,
        signature: Option<&str>,
        source: Option<&str>,
    ) -> bool {
        if self.was_rejected(identity, sha256, signature) {
            return true;
        }
        let Some(source) = source else {
            return false;
        };
        let key = Current::transient_rejection_key(identity, sha256, signature, source);
        self.rejected.contains(&key)
    }

    /// The key under which a release refused for a transient reason is remembered: as
    /// [`rejection_key`](Self::rejection_key), plus what the source said about the bytes.
    pub fn transient_rejection_key(
        identity: &str,
        sha256: Option<&str>,
        signature: Option<&str>,
        source: &str,
    ) -> String {
        format!(
            "{}@{}",
            Current::rejection_key(identity, sha256, signature),
            source_digest(source)
        )
    }

    /// Whether `version` (`1.2.3` or `v1.2.3`) is strictly greater than the version floor
    /// ([`Current::version`]). `false` for a version that is not semantic (it cannot be ordered),
    /// `true` for any semantic version when there is no floor.
    pub fn accepts_version(&self, version: &str) -> bool {
        let Some(v) = crate::release::parse_version(version) else {
            return false;
        };
        match self.version.as_deref().map(crate::release::parse_version) {
            Some(Some(floor)) => v > floor,
            // A floor that is not a version cannot be compared with: nothing passes it.
            Some(None) => false,
            None => true,
        }
    }
}

/// How a release is packaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// The executable itself.
    Raw,
    /// The executable, gzip-compressed (`.gz`).
    Gzip,
    /// A gzip-compressed tar archive; `binary` is the path of the executable inside it, or `None`
    /// for "the only regular executable file in the archive".
    TarGz {
        /// Path inside the archive.
        binary: Option<String>,
    },
    /// A zip archive; `binary` as for [`Format::TarGz`].
    Zip {
        /// Path inside the archive.
        binary: Option<String>,
    },
}

impl Format {
    /// Guesses the format from a file or asset name (`app.tar.gz`, `app.tgz`, `app.zip`, `app.gz`).
    ///
    /// ```
    /// use upshift::fetch::Format;
    /// assert_eq!(Format::from_name("app-x86_64-linux.tar.gz"), Format::TarGz { binary: None });
    /// assert_eq!(Format::from_name("app"), Format::Raw);
    /// ```
    pub fn from_name(name: &str) -> Format {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Format::TarGz { binary: None }
        } else if lower.ends_with(".zip") {
            Format::Zip { binary: None }
        } else if lower.ends_with(".gz") {
            Format::Gzip
        } else {
            Format::Raw
        }
    }
}

/// Where a release came from; decides whether a missing checksum is acceptable.
///
/// Only this crate's [`FileFetcher`] can make a release count as local: the pipeline takes
/// `Local` at its word only when the release also carries a [`LocalFile`], which no other crate
/// can build. A fetcher in another crate that declares `Local` is treated as `Remote` (a missing
/// checksum is refused), so declaring it cannot skip the checksum requirement.
///
/// ```
/// use upshift::fetch::Origin;
/// // What a third-party fetcher should declare for anything it did not read from this machine.
/// assert_ne!(Origin::Remote, Origin::Local);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This machine, as read by [`FileFetcher`] (with a [`LocalFile`]): a missing checksum is
    /// allowed. Without a `LocalFile`, the pipeline treats the release as `Remote`.
    Local,
    /// Over a network: refused without a checksum unless the user opted out.
    Remote,
}

/// A new release a fetcher found. Dropping it (without reading the body) aborts the transfer.
pub struct Release {
    /// What identifies this release: a version, tag, ETag or content hash. Used to remember
    /// rejected releases and in logs and events.
    pub identity: String,
    /// Expected lower-case hex sha256 of the published file (the archive, for archives).
    pub sha256: Option<String>,
    /// A detached minisign signature (the text of a `.minisig` file) over the published file.
    pub signature: Option<String>,
    /// The body's size if known, for progress and the size cap.
    pub size_hint: Option<u64>,
    /// How the body is packaged.
    pub format: Format,
    /// Local or remote.
    pub origin: Origin,
    /// The published file's bytes. When [`delta`](Self::delta) is set, make it lazy
    /// ([`body::lazy`]): the pipeline reads it only when the patch does not apply, so that a
    /// delta that works costs no request for the full release.
    pub body: ReleaseBody,
    /// Set by [`FileFetcher`] only (other fetchers leave it `None`): the body is a file on this
    /// machine that the fetcher has already hashed, so staging copies it in the kernel instead of
    /// reading and hashing it a second time. See [`LocalFile`].
    pub local_file: Option<LocalFile>,
    /// The release's version (`1.2.3`, `v1.2.3`), when the source says (a GitHub tag). The
    /// pipeline refuses a version at or below the floor ([`Current::version`]) before reading a
    /// byte of the body, and raises the floor to it once the release is installed.
    pub version: Option<String>,
    /// What the source said about these bytes, if anything (an ETag, a size and modification
    /// time): when a release is refused for a reason that may be the source's state at that
    /// moment (checksum mismatch, cut transfer), it is tried again once this changes.
    pub source: Option<String>,
    /// The share of the fleet, from 0 to 100, that should take this release now, when the
    /// release's publisher says (the File fetcher reads `<path>.rollout`; see
    /// [`rollout`](crate::rollout)). `None`: [`Upgrader::rollout_percent`](crate::Upgrader::rollout_percent)
    /// decides.
    pub rollout_percent: Option<f64>,
    /// A patch that rebuilds the published file from the build this host runs, when the
    /// publisher made one for it (`upshift-publish --delta-from`). The pipeline tries it first
    /// and falls back to [`body`](Self::body) when it is missing, does not verify, or does not
    /// rebuild exactly the file [`sha256`](Self::sha256) and [`signature`](Self::signature)
    /// describe. See [`Delta`].
    pub delta: Option<Delta>,
}

/// A patch (a delta release) that rebuilds a release's published file from a build the host
/// already has, named by [`crate::delta::patch_name`].
///
/// A delta is a transport optimisation, never a trust shortcut. The pipeline uses it only for a
/// raw release (the published file is the binary) that carries a sha256, and only when the build
/// it applies to is one this machine runs (the master's own image or the serving worker's,
/// hashed again just before). The patch must match its own published sha256 (and, with a key
/// configured, its own signature, whose signed metadata names the base) before a byte of it is
/// applied; the rebuilt file must then hash to the release's sha256 and pass the release's
/// signature, exactly as a full download would. Anything else falls back to the full release.
///
/// ```
/// use upshift::fetch::{Current, Delta};
///
/// let current = Current {
///     sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
///     ..Current::default()
/// };
/// // A fetcher found `app.from-9f86d081884c7d65.zst` and its checksum beside the release.
/// let delta = Delta {
///     base_sha256: current.sha256.clone(),
///     sha256: "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752".into(),
///     signature: None,
///     size_hint: Some(812_345),
///     name: "https://releases.example.com/app.from-9f86d081884c7d65.zst".into(),
///     body: Box::new(tokio::io::empty()),
/// };
/// assert_eq!(delta.base_sha256, current.sha256);
/// ```
pub struct Delta {
    /// Lower-case hex sha256 of the build the patch applies to: the fetcher looked for the patch
    /// of [`Current::sha256`].
    pub base_sha256: String,
    /// Lower-case hex sha256 of the patch file as published (its sidecar or checksum-list
    /// line). Required: a fetcher offers no patch it has no checksum for.
    pub sha256: String,
    /// The patch's detached minisign signature (its `.minisig`), if published.
    pub signature: Option<String>,
    /// The patch's size if known, for the size cap and progress.
    pub size_hint: Option<u64>,
    /// Where it comes from, for logs and events (a URL, an object key).
    pub name: String,
    /// The patch's bytes.
    pub body: ReleaseBody,
}

impl fmt::Debug for Delta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delta")
            .field("name", &self.name)
            .field("base_sha256", &self.base_sha256)
            .field("sha256", &self.sha256)
            .field("signature", &self.signature.is_some())
            .field("size_hint", &self.size_hint)
            .finish_non_exhaustive()
    }
}

impl Release {
    /// The origin the pipeline acts on: `Local` only for a release that carries a [`LocalFile`]
    /// (which only [`FileFetcher`] can make); anything else counts as `Remote`, whatever it
    /// declared.
    pub(crate) fn vouched_origin(&self) -> Origin {
        match (self.origin, &self.local_file) {
            (Origin::Local, Some(_)) => Origin::Local,
            _ => Origin::Remote,
        }
    }
}

/// A release file on this machine, already hashed by [`FileFetcher`].
///
/// Staging a raw release (no archive, no signature key configured) from one copies the file with
/// `copy_file_range` and takes the fetcher's sha256 as the copy's, provided `fstat` shows the
/// file as it was when it was opened for hashing: same inode, size, mtime and ctime. If anything
/// changed, the copy is hashed instead. When the fetcher was told the [`StagingArea`], it has
/// usually written that copy already, in the same pass that hashed the file, and staging adopts
/// it. Only upshift makes one; a fetcher in another crate has nothing to put here.
pub struct LocalFile {
    pub(crate) file: std::fs::File,
    pub(crate) sha256: String,
    pub(crate) stamp: Stamp,
    /// The copy written beside the binary while the file was hashed.
    pub(crate) copy: Option<crate::install::PreStaged>,
}

/// Where the pipeline would stage a release right now: beside the binary it replaces (the path
/// re-resolved before every check, so a flipped symlink moves it), and how many bytes it accepts.
/// Handed to each fetcher before each [`check`](Fetcher::check) through
/// [`Fetcher::staging_area`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagingArea {
    pub(crate) target: std::path::PathBuf,
    pub(crate) max_bytes: u64,
}

impl fmt::Debug for LocalFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalFile")
            .field("sha256", &self.sha256)
            .field("size", &self.stamp.size)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Release")
            .field("identity", &self.identity)
            .field("sha256", &self.sha256)
            .field("signature", &self.signature.is_some())
            .field("size_hint", &self.size_hint)
            .field("format", &self.format)
            .field("origin", &self.origin)
            .field("local_file", &self.local_file.is_some())
            .field("rollout_percent", &self.rollout_percent)
            .field("version", &self.version)
            .field("source", &self.source)
            .field("delta", &self.delta)
            .finish_non_exhaustive()
    }
}

/// Why a check failed. Fetch errors are logged and retried with backoff; they are never fatal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// An I/O error, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The release source answered something unusable (a bad status, a malformed document).
    #[error("{0}")]
    Source(String),
    /// The source asked us to slow down until the given delay has passed.
    #[error("rate limited; retry after {0:?}")]
    RateLimited(Duration),
}

/// What the configuration asks of every fetcher's transport and location, handed to each fetcher
/// once by [`Upgrader::run`](crate::Upgrader::run) before its first check
/// ([`Fetcher::apply_policy`]).
///
/// ```
/// use upshift::fetch::TrustPolicy;
///
/// // No key and no opt-in: a fetcher must refuse plain http.
/// let strict = TrustPolicy::default();
/// assert!(!strict.plain_transport_allowed());
/// // A minisign key makes the transport's integrity moot: the signature vouches for the bytes.
/// let signed = TrustPolicy { signature_required: true, ..TrustPolicy::default() };
/// assert!(signed.plain_transport_allowed());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    /// A minisign public key is configured: every release must carry a valid signature by it,
    /// bound to this product, target and a version above the floor.
    pub signature_required: bool,
    /// The operator allowed plain (non-TLS) transport without a key
    /// ([`Upgrader::allow_insecure_transport`](crate::Upgrader::allow_insecure_transport)).
    pub allow_insecure_transport: bool,
}

impl TrustPolicy {
    /// Whether a fetcher may use a plain (non-TLS) URL: with a key configured, or when the
    /// operator opted in.
    pub fn plain_transport_allowed(&self) -> bool {
        self.signature_required || self.allow_insecure_transport
    }
}

/// A release source. Object-safe: `Box<dyn Fetcher>` works.
///
/// ```
/// use upshift::fetch::{Current, FetchError, Fetcher, Release};
///
/// struct Never;
///
/// #[async_trait::async_trait]
/// impl Fetcher for Never {
///     fn name(&self) -> &str { "never" }
///     async fn check(&mut self, _current: &Current) -> Result<Option<Release>, FetchError> {
///         Ok(None)
///     }
/// }
/// let _boxed: Box<dyn Fetcher> = Box::new(Never);
/// ```
#[async_trait::async_trait]
pub trait Fetcher: Send {
    /// A short name for logs and events (`file:/srv/app/next`, `s3://bucket/key`).
    fn name(&self) -> &str;

    /// Looks for a release newer than `current`. `Ok(None)` when there is nothing new; a fetcher
    /// should make that answer cheap (conditional requests, metadata comparison) and must not
    /// return the release `current` describes.
    async fn check(&mut self, current: &Current) -> Result<Option<Release>, FetchError>;

    /// Receives the configuration's [`TrustPolicy`] once, before the first
    /// [`check`](Fetcher::check). A fetcher checks here what it can know at startup (a plain
    /// `http://` URL without a key or the opt-in) and keeps the policy for what it learns later
    /// (a redirect, a file's owner). An error stops [`Upgrader::run`](crate::Upgrader::run) with a
    /// configuration error naming the fetcher. The default accepts any policy. Remote fetchers
    /// refuse plain `http://` there with [`transport::require_tls`], warn once with
    /// [`transport::warn_without_key`], and, used without it (a direct [`check`](Fetcher::check)),
    /// apply the strict [`TrustPolicy::default`].
    fn apply_policy(&mut self, policy: &TrustPolicy) -> Result<(), FetchError> {
        let _ = policy;
        Ok(())
    }

    /// Called before each [`check`](Fetcher::check) with where the pipeline would stage a
    /// release now. [`FileFetcher`] writes a new file's copy there in the same pass that hashes
    /// it, so a local release is read once; a fetcher that downloads has no use for it. The
    /// default ignores it.
    fn staging_area(&mut self, area: &StagingArea) {
        let _ = area;
    }

    /// Resolves when the fetcher has a reason to check before the next interval (a file changed).
    /// The default never resolves: pure interval polling.
    async fn changed(&mut self) {
        std::future::pending::<()>().await
    }

    /// The poll interval this fetcher wants (the poll loop adds jitter). Default 60 s.
    fn interval(&self) -> Duration {
        Duration::from_secs(60)
    }

    /// Called when the poll loop did not install the release `identity` that this fetcher's
    /// last [`check`](Fetcher::check) returned, for no fault of the release, and the next check
    /// must offer it again: a hold, a pin or a staged rollout keeps this host from taking it yet
    /// (see [`rollout`](crate::rollout); the body was dropped unread), or this machine could
    /// not install it (disk full; the body may have been read to its end). The default does
    /// nothing, which is right for a fetcher that remembers nothing about what it handed out.
    ///
    /// ```
    /// use upshift::fetch::{Current, FetchError, Fetcher, Release};
    ///
    /// /// Offers each release it finds once, unless it was set aside.
    /// struct Once { offered: Option<String>, again: bool }
    ///
    /// #[async_trait::async_trait]
    /// impl Fetcher for Once {
    ///     fn name(&self) -> &str { "once" }
    ///     async fn check(&mut self, _current: &Current) -> Result<Option<Release>, FetchError> {
    ///         let _offer_again = std::mem::take(&mut self.again);
    ///         Ok(None) // ... skip `self.offered` only if `_offer_again` is false
    ///     }
    ///     fn deferred(&mut self, identity: &str) {
    ///         self.again = self.offered.as_deref() == Some(identity);
    ///     }
    /// }
    /// ```
    fn deferred(&mut self, identity: &str) {
        let _ = identity;
    }
}
