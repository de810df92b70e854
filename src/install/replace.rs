//! Putting a staged binary in place, atomically and durably, and putting the previous one back.
//!
//! The target path names a complete executable at every instant: the previous binary is kept by
//! giving its inode a second name (`<target>.prev`), never by renaming the target away, and the
//! new one arrives by a single `rename(2)` over the target. The directory is fsynced afterwards,
//! so a power cut leaves either the old or the new binary, never a missing or partial one.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{InstallError, Staged, NEW_TARGET_MODE};

/// The binary to replace: the file a symlink points to, so that the link itself stays (a deploy
/// layout's `current -> releases/v3/app` keeps working and now names the new content).
pub(crate) fn resolve_target(invoked: &Path) -> io::Result<PathBuf> {
    if fs::symlink_metadata(invoked)?.file_type().is_symlink() {
        fs::canonicalize(invoked)
    } else {
        Ok(invoked.to_path_buf())
    }
}

/// Where the previous binary is kept.
pub(crate) fn prev_path(target: &Path) -> PathBuf {
    with_suffix(target, ".prev")
}

/// Installs `staged` as `target`, keeping the current target as `<target>.prev` unless
/// `keep_prev` says `.prev` already holds the binary to fall back to (the current one has not
/// proven itself yet: `.prev` is always the last binary that did).
///
/// On error the target is unchanged and the staged file is removed. `.prev` may already name the
/// current binary then, which is harmless.
pub(crate) fn install(
    mut staged: Staged,
    target: &Path,
    keep_prev: bool,
) -> Result<(), InstallError> {
    let shown = target.display();
    let current = match fs::metadata(target) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(InstallError::io(format!("reading {shown}"), e)),
    };
    match &current {
        Some(meta) => copy_owner_and_mode(&staged.path, meta)?,
        None => fs::set_permissions(&staged.path, fs::Permissions::from_mode(NEW_TARGET_MODE))
            .map_err(|e| {
                InstallError::io(format!("setting the mode of {}", staged.path.display()), e)
            })?,
    }
    File::open(&staged.path)
        .and_then(|f| f.sync_all())
        .map_err(|e| InstallError::io(format!("flushing {}", staged.path.display()), e))?;
    if let Some(meta) = current.as_ref().filter(|_| !keep_prev) {
        keep_previous(target, meta)?;
    }
    retry_busy(|| fs::rename(&staged.path, target))
        .map_err(|e| InstallError::io(format!("renaming the new binary over {shown}"), e))?;
    staged.keep();
    sync_dir(target);
    tracing::info!(target = %shown, sha256 = %staged.binary_sha256, "installed the new binary");
    Ok(())
}

/// Puts the build held open by `from` (whose sha256 the caller has checked) back at `target`,
/// atomically: copied to a temporary name beside it with the current target's mode and owner,
/// flushed, renamed over.
pub(crate) fn restore_from(from: &File, target: &Path) -> Result<(), InstallError> {
    let shown = target.display();
    let tmp = with_suffix(
        target,
        &format!(".rollback-{}.tmp", &super::random_hex()[..12]),
    );
    let guard = Leftover(&tmp);
    let copied = (|| {
        let mut src = from.try_clone()?;
        io::Seek::seek(&mut src, io::SeekFrom::Start(0))?;
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        io::copy(&mut src, &mut out)?;
        out.sync_all()
    })();
    copied.map_err(|e| {
        InstallError::io(format!("copying the serving build to {}", tmp.display()), e)
    })?;
    let mode_of = fs::metadata(target).or_else(|_| from.metadata());
    let meta = mode_of.map_err(|e| InstallError::io(format!("reading {shown}"), e))?;
    copy_owner_and_mode(&tmp, &meta)?;
    retry_busy(|| fs::rename(&tmp, target)).map_err(|e| {
        InstallError::io(format!("renaming the serving build back over {shown}"), e)
    })?;
    std::mem::forget(guard);
    sync_dir(target);
    Ok(())
}

/// Hex sha256 of a file, read in chunks.
#[cfg(test)]
pub(crate) fn file_sha256(path: &Path) -> io::Result<String> {
    crate::release::disk::hash_from_start(&File::open(path)?)
}

/// The new binary gets the current one's mode, and its owner when we are root (chown first: it
/// clears set-id bits). Not being allowed to chown is expected when not root and ignored.
fn copy_owner_and_mode(staged: &Path, current: &fs::Metadata) -> Result<(), InstallError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        match std::os::unix::fs::chown(staged, Some(current.uid()), Some(current.gid())) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                tracing::debug!(error = %e, "cannot give the new binary the old one's owner")
            }
            Err(e) => {
                return Err(InstallError::io(
                    format!("setting the owner of {}", staged.display()),
                    e,
                ))
            }
        }
    }
    fs::set_permissions(staged, fs::Permissions::from_mode(current.mode() & 0o7777))
        .map_err(|e| InstallError::io(format!("setting the mode of {}", staged.display()), e))
}

