//! [`HttpFetcher`] against a real nginx on 127.0.0.1: what polls cost (from nginx's access log),
//! conditional requests, checksums, formats, credentials across redirects, timeouts, statuses.

mod common;

use std::io;
use std::time::{Duration, Instant};

use common::{nothing_installed, sha256_hex, Hit, Nginx, TOKEN};
use tokio::io::AsyncReadExt;
use upshift::fetch::{Current, FetchError, Fetcher, Format, Release};
use upshift_fetcher_conformance::Loopback;
use upshift_http::HttpFetcher;

const LEN: usize = 300 * 1024;

fn payload(tag: &str) -> Vec<u8> {
    format!("upshift-http test payload {tag}\n")
        .bytes()
        .cycle()
        .take(LEN)
        .collect()
}

/// What the pipeline leaves in `Current` after installing `release` (a raw binary `bytes`).
fn installed_as(release: &Release, bytes: &[u8]) -> Current {
    Current {
        sha256: sha256_hex(bytes),
        identity: Some(release.identity.clone()),
        version: None,
        rejected: Vec::new(),
        requires_checksum: false,
    }
}

/// What the pipeline leaves in `Current` after refusing `release`.
fn refused(release: &Release) -> Current {
    let mut current = nothing_installed();
    current.rejected.push(Current::rejection_key(
        &release.identity,
        release.sha256.as_deref(),
        release.signature.as_deref(),
    ));
    current
}

async fn read_all(release: &mut Release) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    release.body.read_to_end(&mut out).await?;
    Ok(out)
}

async fn expect_release(f: &mut HttpFetcher, current: &Current, what: &str) -> Release {
    match f.check(current).await {
        Ok(Some(r)) => r,
        Ok(None) => panic!("{what}: no release"),
        Err(e) => panic!("{what}: {e}"),
    }
}

async fn expect_none(f: &mut HttpFetcher, current: &Current, what: &str) {
    match f.check(current).await {
        Ok(None) => {}
        Ok(Some(r)) => panic!("{what}: unexpected release {r:?}"),
        Err(e) => panic!("{what}: {e}"),
    }
}

async fn expect_error(f: &mut HttpFetcher, current: &Current, what: &str) -> FetchError {
    match f.check(current).await {
        Err(e) => e,
        Ok(r) => panic!("{what}: expected an error, got {r:?}"),
    }
}

/// Publishes `rel` and its `.sha256` sidecar, both with settled (reliable) validators.
fn publish_settled(nginx: &Nginx, rel: &str, bytes: &[u8]) -> String {
    let sha = sha256_hex(bytes);
    let name = rel.rsplit('/').next().unwrap_or(rel);
    nginx.put_settled(
        &format!("{rel}.sha256"),
        format!("{sha}  {name}\n").as_bytes(),
    );
    nginx.put_settled(rel, bytes);
    sha
}

fn since(hits: &[Hit], before: usize) -> Vec<Hit> {
    hits.get(before..).unwrap_or_default().to_vec()
}

fn body_bytes(hits: &[Hit]) -> u64 {
    hits.iter().map(|h| h.body_bytes).sum()
}

/// A plain reqwest client (redirects followed by reqwest itself), for looking at nginx directly.
fn plain_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The ETag and Last-Modified nginx sends for `url`.
async fn validators_of(url: &str) -> (String, String) {
    let resp = plain_client()
        .head(url)
        .send()
        .await
        .expect("HEAD for the validators");
    let get = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} from nginx"))
            .to_string()
    };
    (get("etag"), get("last-modified"))
}

/// nginx's access log escapes `"` as `\x22`.
fn unescape(logged: &str) -> String {
    logged.replace("\\x22", "\"")
}

