//! Workspace binaries the tests run, built through cargo (bounded in time) when a test needs them:
//! the `hello` example with the remote fetchers, the GitHub fixture server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The workspace root: fetcher crates live two levels below it.
fn workspace_root() -> PathBuf {
    // This crate sits one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/<profile>` of this test executable (`target/<profile>/deps/<test>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    let deps = exe.parent().expect("test binary has a parent dir");
    match deps.file_name().is_some_and(|n| n == "deps") {
        true => deps.parent().expect("deps has a parent").to_path_buf(),
        false => deps.to_path_buf(),
    }
}

/// `cargo build` of `args` (a package and what of it) into the test binary's own profile and
/// target dir, bounded in time: another package's binaries are not built by `cargo test -p`.
fn cargo_build(profile_dir: &Path, args: &[&str], what: &str) {
    let cargo = std::env::var("CARGO")
        .unwrap_or_else(|_| option_env!("CARGO").unwrap_or("cargo").to_string());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .args(args);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.arg("--profile").arg(other);
        }
    }
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    eprintln!("building {what}: {cmd:?}");
    run_bounded(
        &mut cmd,
        &format!("building {what}"),
        Duration::from_secs(900),
    );
}

/// `target/<profile>/<rel>`, built by `cargo build <args>` first, once per test process. Cargo
/// decides whether anything needs building: only cargo knows which features a binary was built
/// with (a missing or older file is not the only way to be stale).
fn built(checked: &Mutex<bool>, rel: &[&str], args: &[&str], what: &str) -> PathBuf {
    let profile = profile_dir();
    let path = rel.iter().fold(profile.clone(), |p, r| p.join(r));
    let mut checked = checked.lock().unwrap_or_else(|e| e.into_inner());
    if !*checked {
        cargo_build(&profile, args, what);
        *checked = true;
    }
    assert!(
        path.is_file(),
        "{what} is not at {}: build it with `cargo build {}`",
        path.display(),
        args.join(" ")
    );
    path
}

/// Runs `cmd` (stdin closed) to its end, failing the test if it fails or outlives `timeout`
/// (then it is killed).
pub fn run_bounded(cmd: &mut Command, what: &str, timeout: Duration) {
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("wait for a child") {
            assert!(st.success(), "{what} failed: {st}");
            return;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} took over {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `target/<profile>/examples/hello` with the remote fetchers, built first (once per test
/// process): `cargo test --workspace` builds the example without the `remote-fetchers` feature.
pub fn hello_binary() -> PathBuf {
    static CHECKED: Mutex<bool> = Mutex::new(false);
    built(
        &CHECKED,
        &["examples", "hello"],
        &[
            "-p",
            "upshift-hello",
            "--example",
            "hello",
            "--features",
            "remote-fetchers",
        ],
        "the hello example",
    )
}

/// `target/<profile>/upshift-github-fixture`, the GitHub REST fixture server, built first (once
/// per test process).
pub fn fixture_binary() -> PathBuf {
    static CHECKED: Mutex<bool> = Mutex::new(false);
    built(
        &CHECKED,
        &["upshift-github-fixture"],
        &["-p", "upshift-github-fixture"],
        "the GitHub fixture",
    )
}

/// A "new build" of `binary` without compiling: the same bytes with `tag` appended. Trailing
/// bytes do not change how an ELF file loads, but its sha256 differs: a distinct release.
pub fn new_build(binary: &[u8], tag: &str) -> Vec<u8> {
    let mut out = binary.to_vec();
    out.extend_from_slice(format!("\nUPSHIFT-E2E-BUILD:{tag}\n").as_bytes());
    out
}
