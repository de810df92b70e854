//! Staging a release from a patch (a delta release, [`Delta`]): the patch is staged and verified
//! like a release file of its own, then applied against a build this machine runs, mapped
//! read-only, and the rebuilt binary is hashed and signature-checked as it is written, exactly as
//! a full download would be. Any failure is reported to the caller, which falls back to the full
//! release: a patch only ever saves bytes, it never decides what is trusted.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};

use minisign_verify::{PublicKey, Signature};
use sha2::{Digest, Sha256};

use super::stage::{create_temp, StageOptions, Staged};
use super::unpack::BinaryWriter;
use super::InstallError;
use crate::delta::Mapped;
use crate::fetch::{Delta, Format, Origin, Release};

/// Where the build a patch applies to is looked for: the master's own image, then the serving
/// worker's. Both are files a running process executes, so nobody can write to them (`ETXTBSY`)
/// while they are mapped; the binary at the target path has no such guarantee.
pub(crate) fn base_candidates(serving_pid: Option<u32>) -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("/proc/self/exe")];
    paths.extend(serving_pid.map(|pid| PathBuf::from(format!("/proc/{pid}/exe"))));
    paths
}

/// Why a patch was not used; the caller logs it and reads the full release.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeltaSkipped {
    #[error("the release is packaged ({0:?}); a patch rebuilds only a raw binary")]
    NotRaw(Format),
    #[error("the release has no sha256 to check the rebuilt binary against")]
    NoChecksum,
    #[error("no build this machine runs has the patch's base sha256 {0}")]
    NoBase(String),
    #[error("a minisign key is configured and the patch has no signature")]
    Unsigned,
    #[error("{0}")]
    Unvouched(String),
    #[error("{0}")]
    Failed(InstallError),
}

/// Stages the release `delta` rebuilds: `expected` is the full release's sha256, `signature`
/// its decoded signature when keys are configured.
pub(super) async fn stage_from_patch(
    delta: Delta,
    identity: &str,
    format: &Format,
    expected: Option<&str>,
    signature: Option<&Signature>,
    target: &Path,
    opts: &StageOptions,
) -> Result<Staged, DeltaSkipped> {
    if *format != Format::Raw {
        return Err(DeltaSkipped::NotRaw(format.clone()));
    }
    let expected = expected.ok_or(DeltaSkipped::NoChecksum)?;
    if let Some(release_signature) = signature {
        // With a key, the patch is signed like a release, bound to this release and base.
        let text = delta.signature.as_deref().ok_or(DeltaSkipped::Unsigned)?;
        let patch_signature = Signature::decode(text)
            .map_err(|e| DeltaSkipped::Unvouched(format!("cannot read its signature: {e}")))?;
        crate::release::vouch_patch(
            release_signature.trusted_comment(),
            patch_signature.trusted_comment(),
            &delta.base_sha256,
            &delta.sha256,
        )
        .map_err(DeltaSkipped::Unvouched)?;
    }
    // The base first: without it, downloading the patch would be wasted.
    let base = find_base(&opts.delta_bases, &delta.base_sha256)
        .ok_or_else(|| DeltaSkipped::NoBase(delta.base_sha256.clone()))?;
    let patch = stage_patch(delta, identity, target, opts)
        .await
        .map_err(DeltaSkipped::Failed)?;
    let (file, temp) = create_temp(target).map_err(DeltaSkipped::Failed)?;
    let path = temp.0.clone().unwrap_or_default();
    let patch_path = patch.path.clone();
    let keys = opts.public_keys.clone();
    let signature = signature.cloned();
    let limit = opts.max_bytes;
    let rebuilt = tokio::task::spawn_blocking(move || {
        let out = BinaryWriter::new(file, path.clone(), true, limit);
        rebuild(&base, &patch_path, out, limit, &keys, signature.as_ref())
    })
    .await
    .map_err(|e| {
        DeltaSkipped::Failed(InstallError::Unpack(format!(
            "the patching thread stopped unexpectedly: {e}"
        )))
    })?
    .map_err(DeltaSkipped::Failed)?;
    drop(patch);
    let (unpacked, patch_bytes) = rebuilt;
    let sha256 = unpacked.sha256.clone().unwrap_or_default();
    if !expected.trim().eq_ignore_ascii_case(&sha256) {
        return Err(DeltaSkipped::Failed(InstallError::ChecksumMismatch {
            expected: expected.to_string(),
            actual: sha256,
        }));
    }
    let mut temp = temp;
    let path = temp.0.take().unwrap_or_default();
    tracing::info!(%identity, patch_bytes, bytes = unpacked.bytes, %sha256, "staged a release from a patch");
    let mut staged = Staged::new(path, sha256, unpacked.bytes, unpacked.stamp);
    staged.bytes = patch_bytes;
    Ok(staged)
}

