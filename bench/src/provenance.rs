//! Where the figures come from: the commit, whether the work tree differed from it (and a hash
//! of the difference, so two dirty runs can be told apart), the binaries the harness built with
//! their sha256, and what other processes took of the CPU while each scenario ran.
//!
//! The harness's own output (`BENCHMARKS.md`, `bench/results/`) is left out of the difference:
//! writing a report must not make the next run's tree dirty.

use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::builds::workspace_root;

/// Paths the harness writes itself, so never part of "the source".
pub const OUTPUT_PATHS: &[&str] = &["BENCHMARKS.md", "bench/results"];

/// The state of the source the binaries were built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Source {
    /// `git rev-parse HEAD`, or `None` outside a git checkout.
    pub commit: Option<String>,
    /// Tracked files that differ from the commit, or untracked files git does not ignore.
    pub dirty: bool,
    /// sha256 of the difference (`git diff HEAD --binary` then each untracked file's name and
    /// content hash); `None` when clean.
    pub diff_sha256: Option<String>,
    /// The files that make it dirty (at most 20 listed).
    pub changed: Vec<String>,
}

fn git(args: &[&str]) -> Option<Vec<u8>> {
    Command::new("git")
        .args(args)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| o.stdout)
}

/// `git <args> -- . ':!BENCHMARKS.md' ':!bench/results'`.
fn git_source(args: &[&str]) -> Option<Vec<u8>> {
    let excludes: Vec<String> = OUTPUT_PATHS.iter().map(|p| format!(":!{p}")).collect();
    let mut all: Vec<&str> = args.to_vec();
    all.push("--");
    all.push(".");
    all.extend(excludes.iter().map(String::as_str));
    git(&all)
}

impl Source {
    /// Reads the work tree now.
    pub fn capture() -> Source {
        let Some(head) = git(&["rev-parse", "HEAD"]) else {
            return Source {
                commit: None,
                dirty: true,
                diff_sha256: None,
                changed: vec!["not a git checkout".into()],
            };
        };
        let commit = String::from_utf8_lossy(&head).trim().to_string();
        let status = git_source(&["status", "--porcelain", "--untracked-files=all"])
            .map(|s| String::from_utf8_lossy(&s).to_string())
            .unwrap_or_else(|| "?? (git status failed)".into());
        let changed: Vec<String> = status.lines().map(|l| l.trim().to_string()).collect();
        if changed.is_empty() {
            return Source {
                commit: Some(commit),
                dirty: false,
                diff_sha256: None,
                changed,
            };
        }
        let mut h = Sha256::new();
        h.update(git_source(&["diff", "HEAD", "--binary"]).unwrap_or_default());
        let untracked =
            git_source(&["ls-files", "--others", "--exclude-standard", "-z"]).unwrap_or_default();
        for name in untracked.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            h.update(name);
            let path = workspace_root().join(String::from_utf8_lossy(name).as_ref());
            h.update(
                std::fs::read(&path)
                    .map(|b| Sha256::digest(b).to_vec())
                    .unwrap_or_default(),
            );
        }
        Source {
            commit: Some(commit),
            dirty: true,
            diff_sha256: Some(hex::encode(h.finalize())),
            changed: changed.into_iter().take(20).collect(),
        }
    }

    /// `git 0123456789ab (clean)` or `git 0123456789ab with uncommitted changes (diff sha256 …)`.
    pub fn line(&self) -> String {
        let short = |c: &str| c.chars().take(12).collect::<String>();
        match (&self.commit, self.dirty) {
            (None, _) => "not a git checkout".into(),
            (Some(c), false) => format!("git {} (clean)", short(c)),
            (Some(c), true) => format!(
                "git {} with uncommitted changes (diff sha256 {})",
                short(c),
                self.diff_sha256
                    .as_deref()
                    .map(|d| d.chars().take(16).collect::<String>())
                    .unwrap_or_else(|| "?".into())
            ),
        }
    }
}

/// A binary the harness built, hashed right after it was copied to where it runs from.
#[derive(Clone, Debug, Serialize)]
pub struct Built {
    /// What it is: `hello BUILD_ID=b03`, `fixture`, `plain_hello`.
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What the scenario now running has built and measured, for its report.
#[derive(Default)]
struct Scenario {
    built: Vec<Built>,
    others_cpus: Vec<f64>,
}

static CURRENT: Mutex<Scenario> = Mutex::new(Scenario {
    built: Vec::new(),
    others_cpus: Vec::new(),
});

/// Starts a scenario's record afresh.
pub fn begin_scenario() {
    if let Ok(mut s) = CURRENT.lock() {
        *s = Scenario::default();
    }
}

/// Hashes `path` and records it as built under `name`.
pub fn record_build(name: &str, path: &std::path::Path) -> Result<Built, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let built = Built {
        name: name.to_string(),
        bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
    };
    if let Ok(mut s) = CURRENT.lock() {
        s.built.push(built.clone());
    }
    Ok(built)
}

/// Records one measurement of the other processes' CPU use (see [`crate::machine::CpuWindow`]).
pub fn record_others_cpus(cpus: f64) {
    if let Ok(mut s) = CURRENT.lock() {
        s.others_cpus.push(cpus);
    }
}

/// The binaries and others'-CPU figures recorded since [`begin_scenario`].
pub fn scenario_record() -> (Vec<Built>, Vec<f64>) {
    CURRENT
        .lock()
        .map(|s| (s.built.clone(), s.others_cpus.clone()))
        .unwrap_or_default()
}
