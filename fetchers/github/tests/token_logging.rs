//! The token never appears in logs: every tracing event at every level (the fetcher's and
//! octocrab's) is captured while a fetcher with a token downloads a release and meets errors.
//!
//! Alone in its own test binary, with a process-wide subscriber: a thread-local one shares
//! tracing's callsite cache with concurrently running tests and can miss events.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{sha256_hex, Fixture, Repo, TestDir};
use tokio::io::AsyncReadExt;
use upshift::fetch::{Current, Fetcher};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_never_logged() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let token = "ghp_neverLogThis42";
    let dir = TestDir::new("token");
    let repo = Repo::new(dir.path(), "acme", "app");
    repo.meta("v1.0.0", serde_json::json!({}));
    repo.file("v1.0.0", &format!("app-{TARGET}"), b"build");
    let fixture = Fixture::start(dir.path(), &["--token", token]);
    let current = Current {
        sha256: sha256_hex(b"installed"),
        identity: None,
        version: None,
        rejected: Vec::new(),
        requires_checksum: false,
    };
    let bounded = Duration::from_secs(30);

    let mut f = GithubFetcher::new("acme/app")
        .expect("valid name")
        .api_base(&fixture.api)
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

    let logs =
        String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    // The fetcher's own events and octocrab's request spans (with URLs) were captured.
    for expected in [
        "github:acme/app",
        "rate limited",
        "requesting",
        "/releases/assets/",
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
}
