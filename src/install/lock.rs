//! One lock file beside the binary, so that two masters started from the same file never install,
//! keep `.prev` or roll back over each other.
//!
//! A master takes `<binary>.upshift-lock` (an exclusive `flock`) the first time it looks for a
//! release and keeps it for its whole life: installing, keeping `.prev` and rolling back are one
//! master's work from start to end, and a lock held only during an install would still let the
//! second master roll back the first one's release. A master that cannot take it (another holds
//! it) keeps serving its build, refuses to install, and tries again at each release, so it takes
//! over once the holder exits. The kernel drops the lock when the holder dies, however it dies;
//! the file itself stays (removing it would let a third master lock a new inode while the second
//! still holds the old one).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::InstallError;

/// The lock's name beside `binary`.
pub(crate) fn lock_path(binary: &Path) -> PathBuf {
    let mut s = binary.as_os_str().to_owned();
    s.push(".upshift-lock");
    PathBuf::from(s)
}

/// The exclusive right to change the binary at a path; released when dropped (or when the
/// process ends).
#[derive(Debug)]
pub(crate) struct InstallLock {
    _file: File,
    path: PathBuf,
}

impl InstallLock {
    /// Takes the lock beside `binary` without waiting: [`InstallError::Locked`] when another
    /// process holds it.
    pub(crate) fn try_acquire(binary: &Path) -> Result<InstallLock, InstallError> {
        let path = lock_path(binary);
        // Never through a symlink: a planted link would have us create or lock another file.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| {
                InstallError::io(format!("opening the lock file {}", path.display()), e)
            })?;
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is passed.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                tracing::debug!(lock = %path.display(), "holding the install lock");
                return Ok(InstallLock { _file: file, path });
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return Err(InstallError::Locked { path }),
                _ => return Err(InstallError::io(format!("locking {}", path.display()), e)),
            }
        }
    }

    /// The lock file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock as a master holds it: taken when the master first looks for a release if it can be,
/// else tried again before each release.
#[derive(Debug)]
pub(crate) struct LockSlot {
    binary: PathBuf,
    held: Option<InstallLock>,
}

impl LockSlot {
    /// A slot for the lock beside `binary` (the file installs replace, or the release link);
    /// tries to take it at once and says so in the log when another master holds it.
    pub(crate) fn take(binary: PathBuf) -> LockSlot {
        let mut slot = LockSlot { binary, held: None };
        if let Err(e) = slot.ensure() {
            tracing::warn!(error = %e, "this master will not install releases while the other one runs");
        }
        slot
    }

    /// Whether this master holds the lock now (without trying to take it).
    pub(crate) fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// The file the lock guards: what installs replace, or the release link.
    pub(crate) fn guards(&self) -> &Path {
        &self.binary
    }

    /// `Ok` when this master holds the lock, taking it now if it is free.
    pub(crate) fn ensure(&mut self) -> Result<(), InstallError> {
        if self.held.is_none() {
            let lock = InstallLock::try_acquire(&self.binary)?;
            tracing::info!(lock = %lock.path().display(), "this master now installs releases for its binary");
            self.held = Some(lock);
        }
        Ok(())
    }
}