#[tokio::test]
async fn an_unchanged_poll_is_one_request_and_no_body() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let bytes = payload("v1");
    publish_settled(&nginx, "releases/app", &bytes);
    let mut f = HttpFetcher::new(nginx.url("releases/app"))
        .expect("valid URL")
        .loopback();

    let mut release = expect_release(&mut f, &nothing_installed(), "first poll").await;
    assert_eq!(read_all(&mut release).await.expect("body"), bytes);
    let first = nginx.settled_hits();
    let requests: Vec<(&str, u16)> = first.iter().map(|h| (h.uri.as_str(), h.status)).collect();
    let patch_sidecar = format!(
        "/releases/{}.sha256",
        upshift::delta::patch_name("app", &nothing_installed().sha256)
    );
    assert_eq!(
        requests,
        [
            ("/releases/app.sha256", 200),
            ("/releases/app.minisig", 404),
            (patch_sidecar.as_str(), 404),
            ("/releases/app", 200)
        ],
        "a new release costs its checksum, the signature lookup, the lookup of a patch from the \
         running build, and itself"
    );
    let release_bytes = first
        .iter()
        .find(|h| h.uri == "/releases/app")
        .map(|h| h.body_bytes);
    assert_eq!(release_bytes, Some(LEN as u64));

    expect_none(&mut f, &installed_as(&release, &bytes), "unchanged poll").await;
    let poll = since(&nginx.settled_hits(), first.len());
    eprintln!(
        "COST new release: {} requests, {} body bytes; unchanged poll: {} request(s), {} body bytes",
        first.len(),
        body_bytes(&first),
        poll.len(),
        body_bytes(&poll)
    );
    assert_eq!(
        poll.len(),
        1,
        "an unchanged poll made these requests: {poll:#?}"
    );
    assert_eq!(
        body_bytes(&poll),
        0,
        "an unchanged poll transferred a body: {poll:#?}"
    );
    let hit = &poll[0];
    assert_eq!(
        (hit.uri.as_str(), hit.status),
        ("/releases/app.sha256", 304)
    );

    // Both validators were sent, exactly as nginx gave them.
    let (etag, last_modified) = validators_of(&nginx.url("releases/app.sha256")).await;
    assert_eq!(hit.if_none_match.as_deref().map(unescape), Some(etag));
    assert_eq!(
        hit.if_modified_since.as_deref(),
        Some(last_modified.as_str())
    );
}

/// After a release was read in full, an unchanged checksum settles the poll only if the pipeline
/// installed or refused that release. Otherwise (its bytes did not match the new checksum: the
/// poll fell between a deploy's two writes) the file is asked for again, conditionally, so the
/// release arrives as soon as its file does and an unchanged file still costs no body.
#[tokio::test]
async fn a_release_neither_installed_nor_refused_is_looked_at_again() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let bytes = payload("looked-at-again");
    publish_settled(&nginx, "releases/app", &bytes);
    let mut f = HttpFetcher::new(nginx.url("releases/app"))
        .expect("valid URL")
        .loopback();
    let mut release = expect_release(&mut f, &nothing_installed(), "first poll").await;
    assert_eq!(read_all(&mut release).await.expect("body"), bytes);

    let before = nginx.settled_hits().len();
    expect_none(&mut f, &nothing_installed(), "file unchanged").await;
    let poll = since(&nginx.settled_hits(), before);
    let requests: Vec<(&str, u16)> = poll.iter().map(|h| (h.uri.as_str(), h.status)).collect();
    assert_eq!(
        requests,
        [("/releases/app.sha256", 304), ("/releases/app", 304)],
        "checksum unchanged, release not installed: the file is asked for conditionally"
    );
    assert_eq!(body_bytes(&poll), 0);

    let before = nginx.settled_hits().len();
    expect_none(&mut f, &refused(&release), "refused").await;
    let poll = since(&nginx.settled_hits(), before);
    let requests: Vec<(&str, u16)> = poll.iter().map(|h| (h.uri.as_str(), h.status)).collect();
    assert_eq!(
        requests,
        [("/releases/app.sha256", 304)],
        "a refused release costs its checksum's 304 only"
    );
}

