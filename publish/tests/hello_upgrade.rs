//! End to end: the `hello` example runs as a self-upgrading master (the conformance crate's
//! harness), and a new build of it, published by `upshift-publish`, is what it upgrades to,
//! while a client polling `GET /` every 20 ms sees no failure:
//!
//! - from a GitHub release (the fixture server): the tool creates the release as a draft,
//!   uploads the build to the upload host and publishes the release; the master's GitHub
//!   fetcher, polling the latest release, downloads it through the storage host;
//! - from a directory: the tool writes `next.sha256` and then `next` beside the master, whose
//!   File fetcher watches that path.

mod common;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::github::{self, Fixture};
use common::{publish, sha256_hex, write_binary, Scratch};
use upshift_testkit::hello::{hello_binary, new_build, Hello};
use upshift_testkit::upgrade;

/// From publishing to generation 2 answering (a debug `hello` is a few hundred MB).
const UPGRADE: Duration = Duration::from_secs(60);

/// One upgrade at a time on a shared two-core machine.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Publishes with `publish_args` while polling, and checks the upgrade (the test kit's check):
/// generation 2 of the same master serves the new build, installed byte for byte, logged as
/// release `identity`, and no request failed.
fn upgrade_to(
    hello: &mut Hello,
    build: &[u8],
    identity: &str,
    publish_args: &[&str],
    env: &[(&str, &str)],
) {
    upgrade::upgrade_to(hello, build, UPGRADE, "upshift-publish", || {
        let run = publish(publish_args, env);
        assert_eq!(run.code, Some(0), "upshift-publish failed: {run:#?}");
        assert_eq!(run.sha256(), sha256_hex(build), "{run:#?}");
        Some(identity.to_string())
    });
}

/// hello polling the fixture's `acme/hello` releases, with `extra` flags.
fn start_github_hello(fixture: &Fixture, extra: &[&str]) -> Hello {
    let mut args = vec![
        "--github".to_string(),
        "acme/hello".to_string(),
        "--github-api".to_string(),
        fixture.api.clone(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Hello::start(&hello_binary(), &args, &[], "info")
}

/// Publishes `bin` to the fixture's `acme/hello` as release `tag` (plus `extra` flags) and
/// checks the upgrade, as [`upgrade_to`].
fn upgrade_from_github(
    hello: &mut Hello,
    fixture: &Fixture,
    bin: &std::path::Path,
    build: &[u8],
    tag: &str,
    extra: &[&str],
) {
    let mut args = vec![
        bin.to_str().unwrap(),
        "--github",
        "acme/hello",
        "--tag",
        tag,
        "--github-api",
        &fixture.api,
    ];
    args.extend_from_slice(extra);
    let env = [("GITHUB_TOKEN", "any-token-the-fixture-takes")];
    upgrade_to(hello, build, tag, &args, &env);
}

#[test]
fn hello_upgrades_from_a_github_release_the_tool_published() {
    let _serial = serial();
    let data = Scratch::new("hello-gh-data");
    let fixture = github::start(data.path(), &["acme/hello"], &[]);
    let original = std::fs::read(hello_binary()).expect("read hello");
    // The fixture on 127.0.0.1 speaks plain http: the opt-in (no key here).
    let mut hello = start_github_hello(&fixture, &["--allow-insecure-transport"]);
    let build = new_build(&original, "v0.1.1");
    let scratch = Scratch::new("hello-gh-build");
    let bin = write_binary(scratch.path(), "hello", &build);
    upgrade_from_github(&mut hello, &fixture, &bin, &build, "v0.1.1", &[]);
    // The master never saw the draft: no download began before the release was published.
    let log = fixture.log();
    let published = log
        .iter()
        .position(|l| l.method == "PATCH")
        .expect("a PATCH");
    let first_download = log
        .iter()
        .position(|l| l.origin == "objects")
        .expect("a download");
    assert!(published < first_download, "{log:#?}");
}

#[test]
fn hello_upgrades_from_a_directory_the_tool_published() {
    let _serial = serial();
    let releases = Scratch::new("hello-dir-releases");
    let next = releases.path().join("next");
    let original = std::fs::read(hello_binary()).expect("read hello");
    let mut hello = Hello::start(
        &hello_binary(),
        &["--watch".to_string(), next.display().to_string()],
        &[],
        "info",
    );
    let build = new_build(&original, "dir-v2");
    let scratch = Scratch::new("hello-dir-build");
    let bin = write_binary(scratch.path(), "hello", &build);
    upgrade_to(
        &mut hello,
        &build,
        &format!("sha256:{}", sha256_hex(&build)),
        &[
            bin.to_str().unwrap(),
            "--dir",
            releases.path().to_str().unwrap(),
            "--name",
            "next",
            "--quiet",
        ],
        &[],
    );
}

/// With `--minisign-key`, hello installs only a release whose signature binds it to product
/// `hello`, this target and a version above its own: what `upshift-publish --sign` writes, the
/// version taken from the tag.
#[test]
fn hello_with_a_key_upgrades_to_a_release_the_tool_signed() {
    let _serial = serial();
    let data = Scratch::new("hello-gh-signed-data");
    let fixture = github::start(data.path(), &["acme/hello"], &[]);
    let scratch = Scratch::new("hello-gh-signed-build");
    let (key, public_key) = common::keypair(scratch.path(), None);
    let pub_file = scratch.path().join("minisign.pub");
    std::fs::write(&pub_file, format!("untrusted comment: pk\n{public_key}\n")).unwrap();
    let original = std::fs::read(hello_binary()).expect("read hello");
    let key_arg = pub_file.display().to_string();
    let mut hello = start_github_hello(&fixture, &["--minisign-key", &key_arg]);
    let build = new_build(&original, "v0.1.2");
    let bin = write_binary(scratch.path(), "hello", &build);
    let sign = ["--sign", key.to_str().unwrap()];
    upgrade_from_github(&mut hello, &fixture, &bin, &build, "v0.1.2", &sign);
}
