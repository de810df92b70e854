//! Staging: a release's body streamed into a temporary file beside the target binary, unpacked on
//! the fly, hashed and verified as it passes. Only a fully checked file survives; every error and a
//! dropped future remove what was written.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use minisign_verify::{PublicKey, Signature, StreamVerifier};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::unpack::{self, BinaryWriter, ChannelReader};
use super::InstallError;
use crate::fetch::{Format, Origin, Release, Stamp};

const CHUNK: usize = 64 * 1024;

/// How many chunks may wait for the unpacker: enough to keep both sides busy, small enough that
/// memory stays bounded (4 × 64 KiB) whatever the release size.
const CHANNEL_CHUNKS: usize = 4;

/// What staging accepts.
#[derive(Debug, Clone)]
pub(crate) struct StageOptions {
    /// The most bytes accepted, downloaded or unpacked: a runaway or malicious source cannot fill
    /// the disk.
    pub(crate) max_bytes: u64,
    /// Refuse releases that came over the network without a checksum.
    pub(crate) require_checksum_for_remote: bool,
    /// When any is set, every release must carry a minisign signature by one of these keys.
    pub(crate) public_keys: Vec<PublicKey>,
    /// The longest a download may take, however steadily bytes trickle in: the upgrade lock is
    /// held meanwhile.
    pub(crate) deadline: Duration,
    /// Where the build a patch applies to may be found ([`super::delta::base_candidates`]).
    pub(crate) delta_bases: Vec<PathBuf>,
}

/// The default of [`StageOptions::deadline`]: a 1 GiB release (the default size limit) at
/// 600 KB/s.
pub(crate) const DEFAULT_DOWNLOAD_DEADLINE: Duration = Duration::from_secs(30 * 60);

impl Default for StageOptions {
    fn default() -> Self {
        StageOptions {
            max_bytes: 1 << 30,
            require_checksum_for_remote: true,
            public_keys: Vec::new(),
            deadline: DEFAULT_DOWNLOAD_DEADLINE,
            delta_bases: super::delta::base_candidates(None),
        }
    }
}

/// A verified executable in a temporary file beside the target, removed on drop unless it was
/// installed ([`keep`](Self::keep)).
#[derive(Debug)]
pub(crate) struct Staged {
    /// The temporary file holding the final executable (mode [`STAGED_MODE`](super::STAGED_MODE)).
    pub(crate) path: PathBuf,
    /// Hex sha256 of the release file as published (the archive, for archives).
    pub(crate) asset_sha256: String,
    /// Hex sha256 of the executable itself: what [`super::file_sha256`] of the installed target
    /// will say, and so what a fetcher is told is current.
    pub(crate) binary_sha256: String,
    /// Bytes downloaded.
    pub(crate) bytes: u64,
    /// Bytes of the executable.
    pub(crate) binary_bytes: u64,
    /// The staged file as `fstat` saw it once complete: the install trusts `binary_sha256` for
    /// the installed file only while `stat` still shows this very file, unchanged.
    pub(crate) stamp: Option<Stamp>,
    armed: bool,
}

impl Staged {
    /// A raw executable staged at `path`, removed on drop until [`keep`](Self::keep).
    pub(super) fn new(path: PathBuf, sha256: String, bytes: u64, stamp: Stamp) -> Self {
        Staged {
            path,
            asset_sha256: sha256.clone(),
            binary_sha256: sha256,
            bytes,
            binary_bytes: bytes,
            stamp: Some(stamp),
            armed: true,
        }
    }

    /// Disarms the removal: the file has been renamed into place or is otherwise taken care of.
    pub(crate) fn keep(&mut self) {
        self.armed = false;
    }

    /// Adopts an existing file as staged, for tests of the later stages.
    #[cfg(test)]
    pub(crate) fn adopt(path: PathBuf) -> Self {
        Staged {
            path,
            asset_sha256: String::new(),
            binary_sha256: String::new(),
            bytes: 0,
            binary_bytes: 0,
            stamp: None,
            armed: true,
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.armed {
            remove_quietly(&self.path);
        }
    }
}

/// Removes the temporary file while staging is under way.
pub(super) struct TempGuard(pub(super) Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            remove_quietly(path);
        }
    }
}

fn remove_quietly(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "removed a staged release"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a staged release")
        }
    }
}

/// Streams `release` into a new temporary file in `target`'s directory (same filesystem, so the
/// install is an atomic rename) and verifies it.
///
/// Checks that need no download (size hint over the limit, missing checksum, missing or unreadable
/// signature) fail before anything is written. After the stream, a short transfer is reported
/// before a checksum mismatch, and both before archive errors, which they would explain.
///
/// A release with a [`Delta`](crate::fetch::Delta) is rebuilt from its patch when that works
/// ([`super::delta`]); when it does not, for whatever reason, the full release is read instead.
pub(crate) async fn stage(
    mut release: Release,
    target: &Path,
    opts: &StageOptions,
) -> Result<Staged, InstallError> {
    if let Some(delta) = release.delta.take() {
        let patch = delta.name.clone();
        let signature = decode_signature(opts, release.signature.as_deref())?;
        let rebuilt = super::delta::stage_from_patch(
            delta,
            &release.identity,
            &release.format,
            release.sha256.as_deref(),
            signature.as_ref(),
            target,
            opts,
        )
        .await;
        match rebuilt {
            Ok(staged) => return Ok(staged),
            Err(
                e @ (super::delta::DeltaSkipped::Failed(_)
                | super::delta::DeltaSkipped::Unvouched(_)),
            ) => tracing::warn!(
                identity = %release.identity, %patch, error = %e,
                "the release's patch did not work; downloading the full release"
            ),
            Err(e) => tracing::info!(
                identity = %release.identity, %patch, reason = %e,
                "the release's patch does not apply here; downloading the full release"
            ),
        }
    }
    stage_full(release, target, opts).await
}