/// The first candidate whose content hashes to `sha256`, mapped. Hashed from the mapping itself,
/// so that the bytes the patch is applied to are the bytes that were checked.
fn find_base(candidates: &[PathBuf], sha256: &str) -> Option<Mapped> {
    candidates.iter().find_map(|path| {
        let file = File::open(path).ok()?;
        let mapped = Mapped::new(&file).ok()?;
        let actual = hex::encode(Sha256::digest(mapped.as_slice()));
        if actual.eq_ignore_ascii_case(sha256) {
            Some(mapped)
        } else {
            tracing::debug!(path = %path.display(), %actual, wanted = %sha256, "not the patch's base");
            None
        }
    })
}

/// Downloads the patch into a staged file beside the target, verified against its own checksum
/// and (with keys configured) its own signature, before a byte of it is applied.
async fn stage_patch(
    delta: Delta,
    identity: &str,
    target: &Path,
    opts: &StageOptions,
) -> Result<Staged, InstallError> {
    let patch = Release {
        identity: format!("{identity} (patch {})", delta.name),
        sha256: Some(delta.sha256),
        signature: delta.signature,
        size_hint: delta.size_hint,
        format: Format::Raw,
        origin: Origin::Remote,
        body: delta.body,
        local_file: None,
        rollout_percent: None,
        version: None,
        source: None,
        delta: None,
    };
    // Remote with a sha256 always: the checksum rule holds whatever the options say.
    super::stage::stage_full(patch, target, opts).await
}

/// Applies the staged patch at `patch_path` to `base`, into `out`, updating the release's
/// signature check with every rebuilt byte. Returns what was written and the patch's size.
fn rebuild(
    base: &Mapped,
    patch_path: &Path,
    out: BinaryWriter,
    limit: u64,
    keys: &[PublicKey],
    signature: Option<&Signature>,
) -> Result<(super::unpack::Unpacked, u64), InstallError> {
    let io_error = |what: &str, e| InstallError::io(format!("{what} {}", patch_path.display()), e);
    let patch_file = File::open(patch_path).map_err(|e| io_error("opening the patch", e))?;
    let patch_bytes = patch_file
        .metadata()
        .map_err(|e| io_error("reading the patch", e))?
        .len();
    let mut verifier = match signature {
        Some(sig) => Some(super::stage::start_verifier(keys, sig)?),
        None => None,
    };
    let mut sink = Rebuilt {
        out,
        verifier: verifier.as_mut(),
        error: None,
    };
    let mut reader = BufReader::new(patch_file);
    let applied = crate::delta::apply(base.as_slice(), &mut reader, &mut sink, limit);
    let Rebuilt { out, error, .. } = sink;
    if let Some(e) = error {
        // The writer's own error (the disk, the size limit) explains the codec's.
        return Err(e);
    }
    applied.map_err(|e| InstallError::Unpack(format!("applying the patch: {e}")))?;
    if let Some(v) = verifier.as_mut() {
        v.finalize()
            .map_err(|e| InstallError::BadSignature(e.to_string()))?;
    }
    Ok((out.finish()?, patch_bytes))
}

/// The rebuilt binary's way to disk: every byte to the release's signature check, then to the
/// staged file (hashed, counted against the size limit).
struct Rebuilt<'a, 'v> {
    out: BinaryWriter,
    verifier: Option<&'v mut minisign_verify::StreamVerifier<'a>>,
    error: Option<InstallError>,
}

impl Write for Rebuilt<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(v) = self.verifier.as_deref_mut() {
            v.update(buf);
        }
        match self.out.write_chunk(buf) {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                let text = e.to_string();
                self.error = Some(e);
                Err(io::Error::other(text))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