#[tokio::test]
async fn without_a_checksum_the_release_get_itself_is_conditional() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let bytes = payload("bare");
    nginx.put_settled("releases/app", &bytes);
    let mut f = HttpFetcher::new(nginx.url("releases/app"))
        .expect("valid URL")
        .loopback()
        .no_checksum();

    let mut release = expect_release(&mut f, &nothing_installed(), "first poll").await;
    assert_eq!(release.sha256, None);
    assert!(
        release.identity.starts_with("etag:"),
        "{}",
        release.identity
    );
    assert_eq!(read_all(&mut release).await.expect("body"), bytes);
    let before = nginx.settled_hits().len();

    expect_none(&mut f, &nothing_installed(), "unchanged poll").await;
    let poll = since(&nginx.settled_hits(), before);
    eprintln!(
        "COST unchanged poll without a checksum: {} request(s), {} body bytes",
        poll.len(),
        body_bytes(&poll)
    );
    assert_eq!(poll.len(), 1, "{poll:#?}");
    assert_eq!(body_bytes(&poll), 0, "{poll:#?}");
    let hit = &poll[0];
    assert_eq!((hit.uri.as_str(), hit.status), ("/releases/app", 304));
    let (etag, last_modified) = validators_of(&nginx.url("releases/app")).await;
    assert_eq!(hit.if_none_match.as_deref().map(unescape), Some(etag));
    assert_eq!(
        hit.if_modified_since.as_deref(),
        Some(last_modified.as_str())
    );
}

#[tokio::test]
async fn a_checksum_rewritten_within_the_second_is_not_missed() {
    // nginx's validators have one-second resolution and a sidecar always has the same size: the
    // fetcher must not trust validators of a file modified in the second it was served.
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let mut f = HttpFetcher::new(nginx.url("app"))
        .expect("valid URL")
        .loopback();
    for tag in ["a", "b", "c"] {
        let bytes = payload(tag);
        let sha = sha256_hex(&bytes);
        nginx.put("app.sha256", format!("{sha}  app\n").as_bytes());
        nginx.put("app", &bytes);
        let mut release = expect_release(&mut f, &nothing_installed(), tag).await;
        assert_eq!(release.identity, format!("sha256:{sha}"));
        assert_eq!(read_all(&mut release).await.expect("body"), bytes);
    }
}

#[tokio::test]
async fn a_release_dropped_unread_is_offered_again_and_a_read_one_is_not() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let sha = publish_settled(&nginx, "app", &payload("x"));
    let mut f = HttpFetcher::new(nginx.url("app"))
        .expect("valid URL")
        .loopback();
    let dropped = expect_release(&mut f, &nothing_installed(), "first").await;
    drop(dropped);
    let mut again = expect_release(&mut f, &nothing_installed(), "after a drop").await;
    assert_eq!(again.identity, format!("sha256:{sha}"));
    read_all(&mut again).await.expect("body");
    expect_none(&mut f, &nothing_installed(), "after reading it").await;
}

/// A release the poll loop set aside (a hold, a full disk) after reading it is offered again at
/// the next check, though its checksum and file are unchanged.
#[tokio::test]
async fn a_deferred_release_is_offered_again() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let bytes = payload("deferred");
    publish_settled(&nginx, "app", &bytes);
    let mut f = HttpFetcher::new(nginx.url("app"))
        .expect("valid URL")
        .loopback();
    let mut release = expect_release(&mut f, &nothing_installed(), "first").await;
    read_all(&mut release).await.expect("body");
    f.deferred(&release.identity);
    let mut again = expect_release(&mut f, &nothing_installed(), "after deferral").await;
    assert_eq!(again.identity, release.identity);
    assert_eq!(read_all(&mut again).await.expect("body"), bytes);
}

#[tokio::test]
async fn the_installed_release_costs_no_release_request() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let sha = publish_settled(&nginx, "app.tar.gz", &payload("installed"));
    // By the installed binary's hash (a raw release), or by the identity last installed (an
    // archive, whose digest is not the binary's).
    for current in [
        Current {
            sha256: sha.clone(),
            identity: None,
            version: None,
            rejected: Vec::new(),
            requires_checksum: false,
        },
        Current {
            sha256: sha256_hex(b"the binary inside the archive"),
            identity: Some(format!("sha256:{sha}")),
            version: None,
            rejected: Vec::new(),
            requires_checksum: false,
        },
    ] {
        let mut f = HttpFetcher::new(nginx.url("app.tar.gz"))
            .expect("valid URL")
            .loopback();
        let before = nginx.settled_hits().len();
        expect_none(&mut f, &current, "installed").await;
        let hits = since(&nginx.settled_hits(), before);
        let uris: Vec<&str> = hits.iter().map(|h| h.uri.as_str()).collect();
        assert_eq!(uris, ["/app.tar.gz.sha256"], "{current:?}");
    }
}

