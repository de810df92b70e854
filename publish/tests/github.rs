//! `--github`: the tool publishes through the GitHub REST fixture (API, upload host and storage
//! host on three loopback origins, token checked), and the real GitHub fetcher must pick the
//! release and asset, read it back byte for byte, with GitHub's digest equal to the published
//! sha256 and a signature that verifies. Refusals and failures leave the release as it was.

mod common;

use common::github::{self, Fixture};
use common::{
    assert_verifies, dir_names, fetch, fresh_current, keypair, payload, publish, sha256_hex, untar,
    write_binary, Scratch,
};
use upshift::fetch::Format;
use upshift_fetcher_conformance::Loopback;
use upshift_github::{GithubFetcher, TARGET};

const TOKEN: &str = "ghp_fixtureToken0123456789";

fn fetcher(fixture: &Fixture) -> GithubFetcher {
    GithubFetcher::new("acme/app")
        .unwrap()
        .api_base(&fixture.api)
        .loopback()
        .token(TOKEN)
        .prereleases(true)
}

fn release_dir(data: &Scratch, tag: &str) -> std::path::PathBuf {
    data.path().join("acme/app/releases").join(tag)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_release_is_created_uploaded_and_found_by_the_github_fetcher() {
    let scratch = Scratch::new("gh-new");
    let data = Scratch::new("gh-new-data");
    let fixture = github::start(data.path(), &["acme/app"], &["--token", TOKEN]);
    let bytes = payload("gh-v1.2.0", 400_000);
    let bin = write_binary(scratch.path(), "app", &bytes);
    let (key, public_key) = keypair(scratch.path(), None);

    let run = publish(
        &[
            bin.to_str().unwrap(),
            "--github",
            "acme/app",
            "--tag",
            "v1.2.0",
            "--github-api",
            &fixture.api,
            "--archive",
            "tar.gz",
            "--checksum",
            "both",
            "--sign",
            key.to_str().unwrap(),
            "--notes",
            "the changes",
        ],
        &[("GITHUB_TOKEN", TOKEN), ("RUST_LOG", "trace")],
    )
    .ok();
    let asset = format!("app-{TARGET}.tar.gz");
    assert!(
        run.stdout
            .contains(&format!("github:acme/app@v1.2.0/{asset}")),
        "{run:#?}"
    );
    assert!(
        run.stdout.contains("/acme/app/releases/tag/v1.2.0"),
        "{run:#?}"
    );
    assert!(run.stderr.contains("uploading"), "no progress: {run:#?}");
    // Traced at every level, the token is in neither output.
    assert!(
        !run.stderr.contains(TOKEN) && !run.stdout.contains(TOKEN),
        "{run:#?}"
    );
    let mut names = dir_names(&release_dir(&data, "v1.2.0"));
    names.retain(|n| n != "release.json");
    let expected = [
        "SHA256SUMS".to_string(),
        asset.clone(),
        format!("{asset}.minisig"),
        format!("{asset}.sha256"),
    ];
    assert_eq!(names, expected);

    let log = fixture.log();
    // Created as a draft, then published once the asset was up; uploads on the upload host
    // with the token, nothing but the API and the upload host was sent it.
    let created = log
        .iter()
        .position(|l| l.method == "POST" && l.path == "/repos/acme/app/releases");
    let published = log.iter().position(|l| l.method == "PATCH");
    let main_upload = log
        .iter()
        .position(|l| l.origin == "uploads" && l.path.ends_with(&format!("name={asset}")));
    assert!(
        matches!((created, main_upload, published), (Some(c), Some(u), Some(p)) if c < u && u < p),
        "{log:#?}"
    );
    let uploads: Vec<_> = log.iter().filter(|l| l.origin == "uploads").collect();
    assert_eq!(uploads.len(), 4, "{log:#?}");
    assert!(
        uploads
            .iter()
            .all(|l| l.had_authorization && l.status == 201),
        "{log:#?}"
    );
    assert!(log
        .iter()
        .filter(|l| l.origin == "objects")
        .all(|l| !l.had_authorization));

    let mut f = fetcher(&fixture);
    let got = fetch(&mut f, &fresh_current(Some("1.1.0")))
        .await
        .expect("a release");
    assert_eq!(got.identity, "v1.2.0");
    assert_eq!(got.format, Format::TarGz { binary: None });
    assert_eq!(got.sha256.as_deref(), Some(run.sha256().as_str()));
    assert_eq!(sha256_hex(&got.bytes), run.sha256());
    assert_verifies(
        &public_key,
        got.signature.as_deref().expect("signed"),
        &got.bytes,
    );
    assert_eq!(untar(&got.bytes).2, bytes);
    // Found as the latest release too (the fetcher's default, no prereleases).
    let mut latest = GithubFetcher::new("acme/app")
        .unwrap()
        .api_base(&fixture.api)
        .loopback()
        .token(TOKEN);
    let got = fetch(&mut latest, &fresh_current(Some("1.1.0")))
        .await
        .expect("latest");
    assert_eq!(got.identity, "v1.2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_stays_hidden_and_takes_a_second_platform() {
    let scratch = Scratch::new("gh-draft");
    let data = Scratch::new("gh-draft-data");
    let fixture = github::start(data.path(), &["acme/app"], &[]);
    let bin = write_binary(scratch.path(), "app", &payload("draft", 50_000));
    let bin = bin.to_str().unwrap();
    let common = [
        "--github",
        "acme/app",
        "--tag",
        "v2.0.0",
        "--github-api",
        &fixture.api,
    ];
    let env = [("GITHUB_TOKEN", TOKEN)];
    let mut args = vec![bin, "--draft", "--checksum", "sums"];
    args.extend(common);
    let first = publish(&args, &env).ok();
    assert!(first.stdout.contains("(draft)"), "{first:#?}");
    // The second run finds the draft in the release list (GitHub finds drafts by no tag).
    let mut args = vec![
        bin,
        "--target",
        "aarch64-unknown-linux-gnu",
        "--checksum",
        "sums",
    ];
    args.extend(common);
    let second = publish(&args, &env).ok();
    assert!(second.stdout.contains("(draft)"), "{second:#?}");
    let dir = release_dir(&data, "v2.0.0");
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    assert_eq!(
        sums,
        format!(
            "{}  app-{TARGET}\n{}  app-aarch64-unknown-linux-gnu\n",
            first.sha256(),
            second.sha256()
        )
    );
    let mut f = fetcher(&fixture);
    assert!(
        fetch(&mut f, &fresh_current(None)).await.is_none(),
        "a draft was offered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_asset_is_refused_unless_replaced() {
    let scratch = Scratch::new("gh-replace");
    let data = Scratch::new("gh-replace-data");
    let fixture = github::start(data.path(), &["acme/app"], &[]);
    let v1 = payload("replace-1", 30_000);
    let v2 = payload("replace-2", 31_000);
    let bin = write_binary(scratch.path(), "app", &v1);
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            bin.to_str().unwrap().to_string(),
            "--github".into(),
            "acme/app".into(),
            "--tag".into(),
            "v1.0.0".into(),
            "--github-api".into(),
            fixture.api.clone(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let env = [("GITHUB_TOKEN", TOKEN)];
    let run = |a: Vec<String>| publish(&a.iter().map(String::as_str).collect::<Vec<_>>(), &env);
    run(args(&[])).ok();
    let asset = release_dir(&data, "v1.0.0").join(format!("app-{TARGET}"));
    std::fs::write(&bin, &v2).unwrap();
    run(args(&[])).fails_with(1, "pass --replace");
    assert_eq!(
        std::fs::read(&asset).unwrap(),
        v1,
        "a refused run changed the asset"
    );
    let replaced = run(args(&["--replace"])).ok();
    assert_eq!(replaced.sha256(), sha256_hex(&v2));
    assert_eq!(std::fs::read(&asset).unwrap(), v2);
    let mut names = dir_names(&release_dir(&data, "v1.0.0"));
    names.retain(|n| n != "release.json");
    assert_eq!(
        names,
        [format!("app-{TARGET}"), format!("app-{TARGET}.sha256")]
    );
    let mut f = fetcher(&fixture);
    let got = fetch(&mut f, &fresh_current(None))
        .await
        .expect("a release");
    assert_eq!(got.bytes, v2);
    assert_eq!(got.sha256, Some(sha256_hex(&v2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_leave_the_release_as_it_was() {
    let scratch = Scratch::new("gh-fail");
    let data = Scratch::new("gh-fail-data");
    let fixture = github::start(data.path(), &["acme/app"], &[]);
    let v1 = payload("fail-1", 20_000);
    let bin = write_binary(scratch.path(), "app", &v1);
    let bin = bin.to_str().unwrap();
    let env = [("GITHUB_TOKEN", TOKEN)];
    let new_tag = [
        "--github",
        "acme/app",
        "--tag",
        "v3.0.0",
        "--github-api",
        &fixture.api,
    ];

    // A new release whose upload fails is deleted again: nothing is left.
    fixture.admin("POST", "/_fixture/fail?origin=uploads&status=500&count=1");
    let mut args = vec![bin];
    args.extend(new_tag);
    let run = publish(&args, &env).fails_with(1, "500 Internal Server Error");
    assert!(run.stderr.contains("was deleted again"), "{run:#?}");
    assert!(!release_dir(&data, "v3.0.0").exists());

    // An existing release: its main asset's upload fails after the new checksum went up. The
    // old asset stays, the old checksum is put back.
    publish(&args, &env).ok();
    let dir = release_dir(&data, "v3.0.0");
    let old_sidecar = std::fs::read_to_string(dir.join(format!("app-{TARGET}.sha256"))).unwrap();
    std::fs::write(bin, payload("fail-2", 21_000)).unwrap();
    fixture.admin(
        "POST",
        "/_fixture/fail?origin=uploads&status=502&count=1&skip=1",
    );
    let mut replace = args.clone();
    replace.push("--replace");
    let run = publish(&replace, &env).fails_with(1, "502 Bad Gateway");
    assert!(run.stderr.contains("put back as they were"), "{run:#?}");
    let mut names = dir_names(&dir);
    names.retain(|n| n != "release.json");
    assert_eq!(
        names,
        [format!("app-{TARGET}"), format!("app-{TARGET}.sha256")]
    );
    assert_eq!(
        std::fs::read(dir.join(format!("app-{TARGET}"))).unwrap(),
        v1
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(format!("app-{TARGET}.sha256"))).unwrap(),
        old_sidecar
    );
    let mut f = fetcher(&fixture);
    let got = fetch(&mut f, &fresh_current(None))
        .await
        .expect("a release");
    assert_eq!(got.bytes, v1);
}

#[test]
fn tokens_and_repositories_are_checked() {
    let scratch = Scratch::new("gh-auth");
    let data = Scratch::new("gh-auth-data");
    let fixture = github::start(data.path(), &["acme/app"], &["--token", TOKEN]);
    let bin = write_binary(scratch.path(), "app", &payload("auth", 1_000));
    let bin = bin.to_str().unwrap();
    let args = [
        bin,
        "--github",
        "acme/app",
        "--tag",
        "v1.0.0",
        "--github-api",
        &fixture.api,
    ];
    publish(&args, &[]).fails_with(1, "set GITHUB_TOKEN");
    assert!(
        fixture.log().is_empty(),
        "a request went out without a token"
    );
    let run = publish(&args, &[("GITHUB_TOKEN", "ghp_wrongToken")]).fails_with(1, "401");
    assert!(run.stderr.contains("Bad credentials") && !run.stderr.contains("ghp_wrongToken"));
    let token_file = scratch.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let other = [
        bin,
        "--github",
        "acme/nothing",
        "--tag",
        "v1.0.0",
        "--github-api",
        &fixture.api,
    ];
    let mut with_file = other.to_vec();
    with_file.extend(["--github-token-file", token_file.to_str().unwrap()]);
    publish(&with_file, &[]).fails_with(1, "no repository acme/nothing");
    assert!(!data.path().join("acme/app/releases").exists());
}
