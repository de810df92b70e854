//! upshift-s3 against s3s-fs: what the conformance suite does not pin down. Request costs are
//! measured by the proxy in front of the server.

mod common;

use std::time::Duration;

use common::proxy::Exchange;
use common::{Bed, BedFetcher, Mode, Vouch, ACCESS_KEY, BUCKET, KEY, SECRET_KEY};
use upshift::fetch::{Current, FetchError, Fetcher, Format, Origin, Release, TrustPolicy};
use upshift_fetcher_conformance::unrelated_current as unrelated;
use upshift_fetcher_conformance::{
    installed, payload, read_body, sha256_hex, Loopback, LOOPBACK_POLICY,
};
use upshift_s3::S3Fetcher;

async fn found(f: &mut S3Fetcher, current: &Current) -> Release {
    match f.check(current).await {
        Ok(Some(r)) => r,
        Ok(None) => panic!("{}: expected a release, got none", f.name()),
        Err(e) => panic!("{}: expected a release, got: {e}", f.name()),
    }
}

async fn nothing(f: &mut S3Fetcher, current: &Current) {
    match f.check(current).await {
        Ok(None) => {}
        Ok(Some(r)) => panic!("{}: expected no release, got {r:?}", f.name()),
        Err(e) => panic!("{}: expected no release, got: {e}", f.name()),
    }
}

async fn failed(f: &mut S3Fetcher, current: &Current) -> FetchError {
    match tokio::time::timeout(Duration::from_secs(30), f.check(current)).await {
        Ok(Err(e)) => e,
        Ok(Ok(r)) => panic!("{}: expected an error, got {r:?}", f.name()),
        Err(_) => panic!("{}: check did not return within 30 s", f.name()),
    }
}

async fn read_all(release: &mut Release, len: usize) -> Vec<u8> {
    read_body(release, len)
        .await
        .unwrap_or_else(|e| panic!("reading {release:?}: {e}"))
}

/// Exchanges since `mark`.
fn since(bed: &Bed, mark: usize) -> Vec<Exchange> {
    bed.proxy.log()[mark..].to_vec()
}

fn object_path() -> String {
    format!("/{BUCKET}/{KEY}")
}

