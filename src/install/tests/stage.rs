use std::io::Cursor;

use super::{gzip, release, rt, sha256_hex, targz, zip, Generated, TempDir};
use crate::fetch::{Format, Origin, Release};
use crate::install::{stage, InstallError, StageOptions, Staged};

fn stage_in(dir: &TempDir, rel: Release, opts: &StageOptions) -> Result<Staged, InstallError> {
    let target = dir.path().join("app");
    if !target.exists() {
        dir.exe("app", b"the running binary");
    }
    rt().block_on(stage(rel, &target, opts))
}

/// Asserts that staging failed and left nothing but the target behind.
fn failed(dir: &TempDir, result: Result<Staged, InstallError>) -> InstallError {
    let err = result.expect_err("staging should have failed");
    assert_eq!(dir.names(), ["app"], "after {err}");
    err
}

const ELF: &[u8] = b"\x7fELF pretend binary";

#[test]
fn raw_release_is_staged_beside_the_target_with_both_hashes() {
    let dir = TempDir::new("raw");
    let body = b"#!/bin/sh\necho new\n".to_vec();
    let mut rel = release(body.clone(), Format::Raw);
    rel.sha256 = Some(sha256_hex(&body).to_uppercase());
    let staged = stage_in(&dir, rel, &StageOptions::default()).unwrap();
    assert_eq!(staged.path.parent(), Some(dir.path()));
    let name = staged
        .path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(".app.upshift-") && name.ends_with(".tmp"),
        "{name}"
    );
    assert_eq!(std::fs::read(&staged.path).unwrap(), body);
    assert_eq!(staged.asset_sha256, sha256_hex(&body));
    assert_eq!(staged.binary_sha256, staged.asset_sha256);
    assert_eq!(staged.bytes, body.len() as u64);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&staged.path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "private until installed");
    drop(staged);
    assert_eq!(dir.names(), ["app"], "dropping a Staged removes its file");
}

#[test]
fn wrong_checksum_is_refused_and_cleaned_up() {
    let dir = TempDir::new("sum");
    let mut rel = release(b"new binary".to_vec(), Format::Raw);
    rel.sha256 = Some(sha256_hex(b"another binary"));
    let err = failed(&dir, stage_in(&dir, rel, &StageOptions::default()));
    assert!(
        matches!(err, InstallError::ChecksumMismatch { .. }),
        "{err}"
    );
}

#[test]
fn short_transfer_is_truncated_and_cleaned_up() {
    let dir = TempDir::new("trunc");
    let mut rel = release(b"half a binary".to_vec(), Format::Raw);
    rel.size_hint = Some(1000);
    let err = failed(&dir, stage_in(&dir, rel, &StageOptions::default()));
    assert!(
        matches!(
            err,
            InstallError::Truncated {
                expected: 1000,
                received: 13
            }
        ),
        "{err}"
    );
}

#[test]
fn size_limit_applies_to_the_stream_the_hint_and_the_unpacked_bytes() {
    let dir = TempDir::new("large");
    let opts = StageOptions {
        max_bytes: 1000,
        ..StageOptions::default()
    };
    let mut rel = release(vec![7; 5000], Format::Raw);
    rel.size_hint = None;
    let err = failed(&dir, stage_in(&dir, rel, &opts));
    assert!(
        matches!(
            err,
            InstallError::TooLarge {
                what: "the release",
                limit: 1000
            }
        ),
        "{err}"
    );

    let err = failed(
        &dir,
        stage_in(&dir, release(vec![7; 5000], Format::Raw), &opts),
    );
    assert!(matches!(err, InstallError::TooLarge { .. }), "{err}");

    let bomb = gzip(&vec![0; 100_000]);
    assert!(bomb.len() < 1000);
    let err = failed(&dir, stage_in(&dir, release(bomb, Format::Gzip), &opts));
    assert!(matches!(err, InstallError::TooLarge { .. }), "{err}");
}

#[test]
fn remote_release_without_checksum_is_refused_unless_allowed() {
    let dir = TempDir::new("remote");
    let mut rel = release(b"new".to_vec(), Format::Raw);
    rel.origin = Origin::Remote;
    rel.sha256 = None;
    let err = failed(&dir, stage_in(&dir, rel, &StageOptions::default()));
    assert!(matches!(err, InstallError::MissingChecksum), "{err}");

    // A third-party fetcher declaring `Local` has no `LocalFile` to show: it counts as remote.
    let mut rel = release(b"new".to_vec(), Format::Raw);
    rel.origin = Origin::Local;
    rel.sha256 = None;
    let err = failed(&dir, stage_in(&dir, rel, &StageOptions::default()));
    assert!(matches!(err, InstallError::MissingChecksum), "{err}");

    let mut rel = release(b"new".to_vec(), Format::Raw);
    rel.origin = Origin::Remote;
    rel.sha256 = None;
    let opts = StageOptions {
        require_checksum_for_remote: false,
        ..StageOptions::default()
    };
    assert!(stage_in(&dir, rel, &opts).is_ok());
}

