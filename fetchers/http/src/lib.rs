//! An HTTP(S) release fetcher for [`upshift`]: point it at the URL your build pipeline
//! publishes to, and the server upgrades itself when a new build appears there.
//!
//! ```no_run
//! use std::time::Duration;
//! use upshift_http::HttpFetcher;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fetcher = HttpFetcher::new("https://releases.example.com/app/app-x86_64-linux.tar.gz")?
//!     .header("Authorization", "Bearer s3cret")        // sent to that origin only, never logged
//!     .interval(Duration::from_secs(300));
//! upshift::Upgrader::new()
//!     .listen("127.0.0.1:8080")
//!     .fetcher(fetcher)
//!     .run(|_state| { /* serve */ })?;
//! # Ok(())
//! # }
//! ```
//!
//! # What a poll costs
//!
//! The fetcher asks for the *checksum* first (`<url>.sha256` by default, or a `SHA256SUMS`
//! file), with `If-None-Match` / `If-Modified-Since` from the last release it handed over.
//! Publishers write the checksum before the file (as for every upshift fetcher), so an unchanged
//! checksum means an unchanged release: **an unchanged poll is one small request answered `304
//! Not Modified`, with no body**. A changed checksum naming the installed build (a restarted
//! master) also ends the poll, before the release file is requested at all. Only a new release
//! costs the release `GET`, plus the optional `.minisig`: three requests.
//!
//! Without a checksum ([`HttpFetcher::no_checksum`]), the release `GET` itself is conditional,
//! and an unchanged poll is again one `304`. A checksum configured but not published costs a
//! `404` per poll before that conditional `GET`: say `no_checksum()` if none will ever be.
//!
//! The validators are remembered only once the release's body has been read to its end: a
//! release dropped unread or cut short (a network failure mid-download, a full disk) is offered
//! again at the next poll. A release read in full whose checksum is then unchanged costs that
//! checksum's `304` if the pipeline installed it or refused it for good
//! ([`Current::was_rejected`]). If it did neither (the bytes did not match the new checksum
//! because the poll fell between the two writes of a deploy, or read a file still being written
//! in place; or the transfer was cut), the file is asked for again, conditionally on what the
//! server said about it when it was offered: a second `304` until the file changes, and then
//! the release. So a release refused while it was being uploaded is offered again at the first
//! poll after the upload completes, and only then. Validators
//! of a file modified less than a second before it was served are not remembered at all (the
//! next poll is unconditional): static servers derive ETag and Last-Modified from the mtime in
//! whole seconds, so a same-size rewrite within that second (a checksum file always has the same
//! size) would otherwise go unnoticed.
//!
//! # Releases the pipeline would refuse unread
//!
//! When no checksum is published and the pipeline requires one
//! ([`Current::requires_checksum`]), the release file is not requested at all: after the
//! signature lookup (a signature alone vouches for a release), one `HEAD` gives its identity and
//! the release is offered with an empty body, which the pipeline refuses, and remembers, before
//! reading it. While the `HEAD` says the same, later polls end there with no release.
//!
//! A release's [`source`](upshift::fetch::Release::source) is what the server said about the
//! file: `etag:<ETag>`, else `last-modified:<date>#<Content-Length>`, or nothing when the file
//! was modified in the second it was served (see above). A release refused for a checksum
//! mismatch or a cut transfer is remembered with it, and tried again once it changes.
//!
//! # Identity
//!
//! A release's [`identity`](upshift::fetch::Release::identity), by which the pipeline remembers
//! rejected releases, is, in order of preference:
//!
//! 1. `sha256:<digest>` from the published checksum: the same bytes keep their identity when they
//!    are republished (a static server's ETag and Last-Modified change with the file's mtime),
//!    and every fetcher, mirror and restart agrees on it.
//! 2. `etag:<ETag>` when no checksum was published.
//! 3. `last-modified:<date>` without an ETag.
//! 4. `url:<final URL>#<Content-Length>` (or `#?` without a length) when the server sends none of
//!    these.
//!
//! # Errors and statuses
//!
//! `404` and `410` mean "nothing published" (`Ok(None)`, logged at debug level); `429` or `503`
//! with `Retry-After` (up to an hour; a longer one is an error saying until when) is
//! [`FetchError::RateLimited`]; any other unexpected status, a connection
//! error or a timeout is an error naming the URL (and the status). Userinfo and query strings are
//! never shown: URLs in names, logs and errors read `https://host/path?…`.
//!
//! # Transport
//!
//! Without a minisign key, the checksum comes over the same channel as the release: plain
//! `http://` would let anyone on the network path replace both. So `http://` release, checksum,
//! signature and rollout URLs are refused (at startup, by [`Fetcher::apply_policy`], with a
//! message naming the URL and the fixes) unless a key is configured or the operator opted in
//! with `Upgrader::allow_insecure_transport(true)` (meant for loopback test servers). A fetcher
//! used without `apply_policy` (its [`check`](Fetcher::check) called directly) applies the
//! strict default, [`TrustPolicy::default`]: the same URLs are refused at each check, with the
//! same message. Every request is checked again as it is sent, redirects included.
//!
//! # Redirects
//!
//! Up to 10 redirects are followed. A redirect from `https://` to `http://` is never followed,
//! whatever the policy; one to another `http://` URL only where plain transport is allowed. Headers set with [`HttpFetcher::header`] are sent only to
//! URLs of the release URL's origin (scheme, host and port), and not after a redirect has left
//! that origin once, whatever their name (reqwest itself strips only `Authorization`, `Cookie`
//! and `Proxy-Authorization` across origins).
//!
//! # TLS
//!
//! rustls with the *ring* provider, installed as the process default when the first client is
//! built (an application that installed a provider before keeps its own). Server certificates
//! are checked against the operating system's roots and Mozilla's roots compiled in. Neither
//! OpenSSL nor aws-lc is in the dependency tree.

