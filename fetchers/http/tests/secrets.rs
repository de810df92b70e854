//! Header values (credentials) never appear in logs, errors or `Debug` output. A test binary of
//! its own: it installs a process-wide `tracing` subscriber at TRACE level (a thread-local one
//! would miss callsites another test thread registered first), so every line logged by the
//! fetcher, reqwest's and hyper's `tracing` output included, is checked.

mod common;

use std::io;
use std::sync::{Arc, Mutex};

use common::{sha256_hex, Nginx, TOKEN};
use tokio::io::AsyncReadExt;
use upshift::fetch::{Current, Fetcher};
use upshift_fetcher_conformance::Loopback;
use upshift_http::HttpFetcher;

fn payload(tag: &str) -> Vec<u8> {
    format!("upshift-http secrets payload {tag}\n")
        .bytes()
        .cycle()
        .take(64 * 1024)
        .collect()
}

fn publish_settled(nginx: &Nginx, rel: &str, bytes: &[u8]) {
    let sha = sha256_hex(bytes);
    nginx.put_settled(&format!("{rel}.sha256"), format!("{sha}  app\n").as_bytes());
    nginx.put_settled(rel, bytes);
}

/// Collects everything logged through `tracing` while installed.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn header_values_are_never_logged_nor_in_errors() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let bytes = payload("secret");
    publish_settled(&nginx, "private/app", &bytes);
    nginx.put_alt("landing", &bytes);
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer({
            let c = captured.clone();
            move || c.clone()
        })
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let mut errors = Vec::new();
    for path in [
        "private/app",
        "private/away",
        "private/same",
        "private/missing",
    ] {
        let mut f = HttpFetcher::new(nginx.url(path))
            .expect("valid URL")
            .loopback()
            .header("Authorization", TOKEN)
            .header("X-Api-Key", "k-s3cret-key");
        match f.check(&nothing_installed()).await {
            Ok(Some(mut r)) => {
                let mut body = Vec::new();
                r.body.read_to_end(&mut body).await.expect("body");
            }
            Ok(None) => {}
            Err(e) => errors.push(e.to_string()),
        }
        errors.push(format!("{f:?}"));
    }
    let mut f = HttpFetcher::new(nginx.url("private/app"))
        .expect("valid URL")
        .loopback()
        .header("Authorization", "Bearer s3cret-but-wrong");
    match f.check(&nothing_installed()).await {
        Err(e) => errors.push(e.to_string()),
        Ok(r) => panic!("a wrong token gave {r:?}"),
    }

    let log = String::from_utf8_lossy(&captured.0.lock().expect("capture lock")).into_owned();
    assert!(
        log.contains("following a redirect"),
        "nothing was captured: {log}"
    );
    assert!(!log.contains("s3cret"), "a secret was logged:\n{log}");
    for e in &errors {
        assert!(
            !e.contains("s3cret"),
            "a secret in an error or Debug output: {e}"
        );
    }
}

fn nothing_installed() -> Current {
    Current {
        sha256: sha256_hex(b"nothing"),
        identity: None,
        version: None,
        rejected: Vec::new(),
        requires_checksum: false,
    }
}
