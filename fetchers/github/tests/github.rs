//! GitHub-specific behaviour of [`GithubFetcher`] against the fixture server (a real process on
//! 127.0.0.1): which release and asset are chosen, where checksums come from, what an unchanged
//! poll costs, rate limits, and where the token goes.

mod common;

use std::time::Duration;

use common::setup::{asset, body, check, found, none, nothing_installed, Setup, RUNNING};
use common::{http_full, sha256_hex, Logged};
use serde_json::json;
use upshift::fetch::{Current, FetchError, Format};
use upshift_fetcher_conformance::Loopback;
use upshift_github::{GithubFetcher, TARGET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_stable_is_chosen_over_a_newer_prerelease() {
    let s = Setup::new(&[]);
    s.release("v1.0.0", "2025-01-01T00:00:00Z", json!({}), b"stable one");
    s.release(
        "v1.1.0-rc.1",
        "2025-02-01T00:00:00Z",
        json!({"prerelease": true}),
        b"release candidate",
    );
    // A newer draft is never offered either.
    s.release(
        "v9.0.0",
        "2025-03-01T00:00:00Z",
        json!({"draft": true}),
        b"draft",
    );

    let mut stable = s.fetcher();
    let mut r = found(&mut stable, &nothing_installed()).await;
    assert_eq!(r.identity, "v1.0.0");
    assert_eq!(body(&mut r).await, b"stable one");

    let mut canary = s.fetcher().prereleases(true);
    let mut r = found(&mut canary, &nothing_installed()).await;
    assert_eq!(r.identity, "v1.1.0-rc.1");
    assert_eq!(body(&mut r).await, b"release candidate");

    // The final release outranks its release candidate by version, with prereleases on too.
    s.release(
        "v1.1.0",
        "2025-01-15T00:00:00Z",
        json!({}),
        b"one point one",
    );
    let mut r = found(&mut canary, &nothing_installed()).await;
    assert_eq!(r.identity, "v1.1.0");
    assert_eq!(body(&mut r).await, b"one point one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_downgrades() {
    let s = Setup::new(&[]);
    s.release("v1.2.0", "2025-01-01T00:00:00Z", json!({}), b"1.2.0");

    for running in ["1.2.0", "v1.2.0", "1.3.0", "2.0.0-alpha.1"] {
        let mut f = s.fetcher().current_version(running);
        none(&mut f, &nothing_installed(), running).await;
    }
    // The version the master knows (Upgrader::version) counts the same way.
    let mut f = s.fetcher();
    let newer_running = Current {
        version: Some("1.5.0".into()),
        ..nothing_installed()
    };
    none(&mut f, &newer_running, "Current.version 1.5.0").await;
    let older_running = Current {
        version: Some("1.1.9".into()),
        ..nothing_installed()
    };
    assert_eq!(found(&mut f, &older_running).await.identity, "v1.2.0");
    // The floor is the higher of the two: a lower current_version does not lower it.
    let mut f = s.fetcher().current_version("1.0.0");
    none(&mut f, &newer_running, "current_version 1.0.0, floor 1.5.0").await;
    let mut f = s.fetcher().current_version("1.3.0");
    none(&mut f, &older_running, "current_version 1.3.0, floor 1.1.9").await;
    // A prerelease of the same version is older than the release.
    let mut f = s.fetcher().current_version("1.2.0-rc.2");
    assert_eq!(found(&mut f, &nothing_installed()).await.identity, "v1.2.0");
}

/// The cases: once v99.0.0 was installed (the floor the pipeline persists), a release
/// tagged v50.0.0 is neither offered nor downloaded; a backport v1.1.1 published after v1.2.0
/// was installed is not taken; and without any version the check fails, naming the fix, before
/// a single request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_floor_holds_and_is_required() {
    let s = Setup::new(&[]);
    s.release("v50.0.0", "2025-01-01T00:00:00Z", json!({}), b"fifty");
    let downloads = |log: &[Logged]| {
        log.iter()
            .filter(|l| l.path.contains("/releases/assets/") || l.origin == "objects")
            .count()
    };

    let installed_99 = Current {
        version: Some("99.0.0".into()),
        ..nothing_installed()
    };
    // The build's own version (current_version) is lower: the floor is the higher of the two.
    let mut f = s.fetcher().current_version("1.0.0");
    let before = s.fixture.log().len();
    none(&mut f, &installed_99, "v50.0.0 after v99.0.0").await;
    none(&mut f, &installed_99, "v50.0.0 after v99.0.0, again").await;
    let log = s.log_since(before);
    assert_eq!(downloads(&log), 0, "{log:?}");
    assert!(
        log.iter().all(|l| l.path.ends_with("/releases/latest")),
        "{log:?}"
    );

    // A backport published after 1.2.0 was installed: the latest release, yet below the floor.
    let b = Setup::new(&[]);
    b.release("v1.2.0", "2025-02-01T00:00:00Z", json!({}), b"1.2.0");
    b.release("v1.1.1", "2025-03-01T00:00:00Z", json!({}), b"backport");
    let installed_120 = Current {
        version: Some("1.2.0".into()),
        ..nothing_installed()
    };
    let before = b.fixture.log().len();
    none(&mut b.fetcher(), &installed_120, "backport v1.1.1, latest").await;
    let mut listing = b.fetcher().prereleases(true);
    none(&mut listing, &installed_120, "backport v1.1.1, list").await;
    let log = b.log_since(before);
    assert_eq!(downloads(&log), 0, "{log:?}");

    // No floor at all.
    let no_version = Current {
        version: None,
        ..nothing_installed()
    };
    let before = s.fixture.log().len();
    let e = check(&mut s.fetcher(), &no_version)
        .await
        .expect_err("no version: an error")
        .to_string();
    assert!(
        e.contains("github:acme/app")
            && e.contains("Upgrader::version(env!(\"CARGO_PKG_VERSION\"))")
            && e.contains("GithubFetcher::current_version"),
        "{e}"
    );
    assert!(s.log_since(before).is_empty(), "requests without a floor");
    // current_version alone is a floor.
    let mut f = s.fetcher().current_version("49.0.0");
    assert_eq!(found(&mut f, &no_version).await.identity, "v50.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chooses_the_asset_for_this_target() {
    let s = Setup::new(&[]);
    let tag = "v3.0.0";
    s.repo.meta(tag, json!({}));
    let others = [
        "x86_64-unknown-linux-gnu",
        "aarch64-unknown-linux-gnu",
        "x86_64-apple-darwin",
        "aarch64-apple-darwin",
        "x86_64-pc-windows-msvc",
    ];
    for other in others.iter().filter(|t| **t != TARGET) {
        let ext = if other.contains("windows") {
            "zip"
        } else {
            "tar.gz"
        };
        s.repo
            .file(tag, &format!("app-{other}.{ext}"), other.as_bytes());
    }
    let mine = format!("app-{TARGET}.tar.gz");
    let bytes = b"the build for this very target".to_vec();
    s.repo.file(tag, &mine, &bytes);
    // Side files that must never be chosen, though they name the target too.
    s.repo.file(
        tag,
        &format!("{mine}.sha256"),
        format!("{}  {mine}\n", sha256_hex(&bytes)).as_bytes(),
    );
    s.repo.file(
        tag,
        &format!("{mine}.minisig"),
        b"untrusted comment: x\nRWQ\n",
    );
    s.repo.file(
        tag,
        "SHA256SUMS",
        format!("{}  {mine}\n", sha256_hex(&bytes)).as_bytes(),
    );

    let mut f = s.fetcher();
    let mut r = found(&mut f, &nothing_installed()).await;
    assert_eq!(r.identity, tag);
    assert_eq!(r.format, Format::TarGz { binary: None });
    assert_eq!(r.size_hint, Some(bytes.len() as u64));
    assert_eq!(r.sha256.as_deref(), Some(sha256_hex(&bytes).as_str()));
    assert_eq!(body(&mut r).await, bytes);

    // An asset pattern overrides the platform choice.
    let mut f = s.fetcher().asset_pattern("*-x86_64-pc-windows-msvc.zip");
    let mut r = found(&mut f, &nothing_installed()).await;
    assert_eq!(r.format, Format::Zip { binary: None });
    let expected: &[u8] = match TARGET == "x86_64-pc-windows-msvc" {
        true => &bytes,
        false => b"x86_64-pc-windows-msvc",
    };
    assert_eq!(body(&mut r).await, expected);

    // No asset for the pattern: an error naming the repository and the assets.
    let mut f = s.fetcher().asset_pattern("*-sparc64-*");
    let e = check(&mut f, &nothing_installed())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("github:acme/app") && e.contains("sparc64") && e.contains(&mine),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_from_digest_then_sha256sums_then_sidecar() {
    let s = Setup::new(&[]);
    let tag = "v1.0.0";
    let name = asset();
    let bytes = b"a build".to_vec();
    let real = sha256_hex(&bytes);
    let other = sha256_hex(b"what the .sha256 file claims");
    s.repo.meta(tag, json!({}));
    s.repo.file(tag, &name, &bytes);
    s.repo.file(
        tag,
        &format!("{name}.sha256"),
        format!("{other}  {name}\n").as_bytes(),
    );
    let sums = format!("{}  app-other\n{real}  {name}\n", sha256_hex(b"x"));
    s.repo.file(tag, "SHA256SUMS", sums.as_bytes());
    s.repo.file(
        tag,
        &format!("{name}.minisig"),
        b"untrusted comment: signature\nRWQsig\n",
    );

    // 1. GitHub's digest (the fixture computes it), before any checksum file.
    let before = s.fixture.log().len();
    let r = found(&mut s.fetcher(), &nothing_installed()).await;
    assert_eq!(r.sha256.as_deref(), Some(real.as_str()), "from the digest");
    assert_eq!(
        r.signature.as_deref(),
        Some("untrusted comment: signature\nRWQsig\n")
    );
    drop(r);
    // No checksum file was read: latest, the .minisig (302 + object), the asset (302 + object).
    let fetched: Vec<(String, u16)> = s
        .log_since(before)
        .into_iter()
        .map(|l| (l.path, l.status))
        .collect();
    assert_eq!(fetched.len(), 5, "{fetched:?}");

    // 2. Without a digest: the SHA256SUMS line for the asset, not the .sha256 file.
    s.repo.file(tag, &format!("{name}.nodigest"), b"");
    let r = found(&mut s.fetcher(), &nothing_installed()).await;
    assert_eq!(r.sha256.as_deref(), Some(real.as_str()), "from SHA256SUMS");
    drop(r);

    // 3. A SHA256SUMS without a line for the asset, then none at all: the .sha256 file.
    s.repo
        .file(tag, "SHA256SUMS", format!("{real}  app-other\n").as_bytes());
    let r = found(&mut s.fetcher(), &nothing_installed()).await;
    assert_eq!(r.sha256.as_deref(), Some(other.as_str()), "from .sha256");
    drop(r);
    s.repo.remove_file(tag, "SHA256SUMS");
    let r = found(&mut s.fetcher(), &nothing_installed()).await;
    assert_eq!(r.sha256.as_deref(), Some(other.as_str()), "from .sha256");
    drop(r);

    // 4. A malformed .sha256 is an error naming the repository, the endpoint and the file.
    s.repo
        .file(tag, &format!("{name}.sha256"), b"not a digest\n");
    let e = check(&mut s.fetcher(), &nothing_installed())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("github:acme/app") && e.contains("/releases/assets/") && e.contains(".sha256"),
        "{e}"
    );

    // 5. No checksum anywhere: none claimed.
    s.repo.remove_file(tag, &format!("{name}.sha256"));
    let mut r = found(&mut s.fetcher(), &nothing_installed()).await;
    assert_eq!(r.sha256, None);
    assert_eq!(body(&mut r).await, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_poll_is_one_304_with_no_body() {
    let s = Setup::new(&[]);
    let bytes = vec![7u8; 256 * 1024];
    s.release("v1.0.0", "2025-01-01T00:00:00Z", json!({}), &bytes);
    let mut f = s.fetcher();

    let before = s.fixture.log().len();
    let mut r = found(&mut f, &nothing_installed()).await;
    let sha = r.sha256.clone().expect("digest");
    assert_eq!(body(&mut r).await, bytes);
    let cold = s.log_since(before);
    let installed = Current {
        sha256: sha,
        identity: Some(r.identity.clone()),
        version: Some("1.0.0".into()),
        rejected: Vec::new(),
        requires_checksum: false,
    };

    let mut unchanged = Vec::new();
    for _ in 0..3 {
        let before = s.fixture.log().len();
        none(&mut f, &installed, "unchanged").await;
        unchanged.push(s.log_since(before));
    }
    // A restarted master knows only the hash: still one request, answered from the cached
    // document and its digest.
    let before = s.fixture.log().len();
    let only_hash = Current {
        identity: None,
        ..installed.clone()
    };
    none(&mut f, &only_hash, "unchanged, identity unknown").await;
    unchanged.push(s.log_since(before));

    let total = |l: &[Logged]| l.iter().map(|e| e.body_bytes).sum::<u64>();
    eprintln!(
        "cold poll with download: {} requests, {} body bytes ({} JSON + {} asset): {:?}",
        cold.len(),
        total(&cold),
        cold.iter()
            .filter(|e| e.origin == "api")
            .map(|e| e.body_bytes)
            .sum::<u64>(),
        cold.iter()
            .filter(|e| e.origin == "objects")
            .map(|e| e.body_bytes)
            .sum::<u64>(),
        cold.iter()
            .map(|e| (&e.origin, e.status))
            .collect::<Vec<_>>()
    );
    for poll in &unchanged {
        eprintln!(
            "unchanged poll: {} request(s), {} body bytes: {:?}",
            poll.len(),
            total(poll),
            poll.iter().map(|e| (&e.path, e.status)).collect::<Vec<_>>()
        );
        assert_eq!(poll.len(), 1, "{poll:?}");
        assert_eq!(poll[0].status, 304, "{poll:?}");
        assert!(poll[0].if_none_match, "{poll:?}");
        assert_eq!(poll[0].body_bytes, 0, "{poll:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_rate_limit_is_rate_limited_until_the_reset() {
    let window = 600u64;
    let token = "ghp_rateLimitToken";
    let s = Setup::new(&[
        "--rate-limit",
        "3",
        "--rate-window",
        &window.to_string(),
        "--token",
        token,
    ]);
    s.release("v1.0.0", "2025-01-01T00:00:00Z", json!({}), b"one");
    // Authorized: GitHub exempts only an authorized request's 304 from the rate limit (see
    // github_rules.rs for the unauthenticated case).
    let mut f = s.fetcher().token(token);
    let mut r = found(&mut f, &nothing_installed()).await; // latest + asset: 2 of 3 used
    body(&mut r).await;
    let installed = Current {
        sha256: r.sha256.clone().unwrap_or_default(),
        identity: Some(r.identity.clone()),
        version: Some(RUNNING.into()),
        rejected: Vec::new(),
        requires_checksum: false,
    };
    // Authorized 304s do not count: with 1 request left, five unchanged polls still succeed.
    for _ in 0..5 {
        none(&mut f, &installed, "unchanged, near the limit").await;
    }
    s.release("v1.1.0", "2025-02-01T00:00:00Z", json!({}), b"two");
    // The list changed: latest is answered (3 of 3), the asset request is refused.
    match check(&mut f, &installed).await {
        Err(FetchError::RateLimited(d)) => {
            assert!(
                d <= Duration::from_secs(window) && d >= Duration::from_secs(window - 60),
                "delay {d:?} is not the time until the window resets (~{window} s)"
            );
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // And the next check is refused outright, with the same reset.
    match check(&mut f, &installed).await {
        Err(FetchError::RateLimited(d)) => assert!(d >= Duration::from_secs(window - 60), "{d:?}"),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    let log = s.fixture.log();
    let refused: Vec<&Logged> = log.iter().filter(|l| l.status == 403).collect();
    assert_eq!(refused.len(), 2, "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let s = Setup::new(&[]);
    s.release("v1.0.0", "2025-01-01T00:00:00Z", json!({}), b"one");
    let mut f = s.fetcher();
    for (status, secs) in [(429, 7u64), (403, 42)] {
        s.fixture.admin(
            "POST",
            &format!("/_fixture/fail?status={status}&count=1&retry_after={secs}"),
        );
        match check(&mut f, &nothing_installed()).await {
            Err(FetchError::RateLimited(d)) => assert_eq!(d, Duration::from_secs(secs)),
            other => panic!("{status} with Retry-After {secs}: got {other:?}"),
        }
    }
    assert_eq!(found(&mut f, &nothing_installed()).await.identity, "v1.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_reaches_the_api_but_not_the_objects_host() {
    let token = "ghp_fixtureToken0123456789";
    let s = Setup::new(&["--token", token]);
    s.release(
        "v1.0.0",
        "2025-01-01T00:00:00Z",
        json!({}),
        b"private build",
    );
    s.repo.file(
        "v1.0.0",
        &format!("{}.minisig", asset()),
        b"untrusted comment: sig\nRWQ\n",
    );

    let mut f = s.fetcher().token(token);
    let mut r = found(&mut f, &nothing_installed()).await;
    assert_eq!(body(&mut r).await, b"private build");
    let log = s.fixture.log();
    let api: Vec<&Logged> = log.iter().filter(|l| l.origin == "api").collect();
    let objects: Vec<&Logged> = log.iter().filter(|l| l.origin == "objects").collect();
    assert!(api.len() >= 3 && objects.len() == 2, "{log:?}");
    assert!(api.iter().all(|l| l.had_authorization), "{log:?}");
    assert!(
        objects
            .iter()
            .all(|l| !l.had_authorization && l.status == 200),
        "{log:?}"
    );

    // Without the token, or with a wrong one: GitHub's 401, and the error never shows a token.
    let wrong = "ghp_wrongToken999";
    for mut f in [s.fetcher().token(wrong), s.fetcher().token("")] {
        let e = check(&mut f, &nothing_installed())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("github:acme/app") && e.contains("401") && e.contains("Bad credentials"),
            "{e}"
        );
        assert!(!e.contains(wrong) && !e.contains(token), "{e}");
    }
}

/// The fixture's objects host refuses requests that carry an Authorization header (as GitHub's
/// storage does), so the test above would fail loudly if the fetcher leaked its token there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_objects_host_refuses_a_leaked_authorization_header() {
    let s = Setup::new(&[]);
    s.release("v1.0.0", "2025-01-01T00:00:00Z", json!({}), b"bytes");
    let addr = s.fixture.api_addr();
    let (_, _, latest) = http_full(addr, "GET", "/repos/acme/app/releases/latest", &[]);
    let latest: serde_json::Value = serde_json::from_str(&latest).expect("JSON");
    let id = latest["assets"][0]["id"].as_u64().expect("asset id");
    let (status, head, _) = http_full(
        addr,
        "GET",
        &format!("/repos/acme/app/releases/assets/{id}"),
        &[("Accept", "application/octet-stream")],
    );
    assert_eq!(status, 302);
    let location = head
        .iter()
        .find(|(k, _)| k == "location")
        .map(|(_, v)| v.clone())
        .expect("Location");
    let rest = location.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("path");
    let objects = host.parse().expect("host:port");
    assert_ne!(objects, addr, "the objects host is another origin");
    let (ok, _, bytes) = http_full(objects, "GET", &format!("/{path}"), &[]);
    assert_eq!((ok, bytes.as_str()), (200, "bytes"));
    let (refused, _, _) = http_full(
        objects,
        "GET",
        &format!("/{path}"),
        &[("Authorization", "Bearer leaked")],
    );
    assert_eq!(refused, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_list_is_paged_for_the_highest_version() {
    let s = Setup::new(&[]);
    // The highest version is the oldest release: GitHub lists newest first, so it is on page 2.
    s.release("v2.0.0", "2020-01-01T00:00:00Z", json!({}), b"two");
    for i in 0..105 {
        let created = format!("2024-01-01T00:{:02}:{:02}Z", i / 60, i % 60);
        s.release(&format!("v1.0.{i}"), &created, json!({}), b"one");
    }
    s.release(
        "nightly",
        "2025-06-01T00:00:00Z",
        json!({"prerelease": true}),
        b"nightly",
    );
    let mut f = s.fetcher().prereleases(true);
    let mut r = found(&mut f, &nothing_installed()).await;
    assert_eq!(r.identity, "v2.0.0");
    assert_eq!(body(&mut r).await, b"two");
    let pages: Vec<String> = s
        .fixture
        .log()
        .into_iter()
        .filter(|l| l.path.contains("/releases?"))
        .map(|l| l.path)
        .collect();
    assert_eq!(pages.len(), 2, "{pages:?}");
    assert!(pages[1].contains("page=2"), "{pages:?}");
    // Unchanged: only the first page is asked again, and answered 304.
    let before = s.fixture.log().len();
    let installed = Current {
        identity: Some("v2.0.0".into()),
        ..nothing_installed()
    };
    none(&mut f, &installed, "unchanged list").await;
    let again = s.log_since(before);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].status, 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_pattern_picks_one_program_of_a_monorepo() {
    let s = Setup::new(&[]);
    s.release(
        "app-v1.2.0",
        "2025-01-01T00:00:00Z",
        json!({}),
        b"app 1.2.0",
    );
    s.release(
        "app-v1.10.0",
        "2025-01-02T00:00:00Z",
        json!({}),
        b"app 1.10.0",
    );
    s.release("tool-v9.0.0", "2025-03-01T00:00:00Z", json!({}), b"tool");
    // Without the pattern, the latest tag `tool-v9.0.0` names no version: skipped.
    let mut plain = s.fetcher();
    none(
        &mut plain,
        &nothing_installed(),
        "latest tag is not a version",
    )
    .await;
    for pattern in ["app-v*", "app-v", "app-*"] {
        let mut f = s.fetcher().tag_pattern(pattern).current_version("1.3.0");
        let mut r = found(&mut f, &nothing_installed()).await;
        assert_eq!(r.identity, "app-v1.10.0", "{pattern}");
        assert_eq!(body(&mut r).await, b"app 1.10.0");
    }
    let mut f = s.fetcher().tag_pattern("app-v*").current_version("1.10.0");
    none(&mut f, &nothing_installed(), "app at 1.10.0 already").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_repository_and_the_endpoint() {
    let s = Setup::new(&[]);
    s.release("v1.0.0", "2025-01-01T00:00:00Z", json!({}), b"one");
    let mut f = s.fetcher();
    s.fixture.admin("POST", "/_fixture/fail?status=500&count=1");
    let e = check(&mut f, &nothing_installed())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("github:acme/app")
            && e.contains(&format!("{}/repos/acme/app/releases/latest", s.fixture.api))
            && e.contains("500"),
        "{e}"
    );
    // A failure of the asset download names the asset endpoint.
    s.fixture
        .admin("POST", "/_fixture/fail?status=503&count=1&origin=objects");
    let e = check(&mut f, &nothing_installed())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("github:acme/app") && e.contains("/releases/assets/") && e.contains("503"),
        "{e}"
    );
    assert_eq!(found(&mut f, &nothing_installed()).await.identity, "v1.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_without_releases_is_no_release() {
    let s = Setup::new(&[]);
    let mut f = GithubFetcher::new("acme/nothing-here")
        .unwrap()
        .api_base(&s.fixture.api)
        .loopback();
    none(
        &mut f,
        &nothing_installed(),
        "latest of an empty repository",
    )
    .await;
    // The list of a repository that does not exist is an error, naming it.
    let mut f = GithubFetcher::new("acme/nothing-here")
        .unwrap()
        .api_base(&s.fixture.api)
        .loopback()
        .prereleases(true);
    let e = check(&mut f, &nothing_installed())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("github:acme/nothing-here") && e.contains("404"),
        "{e}"
    );
}

#[test]
fn bad_repository_names_are_errors() {
    for bad in [
        "",
        "acme",
        "acme/",
        "/app",
        "acme/app/x",
        "acme app/x",
        "acme/..",
    ] {
        let e = GithubFetcher::new(bad).expect_err(bad).to_string();
        assert!(e.contains("owner/repo"), "{e}");
    }
}

/// No checksum anywhere (no digest, no list, no `.sha256`) nor signature, and the pipeline
/// requires one: the release is offered with an empty body and its asset is never requested;
/// once refused, a poll is the one conditional request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_without_checksum_is_not_downloaded_when_one_is_required() {
    let s = Setup::new(&[]);
    let name = asset();
    s.release("v1.0.0", "2025-01-01T00:00:00Z", json!({}), b"unvouched");
    s.repo.file("v1.0.0", &format!("{name}.nodigest"), b"");
    let strict = Current {
        requires_checksum: true,
        ..nothing_installed()
    };
    let mut f = s.fetcher();
    let before = s.fixture.log().len();
    let mut r = found(&mut f, &strict).await;
    assert_eq!((r.sha256.as_deref(), r.signature.as_deref()), (None, None));
    assert_eq!(r.version.as_deref(), Some("1.0.0"));
    assert_eq!(body(&mut r).await, b"");
    let mut refused = strict.clone();
    refused
        .rejected
        .push(Current::rejection_key(&r.identity, None, None));
    none(&mut f, &refused, "refused for no checksum").await;
    let log = s.log_since(before);
    assert!(
        log.iter()
            .all(|l| l.origin == "api" && !l.path.contains("/releases/assets/")),
        "the asset was requested: {log:?}"
    );
    assert_eq!(log.last().map(|l| l.status), Some(304), "{log:?}");
}
