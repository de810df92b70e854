//! Reading the disk for the release state: the invoked path resolved again every time, `stat`
//! first and a hash only when the file changed, and restore points held open.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::fetch::Stamp;

/// How many (stamp → sha256) pairs are kept: the target, `.prev`, a restore point or two.
const CACHE_ENTRIES: usize = 8;

/// The build at the invoked path, as just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OnDisk {
    /// The file the invoked path resolves to now.
    pub(crate) target: PathBuf,
    pub(crate) sha256: String,
}

/// Hashes files, trusting an earlier hash only while `stat` shows the very same file unchanged
/// (device, inode, size, mtime and ctime).
#[derive(Debug, Default)]
pub(crate) struct Hasher {
    cache: Vec<(Stamp, String)>,
}

impl Hasher {
    /// Resolves `invoked` again (a symlink may have been flipped since the last look) and returns
    /// the file it names and its sha256.
    pub(crate) fn read_target(&mut self, invoked: &Path) -> io::Result<OnDisk> {
        let target = crate::install::resolve_target(invoked)?;
        let file = File::open(&target)?;
        let sha256 = self.sha256_of(&file)?;
        Ok(OnDisk { target, sha256 })
    }

    /// The sha256 of an open file's content, from the cache when its stamp is unchanged.
    pub(crate) fn sha256_of(&mut self, file: &File) -> io::Result<String> {
        let before = Stamp::of(&file.metadata()?);
        if let Some((_, sha)) = self.cache.iter().find(|(s, _)| *s == before) {
            return Ok(sha.clone());
        }
        let sha = hash_from_start(file)?;
        // Written to while we read: the hash describes no version of the file; do not keep it.
        if Stamp::of(&file.metadata()?) == before {
            self.remember(before, &sha);
        }
        Ok(sha)
    }

    fn remember(&mut self, stamp: Stamp, sha256: &str) {
        if self.cache.len() >= CACHE_ENTRIES {
            self.cache.remove(0);
        }
        self.cache.push((stamp, sha256.to_string()));
    }

    /// Remembers `sha256` for the binary just installed at `path` without reading it again, if
    /// `path` names the very file that was staged and hashed (`staged`: device and inode), its
    /// size and mtime unchanged. Only the ctime may differ: the install itself changed the mode
    /// and renamed the file. The caller checked, just before the install, that the staged file
    /// was still exactly as staging left it (ctime included). Anything else is hashed afresh
    /// by the next look.
    pub(crate) fn adopt_installed(&mut self, path: &Path, staged: &Stamp, sha256: &str) -> bool {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return false;
        };
        let now = Stamp::of(&meta);
        if !now.same_content(staged) {
            return false;
        }
        self.remember(now, sha256);
        true
    }
}

/// Hex sha256 of a file's content from its first byte, through a second descriptor so the
/// caller's offset is its own business.
pub(crate) fn hash_from_start(file: &File) -> io::Result<String> {
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(0))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(hex::encode(hash.finalize())),
            Ok(n) => hash.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The build to put back if a candidate fails: the exact file that served when it was
/// installed, held open so that nothing renamed over the path can take it away.
#[derive(Debug)]
pub(crate) struct RestorePoint {
    pub(crate) file: File,
    pub(crate) sha256: String,
    /// With [`InstallMode::ReleaseDirectories`](crate::InstallMode): what the symlink said.
    pub(crate) link: Option<PathBuf>,
}

impl RestorePoint {
    /// Opens what serves now: the serving worker's executable when one serves (the very inode it
    /// runs, even if the path was changed since), else the file at the target.
    pub(crate) fn capture(
        hasher: &mut Hasher,
        serving_pid: Option<u32>,
        target: &Path,
        link: Option<PathBuf>,
    ) -> io::Result<RestorePoint> {
        let from_worker = serving_pid.and_then(|pid| File::open(format!("/proc/{pid}/exe")).ok());
        let file = match from_worker {
            Some(f) => f,
            None => File::open(target)?,
        };
        let sha256 = hasher.sha256_of(&file)?;
        Ok(RestorePoint { file, sha256, link })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_installed_file_keeps_its_staged_hash_only_while_it_is_the_staged_file() {
        let dir = crate::install::tests::TempDir::new("adopt");
        let staged = dir.exe(".app.staged.tmp", b"new build");
        let stamp = Stamp::of(&std::fs::metadata(&staged).unwrap());
        let target = dir.path().join("app");
        std::fs::rename(&staged, &target).unwrap();
        let mut hasher = Hasher::default();
        // A marker no real hash equals: the answer comes from the cache, not from reading.
        assert!(hasher.adopt_installed(&target, &stamp, "from-staging"));
        let opened = File::open(&target).unwrap();
        assert_eq!(hasher.sha256_of(&opened).unwrap(), "from-staging");

        // Rewritten after the install: the stamp no longer matches, the file is read.
        std::fs::write(&target, b"someone else's bytes").unwrap();
        let mut fresh = Hasher::default();
        assert!(!fresh.adopt_installed(&target, &stamp, "from-staging"));
        let opened = File::open(&target).unwrap();
        assert_eq!(
            fresh.sha256_of(&opened).unwrap(),
            hex::encode(Sha256::digest(b"someone else's bytes"))
        );
    }
}
