use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{sha256_hex, TempDir};
use crate::install::replace::prev_path;
use crate::install::{file_sha256, install, resolve_target, restore_from, sweep_leftovers, Staged};

/// A staged file as staging leaves it: private to its owner.
fn staged(dir: &TempDir, content: &[u8]) -> Staged {
    let path = dir.exe(
        &format!(".staged-{}", crate::install::random_hex()),
        content,
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    Staged::adopt(path)
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn install_keeps_the_previous_binary_and_its_mode() {
    let dir = TempDir::new("install");
    let target = dir.exe("app", b"old binary");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o750)).unwrap();
    install(staged(&dir, b"new binary"), &target, false).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"new binary");
    assert_eq!(std::fs::read(prev_path(&target)).unwrap(), b"old binary");
    assert_eq!(mode(&target), 0o750);
    assert_eq!(dir.names(), ["app", "app.prev"]);

    install(staged(&dir, b"newer binary"), &target, false).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"newer binary");
    assert_eq!(std::fs::read(prev_path(&target)).unwrap(), b"new binary");
    assert_eq!(dir.names(), ["app", "app.prev"]);
}

#[test]
fn installing_over_an_unproven_binary_keeps_the_last_proven_one_as_prev() {
    let dir = TempDir::new("keep-prev");
    let target = dir.exe("app", b"proven");
    install(staged(&dir, b"on probation"), &target, false).unwrap();
    // What serves is held open before the next install, as the pipeline does.
    let serving = std::fs::File::open(&target).unwrap();
    install(staged(&dir, b"newest"), &target, true).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"newest");
    assert_eq!(std::fs::read(prev_path(&target)).unwrap(), b"proven");
    // The newest fails: what served before it comes back, not the older proven build.
    restore_from(&serving, &target).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"on probation");
    assert_eq!(std::fs::read(prev_path(&target)).unwrap(), b"proven");
    assert_eq!(mode(&target), 0o755);
    assert_eq!(dir.names(), ["app", "app.prev"]);
}

#[test]
fn a_restored_build_can_be_installed_over_and_kept_as_prev() {
    let dir = TempDir::new("restore");
    let target = dir.exe("app", b"v1");
    let serving = std::fs::File::open(&target).unwrap();
    install(staged(&dir, b"v2"), &target, false).unwrap();
    restore_from(&serving, &target).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"v1");
    restore_from(&serving, &target).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"v1");
    assert_eq!(dir.names(), ["app", "app.prev"]);

    // The restored build proved itself again: the next install keeps it as `.prev`.
    install(staged(&dir, b"v3"), &target, false).unwrap();
    assert_eq!(std::fs::read(prev_path(&target)).unwrap(), b"v1");
    assert_eq!(dir.names(), ["app", "app.prev"]);
}

#[test]
fn through_a_symlink_the_link_stays_and_names_the_new_content() {
    let dir = TempDir::new("link");
    std::fs::create_dir(dir.path().join("releases")).unwrap();
    let real = dir.exe("releases/app", b"old");
    let link = dir.path().join("current");
    std::os::unix::fs::symlink("releases/app", &link).unwrap();
    let target = resolve_target(&link).unwrap();
    assert_eq!(target, std::fs::canonicalize(&real).unwrap());
    assert_eq!(resolve_target(&real).unwrap(), real);
    install(staged(&dir, b"new"), &target, false).unwrap();
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::path::Path::new("releases/app")
    );
    assert_eq!(std::fs::read(&link).unwrap(), b"new");
    assert_eq!(std::fs::read(prev_path(&real)).unwrap(), b"old");
}

#[test]
fn failed_install_leaves_the_target_and_removes_the_staged_file() {
    let dir = TempDir::new("failinstall");
    let target = dir.exe("app", b"old");
    // A directory where .prev must go makes keeping the previous binary fail.
    std::fs::create_dir(dir.path().join("app.prev")).unwrap();
    std::fs::write(dir.path().join("app.prev/x"), b"").unwrap();
    let err = install(staged(&dir, b"new"), &target, false).unwrap_err();
    assert!(err.to_string().contains("app.prev"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"old");
    assert_eq!(dir.names(), ["app", "app.prev"]);
}

#[test]
fn the_target_never_disappears_during_installs() {
    let dir = TempDir::new("atomic");
    let target = dir.exe("app", b"v0");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, target) = (stop.clone(), target.clone());
        std::thread::spawn(move || {
            let mut opened = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match std::fs::read(&target) {
                    Ok(content) => assert!(content.starts_with(b"v"), "partial content"),
                    Err(e) => panic!("opening the target failed mid-install: {e}"),
                }
                opened += 1;
            }
            opened
        })
    };
    for i in 1..=200 {
        install(staged(&dir, format!("v{i}").as_bytes()), &target, false).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let opened = reader.join().expect("the reader saw the target missing");
    assert!(opened > 0);
    assert_eq!(std::fs::read(&target).unwrap(), b"v200");
    assert_eq!(std::fs::read(prev_path(&target)).unwrap(), b"v199");
}

#[test]
fn file_sha256_streams_a_file() {
    let dir = TempDir::new("hash");
    let data = vec![42u8; 200_000];
    let path = dir.exe("f", &data);
    assert_eq!(file_sha256(&path).unwrap(), sha256_hex(&data));
}