#![warn(missing_docs)]

mod body;
mod check;
mod checksum;
mod delta;
mod meta;
mod request;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Url;
use upshift::fetch::{transport, Current, FetchError, Fetcher, Format, Release, TrustPolicy};

use body::Memory;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// The ceiling on the timeout of the small requests: checksum and signature.
const SMALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest `.sha256` / `.minisig` read.
const SIDECAR_LIMIT: usize = 64 * 1024;
/// The largest `SHA256SUMS` read (a release with many platforms and packages).
const SUMS_LIMIT: usize = 1024 * 1024;

/// Where the checksum comes from.
#[derive(Debug, Clone)]
enum ChecksumSource {
    None,
    /// A `sha256sum` line or bare digest for this one file.
    Sidecar(Url),
    /// A `SHA256SUMS` file: the line naming the release's file.
    Sums(Url),
}

/// Where the minisign signature comes from.
#[derive(Debug, Clone)]
enum SignatureSource {
    None,
    Url(Url),
}

/// Polls an HTTP(S) URL for new releases. See the [crate documentation](crate) for what a poll
/// costs and how releases are identified.
///
/// ```
/// use upshift::fetch::Fetcher;
/// use upshift_http::HttpFetcher;
///
/// # fn main() -> Result<(), upshift::fetch::FetchError> {
/// let fetcher = HttpFetcher::new("https://releases.example.com/app/app-linux")?;
/// assert_eq!(fetcher.name(), "https://releases.example.com/app/app-linux");
/// let _boxed: Box<dyn Fetcher> = Box::new(fetcher);
/// # Ok(())
/// # }
/// ```
pub struct HttpFetcher {
    url: Url,
    name: String,
    checksum: ChecksumSource,
    signature: SignatureSource,
    /// A rollout document (`upshift::rollout::parse_percent`), read for each release offered.
    rollout: Option<Url>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The first invalid builder argument, reported by every `check`.
    config_error: Option<String>,
    connect_timeout: Duration,
    timeout: Duration,
    interval: Duration,
    format: Option<Format>,
    client: Option<reqwest::Client>,
    memory: Arc<Mutex<Memory>>,
    /// Checks started so far: orders the validators a check or a body commits.
    checks: u64,
    /// The last release handed to the pipeline under a checksum. While that release is neither
    /// installed nor refused for good, an unchanged checksum does not prove the file unchanged: a
    /// deploy writes the checksum first, and a poll between the two writes got the old file, or
    /// the new one half written in place.
    last_offered: Option<check::Offered>,
    /// What the configuration allows ([`Fetcher::apply_policy`]); strict until told otherwise.
    policy: TrustPolicy,
    /// Whether to look for a patch from the running build ([`HttpFetcher::deltas`]).
    deltas: bool,
}