fn describe(log: &[Exchange]) -> Vec<String> {
    log.iter()
        .map(|e| format!("{} {} -> {}", e.method, e.path, e.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_object_costs_one_head_and_no_body() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("unchanged", 256 * 1024);
    let sha = sha256_hex(&bytes);
    bed.publish(&bytes, Some(&sha), Vouch::Sidecar);

    let mut f = bed.fetcher();
    let mut release = found(&mut f, &unrelated()).await;
    assert_eq!(read_all(&mut release, bytes.len()).await, bytes);
    let now = installed(&sha, Some(&release.identity));

    for poll in 0..3 {
        let mark = bed.proxy.log().len();
        nothing(&mut f, &now).await;
        let log = since(&bed, mark);
        assert_eq!(
            describe(&log),
            vec![format!("HEAD {} -> 200", object_path())],
            "poll {poll}: an unchanged object must cost exactly one HEAD"
        );
        let e = &log[0];
        assert_eq!(e.body_bytes, 0);
        eprintln!(
            "unchanged poll {poll}: 1 request (HEAD), request {} bytes, response {} bytes \
             (head {} + body {})",
            e.request_bytes,
            e.response_head_bytes + e.body_bytes,
            e.response_head_bytes,
            e.body_bytes
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_master_downloads_nothing_it_has_installed() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("restart", 100_000);
    let sha = sha256_hex(&bytes);

    // The object's own SHA256 checksum: one HEAD decides.
    bed.publish(&bytes, Some(&sha), Vouch::S3Checksum);
    let mark = bed.proxy.log().len();
    nothing(&mut bed.fetcher(), &installed(&sha, None)).await;
    assert_eq!(
        describe(&since(&bed, mark)),
        vec![format!("HEAD {} -> 200", object_path())]
    );

    // A sidecar: HEAD and the sidecar, never the object.
    bed.publish(&bytes, Some(&sha), Vouch::Sidecar);
    let mark = bed.proxy.log().len();
    nothing(&mut bed.fetcher(), &installed(&sha, None)).await;
    let log = since(&bed, mark);
    assert_eq!(
        describe(&log),
        vec![
            format!("HEAD {} -> 200", object_path()),
            format!("GET {}.sha256 -> 200", object_path()),
        ]
    );
    assert_eq!(bed.proxy.release_body_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_from_the_objects_s3_sha256_checksum() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("s3-checksum", 70_000);
    let sha = sha256_hex(&bytes);
    bed.publish(&bytes, Some(&sha), Vouch::S3Checksum);
    let mark = bed.proxy.log().len();
    let mut release = found(&mut bed.fetcher(), &unrelated()).await;
    assert_eq!(release.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(read_all(&mut release, bytes.len()).await, bytes);
    let log = since(&bed, mark);
    assert!(
        !log.iter().any(|e| e.path.ends_with(".sha256")),
        "the sidecar was read although the object carries its checksum: {:?}",
        describe(&log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_from_metadata() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("metadata", 70_000);
    let sha = sha256_hex(&bytes);
    bed.publish(&bytes, Some(&sha.to_ascii_uppercase()), Vouch::Metadata);
    let mark = bed.proxy.log().len();
    let mut release = found(&mut bed.fetcher(), &unrelated()).await;
    assert_eq!(release.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(read_all(&mut release, bytes.len()).await, bytes);
    let log = since(&bed, mark);
    assert!(
        !log.iter().any(|e| e.path.ends_with(".sha256")),
        "{:?}",
        describe(&log)
    );

    // Installed: decided by the HEAD alone.
    let mark = bed.proxy.log().len();
    nothing(&mut bed.fetcher(), &installed(&sha, None)).await;
    assert_eq!(since(&bed, mark).len(), 1);

    // Malformed metadata is an error naming the object, not a panic.
    bed.put_with(KEY, &bytes, |r| r.metadata("sha256", "not-a-digest"));
    let e = failed(&mut bed.fetcher(), &unrelated()).await.to_string();
    assert!(
        e.contains(&format!("s3://{BUCKET}/{KEY}")) && e.contains("x-amz-meta-sha256"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_from_the_sidecar_in_its_formats() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("sidecar", 70_000);
    let sha = sha256_hex(&bytes);
    for (i, text) in [
        format!("{sha}  myapp\n"),
        format!("{sha}\n"),
        format!("SHA256 (myapp) = {sha}\n"),
        sha.to_ascii_uppercase(),
    ]
    .iter()
    .enumerate()
    {
        // New bytes each round, so that every round is a new release.
        let mut b = bytes.clone();
        b.push(i as u8);
        let s = sha256_hex(&b);
        let text = text
            .replace(&sha, &s)
            .replace(&sha.to_ascii_uppercase(), &s.to_ascii_uppercase());
        bed.put(&format!("{KEY}.sha256"), text.as_bytes());
        bed.put(KEY, &b);
        let mut release = found(&mut bed.fetcher(), &unrelated()).await;
        assert_eq!(
            release.sha256.as_deref(),
            Some(s.as_str()),
            "sidecar {text:?}"
        );
        assert_eq!(read_all(&mut release, b.len()).await, b);
    }

    // A custom checksum key.
    bed.delete(&format!("{KEY}.sha256"));
    bed.put("myapp/SHA256SUMS", format!("{sha}  myapp\n").as_bytes());
    bed.put(KEY, &bytes);
    let mut f = bed.fetcher().checksum_key("myapp/SHA256SUMS");
    let release = found(&mut f, &unrelated()).await;
    assert_eq!(release.sha256.as_deref(), Some(sha.as_str()));

    // A malformed sidecar fails the check, naming it.
    bed.put(&format!("{KEY}.sha256"), b"garbage\n");
    let e = failed(&mut bed.fetcher(), &unrelated()).await.to_string();
    assert!(e.contains(&format!("s3://{BUCKET}/{KEY}.sha256")), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signature_comes_from_the_minisig_object() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("signed", 10_000);
    let sig = "untrusted comment: signature from minisign secret key\nRWQ...\n";
    bed.put(&format!("{KEY}.minisig"), sig.as_bytes());
    bed.publish(&bytes, Some(&sha256_hex(&bytes)), Vouch::Sidecar);
    let release = found(&mut bed.fetcher(), &unrelated()).await;
    assert_eq!(release.signature.as_deref(), Some(sig));
    assert_eq!(release.origin, Origin::Remote);
    assert_eq!(release.format, Format::Raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_describes_the_object() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("describe", 12_345);
    let key = "myapp/linux/myapp-x86_64.tar.gz";
    bed.put(key, &bytes);
    let mut f = S3Fetcher::from_url(&format!("s3://{BUCKET}/{key}"))
        .expect("a valid URL")
        .endpoint(bed.endpoint())
        .region("us-east-1")
        .credentials(ACCESS_KEY, SECRET_KEY, None)
        .loopback();
    assert_eq!(f.name(), format!("s3://{BUCKET}/{key}"));
    let mut release = found(&mut f, &unrelated()).await;
    assert_eq!(release.format, Format::TarGz { binary: None });
    assert_eq!(release.size_hint, Some(bytes.len() as u64));
    assert_eq!(release.sha256, None);
    // The identity is the ETag without quotes (s3s-fs: the MD5 of the bytes).
    assert_eq!(release.identity.len(), 32, "{}", release.identity);
    assert!(!release.identity.contains('"'));
    assert_eq!(read_all(&mut release, bytes.len()).await, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_are_errors() {
    for bad in [
        "",
        "s3://",
        "s3://bucket",
        "s3://bucket/",
        "https://b/k",
        "s3://b/dir/",
    ] {
        match S3Fetcher::from_url(bad) {
            Err(FetchError::Source(msg)) => {
                assert!(msg.contains("s3://bucket/key"), "{bad:?}: {msg}")
            }
            Err(e) => panic!("{bad:?}: unexpected error kind {e:?}"),
            Ok(f) => panic!("{bad:?} was accepted as {f:?}"),
        }
    }
    // `new` never fails; the check says what is wrong.
    let e = failed(&mut S3Fetcher::new("", "k"), &unrelated())
        .await
        .to_string();
    assert!(e.contains("bucket name is empty"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_named() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("creds", 1000);
    bed.publish(&bytes, Some(&sha256_hex(&bytes)), Vouch::Sidecar);

    let mut f = bed
        .fetcher()
        .credentials(ACCESS_KEY, "not the secret", None);
    let e = failed(&mut f, &unrelated()).await.to_string();
    eprintln!("wrong secret: {e}");
    assert!(e.contains("SignatureDoesNotMatch"), "{e}");
    assert!(e.contains("check the secret key"), "{e}");
    assert!(e.contains(&format!("s3://{BUCKET}/{KEY}")), "{e}");
    assert!(!e.contains("not the secret"), "the secret leaked: {e}");

    let mut f = bed.fetcher().credentials("AKIDUNKNOWN", SECRET_KEY, None);
    let e = failed(&mut f, &unrelated()).await.to_string();
    eprintln!("unknown access key: {e}");
    // S3 says InvalidAccessKeyId; s3s-fs says NotSignedUp.
    assert!(
        e.contains("InvalidAccessKeyId") || e.contains("NotSignedUp"),
        "{e}"
    );
    assert!(e.contains("check the access key id"), "{e}");
    assert!(!e.contains(SECRET_KEY), "the secret leaked: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_object_streams_through() {
    const LEN: usize = 20 * 1024 * 1024;
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("big", LEN);
    let sha = sha256_hex(&bytes);
    bed.publish(&bytes, Some(&sha), Vouch::Sidecar);
    let mut release = found(&mut bed.fetcher(), &unrelated()).await;
    assert_eq!(release.size_hint, Some(LEN as u64));

    // Nothing reads the body yet: a client that buffered it would have it all by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let done = bed
        .proxy
        .log_now()
        .iter()
        .any(|e| e.method == "GET" && e.path == object_path());
    assert!(
        !done,
        "the whole object was transferred before anyone read the body"
    );

    let body = read_all(&mut release, LEN).await;
    assert_eq!(body.len(), LEN);
    assert_eq!(sha256_hex(&body), sha);
    assert_eq!(bed.proxy.release_body_bytes(), LEN as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_transfer_is_offered_again() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("interrupted", 2 * 1024 * 1024);
    let sha = sha256_hex(&bytes);
    bed.publish(&bytes, Some(&sha), Vouch::Sidecar);
    let mut f = bed.fetcher();
    let mut first = found(&mut f, &unrelated()).await;
    let mut some = [0u8; 1000];
    tokio::io::AsyncReadExt::read_exact(&mut first.body, &mut some)
        .await
        .expect("the start of the body");
    let identity = first.identity.clone();
    drop(first);

    let mut again = found(&mut f, &unrelated()).await;
    assert_eq!(again.identity, identity);
    assert_eq!(read_all(&mut again, bytes.len()).await, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_release_returns_with_a_corrected_checksum() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("corrected", 50_000);
    let sha = sha256_hex(&bytes);
    let wrong = sha256_hex(b"something else");
    bed.publish(&bytes, Some(&wrong), Vouch::Sidecar);
    let mut f = bed.fetcher();
    let mut release = found(&mut f, &unrelated()).await;
    assert_eq!(release.sha256.as_deref(), Some(wrong.as_str()));
    read_all(&mut release, bytes.len()).await;
    drop(release);

    // Read in full and not installed: the pipeline rejected it. Not offered again as it is...
    nothing(&mut f, &unrelated()).await;
    // ...but a corrected sidecar makes a new candidate.
    bed.put(
        &format!("{KEY}.sha256"),
        format!("{sha}  myapp\n").as_bytes(),
    );
    let release = found(&mut f, &unrelated()).await;
    assert_eq!(release.sha256.as_deref(), Some(sha.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_rate_limited() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("throttled", 1000);
    bed.publish(&bytes, Some(&sha256_hex(&bytes)), Vouch::Sidecar);
    bed.proxy.set_mode(Mode::SlowDown);
    match failed(&mut bed.fetcher(), &unrelated()).await {
        FetchError::RateLimited(d) => assert!(d >= Duration::from_secs(1), "{d:?}"),
        e => panic!("expected RateLimited, got {e}"),
    }
    bed.proxy.set_mode(Mode::Pass);
    found(&mut bed.fetcher(), &unrelated()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_without_length_is_cut_at_the_cap_while_streaming() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("endless sidecar", 1000);
    bed.publish(&bytes, Some(&sha256_hex(&bytes)), Vouch::Sidecar);
    bed.proxy.set_mode(Mode::EndlessSidecar);
    let e = failed(&mut bed.fetcher(), &unrelated()).await;
    let msg = e.to_string();
    assert!(
        msg.contains("more than a checksum or signature file may have (65536)"),
        "{msg}"
    );
    bed.proxy.set_mode(Mode::Pass);
    // The fetcher hung up at the cap: the proxy got nowhere near sending all of it (socket
    // buffers take a few MB at most).
    let sidecar = bed
        .proxy
        .log()
        .into_iter()
        .find(|x| x.path.ends_with(".sha256"))
        .expect("the sidecar was asked for");
    assert!(
        sidecar.body_bytes < common::proxy::ENDLESS / 4,
        "{} bytes sent",
        sidecar.body_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_names_the_endpoint() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    bed.proxy.set_mode(Mode::Refused);
    let e = failed(&mut bed.fetcher(), &unrelated()).await;
    eprintln!("refused: {e}");
    match &e {
        FetchError::Io { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused, "{e}")
        }
        _ => panic!("expected an I/O error, got {e:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains(&bed.endpoint()), "{msg}");
    assert!(msg.contains(&format!("s3://{BUCKET}/{KEY}")), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_no_release() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    // HEAD cannot tell a missing bucket from a missing key: no release.
    let mut f = S3Fetcher::new("no-such-bucket", "k")
        .endpoint(bed.endpoint())
        .region("us-east-1")
        .credentials(ACCESS_KEY, SECRET_KEY, None)
        .loopback();
    nothing(&mut f, &unrelated()).await;
}

/// What the pipeline leaves in `Current` after refusing `release` for what its bytes were then
/// (a checksum mismatch, a cut transfer).
fn refused_as_served(release: &Release) -> Current {
    upshift_fetcher_conformance::refused_for_its_bytes(unrelated(), release)
}

fn head_only() -> Vec<String> {
    vec![format!("HEAD {} -> 200", object_path())]
}

/// No checksum anywhere and the pipeline requires one: the object is never `GET`; the release
/// comes from the HEAD (after the side-object lookups) with an empty body, and once the pipeline
/// refused it, a poll is one HEAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_without_checksum_costs_one_head_when_one_is_required() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("unvouched", 1024 * 1024);
    bed.publish(&bytes, None, Vouch::Sidecar);
    let strict = Current {
        requires_checksum: true,
        ..unrelated()
    };
    let mut f = bed.fetcher();
    let mark = bed.proxy.log().len();
    let mut release = found(&mut f, &strict).await;
    assert_eq!(
        describe(&since(&bed, mark)),
        vec![
            format!("HEAD {} -> 200", object_path()),
            format!("GET {}.sha256 -> 404", object_path()),
            format!("GET {}.minisig -> 404", object_path()),
        ],
        "the object must not be downloaded"
    );
    assert_eq!(
        (release.sha256.as_deref(), release.signature.as_deref()),
        (None, None)
    );
    assert_eq!(release.size_hint, Some(bytes.len() as u64));
    let source = release.source.clone().expect("a source");
    assert!(
        source.contains(&release.identity) && source.contains(&bytes.len().to_string()),
        "{source}"
    );
    assert_eq!(read_all(&mut release, 0).await, b"");
    assert_eq!(bed.proxy.release_body_bytes(), 0);

    let mut refused = strict.clone();
    refused
        .rejected
        .push(Current::rejection_key(&release.identity, None, None));
    for poll in 0..3 {
        let mark = bed.proxy.log().len();
        nothing(&mut f, &refused).await;
        assert_eq!(describe(&since(&bed, mark)), head_only(), "poll {poll}");
    }
    assert_eq!(bed.proxy.release_body_bytes(), 0);

    // A restarted master: the lookups once, no GET of the object, then one HEAD per poll.
    let mut fresh = bed.fetcher();
    nothing(&mut fresh, &refused).await;
    let mark = bed.proxy.log().len();
    nothing(&mut fresh, &refused).await;
    assert_eq!(describe(&since(&bed, mark)), head_only());
    assert_eq!(bed.proxy.release_body_bytes(), 0);
}

/// A release refused for what its bytes were (here a sidecar that does not match; a cut
/// transfer alike) costs one HEAD per poll, side objects included, until the object changes;
/// then it is offered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_refused_for_its_bytes_costs_one_head_until_they_change() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let good = payload("good", 200_000);
    let sha = sha256_hex(&good);
    // The sidecar first, then a partial object (an upload caught midway).
    bed.publish(&good[..100_000], Some(&sha), Vouch::Sidecar);
    let mut f = bed.fetcher();
    let mut partial = found(&mut f, &unrelated()).await;
    assert_eq!(partial.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(read_all(&mut partial, 100_000).await.len(), 100_000);
    let refused = refused_as_served(&partial);

    for poll in 0..3 {
        let mark = bed.proxy.log().len();
        nothing(&mut f, &refused).await;
        assert_eq!(describe(&since(&bed, mark)), head_only(), "poll {poll}");
    }

    // A cut transfer of the same object, refused alike: not downloaded again either.
    bed.proxy.truncate(Some(150_000));
    let mut fresh = bed.fetcher();
    let mut cut = found(&mut fresh, &unrelated()).await;
    assert!(
        read_body(&mut cut, 150_000).await.is_err(),
        "a cut transfer read cleanly"
    );
    bed.proxy.truncate(None);
    let cut_refused = refused_as_served(&cut);
    let before = bed.proxy.release_body_bytes();
    nothing(&mut fresh, &cut_refused).await;
    let mark = bed.proxy.log().len();
    nothing(&mut fresh, &cut_refused).await;
    assert_eq!(describe(&since(&bed, mark)), head_only());
    assert_eq!(bed.proxy.release_body_bytes(), before);

    // The upload completes: a new object, offered at the next poll.
    bed.put(KEY, &good);
    let mut whole = found(&mut f, &refused).await;
    assert_eq!(read_all(&mut whole, good.len()).await, good);
}

/// A plain `http://` endpoint without a key or the opt-in: refused by `apply_policy` with the
/// endpoint and both fixes named, and by a `check` never given a policy with the same message,
/// before any request; accepted with the opt-in (every other test here) and with a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_endpoint_needs_the_opt_in_or_a_key() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    bed.put(KEY, b"plain build");
    let plain = || {
        S3Fetcher::new(BUCKET, KEY)
            .endpoint(bed.endpoint())
            .region("us-east-1")
            .credentials(ACCESS_KEY, SECRET_KEY, None)
    };
    let e = plain()
        .apply_policy(&TrustPolicy::default())
        .expect_err("a plain endpoint accepted without a key or the opt-in")
        .to_string();
    for needed in [
        "S3 endpoint",
        bed.endpoint().as_str(),
        "plain http",
        "https://",
        "minisign",
        "allow_insecure_transport(true)",
    ] {
        assert!(e.contains(needed), "{needed:?} not in {e}");
    }
    let at_check = failed(&mut plain(), &unrelated()).await.to_string();
    assert!(
        at_check.contains(&e) && at_check.contains(&format!("s3://{BUCKET}/{KEY}")),
        "{at_check}"
    );
    assert_eq!(bed.proxy.requests(), 0, "{:?}", bed.proxy.log_now());

    let mut opted_in = plain();
    opted_in.apply_policy(&LOOPBACK_POLICY).expect("the opt-in");
    found(&mut opted_in, &unrelated()).await;
    let mut signed = plain();
    let with_key = TrustPolicy {
        signature_required: true,
        allow_insecure_transport: false,
    };
    signed.apply_policy(&with_key).expect("a key");
    found(&mut signed, &unrelated()).await;
}