#[test]
fn tar_gz_unpacks_the_named_or_the_only_executable_entry() {
    let dir = TempDir::new("targz");
    let archive = targz(&[
        ("README.md", 0o644, b"read me"),
        ("app-1.0/bin/app", 0o755, ELF),
        ("app-1.0/LICENSE", 0o644, b"MIT"),
    ]);
    for binary in [None, Some("app-1.0/bin/app"), Some("./app-1.0/bin/app")] {
        let mut rel = release(
            archive.clone(),
            Format::TarGz {
                binary: binary.map(Into::into),
            },
        );
        rel.sha256 = Some(sha256_hex(&archive));
        let staged = stage_in(&dir, rel, &StageOptions::default()).unwrap();
        assert_eq!(std::fs::read(&staged.path).unwrap(), ELF, "{binary:?}");
        assert_eq!(staged.binary_sha256, sha256_hex(ELF));
        assert_eq!(staged.asset_sha256, sha256_hex(&archive));
    }
}

#[test]
fn tar_gz_without_exactly_one_match_names_what_it_holds() {
    let dir = TempDir::new("tarmiss");
    let archive = targz(&[("README.md", 0o644, b"r"), ("bin/app", 0o755, ELF)]);
    let rel = release(
        archive,
        Format::TarGz {
            binary: Some("app".into()),
        },
    );
    let err = failed(&dir, stage_in(&dir, rel, &StageOptions::default()));
    let InstallError::BinaryNotInArchive(msg) = &err else {
        panic!("{err}")
    };
    assert!(
        msg.contains("bin/app") && msg.contains("README.md"),
        "{msg}"
    );

    let two = targz(&[("a", 0o755, ELF), ("b", 0o700, ELF)]);
    let err = failed(
        &dir,
        stage_in(
            &dir,
            release(two, Format::TarGz { binary: None }),
            &StageOptions::default(),
        ),
    );
    let InstallError::BinaryNotInArchive(msg) = &err else {
        panic!("{err}")
    };
    assert!(msg.contains("several") && msg.contains("a, b"), "{msg}");
}

#[test]
fn zip_unpacks_the_named_or_the_only_executable_entry() {
    let dir = TempDir::new("zip");
    let archive = zip(&[("README.txt", b"hello"), ("dist/app", ELF)]);
    for binary in [None, Some("dist/app")] {
        let rel = release(
            archive.clone(),
            Format::Zip {
                binary: binary.map(Into::into),
            },
        );
        let staged = stage_in(&dir, rel, &StageOptions::default()).unwrap();
        assert_eq!(std::fs::read(&staged.path).unwrap(), ELF, "{binary:?}");
        assert_eq!(staged.binary_sha256, sha256_hex(ELF));
    }
    let rel = release(
        archive,
        Format::Zip {
            binary: Some("app.exe".into()),
        },
    );
    let err = failed(&dir, stage_in(&dir, rel, &StageOptions::default()));
    assert!(
        matches!(err, InstallError::BinaryNotInArchive(ref m) if m.contains("dist/app")),
        "{err}"
    );
}

#[test]
fn gzip_release_is_decompressed_and_corrupt_gzip_is_an_unpack_error() {
    let dir = TempDir::new("gz");
    let data = b"#!/bin/sh\necho gz\n".repeat(1000);
    let staged = stage_in(
        &dir,
        release(gzip(&data), Format::Gzip),
        &StageOptions::default(),
    )
    .unwrap();
    assert_eq!(std::fs::read(&staged.path).unwrap(), data);
    assert_eq!(staged.binary_sha256, sha256_hex(&data));
    assert_ne!(staged.asset_sha256, staged.binary_sha256);
    drop(staged);

    let mut corrupt = gzip(&data);
    let n = corrupt.len();
    corrupt[n / 2] ^= 0xff;
    let err = failed(
        &dir,
        stage_in(
            &dir,
            release(corrupt, Format::Gzip),
            &StageOptions::default(),
        ),
    );
    assert!(matches!(err, InstallError::Unpack(_)), "{err}");
}

fn keypair() -> (minisign::KeyPair, minisign_verify::PublicKey) {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let pk = minisign_verify::PublicKey::from_base64(&kp.pk.to_base64()).unwrap();
    (kp, pk)
}

fn sign(kp: &minisign::KeyPair, data: &[u8]) -> String {
    minisign::sign(Some(&kp.pk), &kp.sk, Cursor::new(data), None, None)
        .unwrap()
        .into_string()
}

