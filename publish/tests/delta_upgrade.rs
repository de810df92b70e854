//! End to end, delta releases: `upshift-publish --delta-from RUNNING` publishes a new build of
//! `hello` with a patch from the build the master runs, and the master upgrades from the patch
//! while a client polling `GET /` every 20 ms sees no failure (the test kit's upgrade check).
//! The origin's own record says what was transferred: nginx's access log, and the counting proxy
//! in front of s3s-fs. A damaged patch falls back to the full release; a patch made for another
//! build is never installed, even served under this build's name.
//!
//! The master runs a copy of the debug `hello` stripped of its debug info (45 MB instead of
//! 270 MB): making a patch reads both builds whole, which is the publisher's cost, not the
//! master's, and would dominate the test.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use common::{publish, sha256_hex, write_binary, Scratch};
use upshift_testkit::hello::{hello_binary, new_build, Hello};
use upshift_testkit::s3::{hello_aws_env, Bed, ACCESS_KEY, BUCKET, KEY, SECRET_KEY};
use upshift_testkit::servers::nginx::Nginx;
use upshift_testkit::upgrade;

/// From publishing to generation 2 answering.
const UPGRADE: Duration = Duration::from_secs(60);

/// One upgrade at a time on a shared two-core machine.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The debug `hello` without its debug info, made once per test process.
fn stripped_hello() -> &'static Path {
    static STRIPPED: OnceLock<(Scratch, PathBuf)> = OnceLock::new();
    let (_, path) = STRIPPED.get_or_init(|| {
        let scratch = Scratch::new("delta-stripped");
        let path = scratch.path().join("hello");
        let out = std::process::Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&path)
            .arg(hello_binary())
            .output()
            .expect("run strip (binutils)");
        assert!(out.status.success(), "strip: {out:?}");
        (scratch, path)
    });
    path
}

/// The build the master runs and a new build of it, both written to `scratch`.
struct Builds {
    running: PathBuf,
    new: Vec<u8>,
    new_path: PathBuf,
}

fn builds(scratch: &Scratch, tag: &str) -> Builds {
    let running = stripped_hello().to_path_buf();
    let bytes = std::fs::read(&running).expect("read the stripped hello");
    let new = new_build(&bytes, tag);
    let new_path = write_binary(scratch.path(), "hello", &new);
    Builds {
        running,
        new,
        new_path,
    }
}

