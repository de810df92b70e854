//! Fetchers say *where and whether* a new release is; the install pipeline alone says *how to
//! install* it.
//!
//! A [`Fetcher`] is asked, relative to what is installed ([`Current`]), whether there is something
//! new. It answers `None`, or a [`Release`]: an identity, what it knows about integrity (sha256,
//! minisign signature), the packaging ([`Format`]) and a byte stream. Backends: [`FileFetcher`] in
//! this crate; `upshift-http`, `upshift-github` and `upshift-s3` as separate crates.

mod file;

use std::fmt;
use std::time::Duration;

pub use file::FileFetcher;

/// A boxed byte stream: a release's body.
pub type ReleaseBody = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// What is installed now, as a fetcher needs it to decide what is new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// Lower-case hex sha256 of the binary on disk.
    pub sha256: String,
    /// The identity of the release last installed by upshift (`None` before the first upgrade).
    pub identity: Option<String>,
    /// The running program's version (`CARGO_PKG_VERSION` of the binary, as configured).
    pub version: Option<String>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This machine (the File fetcher): a missing checksum is allowed.
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
    /// The published file's bytes.
    pub body: ReleaseBody,
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

    /// Resolves when the fetcher has a reason to check before the next interval (a file changed).
    /// The default never resolves: pure interval polling.
    async fn changed(&mut self) {
        std::future::pending::<()>().await
    }

    /// The poll interval this fetcher wants (the poll loop adds jitter). Default 60 s.
    fn interval(&self) -> Duration {
        Duration::from_secs(60)
    }
}