/// Gives the current target's inode the name `<target>.prev` (via a fresh temporary name, so an
/// older `.prev` is replaced atomically). Never through a symlink: a `.prev` that is a link is
/// replaced, not followed, and the temporary name is random and created exclusively, so nothing
/// planted beside the binary can steer where the previous build goes.
fn keep_previous(target: &Path, current: &fs::Metadata) -> Result<(), InstallError> {
    let prev = prev_path(target);
    if fs::symlink_metadata(&prev).is_ok_and(|p| p.is_file() && same_file(&p, current)) {
        // After a rollback, `.prev` and the target are one inode, and rename(2) between two
        // names of one file does nothing, which would leave the temporary name behind.
        return Ok(());
    }
    let tmp = with_suffix(target, &format!(".prev-{}.tmp", &super::random_hex()[..12]));
    let guard = Leftover(&tmp);
    link_or_copy(target, &tmp)?;
    fs::rename(&tmp, &prev).map_err(|e| {
        InstallError::io(
            format!("keeping the previous binary as {}", prev.display()),
            e,
        )
    })?;
    std::mem::forget(guard);
    Ok(())
}

/// A second name for `from` at `to`: a hard link, or where links are not possible (another
/// filesystem, a filesystem without them, a hardened `protected_hardlinks`) a durable copy.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), InstallError> {
    let linked = fs::hard_link(from, to);
    let Err(e) = linked else {
        return Ok(());
    };
    let fallback = matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::EPERM | libc::EMLINK | libc::ENOTSUP | libc::EACCES)
    );
    if !fallback {
        return Err(InstallError::io(
            format!("linking {} to {}", from.display(), to.display()),
            e,
        ));
    }
    tracing::debug!(error = %e, "cannot hard-link the previous binary; copying it");
    let copied = (|| {
        let mut src = File::open(from)?;
        let mode = src.metadata()?.mode() & 0o7777;
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(to)?;
        io::copy(&mut src, &mut out)?;
        out.set_permissions(fs::Permissions::from_mode(mode))?;
        out.sync_all()
    })();
    copied
        .map_err(|e| InstallError::io(format!("copying {} to {}", from.display(), to.display()), e))
}

fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// `rename(2)` is not expected to fail with `ETXTBSY`, but some filesystems do; it passes quickly.
fn retry_busy(mut op: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match op() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Makes the renames in `target`'s directory durable. Runs after the rename, when the new binary
/// is already in place: a failure is logged rather than returned, since reporting "not installed"
/// for a binary that is in place would mislead the caller.
fn sync_dir(target: &Path) {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot flush the directory; the change may not survive a power cut");
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Removes a temporary name on an early return.
struct Leftover<'a>(&'a Path);

impl Drop for Leftover<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

/// How old a `.prev` or rollback temp must be before a sweep takes it for a crash's leftover
/// rather than the work of a master that is installing right now.
const LEFTOVER_AGE: Duration = Duration::from_secs(60);

/// Removes what a master killed mid-upgrade left beside `target`: staged releases of processes
/// that no longer exist, and `.prev`, rollback, link-flip and state-file temps. Returns how many
/// were removed. Failures are logged; a sweep never stops an upgrade.
///
/// `locked`: the caller holds the install lock beside `target`, so no other master can be
/// writing those temps and every one of them is a leftover. Without it, only temps older than a
/// minute are taken for leftovers (a second master may be installing right now).
pub(crate) fn sweep_leftovers(target: &Path, locked: bool) -> usize {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return 0;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = name.to_string_lossy();
    let staged_prefix = format!(".{name}.upshift-");
    let rollback_prefix = format!("{name}.rollback-");
    // `.prev.tmp` was the fixed name of earlier versions.
    let prev_tmp = format!("{name}.prev.tmp");
    let prev_prefix = format!("{name}.prev-");
    // A release link being flipped and the release state being written (beside the invoked path).
    let link_prefix = format!("{name}.link-");
    let state_prefix = format!("{name}.upshift-state.");
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        let stale = if let Some(rest) = file_name.strip_prefix(&staged_prefix) {
            // `.<name>.upshift-<pid>-<random>.tmp`: stale once its writer is gone.
            rest.ends_with(".tmp")
                && rest
                    .split('-')
                    .next()
                    .and_then(|pid| pid.parse::<i32>().ok())
                    .is_some_and(|pid| pid as u32 != std::process::id() && !process_exists(pid))
        } else if (file_name.starts_with(&rollback_prefix)
            || file_name.starts_with(&prev_prefix)
            || file_name.starts_with(&link_prefix)
            || file_name.starts_with(&state_prefix))
            && file_name.ends_with(".tmp")
            || file_name == prev_tmp
        {
            locked
                || entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= LEFTOVER_AGE)
        } else {
            false
        };
        if stale {
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => {
                    removed += 1;
                    tracing::info!(path = %path.display(), "removed a leftover of an interrupted upgrade");
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover of an interrupted upgrade")
                }
            }
        }
    }
    removed
}

fn process_exists(pid: i32) -> bool {
    // Signal 0 checks existence; EPERM means it exists but is not ours.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}