#[test]
fn sweep_removes_what_a_dead_master_left_and_nothing_else() {
    let dir = TempDir::new("sweep");
    let target = dir.exe("app", b"binary");
    // A pid that cannot exist (above the kernel's pid_max limit of 2^22).
    let dead = dir.exe(".app.upshift-99999999-0123456789abcdef.tmp", b"partial");
    let mine = dir.exe(
        &format!(".app.upshift-{}-fedcba9876543210.tmp", std::process::id()),
        b"mine",
    );
    let other_app = dir.exe(".other.upshift-99999999-0123456789abcdef.tmp", b"not ours");
    let fresh_prev_tmp = dir.exe("app.prev-0123456789ab.tmp", b"in progress");
    let old_name = dir.exe("app.prev.tmp", b"in progress");
    assert_eq!(sweep_leftovers(&target, false), 1);
    assert!(!dead.exists(), "a dead master's staged file must go");
    assert!(mine.exists() && other_app.exists() && target.exists());
    assert!(
        fresh_prev_tmp.exists() && old_name.exists(),
        "without the lock, a recent .prev temp may belong to an install under way"
    );
}

#[test]
fn a_sweep_under_the_install_lock_takes_every_temp_however_young() {
    let dir = TempDir::new("sweep-locked");
    let target = dir.exe("app", b"binary");
    let temps = [
        "app.prev-0123456789ab.tmp",
        "app.prev.tmp",
        "app.rollback-0123456789ab.tmp",
        "app.link-0123456789ab.tmp",
        "app.upshift-state.0123456789ab.tmp",
    ]
    .map(|name| dir.exe(name, b"left by a killed master"));
    let kept = [
        dir.exe("app.prev", b"v1"),
        dir.exe("app.prev-notes", b"no .tmp"),
    ];
    assert_eq!(sweep_leftovers(&target, true), temps.len());
    for t in &temps {
        assert!(!t.exists(), "{} must go", t.display());
    }
    assert!(kept.iter().all(|k| k.exists()) && target.exists());
}

#[test]
fn a_first_install_is_world_executable_though_staged_private() {
    let dir = TempDir::new("first");
    let target = dir.path().join("app");
    install(staged(&dir, b"first binary"), &target, false).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"first binary");
    assert_eq!(mode(&target), 0o755, "no target to copy a mode from");
}

#[test]
fn a_prev_symlink_is_replaced_never_followed() {
    let dir = TempDir::new("prev-link");
    let target = dir.exe("app", b"old binary");
    let victim = dir.exe("victim", b"someone else's file");
    // `.prev` naming the target itself looks like "already kept" when followed.
    std::os::unix::fs::symlink("app", prev_path(&target)).unwrap();
    install(staged(&dir, b"new binary"), &target, false).unwrap();
    let prev = prev_path(&target);
    assert!(!std::fs::symlink_metadata(&prev).unwrap().is_symlink());
    assert_eq!(std::fs::read(&prev).unwrap(), b"old binary");

    std::fs::remove_file(&prev).unwrap();
    std::os::unix::fs::symlink(&victim, &prev).unwrap();
    install(staged(&dir, b"newer binary"), &target, false).unwrap();
    assert!(!std::fs::symlink_metadata(&prev).unwrap().is_symlink());
    assert_eq!(std::fs::read(&prev).unwrap(), b"new binary");
    assert_eq!(std::fs::read(&victim).unwrap(), b"someone else's file");
    assert_eq!(dir.names(), ["app", "app.prev", "victim"]);
}

#[test]
fn a_planted_fixed_temp_name_neither_breaks_nor_steers_keeping_prev() {
    let dir = TempDir::new("prev-tmp");
    let target = dir.exe("app", b"old binary");
    // The name earlier versions always used; a directory cannot be removed as a file.
    let planted = dir.path().join("app.prev.tmp");
    std::fs::create_dir(&planted).unwrap();
    install(staged(&dir, b"new binary"), &target, false).unwrap();
    assert_eq!(std::fs::read(prev_path(&target)).unwrap(), b"old binary");
    assert!(planted.is_dir(), "left alone");
    assert_eq!(dir.names(), ["app", "app.prev", "app.prev.tmp"]);
}

#[test]
fn one_lock_beside_the_binary_keeps_a_second_installer_out() {
    use crate::install::{InstallError, InstallLock};
    let dir = TempDir::new("lock");
    let target = dir.exe("app", b"binary");
    let first = InstallLock::try_acquire(&target).unwrap();
    // A second open file description, as a second master has: refused at once.
    let err = InstallLock::try_acquire(&target).unwrap_err();
    assert!(matches!(err, InstallError::Locked { .. }), "{err}");
    assert!(!err.is_release_fault(), "the release is tried again later");
    let msg = err.to_string();
    assert!(
        msg.contains("app.upshift-lock") && msg.contains("another upshift master"),
        "{msg}"
    );
    drop(first);
    let again = InstallLock::try_acquire(&target).unwrap();
    drop(again);
    assert_eq!(
        dir.names(),
        ["app", "app.upshift-lock"],
        "the lock file stays"
    );

    // Never through a symlink: a planted link neither creates nor locks its target.
    let other = TempDir::new("lock-link");
    let target = other.exe("app", b"binary");
    let elsewhere = other.path().join("elsewhere");
    std::os::unix::fs::symlink(&elsewhere, other.path().join("app.upshift-lock")).unwrap();
    assert!(InstallLock::try_acquire(&target).is_err());
    assert!(!elsewhere.exists());
}
