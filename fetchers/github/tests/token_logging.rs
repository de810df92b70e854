//! What the fetcher logs. The token never appears in logs, nor the query string of the presigned
//! storage URL an asset download redirects to: every tracing event at every level (the
//! fetcher's and octocrab's) is captured while a fetcher with a token downloads a release and
//! meets errors. A tag that is not a version is warned about once, not on every poll; so is the
//! absence of a minisign key, once per fetcher.
//!
//! In a test binary of their own, with one process-wide subscriber shared by its tests (each
//! looks at the lines naming its own repository): a thread-local subscriber shares tracing's
//! callsite cache with concurrently running tests and can miss events.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{sha256_hex, Fixture, Repo, TestDir};
use tokio::io::AsyncReadExt;
use upshift::fetch::{Current, Fetcher};
use upshift_fetcher_conformance::Loopback;
use upshift_github::{GithubFetcher, TARGET};

/// A writer the subscriber appends to.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// Everything logged in this process, at every level, from the first call on.
fn captured() -> Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Captured::default();
            let sink = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
                .with_writer(move || sink.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
            captured
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_never_logged() {
    let captured = captured();

    let token = "ghp_neverLogThis42";
    let dir = TestDir::new("token");
    let repo = Repo::new(dir.path(), "acme", "app");
    repo.meta("v1.0.0", serde_json::json!({}));
    repo.file("v1.0.0", &format!("app-{TARGET}"), b"build");
    let fixture = Fixture::start(dir.path(), &["--token", token]);
    let current = Current {
        sha256: sha256_hex(b"installed"),
        identity: None,
        version: Some("0.0.1".into()),
        rejected: Vec::new(),
        requires_checksum: false,
    };
    let bounded = Duration::from_secs(30);

    let mut f = GithubFetcher::new("acme/app")
        .expect("valid name")
        .api_base(&fixture.api)
        .loopback()
        .token(token);
    let shown = format!("{f:?}");
    assert!(
        !shown.contains(token) && shown.contains("<redacted>"),
        "{shown}"
    );

    let mut release = tokio::time::timeout(bounded, f.check(&current))
        .await
        .expect("bounded")
        .expect("no error")
        .expect("a release");
    let mut body = Vec::new();
    release
        .body
        .read_to_end(&mut body)
        .await
        .expect("body reads");
    assert_eq!(body, b"build");

    fixture.admin("POST", "/_fixture/fail?status=500&count=1");
    let e = tokio::time::timeout(bounded, f.check(&current))
        .await
        .expect("bounded")
        .expect_err("a 500");
    assert!(!e.to_string().contains(token), "{e}");
    fixture.admin("POST", "/_fixture/fail?status=429&count=1&retry_after=3");
    let _ = tokio::time::timeout(bounded, f.check(&current)).await;

    let logs = captured.text();
    // The fetcher's own events were captured, the redirect to the storage host among them.
    for expected in [
        "github:acme/app",
        "rate limited",
        "following a redirect",
        "/releases/assets/",
        "/objects/acme/app/",
    ] {
        assert!(
            logs.contains(expected),
            "{expected:?} is not in the captured logs:\n{logs}"
        );
    }
    assert!(
        !logs.contains(token),
        "the token appears in the logs:\n{logs}"
    );
    assert!(
        !logs.contains("Bearer"),
        "an Authorization header appears in the logs:\n{logs}"
    );
    // The storage URL is presigned (`?expires=…&token=…`): logged without its query string.
    for presigned in ["expires=", "token="] {
        assert!(
            !logs.contains(presigned),
            "a presigned URL's query ({presigned}) appears in the logs:\n{logs}"
        );
    }
}

/// The latest release's tag is not a version: skipped, with one WARN however often it is polled;
/// the release list skips it the same way and takes the highest version. Nothing is downloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_that_is_not_a_version_is_warned_about_once() {
    let captured = captured();
    let dir = TestDir::new("tags");
    let repo = Repo::new(dir.path(), "acme", "tags");
    let asset = format!("app-{TARGET}");
    let at = |t: &str| serde_json::json!({"created_at": t, "published_at": t});
    repo.meta("v1.5.0", at("2025-01-01T00:00:00Z"));
    repo.file("v1.5.0", &asset, b"one point five");
    repo.meta("nightly", at("2025-02-01T00:00:00Z"));
    repo.file("nightly", &asset, b"nightly build");
    let fixture = Fixture::start(dir.path(), &[]);
    let current = Current {
        sha256: sha256_hex(b"installed"),
        identity: None,
        version: Some("1.0.0".into()),
        rejected: Vec::new(),
        requires_checksum: false,
    };
    let bounded = Duration::from_secs(30);
    let fetcher = || {
        GithubFetcher::new("acme/tags")
            .expect("valid name")
            .api_base(&fixture.api)
            .loopback()
            .timeout(Duration::from_secs(5))
    };

    let mut latest = fetcher();
    for poll in 0..3 {
        let r = tokio::time::timeout(bounded, latest.check(&current))
            .await
            .expect("bounded")
            .unwrap_or_else(|e| panic!("poll {poll}: {e}"));
        assert!(r.is_none(), "poll {poll}: {r:?}");
    }
    let mut listing = fetcher().prereleases(true);
    let r = tokio::time::timeout(bounded, listing.check(&current))
        .await
        .expect("bounded")
        .expect("no error")
        .expect("the highest version listed");
    assert_eq!(r.identity, "v1.5.0");
    drop(r);

    let downloads: Vec<_> = fixture
        .log()
        .into_iter()
        .filter(|l| l.origin == "api" && l.path.contains("/releases/assets/"))
        .collect();
    assert_eq!(downloads.len(), 1, "only v1.5.0's asset: {downloads:?}");
    let logs = captured.text();
    let (startup, warnings): (Vec<&str>, Vec<&str>) = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("github:acme/tags"))
        .partition(|l| l.contains("no minisign key configured"));
    // Without a key, each fetcher said once, when given its policy, what the checksum does not
    // protect: not on each poll.
    assert_eq!(startup.len(), 2, "{startup:#?}");
    assert!(
        startup
            .iter()
            .all(|l| l.contains("does not stop whoever controls the release origin")),
        "{startup:#?}"
    );
    // One per fetcher: the latest one polled three times, the listing one once.
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings
            .iter()
            .all(|l| l.contains("nightly") && l.contains("not a semantic version")),
        "{warnings:#?}"
    );
}
