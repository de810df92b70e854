//! `--s3`: the tool publishes to a real s3s-fs (SigV4 checked) on 127.0.0.1, and the real S3
//! fetcher (through the test bed's proxy) must find the object, read it back byte for byte,
//! with the published sha256 (S3's own checksum for one request, the metadata for a multipart
//! upload) and a signature that verifies. Server errors and bad credentials publish nothing.

mod common;

#[path = "../../fetchers/s3/tests/common/mod.rs"]
mod bed;

use aws_sdk_s3::types::ChecksumMode;
use bed::{Bed, Mode, ACCESS_KEY, BUCKET, KEY, SECRET_KEY};
use common::{
    assert_verifies, fetch, fresh_current, keypair, payload, publish, write_binary, Scratch,
};

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

/// The object's metadata sha256 and S3 checksum (base64), as a HEAD shows them.
fn head(bed: &Bed, key: &str) -> Option<(Option<String>, Option<String>)> {
    let req = bed
        .publisher
        .head_object()
        .bucket(BUCKET)
        .key(key)
        .checksum_mode(ChecksumMode::Enabled);
    let out = bed.block(async move { req.send().await }).ok()?;
    let meta = out.metadata().and_then(|m| m.get("sha256")).cloned();
    Some((meta, out.checksum_sha256().map(str::to_string)))
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

    let mut f = bed.fetcher();
    let got = fetch(&mut f, &fresh_current(None))
        .await
        .expect("a release");
    assert_eq!(got.bytes, bytes);
    assert_eq!(got.sha256.as_deref(), Some(sha.as_str()));
    assert_verifies(
        &public_key,
        got.signature.as_deref().expect("signed"),
        &got.bytes,
    );
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
    let (meta, _) = head(&bed, KEY).expect("the object");
    assert_eq!(meta.as_deref(), Some(sha.as_str()));
    let mut f = bed.fetcher();
    let got = fetch(&mut f, &fresh_current(None))
        .await
        .expect("a release");
    assert_eq!(got.sha256.as_deref(), Some(sha.as_str()));
    assert!(got.bytes == bytes, "the object's bytes differ");
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
