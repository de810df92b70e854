//! `--s3`: the tool publishes to a real s3s-fs (SigV4 checked) on 127.0.0.1, and the real S3
//! fetcher (through the test bed's proxy) must find the object, read it back byte for byte,
//! with the published sha256 (S3's own checksum for one request, the metadata for a multipart
//! upload) and a signature that verifies. The same against moto (`moto_server`; skipped, saying
//! so, without it unless `UPSHIFT_REQUIRE_MOTO=1`), one part and several. Server errors and bad
//! credentials publish nothing.

mod common;

use std::time::Duration;

use aws_sdk_s3::types::ChecksumMode;
use common::{
    fetch, fetch_signed, fresh_current, keypair, payload, publish, sha256_hex, write_binary,
    Scratch,
};
use upshift_fetcher_conformance::Loopback;
use upshift_s3::S3Fetcher;
use upshift_testkit::s3::moto::Moto;
use upshift_testkit::s3::{Bed, Mode, ACCESS_KEY, BUCKET, KEY, SECRET_KEY};

/// The real S3 fetcher for [`KEY`] at `endpoint` (a loopback server), with the test credentials
/// and a short request timeout.
fn fetcher_for(endpoint: &str) -> S3Fetcher {
    let f = S3Fetcher::new(BUCKET, KEY)
        .endpoint(endpoint)
        .region("us-east-1");
    f.credentials(ACCESS_KEY, SECRET_KEY, None)
        .timeout(Duration::from_secs(5))
        .loopback()
}

/// Three parts of `--part-size 5`.
const MULTIPART_LEN: usize = 11 * 1024 * 1024 + 123;

fn s3_args<'a>(bin: &'a str, endpoint: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        bin,
        "--s3",
        "s3://releases/myapp/linux/myapp",
        "--s3-endpoint",
        endpoint,
        "--region",
        "us-east-1",
        "--s3-access-key-id",
        ACCESS_KEY,
    ];
    a.extend(extra);
    a
}

const SECRET: [(&str, &str); 1] = [("AWS_SECRET_ACCESS_KEY", SECRET_KEY)];

/// What a HEAD (with checksums) shows of an object.
#[derive(Debug)]
struct Head {
    /// `x-amz-meta-sha256`.
    meta: Option<String>,
    /// S3's SHA256 checksum (base64).
    checksum: Option<String>,
    size: Option<i64>,
    etag: Option<String>,
}

async fn head_with(client: &aws_sdk_s3::Client, key: &str) -> Option<Head> {
    let req = client
        .head_object()
        .bucket(BUCKET)
        .key(key)
        .checksum_mode(ChecksumMode::Enabled);
    let out = req.send().await.ok()?;
    Some(Head {
        meta: out.metadata().and_then(|m| m.get("sha256")).cloned(),
        checksum: out.checksum_sha256().map(str::to_string),
        size: out.content_length(),
        etag: out.e_tag().map(|t| t.trim_matches('"').to_string()),
    })
}

/// The object's metadata sha256 and S3 checksum (base64), as a HEAD shows them.
fn head(bed: &Bed, key: &str) -> Option<(Option<String>, Option<String>)> {
    let client = bed.publisher.clone();
    let h = bed.block(async move { head_with(&client, key).await })?;
    Some((h.meta, h.checksum))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_object_reaches_the_s3_fetcher() {
    let scratch = Scratch::new("s3-single");
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("s3-v1", 500_000);
    let bin = write_binary(scratch.path(), "myapp", &bytes);
    let (key, public_key) = keypair(scratch.path(), None);
    let server = bed.server.url();
    let run = publish(
        &s3_args(
            bin.to_str().unwrap(),
            &server,
            &["--sign", key.to_str().unwrap()],
        ),
        &SECRET,
    )
    .ok();
    assert!(
        run.stdout
            .contains("published s3://releases/myapp/linux/myapp\n"),
        "{run:#?}"
    );
    assert!(run.stderr.contains("uploading"), "no progress: {run:#?}");
    let sha = run.sha256();
    let (meta, checksum) = head(&bed, KEY).expect("the object");
    assert_eq!(meta.as_deref(), Some(sha.as_str()));
    let raw = hex::decode(&sha).unwrap();
    assert_eq!(checksum, Some(aws_smithy_types::base64::encode(raw)));

    let mut f = fetcher_for(&bed.endpoint());
    fetch_signed(&mut f, &bytes, &sha, &public_key).await;
    // The sidecar went up too (for clients that read it, like the HTTP fetcher on a bucket).
    let sidecar = bed.block({
        let c = bed.publisher.clone();
        async move {
            c.get_object()
                .bucket(BUCKET)
                .key(format!("{KEY}.sha256"))
                .send()
                .await
        }
    });
    assert!(sidecar.is_ok());
}

/// Larger than one part: a multipart upload with a SHA256 checksum per part; the fetcher takes
/// the sha256 from the metadata (the object's own checksum is a composite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_carries_its_sha256_in_the_metadata() {
    let scratch = Scratch::new("s3-multi");
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bytes = payload("s3-multipart", 12 * 1024 * 1024 + 123);
    let bin = write_binary(scratch.path(), "myapp", &bytes);
    let server = bed.server.url();
    let run = publish(
        &s3_args(
            bin.to_str().unwrap(),
            &server,
            &["--part-size", "5", "--checksum", "none"],
        ),
        &SECRET,
    )
    .ok();
    let sha = run.sha256();
    assert_eq!(sha, sha256_hex(&bytes));
    let (meta, _) = head(&bed, KEY).expect("the object");
    assert_eq!(meta.as_deref(), Some(sha.as_str()));
    let mut f = fetcher_for(&bed.endpoint());
    let got = fetch(&mut f, &fresh_current(None))
        .await
        .expect("a release");
    assert_eq!(got.sha256.as_deref(), Some(sha.as_str()));
    assert!(got.bytes == bytes, "the object's bytes differ");
}