#[tokio::test]
async fn sha256sums_gives_the_line_of_the_release_file() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let bytes = payload("targz");
    let sha = sha256_hex(&bytes);
    let other = sha256_hex(b"another platform");
    nginx.put_settled("v1/app-x86_64-linux.tar.gz", &bytes);
    let sums = format!(
        "{other}  app-aarch64-linux.tar.gz\n{sha}  app-x86_64-linux.tar.gz\n{other}  app-x86_64-windows.zip\n"
    );
    nginx.put_settled("v1/SHA256SUMS", sums.as_bytes());
    let mut f = HttpFetcher::new(nginx.url("v1/app-x86_64-linux.tar.gz"))
        .expect("valid URL")
        .loopback()
        .sha256sums_url("SHA256SUMS");
    let mut release = expect_release(&mut f, &nothing_installed(), "sums").await;
    assert_eq!(release.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(release.identity, format!("sha256:{sha}"));
    assert_eq!(
        release.format,
        Format::TarGz { binary: None },
        "by file name"
    );
    assert_eq!(release.size_hint, Some(LEN as u64));
    assert_eq!(read_all(&mut release).await.expect("body"), bytes);
    let before = nginx.settled_hits().len();
    expect_none(&mut f, &refused(&release), "unchanged").await;
    let hits = since(&nginx.settled_hits(), before);
    assert_eq!(hits.len(), 1);
    assert_eq!(
        (hits[0].uri.as_str(), hits[0].status),
        ("/v1/SHA256SUMS", 304)
    );

    // A sums file without a line for the release fails the check, naming the sums file.
    let mut f = HttpFetcher::new(nginx.url("v1/app-riscv64-linux.tar.gz"))
        .expect("valid URL")
        .loopback()
        .sha256sums_url("SHA256SUMS");
    let msg = expect_error(&mut f, &nothing_installed(), "no line")
        .await
        .to_string();
    assert!(
        msg.contains(&nginx.url("v1/SHA256SUMS")) && msg.contains("app-riscv64-linux.tar.gz"),
        "{msg}"
    );
}

#[tokio::test]
async fn format_from_name_content_type_or_override() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let bytes = payload("fmt");
    for rel in ["f/app.zip", "f/app.gz", "f/app", "typed/download"] {
        nginx.put(rel, &bytes);
    }
    for (rel, format) in [
        ("f/app.zip", Format::Zip { binary: None }),
        ("f/app.gz", Format::Gzip),
        ("f/app", Format::Raw),
        // No extension, served as application/zip.
        ("typed/download", Format::Zip { binary: None }),
    ] {
        let mut f = HttpFetcher::new(nginx.url(rel))
            .expect("valid URL")
            .loopback()
            .no_checksum();
        let release = expect_release(&mut f, &nothing_installed(), rel).await;
        assert_eq!(release.format, format, "{rel}");
    }
    let forced = Format::TarGz {
        binary: Some("bin/app".into()),
    };
    let mut f = HttpFetcher::new(nginx.url("typed/download"))
        .expect("valid URL")
        .loopback()
        .no_checksum()
        .format(forced.clone());
    let release = expect_release(&mut f, &nothing_installed(), "override").await;
    assert_eq!(release.format, forced);
}

