//! Building the `hello` example with distinct `BUILD_ID`s, and the temporary directory that holds
//! the copies, the servers' logs and wrk's output.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::procs::Guard;

/// The workspace root: the directory above this crate.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// `5.4 MiB`, or `5.4–5.5 MiB` when the files differ in size.
pub fn sizes(paths: &[PathBuf]) -> String {
    let mib: Vec<f64> = paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len() as f64 / 1024.0 / 1024.0)
        .collect();
    let lo = mib.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = mib.iter().copied().fold(0.0, f64::max);
    if mib.is_empty() {
        "?".into()
    } else if format!("{lo:.1}") == format!("{hi:.1}") {
        format!("{hi:.1} MiB")
    } else {
        format!("{lo:.1}–{hi:.1} MiB")
    }
}

/// A temporary directory, removed when dropped unless kept.
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(keep: bool) -> Result<TempDir, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("upshift-bench-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        // Canonical, so that /proc/<pid>/exe of what runs from it starts with this path.
        let path = path.canonicalize().unwrap_or(path);
        Ok(TempDir { path, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it will be kept (`--keep`): a scenario then keeps its bulky files too.
    pub fn keep(&self) -> bool {
        self.keep
    }

    /// A fresh subdirectory.
    pub fn sub(&self, name: &str) -> Result<PathBuf, String> {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).map_err(|e| format!("cannot create {}: {e}", p.display()))?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Nothing may still run from it: callers stop their servers first; this is the backstop.
        let left = crate::procs::kill_leftovers(&self.path);
        if !left.is_empty() {
            eprintln!(
                "upshift-bench: killed leftover processes {left:?} running from {}",
                self.path.display()
            );
        }
        if self.keep {
            eprintln!("upshift-bench: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Builds `hello` once per id (`BUILD_ID=<id> cargo build --release --example hello --features
/// remote-fetchers`: the scenarios use `--url` and `--s3`) and copies
/// each result to `<out>/<id>`. Checks that consecutive builds differ, so a build that cargo did
/// not redo for a new `BUILD_ID` cannot pass for a new version.
pub fn build_hello(ids: &[String], out: &Path) -> Result<Vec<PathBuf>, String> {
    let root = workspace_root();
    let mut paths = Vec::new();
    let mut previous: Option<Vec<u8>> = None;
    for id in ids {
        let dest = out.join(id);
        build_hello_at(&root, id, &dest, &format!("hello BUILD_ID={id}"))?;
        let bytes = std::fs::read(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        if previous.as_ref() == Some(&bytes) {
            return Err(format!(
                "the build for BUILD_ID={id} is identical to the previous one: cargo did not rebuild"
            ));
        }
        previous = Some(bytes);
        paths.push(dest);
    }
    Ok(paths)
}

/// Builds `hello` as [`build_hello`] does, from the workspace at `root` (the real one or a
/// [`scratch_copy`]), copies it to `dest` and records it as built under `name`.
pub fn build_hello_at(root: &Path, id: &str, dest: &Path, name: &str) -> Result<(), String> {
    crate::procs::check()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "build",
        "--release",
        "--example",
        "hello",
        "--features",
        "remote-fetchers",
        "--message-format=json-render-diagnostics",
    ])
    .current_dir(root)
    .env("BUILD_ID", id)
    // A scratch copy builds into the real workspace's target directory, where all but what
    // the copy changed is up to date.
    .env(
        "CARGO_TARGET_DIR",
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target")),
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = Guard::spawn(&mut cmd, "cargo build", std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let output = wait_output(child)?;
    let stdout = String::from_utf8_lossy(&output.0);
    if !output.2 {
        return Err(format!(
            "`BUILD_ID={id} cargo build --release --example hello --features remote-fetchers` in {} failed:\n{}",
            root.display(),
            String::from_utf8_lossy(&output.1)
        ));
    }
    let built = executable_from_json(&stdout)
        .unwrap_or_else(|| workspace_root().join("target/release/examples/hello"));
    std::fs::copy(&built, dest)
        .map_err(|e| format!("cannot copy {} to {}: {e}", built.display(), dest.display()))?;
    crate::provenance::record_build(name, dest)?;
    eprintln!(
        "upshift-bench: built {name} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Copies the workspace's source (the files git tracks, and untracked ones it does not ignore,
/// as they are in the work tree) to `dest`, keeping modification times: cargo then finds the
/// copy's units up to date in the same target directory and rebuilds only what a change to the
/// copy touches.
pub fn scratch_copy(dest: &Path) -> Result<(), String> {
    let root = workspace_root();
    let listed = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(&root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("git ls-files: {e}"))?;
    if !listed.status.success() {
        return Err(format!("git ls-files failed in {}", root.display()));
    }
    for name in listed.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name);
        let (from, to) = (root.join(name.as_ref()), dest.join(name.as_ref()));
        let Ok(meta) = std::fs::symlink_metadata(&from) else {
            continue; // deleted in the work tree
        };
        if !meta.is_file() {
            continue;
        }
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::copy(&from, &to).map_err(|e| format!("copying {}: {e}", from.display()))?;
        let copied = std::fs::File::options()
            .write(true)
            .open(&to)
            .map_err(|e| format!("{}: {e}", to.display()))?;
        if let Ok(mtime) = meta.modified() {
            copied
                .set_modified(mtime)
                .map_err(|e| format!("{}: {e}", to.display()))?;
        }
    }
    Ok(())
}

/// Builds the `fixture` example once (`cargo build --release --example fixture`) and copies it
/// to `<out>/fixture`. Its releases are made by appending a build stamp (see
/// `examples/fixture.rs`), which also selects a misbehaviour such as `slow-ready MS`.
pub fn build_fixture(out: &Path) -> Result<PathBuf, String> {
    let fallback = workspace_root().join("target/release/examples/fixture");
    build_one(&["--example", "fixture"], "fixture", fallback, out)
}

/// Builds the bench crate's `plain_hello` (the `hello` router without upshift:
/// `cargo build --release -p upshift-bench --bin plain_hello`) and copies it to
/// `<out>/plain_hello`, so that what runs from `out` is the harness's to stop.
pub fn build_plain(out: &Path) -> Result<PathBuf, String> {
    let fallback = workspace_root().join("target/release/plain_hello");
    let what = ["-p", "upshift-bench", "--bin", "plain_hello"];
    build_one(&what, "plain_hello", fallback, out)
}

/// Builds the GitHub REST fixture server (`fixtures/github`: `cargo build --release -p
/// upshift-github-fixture`) and copies it to `<out>/upshift-github-fixture`.
pub fn build_github_fixture(out: &Path) -> Result<PathBuf, String> {
    let name = "upshift-github-fixture";
    let fallback = workspace_root().join("target/release").join(name);
    build_one(&["-p", name, "--bin", name], name, fallback, out)
}

/// `cargo build --release <what>` of one executable `name`, copied to `<out>/<name>`.
fn build_one(what: &[&str], name: &str, fallback: PathBuf, out: &Path) -> Result<PathBuf, String> {
    crate::procs::check()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--release"])
        .args(what)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = Guard::spawn(&mut cmd, "cargo build", std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let (stdout, stderr, ok) = wait_output(child)?;
    if !ok {
        return Err(format!(
            "`cargo build --release {}` failed:\n{}",
            what.join(" "),
            String::from_utf8_lossy(&stderr)
        ));
    }
    let built = executable_of(&String::from_utf8_lossy(&stdout), name).unwrap_or(fallback);
    let dest = out.join(name);
    std::fs::copy(&built, &dest)
        .map_err(|e| format!("cannot copy {} to {}: {e}", built.display(), dest.display()))?;
    crate::provenance::record_build(name, &dest)?;
    eprintln!(
        "upshift-bench: built {name} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(dest)
}

/// `(stdout, stderr, success)` of a guarded child with piped output.
fn wait_output(mut guard: Guard) -> Result<(Vec<u8>, Vec<u8>, bool), String> {
    use std::io::Read;
    // Read both pipes on threads so that neither fills up; the guard still owns the process.
    let child = guard.child_mut();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut v);
        }
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut v);
        }
        v
    });
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    let status = guard
        .wait_for(std::time::Duration::from_secs(600))
        .ok_or("cargo build did not finish in 10 minutes")?;
    Ok((stdout, stderr, status.success()))
}

/// The `executable` of the `hello` example's compiler-artifact message.
fn executable_from_json(stdout: &str) -> Option<PathBuf> {
    executable_of(stdout, "hello")
}

/// The `executable` of example `name`'s compiler-artifact message.
fn executable_of(stdout: &str, name: &str) -> Option<PathBuf> {
    let quoted = format!("\"{name}\"");
    stdout
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\"") && l.contains(&quoted))
        .find_map(|l| {
            let key = "\"executable\":\"";
            let start = l.find(key)? + key.len();
            let end = start + l[start..].find('"')?;
            Some(PathBuf::from(&l[start..end]))
        })
}