impl std::fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header *names* only: their values are credentials.
        let headers: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpFetcher")
            .field("url", &self.name)
            .field("checksum", &self.checksum_location().map(meta::redact))
            .field(
                "signature",
                &match &self.signature {
                    SignatureSource::None => None,
                    SignatureSource::Url(u) => Some(meta::redact(u)),
                },
            )
            .field("headers", &headers)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("interval", &self.interval)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl HttpFetcher {
    /// A fetcher for the release published at `url` (`https`, or `http` where plain transport is
    /// allowed: see [Transport](crate#transport)), with the defaults:
    /// checksum at `<url>.sha256`, signature at `<url>.minisig` if there is one, 10 s connect
    /// timeout, 5 min per download, polled every 60 s. A malformed URL is an error, never a panic.
    ///
    /// ```
    /// use upshift_http::HttpFetcher;
    ///
    /// assert!(HttpFetcher::new("https://releases.example.com/app").is_ok());
    /// assert!(HttpFetcher::new("not a url").is_err());
    /// assert!(HttpFetcher::new("ftp://example.com/app").is_err());
    /// ```
    pub fn new(url: impl reqwest::IntoUrl) -> Result<Self, FetchError> {
        let url = url
            .into_url()
            .map_err(|e| FetchError::Source(format!("invalid release URL: {}", e.without_url())))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(FetchError::Source(format!(
                "invalid release URL {}: only http:// and https:// URLs with a host are supported",
                meta::redact(&url)
            )));
        }
        let sidecar = meta::with_path_suffix(&url, ".sha256");
        let minisig = meta::with_path_suffix(&url, ".minisig");
        Ok(HttpFetcher {
            name: meta::redact(&url),
            url,
            checksum: ChecksumSource::Sidecar(sidecar),
            signature: SignatureSource::Url(minisig),
            rollout: None,
            headers: Vec::new(),
            config_error: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            interval: DEFAULT_INTERVAL,
            format: None,
            client: None,
            memory: Arc::new(Mutex::new(Memory::default())),
            checks: 0,
            last_offered: None,
            policy: TrustPolicy::default(),
            deltas: true,
        })
    }

    /// Reads the expected sha256 from `url` instead of `<url>.sha256`: a `sha256sum` line
    /// (`HEX  name`, `sha256sum --tag`'s `SHA256 (name) = HEX` too) or a bare digest, read by
    /// [`upshift::fetch::checksum`]'s sidecar rules (its one digest whatever name it gives; with
    /// several, the line naming the release's file). A relative
    /// `url` is resolved against the release URL. The default sidecar URL appends `.sha256` to
    /// the release URL's path (a query string stays as it is).
    ///
    /// ```
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// let fetcher = upshift_http::HttpFetcher::new("https://example.com/v2/app")?
    ///     .checksum_url("https://example.com/v2/app.sha256sum");
    /// let sibling = upshift_http::HttpFetcher::new("https://example.com/v2/app")?
    ///     .checksum_url("checksums/app.txt"); // https://example.com/v2/checksums/app.txt
    /// # Ok(())
    /// # }
    /// ```
    pub fn checksum_url(mut self, url: impl AsRef<str>) -> Self {
        if let Some(u) = self.resolve(url.as_ref(), "checksum") {
            self.checksum = ChecksumSource::Sidecar(u);
        }
        self
    }

    /// Reads the expected sha256 from a `SHA256SUMS` file (the output of `sha256sum *`) instead:
    /// the line whose file name is the last segment of the release URL's path. A relative `url`
    /// is resolved against the release URL. A sums file without that line, or with two different
    /// digests for it, fails the check ([`upshift::fetch::checksum`]'s list rules).
    ///
    /// ```
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// let fetcher = upshift_http::HttpFetcher::new("https://example.com/v2/app-linux.tar.gz")?
    ///     .sha256sums_url("SHA256SUMS"); // https://example.com/v2/SHA256SUMS, line "… app-linux.tar.gz"
    /// # Ok(())
    /// # }
    /// ```
    pub fn sha256sums_url(mut self, url: impl AsRef<str>) -> Self {
        if let Some(u) = self.resolve(url.as_ref(), "SHA256SUMS") {
            self.checksum = ChecksumSource::Sums(u);
        }
        self
    }

    /// Looks for no checksum. Releases then carry none, and the install pipeline refuses them
    /// unless it was told to accept remote releases without one. The release `GET` becomes the
    /// conditional request of every poll.
    ///
    /// ```
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// let fetcher = upshift_http::HttpFetcher::new("https://example.com/app")?.no_checksum();
    /// # Ok(())
    /// # }
    /// ```
    pub fn no_checksum(mut self) -> Self {
        self.checksum = ChecksumSource::None;
        self
    }

    /// Reads the detached minisign signature from `url` instead of `<url>.minisig`. Either way a
    /// missing signature (`404`) is not an error here: the pipeline decides whether it needs one.
    /// A relative `url` is resolved against the release URL.
    ///
    /// ```
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// let fetcher = upshift_http::HttpFetcher::new("https://example.com/app")?
    ///     .signature_url("https://example.com/signatures/app.minisig");
    /// # Ok(())
    /// # }
    /// ```
    pub fn signature_url(mut self, url: impl AsRef<str>) -> Self {
        if let Some(u) = self.resolve(url.as_ref(), "signature") {
            self.signature = SignatureSource::Url(u);
        }
        self
    }

    /// Does not look for a signature (saves one request per new release).
    ///
    /// ```
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// let fetcher = upshift_http::HttpFetcher::new("https://example.com/app")?.no_signature();
    /// # Ok(())
    /// # }
    /// ```
    pub fn no_signature(mut self) -> Self {
        self.signature = SignatureSource::None;
        self
    }

    /// Reads the share of the fleet that should take each release from `url` (a relative `url` is
    /// resolved against the release URL), for [staged rollouts](upshift::rollout): a document
    /// such as `rollout: 25` ([`upshift::rollout::parse_percent`]), published beside the release
    /// and raised as the rollout proceeds. Read once per release offered, never on an unchanged
    /// poll; a `404` means the release carries no percentage. Off by default.
    ///
    /// ```
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// let fetcher = upshift_http::HttpFetcher::new("https://example.com/v2/app")?
    ///     .rollout_url("app.rollout"); // https://example.com/v2/app.rollout
    /// # Ok(())
    /// # }
    /// ```
    pub fn rollout_url(mut self, url: impl AsRef<str>) -> Self {
        self.rollout = self.resolve(url.as_ref(), "rollout");
        self
    }

    /// Adds a header to every request to the release URL's origin (`Authorization`, an API key).
    /// Its value is marked sensitive and never logged; it is not sent to another origin, not
    /// even after a redirect (see the [crate documentation](crate#redirects)). An invalid name or
    /// value fails every check with an error naming the header (not its value).
    ///
    /// ```
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// let token = std::env::var("RELEASE_TOKEN").unwrap_or_default();
    /// let fetcher = upshift_http::HttpFetcher::new("https://artifacts.example.com/app")?
    ///     .header("Authorization", format!("Bearer {token}"))
    ///     .header("X-Api-Key", "k-123");
    /// # Ok(())
    /// # }
    /// ```
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        HeaderValue: TryFrom<V>,
    {
        let name = match HeaderName::try_from(name) {
            Ok(n) => n,
            Err(_) => {
                self.config_error
                    .get_or_insert_with(|| "an invalid header name was configured".into());
                return self;
            }
        };
        match HeaderValue::try_from(value) {
            Ok(mut v) => {
                v.set_sensitive(true);
                self.headers.push((name, v));
            }
            Err(_) => {
                self.config_error.get_or_insert_with(|| {
                    format!("the value configured for header {name} is not a valid header value")
                });
            }
        }
        self
    }

    /// How long establishing a connection (DNS, TCP, TLS) may take. Default 10 s.
    ///
    /// ```
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// use std::time::Duration;
    /// let fetcher = upshift_http::HttpFetcher::new("https://example.com/app")?
    ///     .connect_timeout(Duration::from_secs(3));
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long the release download may take in total, from connecting (redirects included) to
    /// the body's last byte. Default 5 min. The small requests (checksum, signature) get the
    /// shorter of this and 30 s, and so does a stall of the download (no byte for that long).
    ///
    /// ```
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// use std::time::Duration;
    /// let fetcher = upshift_http::HttpFetcher::new("https://example.com/big-app.tar.gz")?
    ///     .timeout(Duration::from_secs(20 * 60));
    /// # Ok(())
    /// # }
    /// ```
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// The poll interval (the poll loop adds jitter). Default 60 s.
    ///
    /// ```
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// use std::time::Duration;
    /// use upshift::fetch::Fetcher;
    /// let fetcher = upshift_http::HttpFetcher::new("https://example.com/app")?
    ///     .interval(Duration::from_secs(300));
    /// // The builder method shadows the trait's getter: name the trait to read it back.
    /// assert_eq!(Fetcher::interval(&fetcher), Duration::from_secs(300));
    /// # Ok(())
    /// # }
    /// ```
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }

    /// Whether to look for a patch from the running build before downloading a new release
    /// (default: yes). A publisher's `upshift-publish --delta-from OLD` writes
    /// `<name>.from-<sha256 prefix of OLD>.zst` beside the release, with its own `.sha256` (or a
    /// line in the `SHA256SUMS` the release is listed in) and `.minisig`. When a poll finds a new
    /// release and the patch for the build this host runs, it asks for the release itself with a
    /// `HEAD` only; the pipeline downloads the patch, rebuilds the release from it, and checks the
    /// result against the release's own sha256 and signature. The full release is downloaded only
    /// when that fails. A look costs one small request with a sidecar (a `404` when there is no
    /// patch), none with a checksum list, and happens only when there is a new release.
    ///
    /// ```
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// // Always download the full release.
    /// let fetcher = upshift_http::HttpFetcher::new("https://example.com/app")?.deltas(false);
    /// # Ok(())
    /// # }
    /// ```
    pub fn deltas(mut self, on: bool) -> Self {
        self.deltas = on;
        self
    }

    /// How the release is packaged, overriding the guess. By default the format comes from the
    /// file name of the final URL (after redirects), else `Content-Disposition`'s file name, else
    /// `Content-Type` (`application/gzip`, `application/zip`, `application/x-tar+gzip`, …), else
    /// the configured URL's file name; otherwise the file is the executable itself.
    ///
    /// ```
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// use upshift::fetch::Format;
    /// let fetcher = upshift_http::HttpFetcher::new("https://example.com/download?id=42")?
    ///     .format(Format::TarGz { binary: Some("app/bin/app".into()) });
    /// # Ok(())
    /// # }
    /// ```
    pub fn format(mut self, f: Format) -> Self {
        self.format = Some(f);
        self
    }

    fn resolve(&mut self, url: &str, what: &str) -> Option<Url> {
        match self.url.join(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
            _ => {
                self.config_error.get_or_insert_with(|| {
                    format!("the {what} URL configured is not an http(s) URL")
                });
                None
            }
        }
    }

    /// Refuses any configured URL that is plain `http://` where the policy does not allow it.
    fn require_tls(&self) -> Result<(), FetchError> {
        let signature = match &self.signature {
            SignatureSource::None => None,
            SignatureSource::Url(u) => Some(u),
        };
        let urls = [
            ("release", Some(&self.url)),
            ("checksum", self.checksum_location()),
            ("signature", signature),
            ("rollout", self.rollout.as_ref()),
        ];
        for (what, url) in urls {
            if let Some(url) = url {
                transport::require_tls(&self.policy, what, url.as_str())?;
            }
        }
        Ok(())
    }

    fn checksum_location(&self) -> Option<&Url> {
        match &self.checksum {
            ChecksumSource::None => None,
            ChecksumSource::Sidecar(u) | ChecksumSource::Sums(u) => Some(u),
        }
    }

    fn client(&mut self) -> Result<reqwest::Client, FetchError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        // Ignore "already installed": the application's own choice stands.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .redirect(reqwest::redirect::Policy::none()) // followed by `Getter`, see there
            .user_agent(concat!("upshift-http/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                FetchError::Source(format!(
                    "{}: cannot build the HTTP client: {}",
                    self.name,
                    meta::error_chain(&e)
                ))
            })?;
        self.client = Some(client.clone());
        Ok(client)
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        body::lock(&self.memory)
    }

    fn small_timeout(&self) -> Duration {
        self.timeout.min(SMALL_TIMEOUT)
    }
}

