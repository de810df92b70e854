//! A GitHub Releases fetcher for [upshift]: the server upgrades itself when a new
//! release is published on GitHub (or GitHub Enterprise).
//!
//! ```no_run
//! use std::time::Duration;
//! use upshift_github::GithubFetcher;
//!
//! # fn main() -> Result<(), upshift::fetch::FetchError> {
//! let fetcher = GithubFetcher::new("acme/server")?
//!     .tag_pattern("v*")
//!     .interval(Duration::from_secs(600));
//! // upshift::Upgrader::new().version(env!("CARGO_PKG_VERSION")).fetcher(fetcher) ...
//! # let _ = fetcher;
//! # Ok(())
//! # }
//! ```
//!
//! What a check costs: one conditional request (`If-None-Match` with the last ETag, sent back
//! exactly as received: GitHub's are weak, `W/"…"`). While nothing is published GitHub answers
//! `304 Not Modified` with no body. That `304` is free of the primary rate limit only with a
//! token: GitHub exempts a conditional request "made while correctly authorized with an
//! `Authorization` header". Without one, every poll, unchanged or not, is one of the 60 requests
//! an hour GitHub allows an IP address, so an interval under a minute runs the limit out by
//! polling alone; keep it at 2 minutes or more (30 an hour, leaving room for a release's
//! downloads and other clients behind the same address; the default 5 minutes spends 12). With a
//! token (5,000 an hour) an unchanged poll costs nothing. Every request carries a `User-Agent`
//! (GitHub refuses requests without one). Only a release that is newer than the running version,
//! is not what is installed, and has an asset for this platform is downloaded, through the API's
//! asset endpoint (GitHub redirects to its storage host; the token is not sent there).
//!
//! # Transport
//!
//! Without a minisign key, the checksum (the asset's `digest`, a checksum asset) comes over the
//! same channel as the asset, so a plain `http://` API base would let anyone on the network path
//! replace both. An `http://` [`api_base`](GithubFetcher::api_base) is refused unless a key is
//! configured or the operator opted in with `Upgrader::allow_insecure_transport(true)` (meant
//! for loopback test fixtures): at startup by [`Fetcher::apply_policy`], with a message naming
//! the URL and the fixes, and at each check for a fetcher never given a policy (the strict
//! [`TrustPolicy::default`]). With a token, a plain `http://` API base is refused whatever the
//! policy unless it is on this machine (`127.0.0.1`, `::1`, `localhost`): the token would travel
//! in clear. Redirects (the asset download's, to GitHub's storage host) are followed by this
//! crate, hop by hop: never from `https://` to `http://`, to another `http://` URL only where
//! plain transport is allowed. The presigned storage URLs they lead to are never logged with
//! their query string.
//!
//! TLS is rustls with the *ring* provider (installed as the process default if none is);
//! certificates are checked against the system's trust store (Debian: `ca-certificates`), which
//! must not be empty. No OpenSSL, no aws-lc.

mod api;
mod checksum;
mod delta;
mod select;
mod transport;

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use http::header::{HeaderValue, ACCEPT, IF_NONE_MATCH};
use http::{HeaderMap, StatusCode};
use octocrab::models::repos::Release as GhRelease;
use semver::Version;
use upshift::fetch::{Current, FetchError, Fetcher, Format, Origin, Release, TrustPolicy};

use api::{Api, AssetGet};
pub use select::TARGET;
use select::{AssetMeta, Platform, TagPattern};

