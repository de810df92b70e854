//! Transport rules against a real nginx: plain `http://` refused without a key or the opt-in
//! (at startup and, for a fetcher used without `apply_policy`, at each check), accepted with
//! the opt-in; an `https://` URL that redirects to `http://` refused whatever the policy.
//!
//! nginx's TLS server uses a self-signed certificate for 127.0.0.1, trusted here through
//! `SSL_CERT_FILE` (read by the OS-roots loader when the client is built): a test binary of its
//! own, since that variable is process-wide.

mod common;

use common::{nothing_installed, sha256_hex, Nginx};
use upshift::fetch::{Fetcher, TrustPolicy};
use upshift_fetcher_conformance::{Loopback, LOOPBACK_POLICY};
use upshift_http::HttpFetcher;

/// The tests of this binary one at a time: one sets `SSL_CERT_FILE`, which the other's clients
/// read.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn publish(nginx: &Nginx, rel: &str, bytes: &[u8]) {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let line = format!("{}  {name}\n", sha256_hex(bytes));
    nginx.put_settled(&format!("{rel}.sha256"), line.as_bytes());
    nginx.put_settled(rel, bytes);
}

/// Plain http: refused by `apply_policy` without a key or the opt-in, with the URL and both
/// fixes named; refused the same way by a `check` that was never given a policy; accepted with
/// the opt-in, and with a key. Nothing is requested before the refusal.
#[tokio::test]
async fn plain_http_needs_the_opt_in_or_a_key() {
    let _serial = SERIAL.lock().await;
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    publish(&nginx, "app", b"plain build");
    let url = nginx.url("app");

    let mut strict = HttpFetcher::new(url.as_str()).expect("valid URL");
    let e = strict
        .apply_policy(&TrustPolicy::default())
        .expect_err("plain http accepted without a key or the opt-in")
        .to_string();
    for needed in [url.as_str(), "plain http", "https://", "minisign"] {
        assert!(e.contains(needed), "{needed:?} not in {e}");
    }
    assert!(e.contains("allow_insecure_transport(true)"), "{e}");

    // Used without apply_policy: the strict default, at check time, with the same message.
    let mut unconfigured = HttpFetcher::new(url.as_str()).expect("valid URL");
    let at_check = unconfigured
        .check(&nothing_installed())
        .await
        .expect_err("plain http accepted by a fetcher never given a policy")
        .to_string();
    assert!(at_check.contains(&e), "{at_check}");
    // A plain checksum URL beside an https release is refused too.
    let mut mixed = HttpFetcher::new("https://127.0.0.1:9/app")
        .expect("valid URL")
        .checksum_url(nginx.url("app.sha256"));
    let msg = mixed
        .apply_policy(&TrustPolicy::default())
        .expect_err("plain checksum URL accepted")
        .to_string();
    assert!(
        msg.contains("checksum URL") && msg.contains(&nginx.url("app.sha256")),
        "{msg}"
    );
    let hits = nginx.settled_hits();
    assert!(hits.is_empty(), "refused URLs were requested: {hits:?}");

    let mut opted_in = HttpFetcher::new(url.as_str())
        .expect("valid URL")
        .loopback();
    let release = opted_in
        .check(&nothing_installed())
        .await
        .expect("the opt-in allows plain http")
        .expect("a release");
    assert_eq!(
        release.sha256.as_deref(),
        Some(sha256_hex(b"plain build").as_str())
    );
    drop(release);

    let mut signed = HttpFetcher::new(url.as_str()).expect("valid URL");
    let with_key = TrustPolicy {
        signature_required: true,
        allow_insecure_transport: false,
    };
    signed
        .apply_policy(&with_key)
        .expect("a key makes plain transport acceptable");
    assert!(signed.check(&nothing_installed()).await.is_ok());
}

/// An `https://` release URL whose server redirects to `http://`: refused with the opt-in and
/// with a key alike, and the plain URL is never requested. The same server's `https://` URL
/// without the redirect works (the refusal is the redirect's, not TLS's).
#[tokio::test]
async fn an_https_to_http_redirect_is_never_followed() {
    let _serial = SERIAL.lock().await;
    let Some(nginx) = common::nginx::start_tls() else {
        return;
    };
    let cert = nginx.www().parent().expect("nginx dir").join("cert.pem");
    // Before any client is built in this process (one test per binary that builds https
    // clients): the OS-roots loader reads it then.
    std::env::set_var("SSL_CERT_FILE", &cert);
    publish(&nginx, "app", b"tls build");

    let mut direct = HttpFetcher::new(nginx.tls_url("app")).expect("valid URL");
    direct
        .apply_policy(&TrustPolicy::default())
        .expect("https needs no opt-in");
    let release = direct
        .check(&nothing_installed())
        .await
        .expect("https to the test server works")
        .expect("a release");
    assert_eq!(
        release.sha256.as_deref(),
        Some(sha256_hex(b"tls build").as_str())
    );
    drop(release);

    let with_key = TrustPolicy {
        signature_required: true,
        allow_insecure_transport: true,
    };
    for policy in [TrustPolicy::default(), LOOPBACK_POLICY, with_key] {
        let before = nginx.settled_hits().len();
        let mut f = HttpFetcher::new(nginx.tls_url("downgrade"))
            .expect("valid URL")
            .no_checksum()
            .no_signature();
        f.apply_policy(&policy).expect("an https URL is accepted");
        let e = f
            .check(&nothing_installed())
            .await
            .expect_err("an https -> http redirect was followed")
            .to_string();
        assert!(
            e.contains("never followed")
                && e.contains(&nginx.tls_url("downgrade"))
                && e.contains(&nginx.url("app")),
            "{policy:?}: {e}"
        );
        let plain: Vec<_> = nginx.settled_hits()[before..]
            .iter()
            .filter(|h| h.port == nginx.port)
            .cloned()
            .collect();
        assert!(
            plain.is_empty(),
            "{policy:?}: the plain URL was requested: {plain:?}"
        );
    }
}
