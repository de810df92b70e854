//! Staging's fast path for a raw release that is a file on this machine, already hashed by the
//! File fetcher: the kernel copies it (`copy_file_range`, or `sendfile`/read-write where that is
//! not supported) and the fetcher's hash stands for the copy's, so the bytes are not read and
//! hashed a second time. That second pass was half of the time from `cp` to the new build's first
//! response for a 23 MiB binary (see BENCHMARKS.md).
//!
//! The fetcher's hash is trusted only if `fstat` after the copy shows the file as it was when it
//! was opened for hashing (inode, size, mtime and ctime, to the nanosecond). A file rewritten
//! since fails that, and the copy is then hashed like any download: the checksum check, not this
//! shortcut, decides what is installed.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::stage::{create_temp, Staged, Writeback};

/// How much one kernel copy call moves: the disk is told to write each step as it is done.
const COPY_STEP: u64 = 4 << 20;
use super::InstallError;
use crate::fetch::{LocalFile, Stamp};

/// Copies `local` into a new temporary file beside `target`, checks it against `expected`, makes
/// it executable by its owner; the disk writes it as it is copied (`install` makes it durable).
pub(super) async fn stage_local(
    identity: &str,
    expected: Option<String>,
    local: LocalFile,
    target: &Path,
    limit: u64,
) -> Result<Staged, InstallError> {
    if local.stamp.size > limit {
        return Err(InstallError::TooLarge {
            what: "the release",
            limit,
        });
    }
    let (file, mut temp) = create_temp(target)?;
    let path = temp.0.clone().unwrap_or_default();
    tracing::debug!(%identity, temp = %path.display(), "staging a release (kernel copy of the local file)");
    let dest = path.clone();
    let copied = tokio::task::spawn_blocking(move || copy_and_hash(local, file, &dest, limit))
        .await
        .map_err(|e| InstallError::io("copying the release", io::Error::other(e.to_string())))??;
    if let Some(expected) = expected {
        if !expected.trim().eq_ignore_ascii_case(&copied.sha256) {
            return Err(InstallError::ChecksumMismatch {
                expected,
                actual: copied.sha256,
            });
        }
    }
    temp.0 = None;
    tracing::info!(%identity, bytes = copied.bytes, sha256 = %copied.sha256, rehashed = copied.rehashed, "staged a release");
    Ok(Staged::new(path, copied.sha256, copied.bytes, copied.stamp))
}

struct Copied {
    bytes: u64,
    sha256: String,
    /// The source changed after the fetcher hashed it, so the copy was hashed.
    rehashed: bool,
    /// The copy as `fstat` saw it once complete.
    stamp: Stamp,
}

fn copy_and_hash(
    local: LocalFile,
    mut dest: File,
    dest_path: &Path,
    limit: u64,
) -> Result<Copied, InstallError> {
    let LocalFile {
        file: mut source,
        sha256,
        stamp,
    } = local;
    let ctx = |what: &str, e| InstallError::io(format!("{what} {}", dest_path.display()), e);
    // The descriptor shares its offset with the fetcher's body, which nobody reads: start over.
    source
        .seek(SeekFrom::Start(0))
        .map_err(|e| InstallError::io("rewinding the release file", e))?;
    // std's copy between two files is copy_file_range, with sendfile and read/write fallbacks;
    // in steps, so that the disk writes each one while the next is copied.
    let mut writeback = Writeback::new();
    let mut bytes = 0u64;
    loop {
        let step = io::copy(&mut (&mut source).take(COPY_STEP), &mut dest)
            .map_err(|e| ctx("writing the new binary to", e))?;
        bytes += step;
        if bytes > limit {
            return Err(InstallError::TooLarge {
                what: "the release",
                limit,
            });
        }
        writeback.advance(&dest, bytes, step == 0);
        if step == 0 {
            break;
        }
    }
    let unchanged = source
        .metadata()
        .map(|m| Stamp::of(&m) == stamp && bytes == stamp.size)
        .unwrap_or(false);
    let (sha256, rehashed) = match unchanged {
        true => (sha256, false),
        false => {
            tracing::debug!(path = %dest_path.display(), "the release file changed after it was hashed; hashing the copy");
            (hash_file(dest_path).map_err(|e| ctx("hashing", e))?, true)
        }
    };
    dest.set_permissions(std::fs::Permissions::from_mode(super::STAGED_MODE))
        .map_err(|e| ctx("making executable", e))?;
    let stamp = Stamp::of(&dest.metadata().map_err(|e| ctx("reading", e))?);
    Ok(Copied {
        bytes,
        sha256,
        rehashed,
        stamp,
    })
}

/// Hashes the staged copy (written through another descriptor; the page cache makes that moot).
fn hash_file(path: &Path) -> io::Result<String> {
    let mut reader = io::BufReader::with_capacity(64 * 1024, File::open(path)?);
    let mut hasher = Sha256::new();
    io::copy(&mut reader, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}
