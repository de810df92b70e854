//! Staging from a patch: used only when it rebuilds exactly the release, from a build this
//! machine runs; every other case reads the full release, and leaves nothing behind.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use super::{release, rt, sha256_hex, Generated, TempDir};
use crate::fetch::{Delta, Format, Release};
use crate::install::{stage, StageOptions, Staged};

/// A body that says whether anyone read from it.
struct Watched {
    bytes: std::io::Cursor<Vec<u8>>,
    read: Arc<AtomicBool>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.read.store(true, Ordering::SeqCst);
        Pin::new(&mut self.bytes).poll_read(cx, buf)
    }
}

fn watched(bytes: Vec<u8>) -> (crate::fetch::ReleaseBody, Arc<AtomicBool>) {
    let read = Arc::new(AtomicBool::new(false));
    let body = Watched {
        bytes: std::io::Cursor::new(bytes),
        read: read.clone(),
    };
    (Box::new(body), read)
}

/// A build of some size, with content that a patch codec cannot shrink to nothing.
fn build(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    Generated {
        left: len as u64,
        state: seed,
    }
    .fill(&mut out);
    out
}

/// `base` with a few bytes changed in the middle: a one-line change.
fn changed(base: &[u8]) -> Vec<u8> {
    let mut new = base.to_vec();
    let mid = new.len() / 2;
    new[mid..mid + 16].copy_from_slice(b"a one-line fix!!");
    new
}

fn make_patch(base: &[u8], new: &[u8]) -> Vec<u8> {
    let mut patch = Vec::new();
    crate::delta::make(base, new, &mut patch).expect("make a patch");
    patch
}

struct Case {
    dir: TempDir,
    base: Vec<u8>,
    new: Vec<u8>,
    opts: StageOptions,
}

impl Case {
    /// A machine that runs `base` (the file `running`, listed as a patch base).
    fn new(tag: &str) -> Case {
        let dir = TempDir::new(tag);
        let base = build(1, 256 * 1024);
        let new = changed(&base);
        dir.exe("app", &base);
        let running = dir.exe("running", &base);
        let opts = StageOptions {
            delta_bases: vec![running],
            ..StageOptions::default()
        };
        Case {
            dir,
            base,
            new,
            opts,
        }
    }

    /// The release of `self.new` with `patch` as its delta; says whether the full body and the
    /// patch were read.
    fn release(
        &self,
        patch: Vec<u8>,
        patch_sha256: String,
    ) -> (Release, Arc<AtomicBool>, Arc<AtomicBool>) {
        let mut rel = release(self.new.clone(), Format::Raw);
        let (full, full_read) = watched(self.new.clone());
        let (patch_body, patch_read) = watched(patch.clone());
        rel.body = full;
        rel.delta = Some(Delta {
            base_sha256: sha256_hex(&self.base),
            sha256: patch_sha256,
            signature: None,
            size_hint: Some(patch.len() as u64),
            name: "app.from-test.bidiff.zst".into(),
            body: patch_body,
        });
        (rel, full_read, patch_read)
    }

    fn stage(&self, rel: Release) -> Staged {
        rt().block_on(stage(rel, &self.dir.path().join("app"), &self.opts))
            .expect("staged")
    }

    /// Stages the release with `patch` (published with checksum `sha256`) and asserts that the
    /// full release was read and staged instead.
    fn assert_falls_back(&self, patch: Vec<u8>, sha256: String) {
        let (rel, full_read, _) = self.release(patch, sha256);
        self.assert_staged_new(&self.stage(rel));
        assert!(
            full_read.load(Ordering::SeqCst),
            "the full release was not read"
        );
    }

    /// The staged file is the new build, and nothing else was left beside the target.
    fn assert_staged_new(&self, staged: &Staged) {
        assert_eq!(std::fs::read(&staged.path).unwrap(), self.new);
        assert_eq!(staged.binary_sha256, sha256_hex(&self.new));
        let mut names = self.dir.names();
        names.retain(|n| !n.ends_with(".tmp"));
        assert_eq!(names, ["app", "running"]);
        let temps = self
            .dir
            .names()
            .iter()
            .filter(|n| n.ends_with(".tmp"))
            .count();
        assert_eq!(temps, 1, "only the staged file: {:?}", self.dir.names());
    }
}

#[test]
fn a_patch_from_the_running_build_rebuilds_the_release_without_reading_it() {
    let case = Case::new("delta-ok");
    let patch = make_patch(&case.base, &case.new);
    let sha = sha256_hex(&patch);
    let (rel, full_read, patch_read) = case.release(patch.clone(), sha);
    let staged = case.stage(rel);
    case.assert_staged_new(&staged);
    assert!(patch_read.load(Ordering::SeqCst));
    assert!(
        !full_read.load(Ordering::SeqCst),
        "the full release was read"
    );
    assert_eq!(
        staged.bytes,
        patch.len() as u64,
        "bytes downloaded: the patch's"
    );
}

#[test]
fn a_patch_that_fails_its_own_checksum_falls_back_to_the_full_release() {
    let case = Case::new("delta-corrupt");
    let mut patch = make_patch(&case.base, &case.new);
    let sha = sha256_hex(&patch);
    let last = patch.len() - 1;
    patch[last] ^= 0xff;
    case.assert_falls_back(patch, sha);
}

