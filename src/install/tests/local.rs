//! Staging's kernel-copy path, fed by the real File fetcher.

use std::os::unix::fs::PermissionsExt;

use super::{rt, sha256_hex, TempDir};
use crate::fetch::{Current, Fetcher, FileFetcher, Release, StagingArea};
use crate::install::{stage, InstallError, StageOptions};

/// The release the File fetcher offers for `bytes` written to `dir/next`.
fn found(dir: &TempDir, bytes: &[u8]) -> Release {
    let next = dir.path().join("next");
    std::fs::write(&next, bytes).unwrap();
    let mut fetcher = FileFetcher::new(&next);
    let current = Current {
        sha256: sha256_hex(b"the running binary"),
        ..Current::default()
    };
    let release = rt()
        .block_on(fetcher.check(&current))
        .unwrap()
        .expect("a new release");
    assert!(
        release.local_file.is_some(),
        "the File fetcher hands staging its hashed file"
    );
    release
}

fn target(dir: &TempDir) -> std::path::PathBuf {
    dir.exe("app", b"the running binary")
}

/// Only the target and the published file are left: no temporary file.
fn clean(dir: &TempDir) {
    assert_eq!(dir.names(), ["app", "next"]);
}

#[test]
fn a_local_release_is_copied_and_keeps_the_fetchers_hash() {
    let dir = TempDir::new("local-copy");
    let target = target(&dir);
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let release = found(&dir, &bytes);
    assert_eq!(release.sha256.as_deref(), Some(sha256_hex(&bytes).as_str()));
    let staged = rt()
        .block_on(stage(release, &target, &StageOptions::default()))
        .unwrap();
    assert_eq!(std::fs::read(&staged.path).unwrap(), bytes);
    assert_eq!(staged.binary_sha256, sha256_hex(&bytes));
    assert_eq!(staged.asset_sha256, staged.binary_sha256);
    assert_eq!(staged.bytes, bytes.len() as u64);
    let mode = std::fs::metadata(&staged.path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "private until installed");
}

/// White box: with the file unchanged, the fetcher's hash stands for the copy's: staging did not
/// read and hash the file again (which is the point of the path).
#[test]
fn an_unchanged_file_is_not_hashed_again() {
    let dir = TempDir::new("local-trust");
    let target = target(&dir);
    let mut release = found(&dir, b"#!/bin/sh\necho new\n");
    release.sha256 = None;
    if let Some(local) = release.local_file.as_mut() {
        local.sha256 = "the fetcher's hash".into();
    }
    let staged = rt()
        .block_on(stage(release, &target, &StageOptions::default()))
        .unwrap();
    assert_eq!(staged.binary_sha256, "the fetcher's hash");
}

/// Rewritten in place (same size) between the fetcher's hash and the copy: the copy is hashed,
/// so the checksum the release carries (the old content's) is a mismatch naming the new hash.
#[test]
fn a_file_rewritten_after_the_check_is_hashed_and_refused() {
    let dir = TempDir::new("local-rewritten");
    let target = target(&dir);
    let old = vec![b'a'; 100_000];
    let release = found(&dir, &old);
    // A different mtime even on a coarse clock.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let new = vec![b'b'; 100_000];
    std::fs::write(dir.path().join("next"), &new).unwrap();
    let err = rt()
        .block_on(stage(release, &target, &StageOptions::default()))
        .expect_err("the rewritten file does not match the checksum");
    match err {
        InstallError::ChecksumMismatch { expected, actual } => {
            assert_eq!(expected, sha256_hex(&old));
            assert_eq!(actual, sha256_hex(&new));
        }
        other => panic!("expected a checksum mismatch, got {other}"),
    }
    clean(&dir);
}

#[test]
fn a_local_release_over_the_size_limit_is_refused_before_copying() {
    let dir = TempDir::new("local-limit");
    let target = target(&dir);
    let release = found(&dir, &[7u8; 4096]);
    let opts = StageOptions {
        max_bytes: 4095,
        ..StageOptions::default()
    };
    let err = rt()
        .block_on(stage(release, &target, &opts))
        .expect_err("over the limit");
    assert!(
        matches!(err, InstallError::TooLarge { limit: 4095, .. }),
        "{err}"
    );
    clean(&dir);
}

