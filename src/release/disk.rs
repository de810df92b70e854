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
            if self.cache.len() >= CACHE_ENTRIES {
                self.cache.remove(0);
            }
            self.cache.push((before, sha.clone()));
        }
        Ok(sha)
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
