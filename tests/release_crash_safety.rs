//! A master killed with SIGKILL at any moment of an install, including at each of the install's
//! own steps (watched with inotify), leaves the binary whole: either the old one or the new one,
//! executable, never anything else; and the next master sweeps what the killed one staged.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// A random moment 0–300 ms after publishing.
    RandomAfterPublish,
    /// The staged temp file `.app.upshift-*` appears: during staging.
    StagedCreated,
    /// `app.prev-<random>.tmp` is linked: inside the install, before any rename.
    PrevTmpLinked,
    /// `app.prev` is renamed into place: inside the install, just before the target's rename.
    PrevRenamed,
    /// `app` is renamed over: the install's rename has just happened.
    AppRenamed,
}

/// Watches `dir` and SIGKILLs `pid` (a child of this process, not yet reaped, so the pid cannot
/// have been reused) the moment the install step `at` shows in the directory. Returns the
/// watcher (keep it alive) and the flag saying it fired.
fn kill_on_step(dir: &Path, pid: u32, at: KillAt) -> (notify::RecommendedWatcher, Arc<AtomicBool>) {
    use notify::event::{ModifyKind, RenameMode};
    use notify::{EventKind, Watcher};
    let fired = Arc::new(AtomicBool::new(false));
    let flag = fired.clone();
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if flag.load(Ordering::SeqCst) {
            return;
        }
        let name = |i: usize| {
            ev.paths
                .get(i)
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let last = name(ev.paths.len().saturating_sub(1));
        let renamed_to = matches!(
            ev.kind,
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
        );
        let hit = match at {
            KillAt::RandomAfterPublish => false,
            KillAt::StagedCreated => {
                matches!(ev.kind, EventKind::Create(_)) && name(0).starts_with(".app.upshift-")
            }
            KillAt::PrevTmpLinked => {
                matches!(ev.kind, EventKind::Create(_))
                    && last.starts_with("app.prev-")
                    && last.ends_with(".tmp")
            }
            KillAt::PrevRenamed => renamed_to && last == "app.prev",
            KillAt::AppRenamed => renamed_to && last == "app",
        };
        if hit {
            // SAFETY: kill(2) with a pid and a signal number.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            flag.store(true, Ordering::SeqCst);
        }
    };
    let mut watcher = notify::recommended_watcher(handler).expect("inotify watcher");
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .expect("watch the rig dir");
    (watcher, fired)
}

#[test]
fn sigkill_of_the_master_during_install_leaves_a_whole_binary() {
    let mut rig = Rig::new("rp-kill9");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    eprintln!("sigkill_of_the_master_during_install: seed {seed}");
    let mut rand_ms = |max: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % (max + 1)
    };
    let rounds = [
        KillAt::RandomAfterPublish,
        KillAt::StagedCreated,
        KillAt::PrevTmpLinked,
        KillAt::PrevRenamed,
        KillAt::AppRenamed,
        KillAt::RandomAfterPublish,
    ];
    let mut outcomes = Vec::new();
    let mut leftovers: Vec<String> = Vec::new();
    for (i, at) in rounds.into_iter().enumerate() {
        // Each round: a fresh master running whatever app is now, nothing pending in `next`, and
        // no `.prev` (so that the install takes every step). Temp files of earlier kills stay:
        // the new master must sweep the staged files of the masters that were killed.
        for name in ["next", "next.tmp", "app.prev"] {
            let _ = fs::remove_file(rig.path(name));
        }
        let before = file_sha(&rig.app);
        let running = rig.start_any(&[], &[], None);
        let staged_by_dead: Vec<String> = leftovers
            .iter()
            .filter(|n| n.starts_with(".app.upshift-"))
            .cloned()
            .collect();
        assert!(
            wait_until(Duration::from_secs(5), || stray_temp_files(
                &rig.dir.join("")
            )
            .iter()
            .all(|n| !staged_by_dead.contains(n))),
            "round {i}: the new master left the staged files of killed masters: {staged_by_dead:?}"
        );
        let sha = rig.prepare_build(&format!("k{i}"), 0);
        let (watcher, fired) = kill_on_step(&rig.dir.join(""), rig.m().pid(), at);
        let published = Instant::now();
        let identity = rig.publish_prepared(&sha);
        let how = match at {
            KillAt::RandomAfterPublish => {
                let delay = rand_ms(300);
                std::thread::sleep(Duration::from_millis(delay));
                rig.m().signal(Signal::SIGKILL);
                format!("{delay} ms after publishing")
            }
            step => {
                let m = rig.m();
                let done = format!("release {identity} is serving");
                wait_until(VERDICT, || {
                    fired.load(Ordering::SeqCst) || m.log_contents().contains(&done)
                });
                if !fired.load(Ordering::SeqCst) {
                    rig.fail(format!("round {i}: {step:?} never happened"));
                }
                format!(
                    "at {step:?}, {} ms after publishing",
                    published.elapsed().as_millis()
                )
            }
        };
        drop(watcher);
        let st = rig.m_mut().wait_exit(Duration::from_secs(10));
        rig.expect(st.is_some(), "the master did not die of SIGKILL");
        let installed = rig.m().log_contents().contains("installed the new binary");
        drop(rig.master.take());

        let after = file_sha(&rig.app);
        let mode = fs::metadata(&rig.app).unwrap().permissions().mode();
        let which = if after == before {
            "old"
        } else if after == sha {
            "new"
        } else {
            panic!(
                "round {i}: after SIGKILL {how}, app is neither the old binary ({before}) nor \
                 the new one ({sha}): {after}"
            )
        };
        assert!(
            mode & 0o111 != 0,
            "round {i}: app is not executable: {mode:o}"
        );
        assert!(
            !(which == "old" && installed),
            "round {i}: the log says the new binary was installed, but app is the old one"
        );
        if matches!(at, KillAt::AppRenamed) {
            assert_eq!(
                which, "new",
                "round {i}: killed after the rename, app is not new"
            );
        }
        let left = stray_temp_files(&rig.dir.join(""));
        let new: Vec<&String> = left.iter().filter(|n| !leftovers.contains(n)).collect();
        let kept = leftovers.iter().filter(|n| left.contains(n)).count();
        outcomes.push(format!(
            "round {i}: running {running}, published k{i}, SIGKILL {how} -> {which} binary; \
             new temp files {new:?}, {kept} of {} earlier ones still there",
            leftovers.len()
        ));
        leftovers = left;
    }
    eprintln!("{}", outcomes.join("\n"));
}