/// Publishes `bytes` to moto at [`KEY`] (`--part-size 5`), then checks what a HEAD shows and
/// what the real S3 fetcher offers: the file's sha256 and exactly its bytes. Returns the HEAD.
async fn publish_to_moto(moto: &Moto, tag: &str, bytes: &[u8]) -> Head {
    let scratch = Scratch::new(tag);
    let bin = write_binary(scratch.path(), "myapp", bytes);
    let url = moto.url();
    let args = s3_args(bin.to_str().unwrap(), &url, &["--part-size", "5"]);
    let run = publish(&args, &SECRET).ok();
    let sha = sha256_hex(bytes);
    assert_eq!(run.sha256(), sha, "{run:#?}");
    let client = upshift_testkit::s3::client(&url, ACCESS_KEY, SECRET_KEY);
    let head = head_with(&client, KEY).await.expect("the object");
    assert_eq!(head.meta.as_deref(), Some(sha.as_str()), "{head:?}");
    assert_eq!(head.size, Some(bytes.len() as i64), "{head:?}");
    let sidecar = client
        .get_object()
        .bucket(BUCKET)
        .key(format!("{KEY}.sha256"))
        .send()
        .await
        .expect("the sidecar");
    let sidecar = sidecar.body.collect().await.expect("its body").into_bytes();
    assert_eq!(sidecar, format!("{sha}  myapp\n").as_bytes());
    let open = client
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .expect("list multipart uploads");
    assert!(open.uploads().is_empty(), "uploads left open: {open:?}");

    let mut f = fetcher_for(&url);
    let got = fetch(&mut f, &fresh_current(None))
        .await
        .expect("a release");
    assert_eq!(got.sha256.as_deref(), Some(sha.as_str()), "{head:?}");
    assert!(got.bytes == bytes, "the object's bytes differ");
    head
}

/// moto 5.2.1 completes a multipart upload but names its answer's root element
/// `CompleteMultipartUploadResponse` (S3: `CompleteMultipartUploadResult`), which the SDK cannot
/// read: the publish must still succeed (a HEAD confirms this upload, in 3 parts, completed),
/// leave no upload open, and the fetcher take the sha256 from the metadata, never from moto's
/// composite checksum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_moto_a_multipart_upload_completes_and_is_fetched_by_its_metadata() {
    let Some(moto) = Moto::start() else { return };
    let bytes = payload("moto-multipart", MULTIPART_LEN);
    let head = publish_to_moto(&moto, "s3-moto-multi", &bytes).await;
    let etag = head.etag.as_deref().unwrap_or_default();
    assert!(etag.ends_with("-3"), "not an upload in 3 parts: {head:?}");
}

/// Up to one part: a single PUT, whose SHA256 checksum moto checks and reports as the file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_moto_a_single_part_upload_carries_s3s_own_checksum() {
    let Some(moto) = Moto::start() else { return };
    let bytes = payload("moto-single", 1024 * 1024 + 7);
    let head = publish_to_moto(&moto, "s3-moto-single", &bytes).await;
    let raw = hex::decode(sha256_hex(&bytes)).unwrap();
    assert_eq!(
        head.checksum,
        Some(aws_smithy_types::base64::encode(raw)),
        "{head:?}"
    );
    assert!(!head.etag.unwrap_or_default().contains('-'), "multipart?");
}

#[test]
fn server_errors_and_bad_credentials_publish_nothing() {
    let scratch = Scratch::new("s3-errors");
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let bin = write_binary(scratch.path(), "myapp", &payload("s3-err", 10_000));
    let bin = bin.to_str().unwrap();
    bed.proxy.set_mode(Mode::ServerError);
    let proxy = bed.endpoint();
    let run = publish(&s3_args(bin, &proxy, &["--timeout", "20"]), &SECRET);
    let run = run.fails_with(1, "S3: ");
    assert!(run.stderr.contains("InternalError"), "{run:#?}");
    bed.proxy.set_mode(Mode::Pass);
    let server = bed.server.url();
    let wrong = [("AWS_SECRET_ACCESS_KEY", "not-the-secret")];
    publish(&s3_args(bin, &server, &[]), &wrong).fails_with(1, "check the credentials");
    publish(&s3_args(bin, &server, &[]), &[]).fails_with(2, "AWS_SECRET_ACCESS_KEY");
    assert!(head(&bed, KEY).is_none(), "something was published");
    assert!(head(&bed, &format!("{KEY}.sha256")).is_none());
}
