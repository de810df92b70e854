//! `--dir`: the tool publishes into a directory that nginx serves; the File fetcher (on the
//! path) and the HTTP fetcher (through nginx) must both find the release, read it back byte for
//! byte, with the published sha256 and a signature that verifies. Failures leave the directory
//! as it was.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{
    assert_verifies, dir_names, fetch, fetch_signed, fresh_current, keypair, payload, publish,
    sha256_hex, untar, write_binary, Scratch,
};
use upshift::fetch::{FileFetcher, Format};
use upshift_fetcher_conformance::Loopback;
use upshift_http::HttpFetcher;
use upshift_testkit::servers::nginx::Nginx;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_signed_release_reaches_the_file_and_http_fetchers() {
    let scratch = Scratch::new("dir-raw");
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let www = nginx.www();
    let bytes = payload("raw-v2", 300_000);
    let bin = write_binary(scratch.path(), "app", &bytes);
    let (key, public_key) = keypair(scratch.path(), None);

    let run = publish(
        &[
            bin.to_str().unwrap(),
            "--dir",
            www.to_str().unwrap(),
            "--name",
            "next",
            "--sign",
            key.to_str().unwrap(),
        ],
        &[],
    )
    .ok();
    let sha = sha256_hex(&bytes);
    assert_eq!(run.sha256(), sha);
    assert_eq!(run.field("verify-key"), public_key);
    assert!(run.stderr.contains("uploading"), "no progress: {run:#?}");
    // Nothing but the release and its side files: no temporary file left behind.
    assert_eq!(dir_names(&www), ["next", "next.minisig", "next.sha256"]);
    let sidecar = std::fs::read_to_string(www.join("next.sha256")).unwrap();
    assert_eq!(sidecar, format!("{sha}  next\n"));
    let mode = std::fs::metadata(www.join("next"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);

    let mut file = FileFetcher::new(www.join("next"));
    let got = fetch_signed(&mut file, &bytes, &sha, &public_key).await;
    assert_eq!(got.format, Format::Raw);

    let mut http = HttpFetcher::new(nginx.url("next")).unwrap().loopback();
    fetch_signed(&mut http, &bytes, &sha, &public_key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_and_a_shared_sha256sums_list() {
    let scratch = Scratch::new("dir-archives");
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let www = nginx.www();
    // Another platform's line, which must survive.
    let other = format!("{}  app-aarch64-unknown-linux-gnu.tar.gz\n", "a".repeat(64));
    std::fs::write(www.join("SHA256SUMS"), &other).unwrap();
    let bytes = payload("archived", 200_000);
    let bin = write_binary(scratch.path(), "app", &bytes);
    let dir = www.to_str().unwrap();

    let tgz = publish(
        &[
            bin.to_str().unwrap(),
            "--dir",
            dir,
            "--archive",
            "tar.gz",
            "--checksum",
            "sums",
            "-q",
        ],
        &[],
    )
    .ok();
    assert!(
        !tgz.stderr.contains("uploading"),
        "--quiet printed progress: {tgz:#?}"
    );
    let zip = publish(
        &[
            bin.to_str().unwrap(),
            "--dir",
            dir,
            "--archive",
            "zip",
            "--checksum",
            "both",
        ],
        &[],
    )
    .ok();
    let sums = std::fs::read_to_string(www.join("SHA256SUMS")).unwrap();
    assert_eq!(
        sums,
        format!(
            "{other}{}  app.tar.gz\n{}  app.zip\n",
            tgz.sha256(),
            zip.sha256()
        )
    );
    assert_eq!(
        dir_names(&www),
        ["SHA256SUMS", "app.tar.gz", "app.zip", "app.zip.sha256"]
    );

    let mut http = HttpFetcher::new(nginx.url("app.tar.gz"))
        .unwrap()
        .sha256sums_url(nginx.url("SHA256SUMS"))
        .loopback();
    let got = fetch(&mut http, &fresh_current(None))
        .await
        .expect("a release");
    assert_eq!(got.format, Format::TarGz { binary: None });
    assert_eq!(got.sha256.as_deref(), Some(tgz.sha256().as_str()));
    assert_eq!(sha256_hex(&got.bytes), tgz.sha256());
    let (path, mode, inner) = untar(&got.bytes);
    assert_eq!(
        (path.as_str(), mode & 0o111, inner),
        ("app", 0o111, bytes.clone())
    );

    let mut file = FileFetcher::new(www.join("app.zip"));
    let got = fetch(&mut file, &fresh_current(None))
        .await
        .expect("a release");
    assert_eq!(got.format, Format::Zip { binary: None });
    assert_eq!(got.sha256.as_deref(), Some(zip.sha256().as_str()));
    assert_eq!(sha256_hex(&got.bytes), zip.sha256());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_release_removes_the_stale_signature() {
    let scratch = Scratch::new("dir-stale");
    let out = Scratch::new("dir-stale-out");
    let (key, _) = keypair(scratch.path(), None);
    let v1 = write_binary(scratch.path(), "v1", &payload("v1", 10_000));
    let dest = out.path().to_str().unwrap();
    let key = key.to_str().unwrap();
    publish(
        &[
            v1.to_str().unwrap(),
            "--dir",
            dest,
            "--name",
            "app",
            "--sign",
            key,
        ],
        &[],
    )
    .ok();
    assert!(out.path().join("app.minisig").exists());

    let v2_bytes = payload("v2", 12_000);
    let v2 = write_binary(scratch.path(), "v2", &v2_bytes);
    let run = publish(&[v2.to_str().unwrap(), "--dir", dest, "--name", "app"], &[]).ok();
    assert!(run.stdout.contains("app.minisig (stale)"), "{run:#?}");
    assert_eq!(dir_names(out.path()), ["app", "app.sha256"]);
    let mut file = FileFetcher::new(out.path().join("app"));
    let got = fetch(&mut file, &fresh_current(None))
        .await
        .expect("a release");
    assert_eq!(got.bytes, v2_bytes);
    assert_eq!(got.signature, None);
    assert_eq!(got.sha256, Some(sha256_hex(&v2_bytes)));
}

#[test]
fn an_encrypted_key_needs_its_password_from_the_environment() {
    let scratch = Scratch::new("dir-encrypted");
    let out = Scratch::new("dir-encrypted-out");
    let bytes = payload("enc", 5_000);
    let bin = write_binary(scratch.path(), "app", &bytes);
    let (key, public_key) = keypair(scratch.path(), Some("correct horse"));
    let args = [
        bin.to_str().unwrap(),
        "--dir",
        out.path().to_str().unwrap(),
        "--sign",
        key.to_str().unwrap(),
    ];
    publish(&args, &[]).fails_with(
        1,
        "is encrypted: put its password in the environment variable MINISIGN_PASSWORD",
    );
    publish(&args, &[("MINISIGN_PASSWORD", "wrong")]).fails_with(1, "wrong password");
    assert_eq!(
        dir_names(out.path()),
        Vec::<String>::new(),
        "a bad key changed the directory"
    );

    let run = publish(&args, &[("MINISIGN_PASSWORD", "correct horse")]).ok();
    assert_eq!(run.field("verify-key"), public_key);
    let sig = std::fs::read_to_string(out.path().join("app.minisig")).unwrap();
    assert_verifies(&public_key, &sig, &bytes);

    // --password-env names another variable.
    let mut other = args.to_vec();
    other.extend(["--password-env", "RELEASE_KEY_PASSWORD"]);
    publish(&other, &[("RELEASE_KEY_PASSWORD", "correct horse")]).ok();
}

#[test]
fn bad_inputs_are_explained_and_change_nothing() {
    let scratch = Scratch::new("dir-bad");
    let out = Scratch::new("dir-bad-out");
    let dest = out.path().to_str().unwrap();
    let missing = scratch.path().join("not-built");
    publish(&[missing.to_str().unwrap(), "--dir", dest], &[]).fails_with(1, "does not exist");
    let bin = write_binary(scratch.path(), "app", &payload("bad", 4_000));
    let bin = bin.to_str().unwrap();
    let (_, public_key) = keypair(scratch.path(), None);
    let pub_file = scratch.path().join("minisign.pub");
    std::fs::write(&pub_file, format!("untrusted comment: pk\n{public_key}\n")).unwrap();
    publish(
        &[bin, "--dir", dest, "--sign", pub_file.to_str().unwrap()],
        &[],
    )
    .fails_with(1, "is a public key");
    publish(&[bin, "--dir", dest, "--sign", "/nonexistent/key"], &[])
        .fails_with(1, "cannot be read");
    publish(&[bin, "--dir", dest, "--archive", "rar"], &[]).fails_with(2, "--archive");
    publish(&[bin, "--dir", dest, "--name", "app.tar.gz"], &[]).fails_with(2, "--archive tar.gz");
    let nowhere = scratch.path().join("no-such-dir");
    publish(&[bin, "--dir", nowhere.to_str().unwrap()], &[]).fails_with(1, "create it first");
    assert_eq!(dir_names(out.path()), Vec::<String>::new());
}

/// The file cannot be put in place (its name is taken by a directory): the side files written
/// before it are put back as they were, and no temporary file is left.
#[test]
fn a_failed_write_restores_the_side_files() {
    let scratch = Scratch::new("dir-restore");
    let out = Scratch::new("dir-restore-out");
    let (key, _) = keypair(scratch.path(), None);
    let old_sidecar = format!("{}  app\n", "b".repeat(64));
    std::fs::write(out.path().join("app.sha256"), &old_sidecar).unwrap();
    std::fs::create_dir_all(out.path().join("app").join("occupied")).unwrap();
    let bin = write_binary(scratch.path(), "app", &payload("blocked", 4_000));
    let run = publish(
        &[
            bin.to_str().unwrap(),
            "--dir",
            out.path().to_str().unwrap(),
            "--checksum",
            "both",
            "--sign",
            key.to_str().unwrap(),
        ],
        &[],
    );
    let run = run.fails_with(1, "renaming the new file to");
    assert!(run.stdout.is_empty(), "{run:#?}");
    assert_eq!(dir_names(out.path()), ["app", "app.sha256"]);
    assert_eq!(
        std::fs::read_to_string(out.path().join("app.sha256")).unwrap(),
        old_sidecar
    );
}