#[tokio::test]
async fn credentials_reach_their_origin_and_no_other() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let bytes = payload("private");
    let sha = publish_settled(&nginx, "private/app", &bytes);
    nginx.put_alt("landing", &bytes);
    let with_credentials = |path: &str| {
        HttpFetcher::new(nginx.url(path))
            .expect("valid URL")
            .loopback()
            .header("Authorization", TOKEN)
            .header("X-Api-Key", "k-123")
    };

    // Same origin: sent with every request (sidecar, signature, patch lookup, release).
    let mut f = with_credentials("private/app");
    let mut release = expect_release(&mut f, &nothing_installed(), "authorized").await;
    assert_eq!(release.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(read_all(&mut release).await.expect("body"), bytes);
    let hits = nginx.settled_hits();
    assert_eq!(hits.len(), 4, "{hits:#?}");
    assert!(
        hits.iter().all(|h| h.authorization && h.api_key),
        "{hits:#?}"
    );

    // Without: 401, an error naming the URL and the status.
    let mut f = HttpFetcher::new(nginx.url("private/app"))
        .expect("valid URL")
        .loopback();
    let msg = expect_error(&mut f, &nothing_installed(), "unauthorized")
        .await
        .to_string();
    assert!(
        msg.contains(&nginx.url("private/app")) && msg.contains("401"),
        "{msg}"
    );

    // A redirect within the origin keeps them.
    let before = nginx.settled_hits().len();
    let mut f = with_credentials("private/same")
        .no_checksum()
        .no_signature();
    let mut release = expect_release(&mut f, &nothing_installed(), "same-origin redirect").await;
    assert_eq!(read_all(&mut release).await.expect("body"), bytes);
    let hits = since(&nginx.settled_hits(), before);
    let seen: Vec<(&str, u16, bool, bool)> = hits
        .iter()
        .map(|h| (h.uri.as_str(), h.status, h.authorization, h.api_key))
        .collect();
    assert_eq!(
        seen,
        [
            ("/private/same", 302, true, true),
            ("/private/app", 200, true, true)
        ]
    );

    // A redirect to another origin (another port) drops them, Authorization and custom alike.
    let before = nginx.settled_hits().len();
    let mut f = with_credentials("private/away")
        .no_checksum()
        .no_signature();
    let mut release = expect_release(&mut f, &nothing_installed(), "cross-origin redirect").await;
    assert_eq!(read_all(&mut release).await.expect("body"), bytes);
    let hits = since(&nginx.settled_hits(), before);
    let seen: Vec<(u16, &str, u16, bool, bool)> = hits
        .iter()
        .map(|h| (h.port, h.uri.as_str(), h.status, h.authorization, h.api_key))
        .collect();
    assert_eq!(
        seen,
        [
            (nginx.port, "/private/away", 302, true, true),
            (nginx.alt_port, "/landing", 200, false, false)
        ]
    );
}

/// Why the fetcher follows redirects itself: reqwest's own redirect policy strips
/// `Authorization` when the origin changes, but forwards any other header.
#[tokio::test]
async fn reqwest_alone_would_forward_custom_credentials_across_origins() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    nginx.put_alt("landing", b"landed");
    let resp = plain_client()
        .get(nginx.url("private/away"))
        .header("Authorization", TOKEN)
        .header("X-Api-Key", "k-123")
        .send()
        .await
        .expect("GET through reqwest's redirects");
    assert_eq!(resp.status(), 200);
    let hits = nginx.settled_hits();
    let seen: Vec<(u16, bool, bool)> = hits
        .iter()
        .map(|h| (h.port, h.authorization, h.api_key))
        .collect();
    assert_eq!(
        seen,
        [(nginx.port, true, true), (nginx.alt_port, false, true)],
        "reqwest's behaviour changed: {hits:#?}"
    );
}

#[tokio::test]
async fn a_stalled_server_fails_the_check_within_the_timeout() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    publish_settled(&nginx, "app", &payload("stall"));
    let mut f = HttpFetcher::new(nginx.url("app"))
        .expect("valid URL")
        .loopback()
        .timeout(Duration::from_secs(1));
    nginx.pause();
    let started = Instant::now();
    let result = f.check(&nothing_installed()).await;
    let took = started.elapsed();
    nginx.resume();
    let msg = match result {
        Err(e) => e.to_string(),
        Ok(r) => panic!("a frozen server gave {r:?}"),
    };
    assert!(
        msg.contains(&nginx.url("app")) && msg.contains("timed out"),
        "{msg}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "took {took:?} with a 1 s timeout"
    );
    // Recovered: the same fetcher finds the release.
    expect_release(&mut f, &nothing_installed(), "after resuming").await;
}

#[tokio::test]
async fn a_download_slower_than_the_timeout_fails_the_read_within_it() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    nginx.put("slow/app", &payload("slow")); // served at 10 KB/s: 30 s
    let mut f = HttpFetcher::new(nginx.url("slow/app"))
        .expect("valid URL")
        .loopback()
        .no_checksum()
        .no_signature()
        .timeout(Duration::from_secs(1));
    let started = Instant::now();
    let mut release = expect_release(&mut f, &nothing_installed(), "slow").await;
    let err = read_all(&mut release)
        .await
        .expect_err("a 30 s download finished within 1 s");
    let took = started.elapsed();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(err.to_string().contains(&nginx.url("slow/app")), "{err}");
    assert!(
        took < Duration::from_millis(2500),
        "took {took:?} with a 1 s timeout"
    );
}