/// The release's signature, decoded, when keys are configured (`None` without keys: nothing
/// checks it).
fn decode_signature(
    opts: &StageOptions,
    signature: Option<&str>,
) -> Result<Option<Signature>, InstallError> {
    match (opts.public_keys.is_empty(), signature) {
        (true, _) => Ok(None),
        (false, None) => Err(InstallError::Unsigned),
        (false, Some(text)) => Signature::decode(text)
            .map(Some)
            .map_err(|e| InstallError::BadSignature(format!("cannot read the signature: {e}"))),
    }
}

/// Stages the release's published file itself (see [`stage`]).
pub(super) async fn stage_full(
    release: Release,
    target: &Path,
    opts: &StageOptions,
) -> Result<Staged, InstallError> {
    // A release counts as local only with the File fetcher's proof; see `Origin`.
    let origin = release.vouched_origin();
    let Release {
        identity,
        sha256: expected,
        signature,
        size_hint,
        format,
        origin: _,
        mut body,
        local_file,
        rollout_percent: _,
        version: _,
        source: _,
        delta: _,
    } = release;
    let limit = opts.max_bytes;
    if size_hint.is_some_and(|n| n > limit) {
        return Err(InstallError::TooLarge {
            what: "the release",
            limit,
        });
    }
    if expected.is_none() && origin == Origin::Remote && opts.require_checksum_for_remote {
        return Err(InstallError::MissingChecksum);
    }
    let signature = decode_signature(opts, signature.as_deref())?;
    let mut verifier = match &signature {
        Some(sig) => Some(start_verifier(&opts.public_keys, sig)?),
        None => None,
    };

    if let (Format::Raw, None, Some(local)) = (&format, &verifier, local_file) {
        // A signature needs the bytes read, and an archive unpacked: those take the stream.
        drop(body);
        return super::local::stage_local(&identity, expected, local, target, limit).await;
    }

    let (file, temp) = create_temp(target)?;
    let path = temp.0.clone().unwrap_or_default();
    tracing::debug!(%identity, temp = %path.display(), ?format, "staging a release");
    let raw = format == Format::Raw;
    let writer = BinaryWriter::new(file, path.clone(), !raw, limit);
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let unpacker =
        tokio::task::spawn_blocking(move || unpack::unpack(format, ChannelReader::new(rx), writer));

    let mut asset_hash = Sha256::new();
    let mut received = 0;
    let pumping = pump(
        &mut body,
        tx,
        &mut asset_hash,
        verifier.as_mut(),
        limit,
        &mut received,
    );
    let pumped = match tokio::time::timeout(opts.deadline, pumping).await {
        Ok(pumped) => pumped,
        Err(_) => Err(InstallError::DeadlineExceeded {
            deadline: opts.deadline,
            received,
        }),
    };
    // The sender is gone by now, so the unpacker sees EOF and returns promptly; waiting for it
    // means no thread still writes to the file once this function has returned.
    let unpacked = unpacker.await.map_err(|e| {
        InstallError::Unpack(format!("the unpacking thread stopped unexpectedly: {e}"))
    });
    let pumped = pumped?;
    if pumped.unpacker_quit {
        return Err(unpacked?.err().unwrap_or_else(|| {
            InstallError::Unpack("the unpacker stopped before the end of the release".into())
        }));
    }
    if let Some(expected) = size_hint.filter(|&n| n > pumped.received) {
        return Err(InstallError::Truncated {
            expected,
            received: pumped.received,
        });
    }
    let asset_sha256 = hex::encode(asset_hash.finalize());
    if let Some(expected) = expected {
        if !expected.trim().eq_ignore_ascii_case(&asset_sha256) {
            return Err(InstallError::ChecksumMismatch {
                expected,
                actual: asset_sha256,
            });
        }
    }
    if let Some(verifier) = verifier.as_mut() {
        verifier
            .finalize()
            .map_err(|e| InstallError::BadSignature(e.to_string()))?;
    }
    let unpacked = unpacked??;
    let mut temp = temp;
    temp.0 = None;
    tracing::info!(%identity, bytes = pumped.received, sha256 = %asset_sha256, "staged a release");
    Ok(Staged {
        path,
        binary_sha256: unpacked.sha256.unwrap_or_else(|| asset_sha256.clone()),
        asset_sha256,
        bytes: pumped.received,
        binary_bytes: unpacked.bytes,
        stamp: Some(unpacked.stamp),
        armed: true,
    })
}