const DEFAULT_API: &str = "https://api.github.com";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5 * 60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Releases listed per page (GitHub's maximum).
const PER_PAGE: u32 = 100;
/// Pages of the release list read at most (1,000 releases).
const MAX_PAGES: usize = 10;
/// The largest JSON document read.
const JSON_LIMIT: usize = 32 * 1024 * 1024;
/// The largest checksum list, `.sha256` or `.minisig` asset read.
const SIDE_LIMIT: usize = 1024 * 1024;
const JSON_ACCEPT: &str = "application/vnd.github+json";
const OCTET_STREAM: &str = "application/octet-stream";

/// A GitHub token. Its `Debug` never shows it, and it is never logged.
#[derive(Clone)]
struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Polls a repository's GitHub Releases and offers the newest release's asset for this platform.
///
/// * **Which release.** By default the latest stable release (`GET
///   /repos/{owner}/{repo}/releases/latest`: GitHub's newest non-draft, non-prerelease one by
///   `created_at`, the date of the tagged commit, not the date it was published). With
///   [`prereleases(true)`](Self::prereleases) or a [`tag_pattern`](Self::tag_pattern), the release
///   list is read instead (following its `Link` pages, up to 1,000 releases) and the release whose
///   tag is the highest semantic version wins; tags that are not versions are skipped there.
/// * **Never a downgrade.** A release whose tag's version is not greater than the version floor
///   is neither offered nor downloaded. The floor is the higher of
///   [`current_version`](Self::current_version) and [`Current::version`] (the running build's
///   version, `Upgrader::version`, raised to the highest version this host ever installed); a
///   check without either fails, saying so. A tag that is not a semantic version is skipped, with
///   one warning per tag. Nor is the installed release offered again (same tag as
///   [`Current::identity`], or a published checksum equal to [`Current::sha256`]), nor one the
///   pipeline refused with the same checksum and signature ([`Current::was_rejected`]); deciding
///   that downloads nothing.
/// * **Which asset.** By default the one whose name names this platform: the target triple
///   ([`TARGET`]) or OS and architecture words (`linux`, `darwin`/`macos`, `windows`; `x86_64`/
///   `amd64`, `aarch64`/`arm64`, …), packaged as `.tar.gz`/`.tgz`, `.zip`, `.gz` or a bare
///   executable; checksum, signature and other files are never chosen. Or the one an
///   [`asset_pattern`](Self::asset_pattern) glob picks.
/// * **Integrity.** The expected sha256 is GitHub's asset `digest` (`sha256:…`), else the line
///   for the asset in a `SHA256SUMS` (or `*checksums.txt`) asset, else an `<asset>.sha256` asset,
///   each read as every upshift fetcher reads one ([`upshift::fetch::checksum`]). A list that
///   gives the asset no sha256 (no line for it, only a sha512) is passed over; one that gives it
///   two different digests fails the check. An `<asset>.minisig` asset is passed on as the
///   signature.
/// * **Cost.** Each check is one conditional request. With a [`token`](Self::token), `304 Not
///   Modified` (nothing changed) does not count against GitHub's rate limit; without one it
///   counts like any request, one of 60 an hour (see the [crate docs](crate) for the interval
///   that leaves). An exhausted rate limit (GitHub answers `403` or `429`) is
///   [`FetchError::RateLimited`] until GitHub's reset time (`x-ratelimit-reset`, or its
///   `Retry-After`), when that is at most an hour away; a longer one is a [`FetchError::Source`]
///   that says when it resets.
/// * **Bounds.** API documents are read up to 32 MiB each (10 pages of releases at most),
///   checksum lists, `.sha256` and `.minisig` assets up to 1 MiB, each within `timeout`; the
///   release body is streamed, cut after `timeout` without data and by the master's
///   [`download_deadline`](upshift::Upgrader::download_deadline).
///
/// ```no_run
/// use upshift::fetch::Fetcher;
/// use upshift_github::GithubFetcher;
///
/// # fn main() -> Result<(), upshift::fetch::FetchError> {
/// let fetcher = GithubFetcher::new("acme/server")?.prereleases(true);
/// assert_eq!(fetcher.name(), "github:acme/server");
/// let _boxed: Box<dyn Fetcher> = Box::new(fetcher);
/// # Ok(())
/// # }
/// ```
pub struct GithubFetcher {
    owner: String,
    repo: String,
    name: String,
    api_base: String,
    token: Option<Token>,
    prereleases: bool,
    tag_pattern: Option<TagPattern>,
    current_version: Option<String>,
    asset_pattern: Option<String>,
    interval: Duration,
    timeout: Duration,
    platform: Platform,
    /// Built on the first check (octocrab's client needs a running tokio runtime).
    api: Option<Api>,
    /// The last release document and what it said, for `If-None-Match`.
    cache: Option<Cached>,
    /// Tags already warned about as not semantic versions: one warning per tag, not per poll.
    unversioned_warned: HashSet<String>,
    /// What the configuration allows ([`Fetcher::apply_policy`]); strict until told otherwise.
    policy: TrustPolicy,
    /// Whether to look for a patch from the running build ([`GithubFetcher::deltas`]).
    deltas: bool,
}

/// The last 200 answer to the releases request: its ETag and the release it pointed at.
#[derive(Debug, Clone)]
struct Cached {
    etag: String,
    pick: Option<Pick>,
}

/// The release a document points at (the latest, or the highest version listed).
#[derive(Debug, Clone)]
struct Pick {
    tag: String,
    version: Option<Version>,
    assets: Vec<AssetMeta>,
    /// The checksum and signature found for one of its assets, once looked up.
    resolved: Option<Resolved>,
}

#[derive(Debug, Clone)]
struct Resolved {
    asset_id: u64,
    sha256: Option<String>,
    signature: Option<String>,
    /// The patch looked for beside the asset, once looked for.
    patch: Option<delta::Lookup>,
}

impl fmt::Debug for GithubFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubFetcher")
            .field("repo", &format_args!("{}/{}", self.owner, self.repo))
            .field("api_base", &self.api_base)
            .field("token", &self.token)
            .field("prereleases", &self.prereleases)
            .field(
                "tag_pattern",
                &self.tag_pattern.as_ref().map(TagPattern::as_str),
            )
            .field("current_version", &self.current_version)
            .field("asset_pattern", &self.asset_pattern)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("deltas", &self.deltas)
            .finish_non_exhaustive()
    }
}