#[tokio::test]
async fn statuses_map_to_errors_naming_the_url() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    publish_settled(&nginx, "app", &payload("status"));

    let mut f = HttpFetcher::new(nginx.url("limited/app"))
        .expect("valid URL")
        .loopback();
    match f.check(&nothing_installed()).await {
        Err(FetchError::RateLimited(d)) => assert_eq!(d, Duration::from_secs(7)),
        other => panic!("429 with Retry-After gave {other:?}"),
    }

    let mut f = HttpFetcher::new(nginx.url("busy/app"))
        .expect("valid URL")
        .loopback();
    let msg = expect_error(&mut f, &nothing_installed(), "503")
        .await
        .to_string();
    assert!(
        msg.contains(&nginx.url("busy/app.sha256")) && msg.contains("503"),
        "{msg}"
    );

    let mut f = HttpFetcher::new(nginx.url("app"))
        .expect("valid URL")
        .loopback();
    nginx.fault("500", true);
    let msg = expect_error(&mut f, &nothing_installed(), "500")
        .await
        .to_string();
    nginx.fault("500", false);
    assert!(
        msg.contains(&nginx.url("app")) && msg.contains("500 Internal Server Error"),
        "{msg}"
    );

    let mut f = HttpFetcher::new(nginx.url("nothing/here"))
        .expect("valid URL")
        .loopback();
    expect_none(&mut f, &nothing_installed(), "404 is nothing published").await;

    let mut f = HttpFetcher::new(nginx.url("loop"))
        .expect("valid URL")
        .loopback()
        .no_checksum();
    let msg = expect_error(&mut f, &nothing_installed(), "redirect loop")
        .await
        .to_string();
    assert!(
        msg.contains("more than 10 redirects") && msg.contains(&nginx.url("loop")),
        "{msg}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_an_io_error_naming_the_url() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }; // closed again: nothing listens there
    let url = format!("http://127.0.0.1:{port}/app");
    let mut f = HttpFetcher::new(url.as_str())
        .expect("valid URL")
        .loopback();
    match f.check(&nothing_installed()).await {
        Err(e @ FetchError::Io { .. }) => {
            let FetchError::Io { source, .. } = &e else {
                unreachable!()
            };
            assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused, "{e}");
            assert!(e.to_string().contains(&url), "{e}");
        }
        other => panic!("a closed port gave {other:?}"),
    }
}

#[tokio::test]
async fn https_runs_a_real_rustls_handshake_with_ring() {
    let Some(nginx) = common::nginx::start_tls() else {
        return;
    };
    publish_settled(&nginx, "app", &payload("tls"));
    let url = nginx.tls_url("app");
    let mut f = HttpFetcher::new(url.as_str())
        .expect("valid URL")
        .loopback();
    // The self-signed certificate is trusted by nobody: the handshake got as far as checking it
    // (key exchange and decryption done by ring), and the error says why it stopped.
    let msg = expect_error(&mut f, &nothing_installed(), "self-signed")
        .await
        .to_string();
    eprintln!("TLS error as reported: {msg}");
    assert!(msg.contains(&url), "{msg}");
    assert!(
        msg.contains("UnknownIssuer") || msg.contains("certificate"),
        "not a certificate error: {msg}"
    );
}

/// What the pipeline leaves in `Current` after refusing `release` for what its bytes were then
/// (a checksum mismatch, a cut transfer): the transient key, with the release's source.
fn refused_as_served(release: &Release) -> Current {
    upshift_fetcher_conformance::refused_for_its_bytes(nothing_installed(), release)
}

fn requests_of(hits: &[Hit]) -> Vec<(&str, &str, u16)> {
    hits.iter()
        .map(|h| (h.method.as_str(), h.uri.as_str(), h.status))
        .collect()
}

/// Sets `www/<rel>`'s mtime to `at` (well in the past, as after a slow upload's last write).
fn backdate(nginx: &Nginx, rel: &str, at: std::time::SystemTime) {
    let path = nginx.www().join(rel);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(at))
        .unwrap_or_else(|e| panic!("backdating {}: {e}", path.display()));
}

