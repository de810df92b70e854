//! `--delta-from`: beside the release, a delta patch per previous build, with the same checksum
//! files and signature as the release (the signature naming the build the patch applies to),
//! to a directory, S3 (s3s-fs) and a GitHub release (the fixture); applying a patch with
//! upshift's codec gives the new binary byte for byte. Archives refuse it.

mod common;

use std::path::Path;

use common::github;
use common::{
    assert_verifies, dir_names, fetch, fresh_current, keypair, payload, publish, sha256_hex,
    write_binary, Scratch,
};
use upshift::delta::patch_name;
use upshift::release::SignedMetadata;
use upshift_fetcher_conformance::Loopback;
use upshift_github::{GithubFetcher, TARGET};
use upshift_testkit::s3::{Bed, ACCESS_KEY, BUCKET, KEY, SECRET_KEY};

/// Two builds as consecutive releases differ: the second with a few bytes changed, a run
/// inserted (shifting everything after it) and a tail appended.
fn builds(tag: &str) -> (Vec<u8>, Vec<u8>) {
    let old = payload(tag, 400_000);
    let mut new = old.clone();
    for i in (100..new.len()).step_by(10_007) {
        new[i] ^= 0x55;
    }
    new.splice(
        150_000..150_000,
        b"a new function".iter().copied().cycle().take(2000),
    );
    new.extend_from_slice(b"version 2");
    (old, new)
}

/// The patch applied to `old` with upshift's codec, as a master applies it.
fn applied(old: &[u8], patch: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    upshift::delta::apply(old, &mut &patch[..], &mut out, 1 << 30).expect("the patch applies");
    out
}

/// The signed metadata of a `.minisig`, after checking that it verifies over `bytes`.
fn signed(public_key: &str, minisig: &str, bytes: &[u8]) -> SignedMetadata {
    assert_verifies(public_key, minisig, bytes);
    let sig = minisign_verify::Signature::decode(minisig).unwrap();
    SignedMetadata::from_trusted_comment(sig.trusted_comment()).unwrap()
}

#[test]
fn a_directory_gets_a_patch_with_its_checksums_and_signature() {
    let scratch = Scratch::new("delta-dir");
    let www = scratch.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let (old, new) = builds("delta-dir");
    let old_path = write_binary(scratch.path(), "app-1.0.0", &old);
    let bin = write_binary(scratch.path(), "app", &new);
    // The same build twice, and the build being published: one patch, and two notes.
    let (key, public_key) = keypair(scratch.path(), None);
    let run = publish(
        &[
            bin.to_str().unwrap(),
            "--dir",
            www.to_str().unwrap(),
            "--checksum",
            "both",
            "--sign",
            key.to_str().unwrap(),
            "--version",
            "1.1.0",
            "--delta-from",
            old_path.to_str().unwrap(),
            "--delta-from",
            old_path.to_str().unwrap(),
            "--delta-from",
            bin.to_str().unwrap(),
        ],
        &[],
    )
    .ok();
    let (old_sha, new_sha) = (sha256_hex(&old), sha256_hex(&new));
    let patch = patch_name("app", &old_sha);
    assert_eq!(run.sha256(), new_sha);
    assert!(
        run.stdout
            .contains(&format!("  patch      {}", www.join(&patch).display())),
        "{run:#?}"
    );
    assert!(
        run.stdout.contains(&format!("    from     {old_sha}")),
        "{run:#?}"
    );
    assert!(run.stdout.contains("same build as an earlier"), "{run:#?}");
    assert!(run.stdout.contains("the build being published"), "{run:#?}");
    assert_eq!(
        dir_names(&www),
        [
            "SHA256SUMS".to_string(),
            "app".into(),
            patch.clone(),
            format!("{patch}.minisig"),
            format!("{patch}.sha256"),
            "app.minisig".into(),
            "app.sha256".into(),
        ]
    );
    let patch_bytes = std::fs::read(www.join(&patch)).unwrap();
    assert!(patch_bytes.len() < new.len() / 10, "{}", patch_bytes.len());
    let patch_sha = sha256_hex(&patch_bytes);
    assert_eq!(
        std::fs::read_to_string(www.join(format!("{patch}.sha256"))).unwrap(),
        format!("{patch_sha}  {patch}\n")
    );
    assert_eq!(
        std::fs::read_to_string(www.join("SHA256SUMS")).unwrap(),
        format!("{patch_sha}  {patch}\n{new_sha}  app\n")
    );
    // Not executable, unlike the release.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(www.join(&patch))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);

    let minisig = std::fs::read_to_string(www.join(format!("{patch}.minisig"))).unwrap();
    let meta = signed(&public_key, &minisig, &patch_bytes);
    assert_eq!(meta.base.as_deref(), Some(old_sha.as_str()));
    assert_eq!(meta.sha256, patch_sha);
    assert_eq!(
        (meta.product.as_str(), meta.version.as_str()),
        ("app", "1.1.0")
    );
    let release_sig = std::fs::read_to_string(www.join("app.minisig")).unwrap();
    assert_eq!(signed(&public_key, &release_sig, &new).base, None);

    assert!(
        applied(&old, &patch_bytes) == new,
        "the patch does not rebuild the release"
    );
}

