//! [`GithubFetcher`] against GitHub's documented rules, as the fixture now plays them: an
//! unauthenticated `304` costs a request of the primary rate limit and an authorized one does
//! not; an exhausted limit may answer `429` as well as `403`; ETags are weak and go back as
//! received; `/releases/latest` is the newest by `created_at`; every request has a `User-Agent`.

mod common;

use std::time::Duration;

use common::http_full;
use common::setup::{body, check, found, none, nothing_installed, Setup, RUNNING};
use serde_json::json;
use upshift::fetch::{Current, FetchError, Release};

/// What a host that installed `r` reports.
fn installed(r: &Release) -> Current {
    Current {
        sha256: r.sha256.clone().unwrap_or_default(),
        identity: Some(r.identity.clone()),
        version: Some(RUNNING.into()),
        rejected: Vec::new(),
        requires_checksum: false,
    }
}

/// Installs the one release, and returns the API requests that took (each counts).
async fn install(s: &Setup, f: &mut upshift_github::GithubFetcher) -> (Current, usize) {
    let mut r = found(f, &nothing_installed()).await;
    body(&mut r).await;
    let spent = s.fixture.log().iter().filter(|l| l.origin == "api").count();
    (installed(&r), spent)
}

/// `checked` is [`FetchError::RateLimited`] for about the time to the end of a `window` (seconds)
/// that started with the test.
fn waits_for_the_reset(checked: Result<Option<Release>, FetchError>, window: u64, what: &str) {
    match checked {
        Err(FetchError::RateLimited(d)) => assert!(
            d <= Duration::from_secs(window) && d >= Duration::from_secs(window - 60),
            "{what}: {d:?} is not the time to the reset (~{window} s)"
        ),
        other => panic!("{what}: expected RateLimited, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_304_costs_a_request_an_authorized_one_does_not() {
    let (limit, window) = (6usize, 600u64);
    let token = "ghp_rulesToken";
    let args = |with_token: bool| {
        let mut a = vec![
            "--rate-limit".to_string(),
            limit.to_string(),
            "--rate-window".to_string(),
            window.to_string(),
        ];
        if with_token {
            a.extend(["--token".to_string(), token.to_string()]);
        }
        a
    };

    // Unauthenticated: every unchanged poll is a 304 and spends one of the `limit` requests.
    let a = args(false);
    let s = Setup::new(&a.iter().map(String::as_str).collect::<Vec<_>>());
    s.release("v1.0.0", "2025-01-01T00:00:00Z", json!({}), b"one");
    let mut f = s.fetcher();
    let (current, spent) = install(&s, &mut f).await;
    assert!(spent < limit, "installing took {spent} requests");
    for _ in spent..limit {
        none(&mut f, &current, "unchanged, within the limit").await;
    }
    waits_for_the_reset(check(&mut f, &current).await, window, "the 304s used it up");
    let log = s.fixture.log();
    let not_modified = log.iter().filter(|l| l.status == 304).count();
    assert_eq!(not_modified, limit - spent, "{log:?}");

    // Authorized: as many unchanged polls as wanted, none of them spends anything.
    let a = args(true);
    let s = Setup::new(&a.iter().map(String::as_str).collect::<Vec<_>>());
    s.release("v1.0.0", "2025-01-01T00:00:00Z", json!({}), b"one");
    let mut f = s.fetcher().token(token);
    let (current, _) = install(&s, &mut f).await;
    for _ in 0..2 * limit {
        none(&mut f, &current, "unchanged, authorized").await;
    }
    let log = s.fixture.log();
    assert_eq!(log.iter().filter(|l| l.status == 304).count(), 2 * limit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_a_reset_is_rate_limited_until_the_reset() {
    let window = 900u64;
    let s = Setup::new(&[
        "--rate-limit",
        "2",
        "--rate-window",
        &window.to_string(),
        "--rate-limit-status",
        "429",
    ]);
    s.release("v1.0.0", "2025-01-01T00:00:00Z", json!({}), b"one");
    let mut f = s.fetcher();
    let (current, spent) = install(&s, &mut f).await;
    assert_eq!(spent, 2, "{:?}", s.fixture.log());
    // x-ratelimit-remaining: 0 and x-ratelimit-reset, no retry-after: the wait is to the reset,
    // not the one-minute default for a bare 429.
    waits_for_the_reset(check(&mut f, &current).await, window, "429");
    let log = s.fixture.log();
    assert_eq!(log.last().map(|l| l.status), Some(429), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_etag_goes_back_as_received_and_gets_a_304() {
    let s = Setup::new(&[]);
    s.release("v1.0.0", "2025-01-01T00:00:00Z", json!({}), b"one");
    let (_, head, _) = http_full(
        s.fixture.api_addr(),
        "GET",
        "/repos/acme/app/releases/latest",
        &[],
    );
    let etag = head
        .iter()
        .find(|(k, _)| k == "etag")
        .map(|(_, v)| v.clone())
        .expect("an ETag");
    assert!(etag.starts_with("W/\""), "GitHub's ETags are weak: {etag}");

    let mut f = s.fetcher();
    let (current, _) = install(&s, &mut f).await;
    let before = s.fixture.log().len();
    none(&mut f, &current, "unchanged").await;
    let poll = s.log_since(before);
    assert_eq!(poll.len(), 1, "{poll:?}");
    assert_eq!(poll[0].status, 304, "{poll:?}");
    assert_eq!(poll[0].if_none_match_value.as_deref(), Some(etag.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_is_the_newest_by_created_at_even_if_published_earlier() {
    let s = Setup::new(&[]);
    // v1.1.0 was published last, but its commit is older than v1.0.0's: GitHub's latest is
    // v1.0.0, and so is the fetcher's (it does not second-guess `/releases/latest`).
    s.release(
        "v1.0.0",
        "2025-02-01T00:00:00Z",
        json!({"published_at": "2025-02-01T00:00:00Z"}),
        b"one",
    );
    s.release(
        "v1.1.0",
        "2025-01-01T00:00:00Z",
        json!({"published_at": "2025-03-01T00:00:00Z"}),
        b"one point one",
    );
    let mut r = found(&mut s.fetcher(), &nothing_installed()).await;
    assert_eq!(r.identity, "v1.0.0");
    assert_eq!(body(&mut r).await, b"one");
    // The list, read for a tag pattern, still picks the highest version.
    let mut listed = s.fetcher().tag_pattern("v*");
    assert_eq!(
        found(&mut listed, &nothing_installed()).await.identity,
        "v1.1.0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_carries_a_user_agent() {
    let token = "ghp_uaToken";
    let s = Setup::new(&["--token", token]);
    s.release("v1.0.0", "2025-01-01T00:00:00Z", json!({}), b"one");
    let mut f = s.fetcher().token(token);
    let (current, _) = install(&s, &mut f).await;
    none(&mut f, &current, "unchanged").await;
    let log = s.fixture.log();
    assert!(log.iter().any(|l| l.origin == "objects"), "{log:?}");
    assert!(
        log.iter()
            .all(|l| l.user_agent.as_deref().is_some_and(|ua| !ua.is_empty())),
        "a request without a User-Agent: {log:?}"
    );
    assert!(log.iter().all(|l| l.status != 403), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_agent_names_upshift_github_and_its_version() {
    let s = Setup::new(&[]);
    s.release("v1.0.0", "2025-01-01T00:00:00Z", json!({}), b"one");
    let mut f = s.fetcher();
    let (current, _) = install(&s, &mut f).await;
    none(&mut f, &current, "unchanged").await;
    let log = s.fixture.log();
    let expected = concat!("upshift-github/", env!("CARGO_PKG_VERSION"));
    assert!(log.iter().any(|l| l.origin == "objects"), "{log:?}");
    for l in &log {
        assert_eq!(
            l.user_agent.as_deref(),
            Some(expected),
            "{} {} {}",
            l.origin,
            l.method,
            l.path
        );
    }
}