/// No checksum published and the pipeline requires one: the release file is never `GET`, one
/// `HEAD` names it, and the release comes with an empty body for the pipeline to refuse. Once
/// refused, polls end at that `HEAD` until the file changes.
#[tokio::test]
async fn a_release_without_checksum_costs_one_head_when_one_is_required() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let bytes = payload("unvouched");
    nginx.put_settled("releases/app", &bytes);
    let strict = Current {
        requires_checksum: true,
        ..nothing_installed()
    };

    // Checksum and signature looked up (both 404), then the HEAD.
    let mut f = HttpFetcher::new(nginx.url("releases/app"))
        .expect("valid URL")
        .loopback();
    let before = nginx.settled_hits().len();
    let mut release = expect_release(&mut f, &strict, "no checksum, required").await;
    let poll = since(&nginx.settled_hits(), before);
    assert_eq!(
        requests_of(&poll),
        [
            ("GET", "/releases/app.sha256", 404),
            ("GET", "/releases/app.minisig", 404),
            ("HEAD", "/releases/app", 200),
        ],
        "the release file must not be downloaded"
    );
    assert_eq!(
        (release.sha256.as_deref(), release.signature.as_deref()),
        (None, None)
    );
    assert!(
        release.identity.starts_with("etag:"),
        "{}",
        release.identity
    );
    let (etag, _) = validators_of(&nginx.url("releases/app")).await;
    assert_eq!(release.source, Some(format!("etag:{etag}")));
    assert_eq!(release.size_hint, Some(LEN as u64));
    assert_eq!(read_all(&mut release).await.expect("empty body"), b"");

    // The pipeline refused it: later polls cost the lookups and the HEAD, no release, no body.
    let mut refused = strict.clone();
    refused
        .rejected
        .push(Current::rejection_key(&release.identity, None, None));
    for poll in 0..2 {
        let before = nginx.settled_hits().len();
        expect_none(&mut f, &refused, "refused for no checksum").await;
        let hits = since(&nginx.settled_hits(), before);
        assert_eq!(
            requests_of(&hits)
                .iter()
                .filter(|(_, uri, _)| *uri == "/releases/app")
                .collect::<Vec<_>>(),
            [&("HEAD", "/releases/app", 200)],
            "poll {poll}: {hits:#?}"
        );
    }

    // Told there is no checksum to look for: one HEAD per poll, exactly.
    let mut bare = HttpFetcher::new(nginx.url("releases/app"))
        .expect("valid URL")
        .loopback()
        .no_checksum()
        .no_signature();
    let before = nginx.settled_hits().len();
    expect_none(&mut bare, &refused, "no_checksum(), refused").await;
    let hits = since(&nginx.settled_hits(), before);
    assert_eq!(requests_of(&hits), [("HEAD", "/releases/app", 200)]);
    assert_eq!(body_bytes(&hits), 0);

    // New bytes are a new candidate, again without a download.
    // (Shorter: both files are backdated to the same second, and nginx's ETag is mtime-size.)
    nginx.put_settled("releases/app", &payload("unvouched, v2")[..LEN - 1]);
    let before = nginx.settled_hits().len();
    let again = expect_release(&mut f, &refused, "new bytes, still no checksum").await;
    assert_ne!(again.identity, release.identity);
    let hits = since(&nginx.settled_hits(), before);
    assert!(
        hits.iter()
            .all(|h| h.method != "GET" || h.uri != "/releases/app"),
        "{hits:#?}"
    );

    // Not required (the operator opted out): downloaded as before.
    let mut lax = HttpFetcher::new(nginx.url("releases/app"))
        .expect("valid URL")
        .loopback();
    let mut release = expect_release(&mut lax, &nothing_installed(), "not required").await;
    assert_eq!(read_all(&mut release).await.expect("body").len(), LEN - 1);
}

