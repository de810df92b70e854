//! Objects the AWS CLI uploads in parts (`aws s3 cp` above 8 MB): their SHA256 checksum is a
//! checksum of the parts' checksums, never the file's sha256. Published with the real CLI to
//! moto (which reports that composite as S3 does, minus the `-N` suffix and the type header) and
//! to s3s-fs (which reports no checksum for them), the fetcher must take the sha256 from
//! `x-amz-meta-sha256` or the sidecar, and say exactly what is missing when neither is there.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::hello::{new_build, Hello};
use common::moto::{self, Moto};
use common::{fetcher_for, start_hello, Bed, TempDir, KEY};
use upshift::fetch::{Current, Fetcher, Release};
use upshift_fetcher_conformance::{payload, read_body, sha256_hex};

/// From publishing a 270 MB debug build of hello to what the master logs about it: the CLI's
/// upload to moto takes about 10 s, the download as long again.
const PUBLISHED: Duration = Duration::from_secs(120);
/// Above the CLI's 8 MB multipart threshold.
const MULTIPART_LEN: usize = 9 * 1024 * 1024 + 77;

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// The part count in an ETag of a multipart upload (`<hex>-N`).
fn parts(etag: &str) -> u32 {
    etag.rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("the ETag {etag:?} is not a multipart upload's"))
}

/// The `nth` (from 1) release rejection the master logged, or the test fails with the log. (Not
/// found by ETag: s3s-fs may answer a HEAD during an upload's completion with the ETag before.)
fn rejection(hello: &Hello, nth: usize) -> String {
    const NEEDLE: &str = " rejected: ";
    let found = hello.wait_log_count(NEEDLE, nth - 1, PUBLISHED);
    match hello.log_lines(NEEDLE).into_iter().nth(nth - 1) {
        Some(line) if found => line,
        _ => hello.fail(format!("no rejection #{nth} within {PUBLISHED:?}")),
    }
}

/// The README's recipe and its fixes, as a user runs them against a server, with `hello`
/// watching `endpoint` (`upload_to` is where the CLI writes: the server itself):
/// 1. `aws s3 cp --checksum-algorithm SHA256` of a new build (multipart): refused, the master
///    saying why (`missing`, then what else is missing) and without reading it;
/// 2. the same with a wrong `--metadata sha256=`: refused as a checksum mismatch against the
///    metadata (not against the composite);
/// 3. the same with the right `--metadata sha256=`: installed, generation 2 serving it, and
///    nowhere a "disagree" warning or the SDK's "part-level checksum" warning.
fn multipart_recipes(hello: Hello, upload_to: &str, missing: impl Fn(u32) -> String) {
    let dir = TempDir::new("multipart-hello");
    let before = hello.greeting();
    let current = hello.installed();

    let plain = write(&dir, "plain", &new_build(&current, "cli-multipart"));
    moto::cp(upload_to, &plain, KEY, &[]);
    let etag = moto::etag(upload_to, KEY);
    let n = parts(&etag);
    assert!(n > 1, "{etag}: one part");
    let why = format!(
        "{}; no x-amz-meta-sha256; no s3://{}/{KEY}.sha256",
        missing(n),
        common::BUCKET
    );
    if hello.wait_log(&why, PUBLISHED).is_none() {
        hello.fail(format!("the master did not say {why:?}"));
    }
    let refused = rejection(&hello, 1);
    if !refused.contains(&etag) || !refused.contains("without a sha256 checksum") {
        hello.fail(format!("refused for another reason: {refused}"));
    }

    let wrong = sha256_hex(b"not the build");
    let mislabelled = write(&dir, "wrong", &new_build(&current, "wrong-metadata"));
    moto::cp(
        upload_to,
        &mislabelled,
        KEY,
        &["--metadata", &format!("sha256={wrong}")],
    );
    let refused = rejection(&hello, 2);
    let actual = sha256_hex(&std::fs::read(&mislabelled).expect("read the build"));
    let mismatch = format!("checksum mismatch: the release's sha256 is {actual}, but {wrong} was");
    if !refused.contains(&mismatch) {
        hello.fail(format!("not refused against the metadata: {refused}"));
    }
    assert_eq!(hello.greeting(), before, "after two refusals");

    let good = new_build(&current, "metadata-recipe");
    let sha = sha256_hex(&good);
    let path = write(&dir, "good", &good);
    moto::cp(
        upload_to,
        &path,
        KEY,
        &["--metadata", &format!("sha256={sha}")],
    );
    let Some(after) = hello.wait_greeting(PUBLISHED, |g| g.pid != before.pid) else {
        hello.fail(format!(
            "the build (sha256 {sha}) was not installed within {PUBLISHED:?}"
        ))
    };
    assert_eq!(after.generation, 2, "{after:?}");
    let serving = " is serving (generation 2)";
    if hello.wait_log(serving, Duration::from_secs(10)).is_none() {
        hello.fail(format!("the master did not log {serving:?}"));
    }
    if hello.log_lines(" rejected: ").len() != 2 {
        hello.fail("expected exactly two rejections");
    }
    assert!(
        hello.installed() == good,
        "the installed binary is not the build published"
    );
    for quiet in ["disagree", "part-level checksum"] {
        let lines = hello.log_lines(quiet);
        if !lines.is_empty() {
            hello.fail(format!("the log says {quiet:?}: {lines:#?}"));
        }
    }
}

