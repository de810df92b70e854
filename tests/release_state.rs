//! The release state end to end, with the real master and the fixture: what the master believes is
//! installed must stay what is on disk and what serves, through sequences a user runs into: a
//! second release rolled back while the first is on probation, a binary started through a symlink
//! that is then flipped, a manual deploy between two releases, and a `pre_upgrade` veto.
//!
//! The promise under test: a host only moves forward to a release that proved itself, and the
//! file at the binary's path is always the build that serves (so the next SIGUSR2 restarts it).
//! Releases are fixture copies with a build stamp (`UPSHIFT-TEST-BUILD:<id>[:<behavior>]`, see
//! `examples/fixture.rs`); a worker answers `... build <id> ...`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// How long a restarted worker may take to answer once the master was told.
const RESTART: Duration = Duration::from_secs(20);

/// `path`'s sha256, or `missing`.
fn sha_or_missing(path: &Path) -> String {
    match path.exists() {
        true => file_sha(path),
        false => "missing".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A rollback never goes below the build that serves.

/// Release A serves on a long probation; release B is installed and its worker exits before it
/// is ready. The rollback must put A back (the build that serves), not the build from before A:
/// otherwise A keeps serving from memory and the next SIGUSR2 silently starts the old build.
#[test]
fn rolling_back_a_release_restores_the_build_that_serves_not_the_one_before() {
    let mut rig = Rig::new("rs-below");
    // Long enough that B arrives, runs and is rolled back while A is still on probation.
    rig.start(&["--probation-ms", "30000"]);
    let (a_id, a_sha) = rig.publish_build("a");
    rig.wait_log(&format!("release {a_id} is serving"), VERDICT);
    let a_pid = rig.wait_build("a", RESTART);

    let (b_id, b_sha) = rig.publish_build("b:exit");
    let line = rig.wait_log(&format!("release {b_id} rolled back: "), VERDICT);
    let names = |sha: &str| match sha {
        s if s == a_sha => "A".to_string(),
        s if s == b_sha => "B".to_string(),
        s if s == rig.original_sha => "the build from before A".to_string(),
        s => format!("sha256 {s}"),
    };
    let app = file_sha(&rig.app);
    rig.expect(
        app == a_sha,
        format!(
            "right after `{line}`, app is {}, not A (which serves)",
            names(&app)
        ),
    );
    let prev = sha_or_missing(&rig.path("app.prev"));
    rig.expect(prev != b_sha, "after B's rollback, app.prev is B");
    let now = rig.serving();
    rig.expect(
        now == Some((a_pid, "a".to_string())),
        format!("after B's rollback, A's worker {a_pid} no longer serves: {now:?}"),
    );

    // The next restart runs what is on disk: it must be A.
    rig.m().signal(Signal::SIGUSR2);
    let restarted = wait_for(RESTART, || rig.serving().filter(|(pid, _)| *pid != a_pid));
    rig.expect(
        matches!(&restarted, Some((_, build)) if build == "a"),
        format!("after SIGUSR2, {restarted:?} serves; expected build a"),
    );
    let prev = sha_or_missing(&rig.path("app.prev"));
    rig.expect(prev != b_sha, "after the restart, app.prev is B");
}

// ---------------------------------------------------------------------------------------------
// 3. A binary started through a symlink.

/// Records changes to the file `app` in some directories (created, removed, written, renamed
/// over or away; not reads, execs or attributes).
struct AppWrites {
    _watcher: notify::RecommendedWatcher,
    seen: Arc<Mutex<Vec<String>>>,
}

impl AppWrites {
    fn watch(dirs: &[PathBuf]) -> AppWrites {
        use notify::{EventKind, Watcher};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            let writes = !matches!(
                ev.kind,
                EventKind::Access(_) | EventKind::Modify(notify::event::ModifyKind::Metadata(_))
            );
            if writes
                && ev
                    .paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| n == "app"))
            {
                log.lock()
                    .unwrap()
                    .push(format!("{:?} {:?}", ev.kind, ev.paths));
            }
        };
        let mut watcher = notify::recommended_watcher(handler).expect("inotify watcher");
        for d in dirs {
            watcher
                .watch(d, notify::RecursiveMode::NonRecursive)
                .expect("watch a release dir");
        }
        AppWrites {
            _watcher: watcher,
            seen,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// `dir/releases/v1/app`, `dir/releases/v2/app` and `dir/bin/app -> ../releases/v1/app`, the
/// master started as `dir/bin/app` with `extra`, serving v1; then the link is flipped to v2
/// atomically and SIGUSR2 makes v2 serve. Returns the rig and the two builds' sha256.
fn started_through_a_flipped_link(tag: &str, extra: &[&str]) -> (Rig, String, String) {
    let mut rig = Rig::new(tag);
    fs::remove_file(&rig.app).unwrap();
    let mut shas = Vec::new();
    for v in ["v1", "v2"] {
        let dir = rig.path(&format!("releases/{v}"));
        fs::create_dir_all(&dir).unwrap();
        shas.push(write_build(&dir.join("app"), v, 0));
    }
    fs::create_dir_all(rig.path("bin")).unwrap();
    std::os::unix::fs::symlink("../releases/v1/app", rig.path("bin/app")).unwrap();
    rig.app = rig.path("bin/app");
    let first = rig.start_any(extra, &[], None);
    rig.expect(
        first == "v1",
        format!("the first worker runs build {first}"),
    );

    std::os::unix::fs::symlink("../releases/v2/app", rig.path("bin/app.tmp")).unwrap();
    fs::rename(rig.path("bin/app.tmp"), rig.path("bin/app")).unwrap();
    rig.m().signal(Signal::SIGUSR2);
    rig.wait_build("v2", RESTART);
    let v2 = shas.pop().unwrap();
    (rig, shas.pop().unwrap(), v2)
}

/// Asserts that `releases/<v>/app` is still the build `sha` and was never written.
fn assert_release_untouched(rig: &Rig, writes: &AppWrites, v: &str, sha: &str, when: &str) {
    let path = rig.path(&format!("releases/{v}/app"));
    let now = sha_or_missing(&path);
    let changes: Vec<String> = writes
        .seen()
        .into_iter()
        .filter(|e| e.contains(&format!("/releases/{v}/")))
        .collect();
    rig.expect(
        now == sha && changes.is_empty(),
        format!(
            "{when}: {} was modified (sha256 {now}, was {sha}); changes seen: {changes:#?}",
            path.display()
        ),
    );
}

/// Default install mode: the release replaces the file the link points at *now* (v2's), never
/// the one it pointed at when the master started, and the new build serves.
#[test]
fn a_release_replaces_what_the_symlink_points_at_now() {
    let (rig, v1, _v2) = started_through_a_flipped_link("rs-link", &[]);
    let writes = AppWrites::watch(&[rig.path("releases/v1")]);
    let (v3_id, v3) = rig.publish_build("v3");
    rig.wait_log(&format!("release {v3_id} is serving"), VERDICT);
    assert_release_untouched(&rig, &writes, "v1", &v1, "after v3 was installed");
    rig.wait_build("v3", RESTART);
    let followed = file_sha(&rig.app);
    rig.expect(
        followed == v3,
        format!("bin/app (followed) is sha256 {followed}, not v3 ({v3})"),
    );
}

/// Where `bin/app` points, as written and resolved.
fn link_of(rig: &Rig) -> (PathBuf, PathBuf) {
    let meta = fs::symlink_metadata(&rig.app).unwrap();
    rig.expect(
        meta.file_type().is_symlink(),
        "bin/app is no longer a symlink",
    );
    let target = fs::read_link(&rig.app).unwrap();
    let resolved = fs::canonicalize(&rig.app).unwrap();
    (target, resolved)
}

/// `--install-mode release-dirs`: no release's file is ever modified; a new release gets a
/// directory of its own under `releases/` and the link is flipped to it; a rollback flips it back.
#[test]
fn release_directories_mode_flips_the_link_and_never_modifies_a_release() {
    let extra = ["--install-mode", "release-dirs"];
    let (rig, v1, v2) = started_through_a_flipped_link("rs-rdirs", &extra);
    let writes = AppWrites::watch(&[rig.path("releases/v1"), rig.path("releases/v2")]);
    let (v3_id, v3) = rig.publish_build("v3");
    rig.wait_log(&format!("release {v3_id} is serving"), VERDICT);
    for (v, sha) in [("v1", &v1), ("v2", &v2)] {
        assert_release_untouched(&rig, &writes, v, sha, "after v3 was installed");
    }
    rig.wait_build("v3", RESTART);
    let (target, resolved) = link_of(&rig);
    let releases = fs::canonicalize(rig.path("releases")).unwrap();
    let dir = resolved.parent().unwrap();
    rig.expect(
        resolved.file_name().is_some_and(|n| n == "app")
            && dir.parent() == Some(releases.as_path())
            && ![releases.join("v1"), releases.join("v2")].contains(&dir.to_path_buf()),
        format!(
            "bin/app -> {} ({}): expected a new directory under {}",
            target.display(),
            resolved.display(),
            releases.display()
        ),
    );
    let there = file_sha(&resolved);
    rig.expect(
        there == v3,
        format!("{} is sha256 {there}, not v3 ({v3})", resolved.display()),
    );

    // A release whose worker exits before it is ready: the link goes back to v3's file.
    let v3_pid = rig.wait_build("v3", RESTART);
    let (v4_id, _) = rig.publish_build("v4:exit");
    rig.wait_log(&format!("release {v4_id} rolled back: "), VERDICT);
    let (after, _) = link_of(&rig);
    rig.expect(
        after == target,
        format!(
            "after v4's rollback, bin/app -> {}; before v4 it pointed to {}",
            after.display(),
            target.display()
        ),
    );
    let now = rig.serving();
    rig.expect(
        matches!(&now, Some((_, b)) if b == "v3"),
        format!("after v4's rollback {now:?} serves (v3's worker was {v3_pid})"),
    );
    let there = file_sha(&resolved);
    rig.expect(there == v3, "v3's file was modified by v4's install");
    for (v, sha) in [("v1", &v1), ("v2", &v2)] {
        assert_release_untouched(&rig, &writes, v, sha, "after v4 was rolled back");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. A manual deploy between two releases.

/// A serves from the watched path; then an operator deploys B by hand (temp file, rename, SIGUSR2).
/// Publishing A again must install it: what serves is B, whatever the master last installed.
#[test]
fn a_release_is_installed_again_after_a_manual_deploy_replaced_it() {
    let mut rig = Rig::new("rs-manual");
    rig.start(&[]);
    let (a_id, a_sha) = rig.publish_build("a");
    rig.wait_log(&format!("release {a_id} passed probation"), VERDICT);
    rig.wait_build("a", RESTART);
    // The master becomes A after its probation. The deploy lands as the re-exec begins: the new
    // image's File fetcher then sees A at `next` for the first time, after the deploy, and the
    // release state must know that the operator replaced this very publication of A.
    rig.wait_log("re-executing", VERDICT);
    let b_sha = rig.deploy_build("b");
    rig.wait_log("re-executed in place: took over", VERDICT);
    rig.m().signal(Signal::SIGUSR2);
    rig.wait_build("b", RESTART);
    assert_operator_build_stays(&rig, "b", &b_sha, "after the re-exec");

    let again = rig.prepare_build("a", 0);
    assert_eq!(again, a_sha, "the same build A, byte for byte");
    rig.publish_prepared(&again);
    rig.wait_build("a", VERDICT);
    let app = file_sha(&rig.app);
    rig.expect(
        app == a_sha,
        format!("A serves again, but app is sha256 {app}, not A ({a_sha})"),
    );
}

/// A master started after a manual deploy has no memory of having offered the release at `next`:
/// the release state (persisted beside the binary) must stop it from installing that release over
/// the operator's build, until the release is published again.
#[test]
fn a_restarted_master_does_not_install_the_release_a_manual_deploy_replaced() {
    let mut rig = Rig::new("rs-manual-restart");
    rig.start(&[]);
    let (a_id, a_sha) = rig.publish_build("a");
    rig.wait_log(&format!("release {a_id} passed probation"), VERDICT);
    rig.wait_build("a", RESTART);
    rig.m().signal(Signal::SIGTERM);
    let exited = rig.m_mut().wait_exit(RESTART);
    rig.expect(
        exited.is_some_and(|st| st.success()),
        format!("the master did not drain and exit 0: {exited:?}"),
    );

    let b_sha = rig.deploy_build("b");
    let first = rig.start_any(&[], &[], None);
    rig.expect(first == "b", format!("the restarted master serves {first}"));
    assert_operator_build_stays(&rig, "b", &b_sha, "after a master restart");

    let again = rig.prepare_build("a", 0);
    assert_eq!(again, a_sha, "the same build A, byte for byte");
    rig.publish_prepared(&again);
    rig.wait_build("a", VERDICT);
}

/// Waits while the master's pipeline looks at `next` a few times, then asserts that the
/// operator's `build` (sha256 `sha`) still serves and is still the file at the path.
fn assert_operator_build_stays(rig: &Rig, build: &str, sha: &str, when: &str) {
    // The File fetcher looks once its pipeline starts (well within a second of the master
    // serving), then on every change: a few seconds cover its first looks.
    std::thread::sleep(Duration::from_secs(3));
    let serving = rig.serving().map(|(_, b)| b);
    let app = file_sha(&rig.app);
    rig.expect(
        serving.as_deref() == Some(build) && app == sha,
        format!(
            "{when}: the operator's build {build} ({sha}) was replaced: serving {serving:?}, \
             app is sha256 {app}"
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// 7. The application's veto comes before the candidate runs.

/// With a `pre_upgrade` hook that refuses every release, a published release is rejected as
/// vetoed and was never executed: the exec log (one line per process started from a fixture
/// build) has no line from it.
#[test]
fn a_vetoed_release_never_runs() {
    let mut rig = Rig::new("rs-veto");
    let exec_log = rig.path("exec.log");
    let exec_arg = exec_log.display().to_string();
    rig.start(&["--veto-all", "--exec-log", &exec_arg]);
    let traffic = rig.watch();
    let (id, _) = rig.publish_build("vetoed-candidate");
    let reason = rig.wait_rejected(&id);
    rig.expect(
        reason.contains("vetoed"),
        format!("the rejection does not say it was vetoed: {reason}"),
    );
    rig.assert_untouched(traffic, "after the veto");
    let lines = fs::read_to_string(&exec_log).unwrap_or_default();
    let base = lines.lines().filter(|l| l.starts_with("base ")).count();
    rig.expect(
        base >= 2,
        format!("the exec log misses the master and its worker: {lines:?}"),
    );
    let ran: Vec<&str> = lines
        .lines()
        .filter(|l| l.starts_with("vetoed-candidate "))
        .collect();
    rig.expect(
        ran.is_empty(),
        format!("the vetoed release was executed before the veto: {ran:?}"),
    );
}
