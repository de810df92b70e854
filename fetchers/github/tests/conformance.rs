//! The fetcher conformance suite (crate `upshift-fetcher-conformance`) against [`GithubFetcher`]
//! and the GitHub fixture server, a real process on 127.0.0.1.
//!
//! Publishing writes a new release (a higher `v1.0.N` tag) with one asset named for this target;
//! the fixture computes the asset's `digest`. The very same bytes published again rewrite the
//! same release, as re-uploading an asset would. A checksum other than the bytes' own is
//! published as an `<asset>.sha256` asset with the digest suppressed; no checksum suppresses the
//! digest.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::{sha256_hex, Fixture, Repo, TestDir};
use upshift::fetch::Fetcher;
use upshift_fetcher_conformance::{Failure, Loopback, Source};
use upshift_github::GithubFetcher;

const OWNER: &str = "acme";
const REPO: &str = "app";
/// The fetcher's timeout; the Slow fault stalls longer than this.
const TIMEOUT: Duration = Duration::from_secs(2);
const STALL_MS: u64 = 6_000;

struct Published {
    next: u64,
    /// The tag and hash of the bytes last published, while that release exists.
    last: Option<(String, String)>,
}

struct GithubSource {
    fixture: Mutex<Fixture>,
    repo: Repo,
    published: Mutex<Published>,
    /// Requests and object bytes served by fixture processes stopped since (the Refused fault).
    earlier: Mutex<(u64, u64)>,
    _dir: TestDir,
}

fn asset_name() -> String {
    format!("app-{}", upshift_github::TARGET)
}

impl GithubSource {
    fn start() -> GithubSource {
        let dir = TestDir::new("conf");
        let repo = Repo::new(dir.path(), OWNER, REPO);
        GithubSource {
            fixture: Mutex::new(Fixture::start(dir.path(), &[])),
            repo,
            published: Mutex::new(Published {
                next: 0,
                last: None,
            }),
            earlier: Mutex::new((0, 0)),
            _dir: dir,
        }
    }

    fn fixture(&self) -> std::sync::MutexGuard<'_, Fixture> {
        self.fixture.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tag to publish `bytes` under: the last one for the same bytes, else a new, higher one.
    fn tag_for(&self, bytes: &[u8]) -> String {
        let sha = sha256_hex(bytes);
        let mut p = self.published.lock().unwrap();
        if let Some((tag, last_sha)) = &p.last {
            if *last_sha == sha && self.repo.dir.join(tag).is_dir() {
                return tag.clone();
            }
        }
        let tag = format!("v1.0.{}", p.next);
        p.next += 1;
        p.last = Some((tag.clone(), sha));
        tag
    }

    fn served(&self) -> (u64, u64) {
        let fixture = self.fixture();
        let earlier = *self.earlier.lock().unwrap();
        if !fixture.is_running() {
            return earlier;
        }
        let log = fixture.log();
        let bytes: u64 = log
            .iter()
            .filter(|l| l.origin == "objects")
            .map(|l| l.body_bytes)
            .sum();
        (earlier.0 + log.len() as u64, earlier.1 + bytes)
    }
}

impl Source for GithubSource {
    fn fetcher(&self) -> Box<dyn Fetcher> {
        let api = self.fixture().api.clone();
        let fetcher = GithubFetcher::new(&format!("{OWNER}/{REPO}"))
            .expect("valid repository name")
            .api_base(api)
            .loopback()
            .timeout(TIMEOUT)
            .interval(Duration::from_millis(200))
            // The suite's `Current` has no version; tags start at v1.0.1.
            .current_version("0.0.1");
        Box::new(fetcher)
    }

    fn publish(&self, bytes: &[u8], sha256: Option<&str>) {
        let tag = self.tag_for(bytes);
        let name = asset_name();
        let own = sha256_hex(bytes);
        // The checksum first, then the asset.
        match sha256 {
            Some(s) if s.eq_ignore_ascii_case(&own) => {
                self.repo.remove_file(&tag, &format!("{name}.nodigest"));
                self.repo.remove_file(&tag, &format!("{name}.sha256"));
            }
            Some(other) => {
                self.repo.file(&tag, &format!("{name}.nodigest"), b"");
                let line = format!("{other}  {name}\n");
                self.repo
                    .file(&tag, &format!("{name}.sha256"), line.as_bytes());
            }
            None => {
                self.repo.file(&tag, &format!("{name}.nodigest"), b"");
                self.repo.remove_file(&tag, &format!("{name}.sha256"));
            }
        }
        self.repo.meta(&tag, serde_json::json!({}));
        self.repo.file(&tag, &name, bytes);
    }

    fn publish_truncated(&self, bytes: &[u8], claimed_len: u64) -> bool {
        let tag = self.tag_for(bytes);
        let name = asset_name();
        self.repo.meta(
            &tag,
            serde_json::json!({ "truncate": { &name: claimed_len } }),
        );
        self.repo.file(&tag, &name, bytes);
        true
    }

    fn remove(&self) {
        self.repo.remove_all();
        self.published.lock().unwrap().last = None;
    }

    fn fail_next(&self, kind: Failure) -> bool {
        let fixture = self.fixture();
        match kind {
            Failure::NotFound => {
                fixture.admin("POST", "/_fixture/fail?status=404&count=1");
            }
            Failure::ServerError => {
                fixture.admin("POST", "/_fixture/fail?status=500&count=1");
            }
            Failure::Slow => {
                fixture.admin("POST", &format!("/_fixture/slow?ms={STALL_MS}"));
            }
            Failure::Refused => {
                drop(fixture);
                let (requests, bytes) = self.served();
                *self.earlier.lock().unwrap() = (requests, bytes);
                self.fixture().stop();
            }
        }
        true
    }

    fn clear_faults(&self) {
        let mut fixture = self.fixture();
        if !fixture.is_running() {
            fixture.restart();
        }
        fixture.admin("POST", "/_fixture/clear");
    }

    fn bytes_served(&self) -> Option<u64> {
        Some(self.served().1)
    }

    fn requests_served(&self) -> Option<u64> {
        Some(self.served().0)
    }
}

upshift_fetcher_conformance::fetcher_conformance_tests!(GithubSource::start());