fn valid_name_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 100
        && part != "."
        && part != ".."
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl GithubFetcher {
    /// A fetcher for `repo`, given as `"owner/repo"`. The token defaults to the `GITHUB_TOKEN`
    /// environment variable, if set. Fails (never panics) on anything that is not a GitHub
    /// repository name. Makes no request: the first [`Fetcher::check`] does.
    ///
    /// ```
    /// use upshift_github::GithubFetcher;
    /// assert!(GithubFetcher::new("acme/server").is_ok());
    /// assert!(GithubFetcher::new("acme").is_err());
    /// assert!(GithubFetcher::new("acme/server/extra").is_err());
    /// ```
    pub fn new(repo: &str) -> Result<Self, FetchError> {
        let bad = || {
            FetchError::Source(format!(
                "github: {repo:?} is not a repository name of the form \"owner/repo\""
            ))
        };
        let (owner, name) = repo.trim().split_once('/').ok_or_else(bad)?;
        if !valid_name_part(owner) || !valid_name_part(name) {
            return Err(bad());
        }
        let token = std::env::var("GITHUB_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .map(Token);
        Ok(GithubFetcher {
            name: format!("github:{owner}/{name}"),
            owner: owner.to_string(),
            repo: name.to_string(),
            api_base: DEFAULT_API.to_string(),
            token,
            prereleases: false,
            tag_pattern: None,
            current_version: None,
            asset_pattern: None,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            platform: Platform::this(),
            api: None,
            cache: None,
            unversioned_warned: HashSet::new(),
            policy: TrustPolicy::default(),
            deltas: true,
        })
    }

    /// The REST API's base URL. Default `https://api.github.com`; for GitHub Enterprise Server
    /// `https://HOST/api/v3`. An unusable URL makes every check fail with an error saying so. A
    /// plain `http://` base is refused without a minisign key unless the operator opts in, and
    /// with a token unless it is on this machine: see [Transport](crate#transport).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// let fetcher = upshift_github::GithubFetcher::new("acme/server")?
    ///     .api_base("https://github.example.com/api/v3");
    /// # let _ = fetcher;
    /// # Ok(())
    /// # }
    /// ```
    pub fn api_base(mut self, url: impl Into<String>) -> Self {
        self.api_base = url.into().trim().trim_end_matches('/').to_string();
        self.api = None;
        self.cache = None;
        self
    }

    /// The token sent (as `Authorization: Bearer …`) to the API, and only to the API's origin:
    /// not to the storage host that asset downloads redirect to. Default: the `GITHUB_TOKEN`
    /// environment variable, if set; an empty string means no token (not even that one). Needed
    /// for private repositories; raises the rate limit from 60 to 5,000 requests an hour. Never
    /// logged; the fetcher's `Debug` shows `<redacted>`.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// let token = std::fs::read_to_string("/run/secrets/github-token").unwrap_or_default();
    /// let fetcher = upshift_github::GithubFetcher::new("acme/private-server")?.token(token);
    /// assert!(!format!("{fetcher:?}").contains("ghp_"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into().trim().to_string();
        self.token = (!token.is_empty()).then_some(Token(token));
        self.api = None;
        self
    }

    /// Whether prereleases count (default `false`). With `true`, the release list is read and
    /// the highest semantic version among releases and prereleases wins (`v1.3.0-rc.1` over
    /// `v1.2.0`, but `v1.3.0` over `v1.3.0-rc.1`). Drafts never count.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// let canary = upshift_github::GithubFetcher::new("acme/server")?.prereleases(true);
    /// # let _ = canary;
    /// # Ok(())
    /// # }
    /// ```
    pub fn prereleases(mut self, yes: bool) -> Self {
        self.prereleases = yes;
        self.cache = None;
        self
    }

    /// Only releases whose tag matches: a glob (`*` and `?`, e.g. `"app-v*"`) or, without
    /// wildcards, a prefix (`"app-v"`). The version of a tag is what follows the pattern's literal
    /// prefix (and a leading `v`): `app-v1.4.0` is 1.4.0. For repositories that release several
    /// programs. With a pattern, the release list is read (see [`GithubFetcher`]).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// let fetcher = upshift_github::GithubFetcher::new("acme/monorepo")?.tag_pattern("server-v*");
    /// # let _ = fetcher;
    /// # Ok(())
    /// # }
    /// ```
    pub fn tag_pattern(mut self, glob_or_prefix: impl AsRef<str>) -> Self {
        let p = glob_or_prefix.as_ref().trim();
        self.tag_pattern = (!p.is_empty()).then(|| TagPattern::new(p));
        self.cache = None;
        self
    }

    /// The running program's version (`1.2.3` or `v1.2.3`). The version floor is the higher of
    /// this and [`Current::version`] (which `Upgrader::version(env!("CARGO_PKG_VERSION"))` sets,
    /// and the pipeline raises to the highest version this host installed). Releases whose tag
    /// is not a greater semantic version are ignored: the fetcher never offers a downgrade. One
    /// of the two is required: without any version every check fails, since any release, older
    /// ones included, would look new. A value that is not a version makes every check fail with
    /// an error saying so.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// let fetcher = upshift_github::GithubFetcher::new("acme/server")?
    ///     .current_version(env!("CARGO_PKG_VERSION"));
    /// # let _ = fetcher;
    /// # Ok(())
    /// # }
    /// ```
    pub fn current_version(mut self, v: &str) -> Self {
        self.current_version = Some(v.trim().to_string());
        self
    }

    /// Chooses the asset by a glob on its name (`*` and `?`, e.g. `"server-*-linux-musl.tar.gz"`)
    /// instead of by platform. Checksum, signature and metadata files never match. When several
    /// assets match, the one that fits this platform best wins.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// let fetcher = upshift_github::GithubFetcher::new("acme/server")?
    ///     .asset_pattern("server-*-x86_64-unknown-linux-musl.tar.gz");
    /// # let _ = fetcher;
    /// # Ok(())
    /// # }
    /// ```
    pub fn asset_pattern(mut self, pat: impl Into<String>) -> Self {
        let p = pat.into().trim().to_string();
        self.asset_pattern = (!p.is_empty()).then_some(p);
        self
    }

    /// How often to check ([`Fetcher::interval`]). Default 5 minutes. Without a token every
    /// check costs one of GitHub's 60 requests an hour, even when answered `304`: under 60 s the
    /// limit runs out by polling alone, and 2 minutes or more leaves room for downloads (a
    /// warning is logged at startup below a minute). With a token an unchanged check is free.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// use std::time::Duration;
    /// let fetcher = upshift_github::GithubFetcher::new("acme/server")?
    ///     .interval(Duration::from_secs(60));
    /// # let _ = fetcher;
    /// # Ok(())
    /// # }
    /// ```
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }

    /// How long a request may take to connect and to answer, and the longest pause while a body
    /// is read. Default 30 s.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// use std::time::Duration;
    /// let fetcher = upshift_github::GithubFetcher::new("acme/server")?
    ///     .timeout(Duration::from_secs(10));
    /// # let _ = fetcher;
    /// # Ok(())
    /// # }
    /// ```
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d.max(Duration::from_millis(1));
        self.api = None;
        self
    }

    /// Whether to look for a patch from the running build before downloading a new release
    /// (default: yes). `upshift-publish --delta-from OLD` uploads, beside the release's asset,
    /// `<asset>.from-<sha256 prefix of OLD>.zst`, with its sha256 where the asset's is (GitHub's
    /// `digest`, a line in the `SHA256SUMS` asset, a `.sha256` asset) and its `.minisig`. When a
    /// check finds a new release with a sha256 and the patch for the build this host runs, the
    /// asset itself is not requested: the pipeline downloads the patch, rebuilds the release from
    /// it and checks the result against the release's own sha256 and signature, and downloads the
    /// asset only when that fails. The release document names every asset, so finding the patch
    /// costs no request; its checksum costs none with a `digest` or a list already read, and its
    /// `.minisig` is read when the release is signed. Nothing is looked for on an unchanged poll.
    ///
    /// ```
    /// # fn main() -> Result<(), upshift::fetch::FetchError> {
    /// // Always download the full release.
    /// let fetcher = upshift_github::GithubFetcher::new("acme/server")?.deltas(false);
    /// # let _ = fetcher;
    /// # Ok(())
    /// # }
    /// ```
    pub fn deltas(mut self, on: bool) -> Self {
        self.deltas = on;
        self
    }

    fn config_error(&self, what: impl fmt::Display) -> FetchError {
        FetchError::Source(format!("{}: {what}", self.name))
    }

    /// The API client, built on first use (octocrab's client spawns a task, so it needs the
    /// runtime that `check` runs on).
    fn api(&mut self) -> Result<Api, FetchError> {
        if let Some(api) = &self.api {
            return Ok(api.clone());
        }
        transport::check_api_base(&self.policy, &self.api_base, self.token.is_some())
            .map_err(|e| self.config_error(e))?;
        let base: http::Uri = self
            .api_base
            .parse()
            .ok()
            .filter(|u: &http::Uri| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            })
            .ok_or_else(|| {
                self.config_error(format_args!(
                    "the API base {:?} is not an http(s) URL",
                    self.api_base
                ))
            })?;
        // The process-wide rustls provider: ring (an error only says one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = octocrab::OctocrabBuilder::new()
            .base_uri(base)
            .map_err(|e| self.config_error(format_args!("API base: {e}")))?
            // Only the connect timeout: the connector's read timeout keeps running while a
            // pooled connection is idle, and would fail a request that reuses a connection idle
            // for almost that long. Responses are bounded here instead (`Api::get`, `collect`,
            // `api::body_reader`).
            .set_connect_timeout(Some(self.timeout));
        if let Some(Token(token)) = &self.token {
            // octocrab would panic on a token that cannot be a header value: check first, and
            // never echo the token.
            if HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
                return Err(self.config_error(
                    "the GitHub token contains characters that cannot be sent in a header",
                ));
            }
            builder = builder.personal_token(token.clone());
        }
        let client = builder
            .build()
            .map_err(|e| self.config_error(format_args!("building the API client: {e}")))?;
        // For redirects off the API (the storage host): no token, and no API base path that
        // octocrab would prepend to the presigned URL's path.
        let elsewhere = octocrab::OctocrabBuilder::new()
            .set_connect_timeout(Some(self.timeout))
            .build()
            .map_err(|e| self.config_error(format_args!("building the API client: {e}")))?;
        let api = Api {
            client,
            elsewhere,
            name: self.name.clone(),
            base: self.api_base.clone(),
            timeout: self.timeout,
            policy: self.policy,
        };
        self.api = Some(api.clone());
        Ok(api)
    }

    /// The version releases must exceed: the higher of [`current_version`](Self::current_version)
    /// and [`Current::version`]. Without either there is no telling a downgrade from an upgrade.
    fn version_floor(&self, current: &Current) -> Result<Version, FetchError> {
        let parse = |raw: &str, what: &str| {
            upshift::release::parse_version(raw).ok_or_else(|| {
                self.config_error(format_args!("the {what} {raw:?} is not a semantic version"))
            })
        };
        let configured = match self.current_version.as_deref() {
            Some(raw) => Some(parse(
                raw,
                "running version (GithubFetcher::current_version)",
            )?),
            None => None,
        };
        let known = match current.version.as_deref() {
            Some(raw) => Some(parse(raw, "version floor (Upgrader::version)")?),
            None => None,
        };
        configured.into_iter().chain(known).max().ok_or_else(|| {
            self.config_error(
                "no running version to compare releases with, so an older release would look \
                 new: set `Upgrader::version(env!(\"CARGO_PKG_VERSION\"))` or \
                 `GithubFetcher::current_version(env!(\"CARGO_PKG_VERSION\"))`",
            )
        })
    }

    /// Warns, once per tag, that a release is skipped because its tag is not a version.
    fn skip_unversioned(&mut self, tag: &str) {
        if self.unversioned_warned.insert(tag.to_string()) {
            tracing::warn!(fetcher = %self.name, %tag, "release tag is not a semantic version; release skipped");
        } else {
            tracing::trace!(fetcher = %self.name, %tag, "release tag is not a semantic version; skipped");
        }
    }

    /// Reads the list instead of `/releases/latest`: prereleases or a tag pattern need it.
    fn lists(&self) -> bool {
        self.prereleases || self.tag_pattern.is_some()
    }

    fn releases_path(&self) -> String {
        let (o, r) = (&self.owner, &self.repo);
        match self.lists() {
            true => format!("/repos/{o}/{r}/releases?per_page={PER_PAGE}"),
            false => format!("/repos/{o}/{r}/releases/latest"),
        }
    }

    /// Asks for the release document (conditionally), and returns the release it points at.
    async fn poll(&mut self, api: &Api) -> Result<Option<Pick>, FetchError> {
        let path = self.releases_path();
        let mut headers = json_headers();
        if let Some(cached) = &self.cache {
            if let Ok(v) = HeaderValue::from_str(&cached.etag) {
                headers.insert(IF_NONE_MATCH, v);
            }
        }
        let response = api.get(&path, headers).await?;
        match response.status() {
            StatusCode::NOT_MODIFIED => match &self.cache {
                Some(cached) => {
                    tracing::trace!(fetcher = %self.name, "releases unchanged (304)");
                    Ok(cached.pick.clone())
                }
                None => Err(api.error(&path, "304 Not Modified to an unconditional request")),
            },
            StatusCode::NOT_FOUND if !self.lists() => {
                // No release yet (GitHub says 404 for a repository without releases; also for
                // one the token cannot see).
                tracing::debug!(fetcher = %self.name, "no release published (404)");
                self.cache = None;
                Ok(None)
            }
            StatusCode::OK => {
                let etag = response
                    .headers()
                    .get(http::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let pick = match self.lists() {
                    true => self.read_list(api, &path, response).await?,
                    false => {
                        let release: GhRelease = read_json(api, &path, response).await?;
                        Some(self.pick_of(release))
                    }
                };
                self.cache = etag.map(|etag| Cached {
                    etag,
                    pick: pick.clone(),
                });
                Ok(pick)
            }
            _ => Err(api.status_error(&path, response).await),
        }
    }

    /// Reads the release list (all its pages) and picks the highest version that qualifies.
    async fn read_list(
        &mut self,
        api: &Api,
        first: &str,
        response: http::Response<api::Body>,
    ) -> Result<Option<Pick>, FetchError> {
        let mut best: Option<Pick> = None;
        let mut target = first.to_string();
        let mut response = response;
        for page in 1..=MAX_PAGES {
            let next = api::next_link(response.headers());
            let releases: Vec<GhRelease> = read_json(api, &target, response).await?;
            for release in releases {
                if release.draft || (release.prerelease && !self.prereleases) {
                    continue;
                }
                if let Some(p) = &self.tag_pattern {
                    if !p.matches(&release.tag_name) {
                        continue;
                    }
                }
                let pick = self.pick_of(release);
                let Some(v) = &pick.version else {
                    self.skip_unversioned(&pick.tag);
                    continue;
                };
                if best
                    .as_ref()
                    .and_then(|b| b.version.as_ref())
                    .is_none_or(|b| v > b)
                {
                    best = Some(pick);
                }
            }
            let Some(next) = next else {
                return Ok(best);
            };
            if page == MAX_PAGES {
                tracing::debug!(fetcher = %self.name, pages = MAX_PAGES, "release list not read past this page");
                break;
            }
            target = next;
            response = api.get(&target, json_headers()).await?;
            if response.status() != StatusCode::OK {
                return Err(api.status_error(&target, response).await);
            }
        }
        Ok(best)
    }

    fn pick_of(&self, release: GhRelease) -> Pick {
        let version = select::tag_version(&release.tag_name, self.tag_pattern.as_ref());
        let assets = release
            .assets
            .into_iter()
            .filter(|a| a.state == "uploaded")
            .map(|a| AssetMeta {
                id: a.id.into_inner(),
                name: a.name,
                size: u64::try_from(a.size).unwrap_or(0),
                digest: a.digest,
            })
            .collect();
        Pick {
            tag: release.tag_name,
            version,
            assets,
            resolved: None,
        }
    }

    fn asset_path(&self, id: u64) -> String {
        format!("/repos/{}/{}/releases/assets/{id}", self.owner, self.repo)
    }

    /// How to read `asset` of `pick`'s release, at once or on the first read.
    fn asset_get(&self, api: &Api, pick: &Pick, asset: &AssetMeta) -> AssetGet {
        AssetGet {
            api: api.clone(),
            path: self.asset_path(asset.id),
            name: asset.name.clone(),
            size: asset.size,
            what: format!("{}: release {} asset {}", self.name, pick.tag, asset.name),
        }
    }

    /// Reads a small asset (a checksum list, `.sha256`, `.minisig`) as text.
    async fn small_asset(&self, api: &Api, asset: &AssetMeta) -> Result<String, FetchError> {
        let path = self.asset_path(asset.id);
        let response = api.open_asset(&path, &asset.name).await?;
        let bytes = api
            .collect(response.into_body(), SIDE_LIMIT)
            .await
            .map_err(|e| api.error(&path, format_args!("asset {}: {e}", asset.name)))?;
        String::from_utf8(bytes)
            .map_err(|_| api.error(&path, format_args!("asset {} is not text", asset.name)))
    }

    /// The expected sha256 and the signature of `asset` in `pick`, from the cache when known.
    async fn resolve(
        &mut self,
        api: &Api,
        pick: &Pick,
        asset: &AssetMeta,
        lists: &mut Lists,
    ) -> Result<Resolved, FetchError> {
        if let Some(r) = pick.resolved.as_ref().filter(|r| r.asset_id == asset.id) {
            return Ok(r.clone());
        }
        let sha256 = self.sha256_of(api, pick, asset, lists).await?;
        let signature = self.signature_of(api, pick, asset).await?;
        let resolved = Resolved {
            asset_id: asset.id,
            sha256,
            signature,
            patch: None,
        };
        self.remember(pick, |r| *r = Some(resolved.clone()));
        Ok(resolved)
    }

    /// Updates what the cached document's release remembers of its assets (when `pick` is that
    /// release), so an unchanged poll looks up nothing.
    fn remember(&mut self, pick: &Pick, update: impl FnOnce(&mut Option<Resolved>)) {
        if let Some(cached) = self.cache.as_mut().and_then(|c| c.pick.as_mut()) {
            if cached.tag == pick.tag {
                update(&mut cached.resolved);
            }
        }
    }

    /// The sha256 published for `asset` of `pick`: GitHub's `digest`, else its line in a
    /// checksum list asset, else its `<asset>.sha256` asset; `None` without any.
    async fn sha256_of(
        &self,
        api: &Api,
        pick: &Pick,
        asset: &AssetMeta,
        lists: &mut Lists,
    ) -> Result<Option<String>, FetchError> {
        if let Some(sha) = asset.digest.as_deref().and_then(checksum::from_digest) {
            return Ok(Some(sha));
        }
        let find = |name: &str| pick.assets.iter().find(|a| a.name == name);
        for list in pick
            .assets
            .iter()
            .filter(|a| select::is_checksum_list(&a.name))
        {
            let text = lists.text(self, api, list).await?;
            let sha = checksum::from_list(text, &asset.name).map_err(|e| {
                api.error(
                    &self.asset_path(list.id),
                    format_args!("asset {}: {e}", list.name),
                )
            })?;
            if sha.is_some() {
                return Ok(sha);
            }
        }
        let side = find(&format!("{}.sha256", asset.name))
            .or_else(|| find(&format!("{}.sha256sum", asset.name)));
        let Some(side) = side else {
            return Ok(None);
        };
        let text = self.small_asset(api, side).await?;
        let sha = checksum::from_sidecar(&text, &asset.name).map_err(|e| {
            api.error(
                &self.asset_path(side.id),
                format_args!("asset {}: {e}", side.name),
            )
        })?;
        Ok(Some(sha))
    }

    /// The text of the `<asset>.minisig` asset of `pick`, if there is one.
    async fn signature_of(
        &self,
        api: &Api,
        pick: &Pick,
        asset: &AssetMeta,
    ) -> Result<Option<String>, FetchError> {
        let name = format!("{}.minisig", asset.name);
        match pick.assets.iter().find(|a| a.name == name) {
            Some(sig) => Ok(Some(self.small_asset(api, sig).await?)),
            None => Ok(None),
        }
    }
}