/// A stream verifier for `signature` with the configured key that made it (the signature names
/// its key's id, so at most one matches).
pub(super) fn start_verifier<'a>(
    keys: &'a [PublicKey],
    signature: &'a Signature,
) -> Result<StreamVerifier<'a>, InstallError> {
    let mut last = None;
    for key in keys {
        match key.verify_stream(signature) {
            Ok(verifier) => return Ok(verifier),
            Err(e) => last = Some(e),
        }
    }
    let why = last.map_or_else(|| "no key is configured".to_string(), |e| e.to_string());
    Err(InstallError::BadSignature(format!(
        "{why} (a signature by a key that is not configured, or a legacy non-prehashed one: sign \
         with a current minisign)"
    )))
}

struct Pumped {
    received: u64,
    /// The unpacker hung up before the end: it failed, and its error is the answer.
    unpacker_quit: bool,
}

/// Reads the body to its end, hashing every byte and handing it to the unpacker.
async fn pump(
    body: &mut (impl AsyncRead + Unpin),
    tx: mpsc::Sender<Vec<u8>>,
    hash: &mut Sha256,
    mut verifier: Option<&mut StreamVerifier<'_>>,
    limit: u64,
    received: &mut u64,
) -> Result<Pumped, InstallError> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match body.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(InstallError::DownloadFailed(e)),
        };
        *received += n as u64;
        if *received > limit {
            return Err(InstallError::TooLarge {
                what: "the release",
                limit,
            });
        }
        let bytes = &buf[..n];
        hash.update(bytes);
        if let Some(v) = verifier.as_deref_mut() {
            v.update(bytes);
        }
        if tx.send(bytes.to_vec()).await.is_err() {
            return Ok(Pumped {
                received: *received,
                unpacker_quit: true,
            });
        }
    }
    Ok(Pumped {
        received: *received,
        unpacker_quit: false,
    })
}

/// Starts writing a staged file to disk while it is still being written, a few MiB at a time
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which queues the pages and does not wait): the disk
/// then works while the copy, download or unpacking goes on, instead of all at the `fsync` that
/// must precede the install's rename. On the bench's 22.9 MiB build that `fsync` alone took
/// 15–18 ms when the whole file was left for it. Linux only; elsewhere the `fsync` does it all.
pub(super) struct Writeback {
    /// Everything before this offset has been queued.
    queued: u64,
}

/// How much is written before the next range is queued: large enough that the calls cost
/// nothing, small enough that the disk starts early.
const WRITEBACK_STEP: u64 = 4 << 20;

impl Writeback {
    pub(super) fn new() -> Self {
        Writeback { queued: 0 }
    }

    /// The file now holds `written` bytes: queues what is new once a step's worth has piled up
    /// (or, with `last`, whatever is left).
    pub(super) fn advance(&mut self, file: &File, written: u64, last: bool) {
        let pending = written.saturating_sub(self.queued);
        if pending == 0 || (pending < WRITEBACK_STEP && !last) {
            return;
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::fd::AsRawFd;
            let (Ok(from), Ok(len)) = (i64::try_from(self.queued), i64::try_from(pending)) else {
                return;
            };
            // SAFETY: a descriptor this function borrows; no memory is passed. A failure only
            // leaves the work to the `fsync`.
            unsafe {
                libc::sync_file_range(file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE)
            };
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let _ = file;
        self.queued = written;
    }
}

/// Makes the staged file durable on a blocking thread, to be awaited beside its test run: the
/// disk's work then overlaps the test run, and the `fsync` that `install` does before its rename
/// (which alone guarantees durability, and still runs) finds nothing left to write. On the
/// bench's 22.9 MiB build, with [`Writeback`] during the copy, test run + install went from
/// 18 ms (the whole `fsync` on the path) to 10 ms. A failure is only logged: `install`'s own `fsync` reports it where it matters.
pub(crate) async fn flush(staged: &Staged) {
    let path = staged.path.clone();
    let synced = tokio::task::spawn_blocking(move || {
        let r = File::open(&path).and_then(|f| f.sync_all());
        (path, r)
    })
    .await;
    if let Ok((path, Err(e))) = synced {
        tracing::debug!(path = %path.display(), error = %e, "could not flush the staged file ahead of the install; the install's fsync will");
    }
}

/// Creates `.<name>.upshift-<pid>-<random>.tmp` beside `target`, exclusively (never follows or
/// reuses a planted file) and private until it is complete.
pub(super) fn create_temp(target: &Path) -> Result<(File, TempGuard), InstallError> {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upshift".into());
    let mut last = None;
    for _ in 0..8 {
        let path = dir.join(format!(
            ".{name}.upshift-{}-{}.tmp",
            std::process::id(),
            &super::random_hex()[..16]
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&path)
        {
            Ok(file) => return Ok((file, TempGuard(Some(path)))),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    Err(InstallError::io(
        format!(
            "creating a temporary file for the new binary in {} (the directory must be writable \
             by this process)",
            dir.display()
        ),
        last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)),
    ))
}