#[test]
fn a_corrupted_patch_with_a_matching_checksum_falls_back_to_the_full_release() {
    // The publisher's checksum covers the damage: the codec or the result check must catch it.
    let case = Case::new("delta-garbage");
    let mut patch = make_patch(&case.base, &case.new);
    let mid = patch.len() / 2;
    for b in &mut patch[mid..] {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    let sha = sha256_hex(&patch);
    case.assert_falls_back(patch, sha);
}

#[test]
fn a_patch_that_rebuilds_other_bytes_falls_back_to_the_full_release() {
    let case = Case::new("delta-other");
    let other = changed(&build(3, 1024));
    let patch = make_patch(&case.base, &other);
    let sha = sha256_hex(&patch);
    case.assert_falls_back(patch, sha);
}

#[test]
fn a_patch_for_a_build_this_machine_does_not_run_is_never_downloaded() {
    let case = Case::new("delta-base");
    let elsewhere = build(2, 256 * 1024);
    let patch = make_patch(&elsewhere, &case.new);
    let sha = sha256_hex(&patch);
    let (mut rel, full_read, patch_read) = case.release(patch, sha);
    if let Some(d) = rel.delta.as_mut() {
        d.base_sha256 = sha256_hex(&elsewhere);
    }
    let staged = case.stage(rel);
    case.assert_staged_new(&staged);
    assert!(
        !patch_read.load(Ordering::SeqCst),
        "the patch was downloaded"
    );
    assert!(full_read.load(Ordering::SeqCst));
}

#[test]
fn the_base_is_hashed_again_when_the_patch_is_used() {
    // The file listed as the running build changed since a fetcher was told its sha256.
    let case = Case::new("delta-rehash");
    let patch = make_patch(&case.base, &case.new);
    let sha = sha256_hex(&patch);
    let (rel, full_read, patch_read) = case.release(patch, sha);
    case.dir.exe("running", &build(4, 1000));
    let staged = case.stage(rel);
    case.assert_staged_new(&staged);
    assert!(!patch_read.load(Ordering::SeqCst));
    assert!(full_read.load(Ordering::SeqCst));
}

#[test]
fn an_archive_release_ignores_its_patch() {
    let case = Case::new("delta-archive");
    let gz = super::gzip(&case.new);
    let mut rel = release(gz.clone(), Format::Gzip);
    let (full, full_read) = watched(gz);
    let (patch_body, patch_read) = watched(Vec::new());
    rel.body = full;
    rel.delta = Some(Delta {
        base_sha256: sha256_hex(&case.base),
        sha256: sha256_hex(b""),
        signature: None,
        size_hint: None,
        name: "app.gz.from-test.bidiff.zst".into(),
        body: patch_body,
    });
    let staged = case.stage(rel);
    case.assert_staged_new(&staged);
    assert!(!patch_read.load(Ordering::SeqCst));
    assert!(full_read.load(Ordering::SeqCst));
}

/// A signature by `kp` over `data` whose trusted comment is `meta`'s.
fn signed(kp: &minisign::KeyPair, data: &[u8], meta: &crate::release::SignedMetadata) -> String {
    let comment = meta.to_trusted_comment(7, "app").unwrap();
    minisign::sign(
        Some(&kp.pk),
        &kp.sk,
        std::io::Cursor::new(data),
        Some(&comment),
        None,
    )
    .unwrap()
    .into_string()
}

#[test]
fn with_a_key_only_a_patch_signed_for_this_release_and_base_is_used() {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let pk = minisign_verify::PublicKey::from_base64(&kp.pk.to_base64()).unwrap();
    let mut case = Case::new("delta-signed");
    case.opts.public_keys = vec![pk];
    let patch = make_patch(&case.base, &case.new);
    let meta = crate::release::SignedMetadata {
        product: "app".into(),
        version: "1.2.0".into(),
        target: "x86_64-unknown-linux-gnu".into(),
        sha256: sha256_hex(&case.new),
        base: None,
    };
    let patch_meta = |base: &[u8]| crate::release::SignedMetadata {
        sha256: sha256_hex(&patch),
        base: Some(sha256_hex(base)),
        ..meta.clone()
    };
    let signed_release = |patch_signature: Option<String>| {
        let (mut rel, full_read, patch_read) = case.release(patch.clone(), sha256_hex(&patch));
        rel.signature = Some(signed(&kp, &case.new, &meta));
        if let Some(d) = rel.delta.as_mut() {
            d.signature = patch_signature;
        }
        (rel, full_read, patch_read)
    };

    let good = signed(&kp, &patch, &patch_meta(&case.base));
    let (rel, full_read, _) = signed_release(Some(good));
    case.assert_staged_new(&case.stage(rel));
    assert!(
        !full_read.load(Ordering::SeqCst),
        "a good signed patch was not used"
    );

    // Unsigned, or signed for another base: not downloaded, the full release is.
    let other_base = signed(&kp, &patch, &patch_meta(b"another build"));
    for patch_signature in [None, Some(other_base)] {
        let (rel, full_read, patch_read) = signed_release(patch_signature);
        case.assert_staged_new(&case.stage(rel));
        assert!(!patch_read.load(Ordering::SeqCst));
        assert!(full_read.load(Ordering::SeqCst));
    }

    // Signed by another key: downloaded, refused, the full release read.
    let stranger = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let forged = signed(&stranger, &patch, &patch_meta(&case.base));
    let (rel, full_read, _) = signed_release(Some(forged));
    case.assert_staged_new(&case.stage(rel));
    assert!(full_read.load(Ordering::SeqCst));
}
