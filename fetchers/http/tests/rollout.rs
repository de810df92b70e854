//! `HttpFetcher::rollout_url` against a real nginx on 127.0.0.1: the release carries the
//! published percentage, a release set aside unread is offered again with the percentage as it
//! is then, and an unchanged poll never asks for the rollout document.

mod common;

use common::{sha256_hex, Nginx};
use tokio::io::AsyncReadExt;
use upshift::fetch::{Current, Fetcher, Release};
use upshift_fetcher_conformance::Loopback;
use upshift_http::HttpFetcher;

fn nothing_installed() -> Current {
    Current {
        sha256: sha256_hex(b"the installed binary, never published"),
        ..Current::default()
    }
}

async fn offered(f: &mut HttpFetcher, current: &Current, what: &str) -> Release {
    match f.check(current).await {
        Ok(Some(r)) => r,
        Ok(None) => panic!("{what}: no release"),
        Err(e) => panic!("{what}: {e}"),
    }
}

fn uris_since(nginx: &Nginx, from: usize) -> Vec<(String, u16)> {
    nginx.settled_hits()[from..]
        .iter()
        .map(|h| (h.uri.clone(), h.status))
        .collect()
}

#[tokio::test]
async fn the_published_percentage_travels_with_the_release_and_is_read_again_when_set_aside() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let bytes = b"a release rolled out in stages\n".repeat(4096);
    nginx.put_settled("releases/app.sha256", sha256_hex(&bytes).as_bytes());
    nginx.put_settled("releases/app", &bytes);
    nginx.put("releases/app.rollout", b"rollout: 25\n");
    let mut f = HttpFetcher::new(nginx.url("releases/app"))
        .expect("valid URL")
        .loopback()
        .rollout_url("app.rollout");

    let first = offered(&mut f, &nothing_installed(), "first poll").await;
    assert_eq!(first.rollout_percent, Some(25.0));
    // The host is outside the 25 %: the poll loop drops the release unread.
    drop(first);
    nginx.put("releases/app.rollout", b"75%");
    let before = nginx.settled_hits().len();
    let mut again = offered(&mut f, &nothing_installed(), "after being set aside").await;
    assert_eq!(again.rollout_percent, Some(75.0));
    let requests = uris_since(&nginx, before);
    assert!(
        requests.contains(&("/releases/app.rollout".to_string(), 200)),
        "{requests:?}"
    );
    let mut body = Vec::new();
    again.body.read_to_end(&mut body).await.expect("body");
    assert_eq!(body, bytes);

    // Installed: an unchanged poll is the checksum's 304 alone.
    let installed = Current {
        sha256: sha256_hex(&bytes),
        identity: Some(again.identity.clone()),
        ..Current::default()
    };
    let before = nginx.settled_hits().len();
    assert!(f.check(&installed).await.expect("poll").is_none());
    assert_eq!(
        uris_since(&nginx, before),
        [("/releases/app.sha256".to_string(), 304)]
    );
}

#[tokio::test]
async fn no_document_means_no_percentage_and_a_bad_one_fails_the_check() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let bytes = b"another release\n".repeat(1024);
    nginx.put_settled("releases/app.sha256", sha256_hex(&bytes).as_bytes());
    nginx.put_settled("releases/app", &bytes);

    let mut plain = HttpFetcher::new(nginx.url("releases/app"))
        .expect("valid URL")
        .loopback();
    let r = offered(&mut plain, &nothing_installed(), "without rollout_url").await;
    assert_eq!(r.rollout_percent, None);
    drop(r);
    assert!(
        !nginx
            .settled_hits()
            .iter()
            .any(|h| h.uri.contains("rollout")),
        "a fetcher without rollout_url asked for a rollout document"
    );

    let mut f = HttpFetcher::new(nginx.url("releases/app"))
        .expect("valid URL")
        .loopback()
        .rollout_url("app.rollout");
    let r = offered(&mut f, &nothing_installed(), "rollout document missing").await;
    assert_eq!(r.rollout_percent, None);
    drop(r);

    nginx.put("releases/app.rollout", b"rollout: most of them\n");
    let err = f
        .check(&nothing_installed())
        .await
        .expect_err("a malformed percentage");
    let msg = err.to_string();
    assert!(
        msg.contains("/releases/app.rollout") && msg.contains("0 to 100"),
        "{msg}"
    );
}