/// `upshift-publish NEW --dir DIR --name app --delta-from BASE`.
fn publish_dir(new: &Path, dir: &Path, base: &Path) {
    let run = publish(
        &[
            new.to_str().unwrap(),
            "--dir",
            dir.to_str().unwrap(),
            "--name",
            "app",
            "--delta-from",
            base.to_str().unwrap(),
            "--quiet",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "upshift-publish failed: {run:#?}");
}

/// The name of the patch from `base`'s build.
fn patch_of(base: &[u8]) -> String {
    upshift::delta::patch_name("app", &sha256_hex(base))
}

fn start_http_hello(nginx: &Nginx, running: &Path) -> Hello {
    let args = [
        "--url".to_string(),
        nginx.url("app"),
        "--allow-insecure-transport".to_string(),
    ];
    Hello::start(running, &args, &[], "info")
}

/// nginx's GETs answered 200, by URI.
fn gets(nginx: &Nginx) -> Vec<String> {
    nginx
        .settled_hits()
        .into_iter()
        .filter(|h| h.method == "GET" && h.status == 200)
        .map(|h| h.uri)
        .collect()
}

#[test]
fn hello_upgrades_from_a_patch_served_by_nginx() {
    let _serial = serial();
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let scratch = Scratch::new("delta-nginx");
    let b = builds(&scratch, "delta-v2");
    let mut hello = start_http_hello(&nginx, &b.running);
    let identity = format!("sha256:{}", sha256_hex(&b.new));
    upgrade::upgrade_to(&mut hello, &b.new, UPGRADE, "nginx, patch", || {
        publish_dir(&b.new_path, &nginx.www(), &b.running);
        Some(identity.clone())
    });
    let patch = format!("/{}", patch_of(&std::fs::read(&b.running).unwrap()));
    let got = gets(&nginx);
    assert!(got.contains(&patch), "the patch was not fetched: {got:#?}");
    assert!(
        !got.contains(&"/app".to_string()),
        "the full release was fetched: {got:#?}"
    );
    assert!(
        !hello.log_lines("staged a release from a patch").is_empty(),
        "{}",
        hello.log()
    );
}

#[test]
fn a_damaged_patch_falls_back_to_the_full_release() {
    let _serial = serial();
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let scratch = Scratch::new("delta-damaged");
    let b = builds(&scratch, "delta-damaged");
    let mut hello = start_http_hello(&nginx, &b.running);
    // Published beside, damaged (its checksum still the publisher's), then served: the patch and
    // its sidecar first, the release and its checksum last, as a deploy would copy them.
    let staging = scratch.path().join("out");
    std::fs::create_dir_all(&staging).unwrap();
    publish_dir(&b.new_path, &staging, &b.running);
    let patch = patch_of(&std::fs::read(&b.running).unwrap());
    let mut bytes = std::fs::read(staging.join(&patch)).expect("the patch was written");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(staging.join(&patch), &bytes).unwrap();
    let identity = format!("sha256:{}", sha256_hex(&b.new));
    upgrade::upgrade_to(&mut hello, &b.new, UPGRADE, "nginx, damaged patch", || {
        for name in [
            format!("{patch}.sha256"),
            patch.clone(),
            "app".into(),
            "app.sha256".into(),
        ] {
            nginx.put(&name, &std::fs::read(staging.join(&name)).unwrap());
        }
        Some(identity.clone())
    });
    let got = gets(&nginx);
    assert!(got.contains(&format!("/{patch}")), "{got:#?}");
    assert!(got.contains(&"/app".to_string()), "no fallback: {got:#?}");
    assert!(
        !hello.log_lines("patch did not work").is_empty(),
        "{}",
        hello.log()
    );
}

#[test]
fn a_patch_for_another_build_is_never_installed() {
    let _serial = serial();
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let scratch = Scratch::new("delta-other");
    // The new build carries 64 KiB more than the running one (appended, so that it still runs).
    let filler: String = (0..4096u32)
        .map(|i| format!("{:016x}", u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    let b = builds(&scratch, &format!("delta-other-v2-{filler}"));
    let running = std::fs::read(&b.running).unwrap();
    // Another build (what some other host runs: here one that already has those 64 KiB): its
    // patch is published, and also, as a mix-up or an attack, the same patch under the name of
    // the build this master runs. That patch copies the 64 KiB from its base, which this
    // master's build lacks: applied here, it cannot rebuild the release.
    let mut other = b.new.clone();
    other.extend_from_slice(b"\nanother host's build\n");
    std::fs::create_dir_all(scratch.path().join("other")).unwrap();
    let other_path = write_binary(&scratch.path().join("other"), "hello", &other);
    let staging = scratch.path().join("out");
    std::fs::create_dir_all(&staging).unwrap();
    publish_dir(&b.new_path, &staging, &other_path);
    let other_patch = patch_of(&other);
    let mine = patch_of(&running);
    let mut hello = start_http_hello(&nginx, &b.running);
    let identity = format!("sha256:{}", sha256_hex(&b.new));
    upgrade::upgrade_to(
        &mut hello,
        &b.new,
        UPGRADE,
        "nginx, another build's patch",
        || {
            let copy = |from: &str, to: &str| {
                nginx.put(to, &std::fs::read(staging.join(from)).unwrap());
            };
            copy(&other_patch, &other_patch);
            copy(
                &format!("{other_patch}.sha256"),
                &format!("{other_patch}.sha256"),
            );
            copy(&other_patch, &mine);
            copy(&format!("{other_patch}.sha256"), &format!("{mine}.sha256"));
            copy("app", "app");
            copy("app.sha256", "app.sha256");
            Some(identity.clone())
        },
    );
    // The upgrade check asserted the installed binary is the new build byte for byte: the
    // mislabelled patch failed to apply, and the full release was installed.
    let got = gets(&nginx);
    assert!(!got.contains(&format!("/{other_patch}")), "{got:#?}");
    assert!(got.contains(&"/app".to_string()), "no fallback: {got:#?}");
}

#[test]
fn hello_upgrades_from_a_patch_in_s3() {
    let _serial = serial();
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let scratch = Scratch::new("delta-s3");
    let b = builds(&scratch, "delta-s3-v2");
    let args = [
        "--s3".to_string(),
        format!("s3://{BUCKET}/{KEY}"),
        "--s3-endpoint".to_string(),
        bed.endpoint(),
        "--allow-insecure-transport".to_string(),
    ];
    let mut hello = Hello::start(&b.running, &args, &hello_aws_env(), "info");
    let server = bed.server.url();
    let destination = format!("s3://{BUCKET}/{KEY}");
    upgrade::upgrade_to(&mut hello, &b.new, UPGRADE, "s3s-fs, patch", || {
        let run = publish(
            &[
                b.new_path.to_str().unwrap(),
                "--s3",
                &destination,
                "--s3-endpoint",
                &server,
                "--region",
                "us-east-1",
                "--s3-access-key-id",
                ACCESS_KEY,
                "--delta-from",
                b.running.to_str().unwrap(),
                "--quiet",
            ],
            &[("AWS_SECRET_ACCESS_KEY", SECRET_KEY)],
        );
        assert_eq!(run.code, Some(0), "upshift-publish failed: {run:#?}");
        None
    });
    let key_dir = KEY.rsplit_once('/').map_or("", |(d, _)| d);
    let patch_key = format!(
        "/{BUCKET}/{key_dir}/{}",
        upshift::delta::patch_name("myapp", &sha256_hex(&std::fs::read(&b.running).unwrap()))
    );
    let release_key = format!("/{BUCKET}/{KEY}");
    let gets: Vec<String> = bed
        .proxy
        .log()
        .into_iter()
        .filter(|e| e.method == "GET" && e.status == 200)
        .map(|e| e.path)
        .collect();
    assert!(
        gets.contains(&patch_key),
        "the patch was not fetched: {gets:#?}"
    );
    assert!(
        !gets.contains(&release_key),
        "the full release was fetched: {gets:#?}"
    );
}