#[test]
fn a_patch_not_worth_it_is_skipped_and_archives_refuse_patches() {
    let scratch = Scratch::new("delta-skip");
    let www = scratch.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let old = write_binary(scratch.path(), "old", &payload("unrelated", 100_000));
    let bin = write_binary(scratch.path(), "app", &payload("delta-skip", 100_000));
    let (b, o, w) = (
        bin.to_str().unwrap(),
        old.to_str().unwrap(),
        www.to_str().unwrap(),
    );
    let run = publish(&[b, "--dir", w, "--delta-from", o], &[]).ok();
    assert!(run.stdout.contains("is not worth it"), "{run:#?}");
    assert_eq!(dir_names(&www), ["app", "app.sha256"]);

    for archive in ["tar.gz", "gz", "zip"] {
        publish(
            &[b, "--dir", w, "--archive", archive, "--delta-from", o],
            &[],
        )
        .fails_with(2, "--delta-from is for raw releases only");
    }
    publish(&[b, "--dir", w, "--delta-from", "/nonexistent/old"], &[])
        .fails_with(2, "--delta-from /nonexistent/old");
    assert_eq!(dir_names(&www), ["app", "app.sha256"]);
}

/// An object of the test bed's bucket.
fn get_object(bed: &Bed, key: String) -> Option<(Vec<u8>, Option<String>)> {
    let client = bed.publisher.clone();
    bed.block(async move {
        let out = client
            .get_object()
            .bucket(BUCKET)
            .key(key)
            .send()
            .await
            .ok()?;
        let meta = out.metadata().and_then(|m| m.get("sha256")).cloned();
        let bytes = out.body.collect().await.ok()?.into_bytes().to_vec();
        Some((bytes, meta))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_gets_the_patch_with_its_sha256_as_the_release_does() {
    let scratch = Scratch::new("delta-s3");
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let (old, new) = builds("delta-s3");
    let old_path = write_binary(scratch.path(), "old", &old);
    let bin = write_binary(scratch.path(), "myapp", &new);
    let server = bed.server.url();
    let (key, public_key) = keypair(scratch.path(), None);
    let run = publish(
        &[
            bin.to_str().unwrap(),
            "--s3",
            &format!("s3://{BUCKET}/{KEY}"),
            "--s3-endpoint",
            &server,
            "--region",
            "us-east-1",
            "--s3-access-key-id",
            ACCESS_KEY,
            "--sign",
            key.to_str().unwrap(),
            "--version",
            "2.0.0",
            "--delta-from",
            old_path.to_str().unwrap(),
        ],
        &[("AWS_SECRET_ACCESS_KEY", SECRET_KEY)],
    )
    .ok();
    let old_sha = sha256_hex(&old);
    let patch_key = patch_name(KEY, &old_sha);
    assert!(
        run.stdout
            .contains(&format!("  patch      s3://{BUCKET}/{patch_key}")),
        "{run:#?}"
    );
    let (patch, meta) = get_object(&bed, patch_key.clone()).expect("the patch object");
    let patch_sha = sha256_hex(&patch);
    assert_eq!(meta.as_deref(), Some(patch_sha.as_str()));
    let (sidecar, _) = get_object(&bed, format!("{patch_key}.sha256")).expect("its sidecar");
    let patch_file = patch_key.rsplit('/').next().unwrap();
    assert_eq!(
        String::from_utf8(sidecar).unwrap(),
        format!("{patch_sha}  {patch_file}\n")
    );
    let (minisig, _) = get_object(&bed, format!("{patch_key}.minisig")).expect("its signature");
    let signed = signed(&public_key, &String::from_utf8(minisig).unwrap(), &patch);
    assert_eq!(signed.base, Some(old_sha));
    assert!(applied(&old, &patch) == new);
    let (release, meta) = get_object(&bed, KEY.to_string()).expect("the release");
    assert!(release == new);
    assert_eq!(meta, Some(sha256_hex(&new)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_release_carries_the_patch_and_the_fetcher_still_picks_the_binary() {
    let scratch = Scratch::new("delta-gh");
    let data = Scratch::new("delta-gh-data");
    const TOKEN: &str = "ghp_fixtureToken0123456789";
    let fixture = github::start(data.path(), &["acme/app"], &["--token", TOKEN]);
    let (old, new) = builds("delta-gh");
    let old_path = write_binary(scratch.path(), "app-1.0.0", &old);
    let bin = write_binary(scratch.path(), "app", &new);
    let (key, public_key) = keypair(scratch.path(), None);
    publish(
        &[
            bin.to_str().unwrap(),
            "--github",
            "acme/app",
            "--tag",
            "v1.1.0",
            "--github-api",
            &fixture.api,
            "--checksum",
            "both",
            "--sign",
            key.to_str().unwrap(),
            "--delta-from",
            old_path.to_str().unwrap(),
        ],
        &[("GITHUB_TOKEN", TOKEN)],
    )
    .ok();
    let asset = format!("app-{TARGET}");
    let old_sha = sha256_hex(&old);
    let patch = patch_name(&asset, &old_sha);
    let dir: &Path = &data.path().join("acme/app/releases/v1.1.0");
    let mut names = dir_names(dir);
    names.retain(|n| n != "release.json");
    assert_eq!(
        names,
        [
            "SHA256SUMS".to_string(),
            asset.clone(),
            patch.clone(),
            format!("{patch}.minisig"),
            format!("{patch}.sha256"),
            format!("{asset}.minisig"),
            format!("{asset}.sha256"),
        ]
    );
    let patch_bytes = std::fs::read(dir.join(&patch)).unwrap();
    let patch_sha = sha256_hex(&patch_bytes);
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    assert!(sums.contains(&format!("{patch_sha}  {patch}\n")), "{sums}");
    let minisig = std::fs::read_to_string(dir.join(format!("{patch}.minisig"))).unwrap();
    assert_eq!(
        signed(&public_key, &minisig, &patch_bytes).base,
        Some(old_sha)
    );
    assert!(applied(&old, &patch_bytes) == new);

    // The patch went up before the release, and both before the draft was published.
    let log = fixture.log();
    let upload = |name: &str| {
        log.iter()
            .position(|l| l.origin == "uploads" && l.path.ends_with(&format!("name={name}")))
    };
    let published = log.iter().position(|l| l.method == "PATCH");
    assert!(
        matches!((upload(&patch), upload(&asset), published), (Some(p), Some(a), Some(r)) if p < a && a < r),
        "{log:#?}"
    );
    // The GitHub fetcher passes over the .zst patch and offers the binary.
    let mut f = GithubFetcher::new("acme/app")
        .unwrap()
        .api_base(&fixture.api)
        .loopback()
        .token(TOKEN);
    let got = fetch(&mut f, &fresh_current(Some("1.0.0")))
        .await
        .expect("a release");
    assert!(got.bytes == new, "the fetcher offered another asset");
}
