//! The fixture with one repository, a fetcher pointed at it, and bounded checks: shared by the
//! GitHub-specific test crates.

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncReadExt;
use upshift::fetch::{Current, FetchError, Fetcher, Release};
use upshift_fetcher_conformance::Loopback;
use upshift_github::{GithubFetcher, TARGET};

use super::{sha256_hex, Fixture, Logged, Repo, TestDir};

pub const OWNER: &str = "acme";
pub const REPO: &str = "app";

/// The fixture, its data dir and the repository in it.
pub struct Setup {
    pub fixture: Fixture,
    pub repo: Repo,
    _dir: TestDir,
}

impl Setup {
    pub fn new(args: &[&str]) -> Setup {
        let dir = TestDir::new("spec");
        let repo = Repo::new(dir.path(), OWNER, REPO);
        Setup {
            fixture: Fixture::start(dir.path(), args),
            repo,
            _dir: dir,
        }
    }

    pub fn fetcher(&self) -> GithubFetcher {
        GithubFetcher::new(&format!("{OWNER}/{REPO}"))
            .expect("valid repository name")
            .api_base(&self.fixture.api)
            .loopback()
            .timeout(Duration::from_secs(5))
    }

    /// Publishes `tag` with one asset for this target holding `bytes`; `created` orders releases
    /// (`2025-01-01T00:00:00Z`).
    pub fn release(&self, tag: &str, created: &str, extra: serde_json::Value, bytes: &[u8]) {
        let mut meta = json!({ "created_at": created, "published_at": created });
        if let (Some(m), Some(e)) = (meta.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        self.repo.meta(tag, meta);
        self.repo.file(tag, &asset(), bytes);
    }

    pub fn log_since(&self, before: usize) -> Vec<Logged> {
        self.fixture.log().into_iter().skip(before).collect()
    }
}

pub fn asset() -> String {
    format!("app-{TARGET}")
}

/// The version floor of a host that installed nothing yet: the running build's version, older
/// than every release published here.
pub const RUNNING: &str = "0.0.1";

pub fn nothing_installed() -> Current {
    Current {
        sha256: sha256_hex(b"not any published build"),
        identity: None,
        version: Some(RUNNING.into()),
        rejected: Vec::new(),
        requires_checksum: false,
    }
}

pub async fn check(
    f: &mut GithubFetcher,
    current: &Current,
) -> Result<Option<Release>, FetchError> {
    tokio::time::timeout(Duration::from_secs(30), f.check(current))
        .await
        .expect("check() returned within 30 s")
}

pub async fn found(f: &mut GithubFetcher, current: &Current) -> Release {
    match check(f, current).await {
        Ok(Some(r)) => r,
        Ok(None) => panic!("expected a release, got none"),
        Err(e) => panic!("expected a release, got the error: {e}"),
    }
}

pub async fn none(f: &mut GithubFetcher, current: &Current, what: &str) {
    match check(f, current).await {
        Ok(None) => {}
        Ok(Some(r)) => panic!("{what}: expected no release, got {r:?}"),
        Err(e) => panic!("{what}: expected no release, got the error: {e}"),
    }
}

pub async fn body(release: &mut Release) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), release.body.read_to_end(&mut out))
        .await
        .expect("body read within 30 s")
        .expect("body reads without error");
    out
}