/// The release the File fetcher offers for `bytes` written to `dir/next` after a first look at
/// an empty directory, told where staging happens: copied beside `target` while hashed.
fn found_copied(dir: &TempDir, target: &std::path::Path, bytes: &[u8], max: u64) -> Release {
    let next = dir.path().join("next");
    let mut fetcher = FileFetcher::new(&next);
    fetcher.staging_area(&StagingArea {
        target: target.to_path_buf(),
        max_bytes: max,
    });
    let current = Current {
        sha256: sha256_hex(b"the running binary"),
        ..Current::default()
    };
    assert!(rt().block_on(fetcher.check(&current)).unwrap().is_none());
    std::fs::write(&next, bytes).unwrap();
    rt().block_on(fetcher.check(&current))
        .unwrap()
        .expect("a new release")
}

fn copy_of(release: &Release) -> bool {
    release
        .local_file
        .as_ref()
        .is_some_and(|l| l.copy.is_some())
}

/// The names in `dir` that are staging's temporary files.
fn temps(dir: &TempDir) -> Vec<String> {
    let names = dir.names().into_iter();
    names.filter(|n| n.starts_with(".app.upshift-")).collect()
}

#[test]
fn a_new_file_is_copied_while_hashed_and_staging_adopts_the_copy() {
    let dir = TempDir::new("local-precopy");
    let target = target(&dir);
    let bytes: Vec<u8> = (0..9_000_000u32).map(|i| (i % 253) as u8).collect();
    let release = found_copied(&dir, &target, &bytes, 1 << 30);
    assert!(copy_of(&release), "no copy was made while hashing");
    let made = temps(&dir);
    assert_eq!(made.len(), 1, "{:?}", dir.names());
    let staged = rt()
        .block_on(stage(release, &target, &StageOptions::default()))
        .unwrap();
    assert_eq!(
        staged.path,
        dir.path().join(&made[0]),
        "staging copied again"
    );
    assert_eq!(std::fs::read(&staged.path).unwrap(), bytes);
    assert_eq!(staged.binary_sha256, sha256_hex(&bytes));
    let mode = std::fs::metadata(&staged.path).unwrap().permissions();
    assert_eq!(mode.mode() & 0o777, 0o700, "private until installed");
    drop(staged);
    clean(&dir);
}

#[test]
fn the_copy_holds_the_bytes_that_were_hashed_even_if_the_file_changes_after() {
    let dir = TempDir::new("local-precopy-rewritten");
    let target = target(&dir);
    let old = vec![b'a'; 100_000];
    let release = found_copied(&dir, &target, &old, 1 << 30);
    assert!(copy_of(&release));
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(dir.path().join("next"), vec![b'b'; 100_000]).unwrap();
    let staged = rt()
        .block_on(stage(release, &target, &StageOptions::default()))
        .unwrap();
    assert_eq!(std::fs::read(&staged.path).unwrap(), old);
    assert_eq!(staged.binary_sha256, sha256_hex(&old));
}

#[test]
fn the_first_look_after_a_start_and_a_file_over_the_limit_get_no_copy() {
    let dir = TempDir::new("local-precopy-none");
    let target = target(&dir);
    let mut fetcher = FileFetcher::new(dir.path().join("next"));
    fetcher.staging_area(&StagingArea {
        target: target.clone(),
        max_bytes: 1 << 30,
    });
    std::fs::write(dir.path().join("next"), b"most likely the installed build").unwrap();
    let current = Current::default();
    let first = rt().block_on(fetcher.check(&current)).unwrap().unwrap();
    assert!(!copy_of(&first), "a copy on the first look");
    assert!(temps(&dir).is_empty());

    let big = found_copied(
        &TempDir::new("local-precopy-big"),
        &target,
        &[1u8; 5000],
        4999,
    );
    assert!(!copy_of(&big), "a copy larger than a release may be");
    assert!(temps(&dir).is_empty());
}

#[test]
fn a_copy_not_staged_is_removed() {
    let dir = TempDir::new("local-precopy-dropped");
    let target = target(&dir);
    // Dropped unstaged: refused, deferred by a rollout, or replaced by a newer file.
    let release = found_copied(&dir, &target, b"#!/bin/sh\n", 1 << 30);
    assert!(copy_of(&release));
    drop(release);
    clean(&dir);
    // Staged for another target (a symlink flipped since the check): copied there instead.
    std::fs::remove_file(dir.path().join("next")).unwrap();
    let release = found_copied(&dir, &target, b"#!/bin/sh\necho 2\n", 1 << 30);
    let elsewhere = TempDir::new("local-precopy-elsewhere");
    let other = elsewhere.exe("app", b"the running binary");
    let staged = rt()
        .block_on(stage(release, &other, &StageOptions::default()))
        .unwrap();
    assert!(staged.path.starts_with(elsewhere.path()));
    clean(&dir);
}