/// moto reports the composite checksum of a CLI multipart upload as the object's checksum (the
/// old fetcher took it for the file's sha256 and refused every such build as a mismatch).
#[test]
fn hello_on_moto_refuses_a_composite_checksum_and_takes_the_metadata() {
    let Some(moto) = Moto::start() else { return };
    let hello = start_hello(&moto.url(), "info");
    multipart_recipes(hello, &moto.url(), |n| {
        format!("object uploaded in {n} parts: its SHA256 checksum covers the parts, not the file")
    });
}

/// s3s-fs reports no checksum at all for a multipart upload: refused, saying so and naming the
/// parts; the metadata recipe works there as well.
#[test]
fn hello_on_s3s_fs_refuses_a_multipart_upload_without_metadata_and_takes_the_metadata() {
    if !moto::cli_present() {
        return;
    }
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let hello = start_hello(&bed.endpoint(), "info");
    multipart_recipes(hello, &bed.server.url(), |n| {
        format!("no SHA256 checksum (object uploaded in {n} parts)")
    });
}

fn nothing_installed() -> Current {
    Current {
        sha256: sha256_hex(b"the running binary"),
        ..Current::default()
    }
}

async fn offered(endpoint: &str) -> Release {
    let mut f = fetcher_for(endpoint);
    match tokio::time::timeout(Duration::from_secs(30), f.check(&nothing_installed())).await {
        Ok(Ok(Some(r))) => r,
        Ok(other) => panic!("expected a release, got {other:?}"),
        Err(_) => panic!("no answer within 30 s"),
    }
}

/// Against moto, where the sha256 of a release comes from: a single-part upload's own checksum;
/// for a multipart upload (ETag `-N`), never its composite checksum but `x-amz-meta-sha256`,
/// else the sidecar, else nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_moto_a_composite_checksum_is_never_the_files_sha256() {
    let Some(moto) = Moto::start() else { return };
    let url = moto.url();
    let dir = TempDir::new("multipart-fetcher");
    let cp = |bytes: &[u8], extra: &[&str]| {
        let path = write(&dir, "app", bytes);
        moto::cp(&url, &path, KEY, extra);
        moto::etag(&url, KEY)
    };

    let small = payload("single", 1024 * 1024);
    let etag = cp(&small, &[]);
    assert!(!etag.contains('-'), "{etag}: a single-part upload");
    assert_eq!(offered(&url).await.sha256, Some(sha256_hex(&small)));

    let big = payload("multipart-metadata", MULTIPART_LEN);
    let sha = sha256_hex(&big);
    let etag = cp(&big, &["--metadata", &format!("sha256={sha}")]);
    assert!(parts(&etag) > 1);
    let mut release = offered(&url).await;
    assert_eq!(release.sha256.as_deref(), Some(sha.as_str()), "{etag}");
    let body = read_body(&mut release, MULTIPART_LEN)
        .await
        .expect("the body");
    assert!(body == big, "the body is not the object");

    let other = payload("multipart-sidecar", MULTIPART_LEN);
    let sidecar = write(
        &dir,
        "app.sha256",
        format!("{}  app\n", sha256_hex(&other)).as_bytes(),
    );
    moto::cp(&url, &sidecar, &format!("{KEY}.sha256"), &[]);
    cp(&other, &[]);
    assert_eq!(offered(&url).await.sha256, Some(sha256_hex(&other)));

    moto::aws(
        &url,
        &["s3", "rm", &format!("s3://{}/{KEY}.sha256", common::BUCKET)],
    )
    .ok();
    cp(&payload("multipart-bare", MULTIPART_LEN), &[]);
    assert_eq!(
        offered(&url).await.sha256,
        None,
        "a composite checksum taken as the sha256"
    );
}
