//! Locating the example binaries the tests run, building them first when they are missing or older
//! than the sources.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// The path of a built example: the test binary lives in `target/<profile>/deps/`, examples in
/// `target/<profile>/examples/`.
///
/// `cargo test` and `cargo nextest run` build the examples before the tests, but not when targets
/// are selected (`cargo test --test zero_downtime`): then a missing or stale example (older than
/// `src/` or its own source) is rebuilt here once per test process, so a test never runs an old
/// fixture against a new library.
pub fn example_path(name: &str) -> PathBuf {
    if name == "hello" {
        // A package of its own, built with its remote fetchers: the fetcher crates' helper.
        return upshift_fetcher_conformance::hello::hello_binary();
    }
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    let deps = exe.parent().expect("test binary has a parent dir");
    let profile_dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent")
    } else {
        deps
    };
    let path = profile_dir.join("examples").join(name);
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|n| n == name) {
        if example_is_stale(&path, name) {
            build_example(profile_dir, name);
        }
        built.push(name.to_string());
    }
    assert!(
        path.is_file(),
        "example {name:?} not found at {}: build it with `cargo build --examples`",
        path.display()
    );
    path
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn example_is_stale(binary: &Path, name: &str) -> bool {
    let Some(built) = mtime(binary) else {
        return true;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![
        root.join("Cargo.toml"),
        root.join("examples").join(format!("{name}.rs")),
    ];
    let mut dirs = vec![root.join("src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                sources.push(p);
            }
        }
    }
    sources.iter().filter_map(|s| mtime(s)).any(|m| m > built)
}

fn build_example(profile_dir: &Path, name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO")
        .unwrap_or_else(|_| option_env!("CARGO").unwrap_or("cargo").to_string());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--example")
        .arg(name);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.arg("--profile").arg(other);
        }
        None => {}
    }
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    eprintln!("building example {name:?}: {cmd:?}");
    run_bounded(
        &mut cmd,
        &format!("building example {name:?}"),
        Duration::from_secs(600),
    );
}

pub use upshift_fetcher_conformance::hello::run_bounded;

/// The fixture example.
pub fn fixture_path() -> PathBuf {
    example_path("fixture")
}