/// A server that refuses `HEAD` (a URL presigned for `GET`) is asked with a `GET` whose body is
/// dropped unread: the release is still offered without its body, not an error.
#[tokio::test]
async fn a_server_refusing_head_is_asked_with_an_unread_get() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    nginx.put_settled("gets-only/app", &payload("gets only"));
    let strict = Current {
        requires_checksum: true,
        ..nothing_installed()
    };
    let mut f = HttpFetcher::new(nginx.url("gets-only/app"))
        .expect("valid URL")
        .loopback()
        .no_checksum()
        .no_signature();
    let before = nginx.settled_hits().len();
    let mut release = expect_release(&mut f, &strict, "HEAD refused").await;
    assert_eq!(release.size_hint, Some(LEN as u64));
    assert!(release.source.is_some(), "{release:?}");
    assert_eq!(read_all(&mut release).await.expect("empty body"), b"");
    let hits = since(&nginx.settled_hits(), before);
    assert_eq!(
        requests_of(&hits),
        [
            ("HEAD", "/gets-only/app", 403),
            ("GET", "/gets-only/app", 200)
        ]
    );
}

/// The sequence: `app.sha256` written first, then `app` written in place in two halves,
/// with a poll between. The half file is refused (checksum mismatch, remembered with its
/// source); polls while it stays cost a 304 on the checksum and a 304 on the file; the complete
/// file is offered at the first poll after the upload.
#[tokio::test]
async fn a_release_read_mid_upload_is_offered_once_the_upload_completes() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let bytes = payload("in place");
    let sha = sha256_hex(&bytes);
    nginx.put_settled("app.sha256", format!("{sha}  app\n").as_bytes());
    let path = nginx.www().join("app");
    std::fs::write(&path, &bytes[..LEN / 2]).expect("first half");
    // A slow upload: the poll comes long after the last write.
    let last_write = std::time::SystemTime::now() - Duration::from_secs(30);
    backdate(&nginx, "app", last_write);
    let mut f = HttpFetcher::new(nginx.url("app"))
        .expect("valid URL")
        .loopback();

    let mut half = expect_release(&mut f, &nothing_installed(), "mid-upload").await;
    assert_eq!(half.sha256.as_deref(), Some(sha.as_str()));
    let (etag, _) = validators_of(&nginx.url("app")).await;
    assert_eq!(
        half.source,
        Some(format!("etag:{etag}")),
        "the source names the bytes served"
    );
    let read = read_all(&mut half).await.expect("the half file");
    assert_eq!(read.len(), LEN / 2);
    let refused = refused_as_served(&half);

    for poll in 0..2 {
        let before = nginx.settled_hits().len();
        expect_none(&mut f, &refused, "still half uploaded").await;
        let hits = since(&nginx.settled_hits(), before);
        assert_eq!(
            requests_of(&hits),
            [("GET", "/app.sha256", 304), ("GET", "/app", 304)],
            "poll {poll} while the file is unchanged"
        );
        assert_eq!(body_bytes(&hits), 0);
    }

    // The second half, in place.
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open for the second half");
        file.write_all(&bytes[LEN / 2..]).expect("second half");
    }
    let mut whole = expect_release(&mut f, &refused, "upload complete").await;
    assert_eq!(whole.identity, half.identity);
    assert_eq!(read_all(&mut whole).await.expect("the whole file"), bytes);

    // A fresh fetcher (a restarted master) that sees the refused bytes drops them after the
    // response head: not offered.
    std::fs::write(&path, &bytes[..LEN / 2]).expect("the half again");
    backdate(&nginx, "app", last_write);
    let mut fresh = HttpFetcher::new(nginx.url("app"))
        .expect("valid URL")
        .loopback();
    expect_none(&mut fresh, &refused, "fresh fetcher, refused bytes").await;
}

/// After a release was refused for what its bytes were, republishing the identical, correct
/// release atomically (new file, same checksum) makes it a candidate again.
#[tokio::test]
async fn an_atomic_republish_after_a_transient_refusal_is_offered() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let bytes = payload("republished");
    let sha = sha256_hex(&bytes);
    nginx.put_settled("app.sha256", format!("{sha}  app\n").as_bytes());
    nginx.put_settled("app", &bytes[..LEN / 3]);
    let mut f = HttpFetcher::new(nginx.url("app"))
        .expect("valid URL")
        .loopback();
    let mut partial = expect_release(&mut f, &nothing_installed(), "partial").await;
    read_all(&mut partial).await.expect("the partial file");
    let refused = refused_as_served(&partial);
    expect_none(&mut f, &refused, "unchanged").await;

    nginx.put("app", &bytes);
    let mut release = expect_release(&mut f, &refused, "republished atomically").await;
    assert_eq!(read_all(&mut release).await.expect("body"), bytes);
}