#[async_trait::async_trait]
impl Fetcher for HttpFetcher {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&mut self, current: &Current) -> Result<Option<Release>, FetchError> {
        self.poll(current).await
    }

    /// Refuses plain `http://` URLs unless the policy allows them (see
    /// [Transport](crate#transport)), keeps the policy for the redirects met later, and warns
    /// once when no minisign key is configured.
    fn apply_policy(&mut self, policy: &TrustPolicy) -> Result<(), FetchError> {
        self.policy = *policy;
        self.require_tls()?;
        transport::warn_without_key(policy, &self.name);
        Ok(())
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    /// Forgets the release file's validators, so the next check asks for it unconditionally and
    /// offers it again even though its body was read to the end (the disk filled up while it
    /// was written, say). The checksum's validators stay: it is the same release.
    fn deferred(&mut self, _identity: &str) {
        self.memory().file = None;
        if let Some(offered) = self.last_offered.as_mut() {
            offered.forget_file();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_errors_not_panics() {
        for bad in [
            "",
            "not a url",
            "ftp://example.com/app",
            "file:///etc/passwd",
            "http://",
        ] {
            assert!(HttpFetcher::new(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn defaults() {
        let f = HttpFetcher::new("https://user:pw@example.com/a/app?sig=xyz").expect("valid");
        assert_eq!(f.name(), "https://example.com/a/app?…");
        assert_eq!(Fetcher::interval(&f), DEFAULT_INTERVAL);
        assert_eq!(
            f.checksum_location().map(Url::as_str),
            Some("https://user:pw@example.com/a/app.sha256?sig=xyz")
        );
        // Relative URLs resolve against the release URL (userinfo included: same origin).
        let f = f
            .checksum_url("SHA256.txt")
            .signature_url("/sigs/app.minisig");
        assert_eq!(
            f.checksum_location().map(Url::as_str),
            Some("https://user:pw@example.com/a/SHA256.txt")
        );
        match &f.signature {
            SignatureSource::Url(u) => {
                assert_eq!(u.as_str(), "https://user:pw@example.com/sigs/app.minisig")
            }
            SignatureSource::None => panic!("no signature URL"),
        }
    }

    #[test]
    fn header_values_stay_out_of_debug_output() {
        let f = HttpFetcher::new("https://example.com/app")
            .expect("valid")
            .header("Authorization", "Bearer hunter2");
        let shown = format!("{f:?}");
        assert!(shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[tokio::test]
    async fn invalid_headers_fail_the_check_without_showing_the_value() {
        let mut f = HttpFetcher::new("https://example.com/app")
            .expect("valid")
            .header("X-Key", "line\nbreak-secret");
        // Nothing installed, no checksum required.
        let current = Current::default();
        let e = f
            .check(&current)
            .await
            .expect_err("an invalid header was accepted");
        let msg = e.to_string();
        assert!(msg.contains("x-key") && !msg.contains("secret"), "{msg}");
        let mut f = HttpFetcher::new("https://example.com/app")
            .expect("valid")
            .header("bad header", "v");
        assert!(f.check(&current).await.is_err());
    }
}