#[test]
fn minisign_signature_is_required_and_checked_when_a_key_is_set() {
    let dir = TempDir::new("sig");
    let (kp, pk) = keypair();
    let opts = StageOptions {
        public_keys: vec![pk],
        ..StageOptions::default()
    };
    let body = b"signed binary".to_vec();

    let mut rel = release(body.clone(), Format::Raw);
    rel.signature = Some(sign(&kp, &body));
    stage_in(&dir, rel, &opts).unwrap();

    let mut rel = release(body.clone(), Format::Raw);
    rel.signature = Some(sign(&kp, b"something else"));
    let err = failed(&dir, stage_in(&dir, rel, &opts));
    assert!(matches!(err, InstallError::BadSignature(_)), "{err}");

    let (other, _) = keypair();
    let mut rel = release(body.clone(), Format::Raw);
    rel.signature = Some(sign(&other, &body));
    let err = failed(&dir, stage_in(&dir, rel, &opts));
    assert!(matches!(err, InstallError::BadSignature(_)), "{err}");

    let mut rel = release(body.clone(), Format::Raw);
    rel.signature = Some("not a signature".into());
    let err = failed(&dir, stage_in(&dir, rel, &opts));
    assert!(matches!(err, InstallError::BadSignature(_)), "{err}");

    let err = failed(&dir, stage_in(&dir, release(body, Format::Raw), &opts));
    assert!(matches!(err, InstallError::Unsigned), "{err}");
}

#[test]
fn a_signature_by_any_configured_key_verifies_during_a_rotation() {
    let dir = TempDir::new("rotate");
    let (old, old_pk) = keypair();
    let (new, new_pk) = keypair();
    let (stranger, _) = keypair();
    let opts = StageOptions {
        public_keys: vec![old_pk, new_pk],
        ..StageOptions::default()
    };
    let body = b"signed binary".to_vec();
    for kp in [&old, &new] {
        let mut rel = release(body.clone(), Format::Raw);
        rel.signature = Some(sign(kp, &body));
        stage_in(&dir, rel, &opts).unwrap();
    }
    let mut rel = release(body.clone(), Format::Raw);
    rel.signature = Some(sign(&stranger, &body));
    let err = failed(&dir, stage_in(&dir, rel, &opts));
    assert!(
        err.to_string().contains("a key that is not configured"),
        "{err}"
    );
}

#[test]
fn a_50_mb_release_streams_through() {
    const SIZE: u64 = 50 << 20;
    let dir = TempDir::new("big");
    let mut expected = sha2::Sha256::default();
    let mut gen = Generated {
        left: SIZE,
        state: 1,
    };
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = gen.fill(&mut buf);
        if n == 0 {
            break;
        }
        sha2::Digest::update(&mut expected, &buf[..n]);
    }
    let expected = hex::encode(sha2::Digest::finalize(expected));
    let rel = Release {
        body: Box::new(Generated {
            left: SIZE,
            state: 1,
        }),
        sha256: Some(expected.clone()),
        ..release(Vec::new(), Format::Raw)
    };
    let rel = Release {
        size_hint: Some(SIZE),
        ..rel
    };
    let staged = stage_in(&dir, rel, &StageOptions::default()).unwrap();
    assert_eq!(staged.bytes, SIZE);
    assert_eq!(staged.asset_sha256, expected);
    assert_eq!(std::fs::metadata(&staged.path).unwrap().len(), SIZE);
}

const FSIZE_CHILD: &str = "UPSHIFT_TEST_FSIZE_CHILD_DIR";

/// A full disk, simulated with RLIMIT_FSIZE in a re-executed copy of this test: the write fails
/// with EFBIG, the error names the write, and the temporary file is gone.
#[test]
fn a_failed_write_is_reported_and_cleaned_up() {
    if let Some(dir) = std::env::var_os(FSIZE_CHILD) {
        let target = std::path::Path::new(&dir).join("app");
        let rel = release(vec![1; 4 << 20], Format::Raw);
        let err = rt()
            .block_on(stage(rel, &target, &StageOptions::default()))
            .expect_err("a 4 MiB write under a 1 MiB file size limit");
        let InstallError::Io { what, source } = &err else {
            panic!("{err}")
        };
        assert!(what.contains("writing the new binary"), "{err}");
        assert_eq!(source.raw_os_error(), Some(libc::EFBIG), "{err}");
        return;
    }
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("fsize");
    dir.exe("app", b"old");
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "install::tests::stage::a_failed_write_is_reported_and_cleaned_up",
    ])
    .args(["--nocapture", "--test-threads=1"])
    .env(FSIZE_CHILD, dir.path());
    // SAFETY: setrlimit and signal are async-signal-safe and touch no shared memory.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1 << 20,
                rlim_max: 1 << 20,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dir.names(), ["app"]);
}

/// Some bytes, then a stall: the transfer hangs mid-way.
struct Stalls(Option<Vec<u8>>);

impl tokio::io::AsyncRead for Stalls {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.0.take() {
            Some(bytes) => {
                buf.put_slice(&bytes);
                std::task::Poll::Ready(Ok(()))
            }
            None => std::task::Poll::Pending,
        }
    }
}

#[test]
fn a_dropped_stage_leaves_nothing_behind() {
    let dir = TempDir::new("dropped");
    let target = dir.exe("app", b"old");
    let rel = Release {
        body: Box::new(Stalls(Some(vec![5; 10_000]))),
        ..release(Vec::new(), Format::Gzip)
    };
    let opts = StageOptions::default();
    let staging = stage(rel, &target, &opts);
    let timed_out = rt().block_on(async {
        tokio::time::timeout(std::time::Duration::from_millis(200), staging).await
    });
    assert!(timed_out.is_err());
    assert_eq!(dir.names(), ["app"]);
}
