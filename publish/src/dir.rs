//! The directory destination: what the File fetcher watches, and what a web server serves to
//! the HTTP fetcher. Every file is written to a temporary name in the same directory (a dot
//! file, which servers and the fetchers ignore), flushed, renamed into place and the directory
//! flushed: a reader sees the old file or the new one, never a partial one, even after a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::artifact::{Archive, Artifact};
use crate::progress::{Counter, Progress};
use crate::publish::Store;
use crate::Error;

const CHUNK: usize = 256 * 1024;

/// A directory that releases are published into.
pub(crate) struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    pub fn new(dir: PathBuf) -> DirStore {
        DirStore { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// `.NAME.upshift-publish-<pid>.tmp` beside `path`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(
        ".{name}.upshift-publish-{}.tmp",
        std::process::id()
    ))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("flushing the directory {}", dir.display()), e))
}

/// Writes `path` atomically from `fill`: a new temporary file (mode `mode`), filled, flushed,
/// renamed over `path`, the directory flushed. The temporary file is removed on failure.
fn write_atomically(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), Error> {
    let tmp = temp_path(path);
    let what = |verb: &str| format!("{verb} {}", path.display());
    let result = (|| {
        // A leftover of an earlier run that died is ours to replace.
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io(what("creating a temporary file for"), e))?;
        fill(&mut file).map_err(|e| Error::io(what("writing"), e))?;
        file.sync_all()
            .map_err(|e| Error::io(what("flushing"), e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| Error::io(what("renaming the new file to"), e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

fn copy_counted(from: &Path, to: &mut File, counter: &Counter) -> io::Result<()> {
    let mut input = File::open(from)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        counter.add(n as u64);
    }
}

impl Store for DirStore {
    fn location(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn may_replace(&self) -> bool {
        // Replacing the file at a fixed path is how the File and HTTP fetchers see a release.
        true
    }

    async fn begin(&mut self) -> Result<(), Error> {
        let meta = fs::metadata(&self.dir).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::io(
                format!("the directory {} (create it first)", self.dir.display()),
                e,
            ),
            _ => Error::io(format!("the directory {}", self.dir.display()), e),
        })?;
        if !meta.is_dir() {
            return Err(Error::io(
                format!("--dir {}", self.dir.display()),
                io::Error::other("not a directory"),
            ));
        }
        Ok(())
    }

    async fn exists(&mut self, name: &str) -> Result<bool, Error> {
        let path = self.path(name);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("looking at {}", path.display()), e)),
        }
    }

    async fn read_small(&mut self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let path = self.path(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    async fn put_small(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), Error> {
        let path = self.path(name);
        tokio::task::spawn_blocking(move || write_atomically(&path, 0o644, |f| f.write_all(&bytes)))
            .await
            .map_err(|e| Error::io("writing a side file", io::Error::other(e)))?
    }

    async fn remove(&mut self, name: &str) -> Result<(), Error> {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }

    async fn put_main(&mut self, artifact: &Artifact, progress: &Progress) -> Result<(), Error> {
        let path = self.path(&artifact.name);
        let from = artifact.path.clone();
        let counter = progress.counter(0);
        // A raw build is executable where it lands: the File fetcher's path may be run directly.
        // A delta patch is not.
        let mode = match (artifact.archive, &artifact.base) {
            (Archive::Raw, None) => 0o755,
            _ => 0o644,
        };
        tokio::task::spawn_blocking(move || {
            write_atomically(&path, mode, |f| copy_counted(&from, f, &counter))
        })
        .await
        .map_err(|e| Error::io("copying the release", io::Error::other(e)))?
    }

    async fn commit(&mut self) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }

    async fn abort(&mut self) -> String {
        String::new()
    }

    fn abort_removes_all(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_leave_no_temporary_file() {
        let s = crate::artifact::Staging::new().unwrap();
        let target = s.path().join("app.sha256");
        write_atomically(&target, 0o644, |f| f.write_all(b"one")).unwrap();
        write_atomically(&target, 0o644, |f| f.write_all(b"two")).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        let e = write_atomically(&target, 0o644, |_| Err(io::Error::other("disk full")));
        assert!(e.unwrap_err().to_string().contains("disk full"));
        assert_eq!(fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(s.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("app.sha256")]);
    }
}
