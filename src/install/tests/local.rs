//! Staging's kernel-copy path, fed by the real File fetcher.

use std::os::unix::fs::PermissionsExt;

use super::{rt, sha256_hex, TempDir};
use crate::fetch::{Current, Fetcher, FileFetcher, Release};
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