/// The checksum lists read during one check, by asset id: a patch's line is in the list its
/// release's was read from, and is not asked for twice.
#[derive(Default)]
struct Lists(Vec<(u64, String)>);

impl Lists {
    async fn text(
        &mut self,
        fetcher: &GithubFetcher,
        api: &Api,
        list: &AssetMeta,
    ) -> Result<&str, FetchError> {
        let at = match self.0.iter().position(|(id, _)| *id == list.id) {
            Some(at) => at,
            None => {
                let text = fetcher.small_asset(api, list).await?;
                self.0.push((list.id, text));
                self.0.len() - 1
            }
        };
        Ok(&self.0[at].1)
    }
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static(JSON_ACCEPT));
    headers
}

async fn read_json<T: serde::de::DeserializeOwned>(
    api: &Api,
    target: &str,
    response: http::Response<api::Body>,
) -> Result<T, FetchError> {
    let bytes = api
        .collect(response.into_body(), JSON_LIMIT)
        .await
        .map_err(|e| api.error(target, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| api.error(target, format_args!("unexpected response: {e}")))
}

trait WithContext {
    fn with_context(self, what: &str) -> Self;
}

impl WithContext for FetchError {
    /// Adds what was being fetched to a `Source` error's message.
    fn with_context(self, what: &str) -> Self {
        match self {
            FetchError::Source(m) => FetchError::Source(format!("{m} ({what})")),
            other => other,
        }
    }
}

#[async_trait::async_trait]
impl Fetcher for GithubFetcher {
    /// `github:owner/repo`.
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&mut self, current: &Current) -> Result<Option<Release>, FetchError> {
        let api = self.api()?;
        let floor = self.version_floor(current)?;
        let Some(pick) = self.poll(&api).await? else {
            return Ok(None);
        };
        let Some(version) = &pick.version else {
            self.skip_unversioned(&pick.tag);
            return Ok(None);
        };
        if *version <= floor {
            tracing::debug!(fetcher = %self.name, tag = %pick.tag, %floor, "release is not newer than the version floor");
            return Ok(None);
        }
        if current.identity.as_deref() == Some(pick.tag.as_str()) {
            tracing::trace!(fetcher = %self.name, tag = %pick.tag, "release is installed");
            return Ok(None);
        }
        let asset = select::choose(&pick.assets, self.asset_pattern.as_deref(), &self.platform)
            .map_err(|e| self.config_error(format_args!("release {}: {e}", pick.tag)))?
            .clone();
        let mut lists = Lists::default();
        let resolved = self.resolve(&api, &pick, &asset, &mut lists).await?;
        if let Some(sha) = &resolved.sha256 {
            if sha.eq_ignore_ascii_case(current.sha256.trim()) {
                tracing::trace!(fetcher = %self.name, tag = %pick.tag, "release's checksum is the installed binary's");
                return Ok(None);
            }
        }
        if current.was_rejected(
            &pick.tag,
            resolved.sha256.as_deref(),
            resolved.signature.as_deref(),
        ) {
            // Refused by the pipeline before and still vouched for the same way: downloading it
            // again on every poll would only have the download dropped.
            tracing::trace!(fetcher = %self.name, tag = %pick.tag, "release was refused before");
            return Ok(None);
        }
        let version = Some(version.to_string());
        if resolved.sha256.is_none() && resolved.signature.is_none() && current.requires_checksum {
            // The pipeline refuses a remote release nothing vouches for before reading a byte
            // of it: offer it without opening the asset.
            tracing::debug!(fetcher = %self.name, tag = %pick.tag, asset = %asset.name, "no checksum or signature; offered without its body");
            return Ok(Some(Release {
                identity: pick.tag.clone(),
                sha256: None,
                signature: None,
                size_hint: Some(asset.size),
                format: Format::from_name(&asset.name),
                origin: Origin::Remote,
                body: Box::new(tokio::io::empty()),
                local_file: None,
                delta: None,
                rollout_percent: None,
                version,
                source: None,
            }));
        }
        // A patch from the running build, if the release has one: then the asset itself is
        // requested only if the patch does not work.
        let patch = match &resolved.sha256 {
            Some(_) if self.deltas => {
                self.find_patch(&api, &pick, &asset, &resolved, current, &mut lists)
                    .await?
            }
            _ => None,
        };
        let get = self.asset_get(&api, &pick, &asset);
        let (body, delta) = match patch {
            Some(patch) => {
                tracing::debug!(fetcher = %self.name, tag = %pick.tag, asset = %asset.name, patch = %patch.name(), "release offered with a patch from the running build");
                let patch_get = self.asset_get(&api, &pick, patch.asset());
                let delta = patch.into_delta(patch_get);
                (get.lazy(), Some(delta))
            }
            None => {
                tracing::debug!(fetcher = %self.name, tag = %pick.tag, asset = %asset.name, size = asset.size, "downloading release asset");
                (get.open().await?, None)
            }
        };
        Ok(Some(Release {
            identity: pick.tag.clone(),
            sha256: resolved.sha256,
            signature: resolved.signature,
            size_hint: Some(asset.size),
            format: Format::from_name(&asset.name),
            origin: Origin::Remote,
            body,
            local_file: None,
            delta,
            rollout_percent: None,
            version,
            source: None,
        }))
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    /// Refuses a plain `http://` API base unless the policy allows it, and one that would carry
    /// the token in clear to another machine whatever the policy (see
    /// [Transport](crate#transport)); keeps the policy for the redirects met later, and warns
    /// once when no minisign key is configured.
    fn apply_policy(&mut self, policy: &TrustPolicy) -> Result<(), FetchError> {
        self.policy = *policy;
        self.api = None;
        transport::check_api_base(policy, &self.api_base, self.token.is_some())?;
        upshift::fetch::transport::warn_without_key(policy, &self.name);
        if let Some(per_hour) =
            unauthenticated_polls_over_limit(self.token.is_some(), self.interval)
        {
            tracing::warn!(
                fetcher = %self.name,
                interval = ?self.interval,
                polls_per_hour = per_hour,
                "without a token every poll, even an unchanged 304, costs one of GitHub's 60 \
                 requests an hour: this interval uses the limit up and the checks will be rate \
                 limited; set GITHUB_TOKEN or an interval of 2 minutes or more"
            );
        }
        Ok(())
    }
}

/// GitHub's primary rate limit for unauthenticated requests, per hour and IP address.
const UNAUTHENTICATED_PER_HOUR: u64 = 60;

/// The polls an hour at `interval`, when they exceed what GitHub allows without a token: then
/// every poll, `304` included, counts against the limit (GitHub exempts only authorized
/// conditional requests).
fn unauthenticated_polls_over_limit(has_token: bool, interval: Duration) -> Option<u64> {
    let per_hour = 3_600_000u64
        .checked_div(u64::try_from(interval.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(u64::MAX);
    (!has_token && per_hour > UNAUTHENTICATED_PER_HOUR).then_some(per_hour)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_faster_than_a_minute_without_a_token_is_over_the_limit() {
        let over = |token, secs| unauthenticated_polls_over_limit(token, Duration::from_secs(secs));
        assert_eq!(over(false, 30), Some(120));
        assert_eq!(over(false, 59), Some(61));
        assert_eq!(over(false, 60), None);
        assert_eq!(over(false, 300), None);
        assert_eq!(over(true, 1), None);
        assert_eq!(
            unauthenticated_polls_over_limit(false, Duration::ZERO),
            Some(u64::MAX)
        );
    }

    impl GithubFetcher {
        /// With the opt-in for a plain loopback API base, as `Upgrader::run` would hand over.
        fn opted_in(mut self) -> Self {
            let policy = TrustPolicy {
                signature_required: false,
                allow_insecure_transport: true,
            };
            self.apply_policy(&policy).expect("the opt-in");
            self
        }
    }

    #[tokio::test]
    async fn a_plain_api_base_needs_the_opt_in_and_a_token_needs_loopback() {
        let current = Current::default();
        let e = GithubFetcher::new("o/r")
            .unwrap()
            .api_base("http://127.0.0.1:9")
            .apply_policy(&TrustPolicy::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http://127.0.0.1:9") && e.contains("allow_insecure_transport(true)"),
            "{e}"
        );
        // Never given a policy: refused at check time, before any request, the same way.
        let mut unconfigured = GithubFetcher::new("o/r")
            .unwrap()
            .api_base("http://127.0.0.1:9")
            .current_version("1.0.0");
        let at_check = unconfigured.check(&current).await.unwrap_err().to_string();
        assert!(
            at_check.contains("github:o/r") && at_check.contains(&e),
            "{at_check}"
        );
        let mut remote = GithubFetcher::new("o/r")
            .unwrap()
            .api_base("http://ghe.example/api/v3")
            .token("ghp_x");
        let policy = TrustPolicy {
            signature_required: true,
            allow_insecure_transport: true,
        };
        let e = remote.apply_policy(&policy).unwrap_err().to_string();
        assert!(
            e.contains("token would travel in clear") && !e.contains("ghp_x"),
            "{e}"
        );
    }

    #[test]
    fn repository_names() {
        for ok in ["a/b", "acme/server", "Acme-Corp/my_app.rs", " o/r "] {
            assert!(GithubFetcher::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/", "a/", "/b", "a/b/c", "a", "a b/c", "a/..", "./b", "a/b?x", "a/b#", "ä/b",
            "a/b\n",
        ] {
            // "a/b\n" is trimmed to "a/b"; every other one is refused.
            let r = GithubFetcher::new(bad);
            if bad == "a/b\n" {
                assert!(r.is_ok());
            } else {
                let e = r.expect_err(bad).to_string();
                assert!(e.contains("owner/repo"), "{e}");
            }
        }
    }

    #[test]
    fn token_is_redacted() {
        let f = GithubFetcher::new("o/r")
            .unwrap()
            .token("ghp_supersecret123");
        let shown = format!("{f:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn defaults() {
        let f = GithubFetcher::new("o/r").unwrap();
        assert_eq!(f.name(), "github:o/r");
        assert_eq!(Fetcher::interval(&f), Duration::from_secs(300));
        assert_eq!(f.api_base, "https://api.github.com");
        assert!(!f.lists());
        assert!(f.tag_pattern("v*").lists());
        assert!(GithubFetcher::new("o/r").unwrap().prereleases(true).lists());
    }

    #[tokio::test]
    async fn bad_settings_are_errors_not_panics() {
        // Nothing installed, no checksum required.
        let current = Current::default();
        let mut f = GithubFetcher::new("o/r").unwrap().api_base("not a url");
        let e = f.check(&current).await.unwrap_err().to_string();
        assert!(e.contains("github:o/r") && e.contains("not a url"), "{e}");

        let mut f = GithubFetcher::new("o/r")
            .unwrap()
            .api_base("http://127.0.0.1:9")
            .opted_in()
            .token("line\nbreak");
        let e = f.check(&current).await.unwrap_err().to_string();
        assert!(e.contains("token") && !e.contains("break"), "{e}");

        let mut f = GithubFetcher::new("o/r")
            .unwrap()
            .api_base("http://127.0.0.1:9")
            .opted_in()
            .current_version("banana");
        let e = f.check(&current).await.unwrap_err().to_string();
        assert!(e.contains("banana"), "{e}");

        // No version at all: refused before any request (port 9 would fail to connect).
        let mut f = GithubFetcher::new("o/r")
            .unwrap()
            .api_base("http://127.0.0.1:9")
            .opted_in();
        let e = f.check(&current).await.unwrap_err().to_string();
        assert!(
            e.contains("github:o/r")
                && e.contains("Upgrader::version(env!(\"CARGO_PKG_VERSION\"))")
                && e.contains("GithubFetcher::current_version"),
            "{e}"
        );
        let floored = Current {
            version: Some("pear".into()),
            ..current.clone()
        };
        let e = f.check(&floored).await.unwrap_err().to_string();
        assert!(e.contains("pear"), "{e}");
    }
}
