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
//!
//! Usually the copy exists before staging starts: told where staging happens, the File fetcher
//! has the kernel copy the file beside the binary while it hashes it ([`hash_copying`]), so the
//! hash, the copy and the disk's write-back overlap, and staging only adopts the copy. On the
//! bench's 22.9 MiB build that took publish → first response from 48 ms to 36 ms (median of 20).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::stage::{create_temp, Staged, TempGuard, Writeback};

/// How much one kernel copy call moves: the disk is told to write each step as it is done.
const COPY_STEP: u64 = 4 << 20;
use super::InstallError;
use crate::fetch::{LocalFile, StagingArea, Stamp};

/// How much the File fetcher reads at a time while it hashes.
const PASS_CHUNK: usize = 256 * 1024;

/// A copy of a local release that the File fetcher wrote beside the binary in the same pass that
/// hashed the file, for staging to adopt instead of copying the file again. Its bytes are the
/// bytes that were hashed, whatever happened to the source meanwhile. Removed when dropped unless
/// adopted (a release deferred, refused or replaced leaves nothing behind).
pub(crate) struct PreStaged {
    file: File,
    guard: TempGuard,
    target: PathBuf,
    bytes: u64,
    /// The copy as `fstat` saw it when complete: anything touching it since voids it.
    stamp: Stamp,
}

/// Hashes `source` from its offset (the start of a file just opened); with an `area`, a second thread meanwhile has the kernel copy
/// the same file into a new temporary file there (see [`PreStaged`]), writing it to disk as it
/// goes. The two do not wait for each other: creating a file can stall for the journal (4–11 ms
/// measured right after a 23 MiB publish in the same directory), and the disk writes while the
/// hash runs. The copy is trusted to hold the hashed bytes only if `fstat` shows the source as
/// it was before the hash (`stamp`), as for staging's own kernel copy; otherwise, or when it
/// cannot be made (no room, no permission, more than the area accepts), it is dropped and
/// staging copies (and hashes) as before, reporting what is wrong.
pub(crate) fn hash_copying(
    source: &mut File,
    stamp: &Stamp,
    area: Option<&StagingArea>,
) -> io::Result<(String, Option<PreStaged>)> {
    let Some(area) = area.filter(|a| stamp.size <= a.max_bytes) else {
        return Ok((hash_from(source)?, None));
    };
    let copied = std::thread::scope(|scope| {
        let from: &File = source;
        let copier = scope.spawn(move || copy_beside(from, area));
        let hashed = hash_from(&mut &*from);
        (hashed, copier.join().ok().flatten())
    });
    let (sha256, copy) = (copied.0?, copied.1);
    let unchanged = source.metadata().is_ok_and(|m| Stamp::of(&m) == *stamp);
    let copy = copy.filter(|c| unchanged && c.bytes == stamp.size);
    Ok((sha256, copy))
}

/// sha256 of `source` from its current offset to its end.
fn hash_from(mut source: impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; PASS_CHUNK];
    loop {
        match source.read(&mut buf) {
            Ok(0) => return Ok(hex::encode(hasher.finalize())),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The copying thread: `copy_file_range` with its own offset (the hash reads through the shared
/// one), in steps, each queued for write-back. `None` once it had to give up.
fn copy_beside(from: &File, area: &StagingArea) -> Option<PreStaged> {
    use std::os::fd::AsRawFd;
    let give_up = |e: &dyn std::fmt::Display| {
        tracing::debug!(error = %e, "no copy while hashing; staging will copy the file");
        None
    };
    let (file, guard) = match create_temp(&area.target) {
        Ok(created) => created,
        Err(e) => return give_up(&e),
    };
    let mut writeback = Writeback::new();
    let mut offset: libc::loff_t = 0;
    loop {
        // SAFETY: two descriptors borrowed for the call; the kernel writes only `offset`.
        let n = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut offset,
                file.as_raw_fd(),
                std::ptr::null_mut(),
                COPY_STEP as usize,
                0,
            )
        };
        match n {
            0 => break,
            n if n > 0 => {}
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return give_up(&e); // EXDEV, ENOSYS, a full disk: staging's copy handles them
            }
        }
        let bytes = offset as u64;
        if bytes > area.max_bytes {
            return give_up(&"the file is larger than a release may be");
        }
        writeback.advance(&file, bytes, false);
    }
    let bytes = offset as u64;
    writeback.advance(&file, bytes, true);
    let stamp = match file.metadata() {
        Ok(m) => Stamp::of(&m),
        Err(e) => return give_up(&e),
    };
    Some(PreStaged {
        file,
        guard,
        target: area.target.clone(),
        bytes,
        stamp,
    })
}

impl PreStaged {
    /// The copy as staging's result, if it was made for this `target`, fits `limit` and is as it
    /// was written; `None` drops (and removes) it.
    fn adopt(mut self, target: &Path, limit: u64, sha256: &str) -> Option<Staged> {
        let path = self.guard.0.clone()?;
        let untouched = self
            .file
            .metadata()
            .is_ok_and(|m| Stamp::of(&m) == self.stamp);
        if self.target != target || self.bytes > limit || !untouched {
            tracing::debug!(path = %path.display(), "the copy made while hashing does not fit this staging; copying again");
            return None;
        }
        self.file
            .set_permissions(std::fs::Permissions::from_mode(super::STAGED_MODE))
            .ok()?;
        let stamp = Stamp::of(&self.file.metadata().ok()?);
        self.guard.0 = None;
        Some(Staged::new(path, sha256.to_string(), self.bytes, stamp))
    }
}

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
    let mut local = local;
    if let Some(pre) = local.copy.take() {
        if let Some(staged) = pre.adopt(target, limit, &local.sha256) {
            check_expected(expected, &staged.binary_sha256)?;
            tracing::info!(%identity, bytes = staged.bytes, sha256 = %staged.binary_sha256, "staged a release (copied while hashing)");
            return Ok(staged);
        }
    }
    let (file, mut temp) = create_temp(target)?;
    let path = temp.0.clone().unwrap_or_default();
    tracing::debug!(%identity, temp = %path.display(), "staging a release (kernel copy of the local file)");
    let dest = path.clone();
    let copied = tokio::task::spawn_blocking(move || copy_and_hash(local, file, &dest, limit))
        .await
        .map_err(|e| InstallError::io("copying the release", io::Error::other(e.to_string())))??;
    check_expected(expected, &copied.sha256)?;
    temp.0 = None;
    tracing::info!(%identity, bytes = copied.bytes, sha256 = %copied.sha256, rehashed = copied.rehashed, "staged a release");
    Ok(Staged::new(path, copied.sha256, copied.bytes, copied.stamp))
}

fn check_expected(expected: Option<String>, actual: &str) -> Result<(), InstallError> {
    match expected {
        Some(expected) if !expected.trim().eq_ignore_ascii_case(actual) => {
            Err(InstallError::ChecksumMismatch {
                expected,
                actual: actual.to_string(),
            })
        }
        _ => Ok(()),
    }
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
        copy: _,
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
