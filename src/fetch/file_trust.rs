//! Who may hand the File fetcher a build: only this service's user (or root).
//!
//! Without a minisign key, a watched file's own hash is what it is checked against, so whoever
//! can write the file, or create it in its directory, runs code as this service. The fetcher
//! therefore refuses a watched file, side file or directory that another user owns or that group
//! or others may write, unless a key is configured or the operator opted in
//! ([`FileFetcher::allow_untrusted_location`](super::FileFetcher::allow_untrusted_location)).
//! Root-owned and not writable by group or others is fine: a careful deploy writes into a
//! root-owned directory. A sticky world-writable directory such as `/tmp` is refused too: anyone
//! can create the watched name there before the deploy does.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{FetchError, FileFetcher};

impl FileFetcher {
    /// Watches a path that users other than this service's may write (default `false`).
    ///
    /// Without a minisign key the watched file is trusted as it is: its own hash is what it is
    /// checked against. So the fetcher refuses a file, a side file or a directory that another
    /// user owns (root excepted) or that group or others may write, `/tmp` included: any user who
    /// can put a file there could run code as this service. `true` turns that check off. Only
    /// do that when everyone who can write there may run code as this service anyway; better,
    /// fix the ownership (`chown`, `chmod go-w`) or configure a key
    /// ([`Upgrader::minisign_public_key`](crate::Upgrader::minisign_public_key)), with which the
    /// check is not needed.
    ///
    /// ```no_run
    /// use upshift::fetch::FileFetcher;
    /// // A shared drop directory on a single-user development machine.
    /// let fetcher = FileFetcher::new("/srv/shared/app-next").allow_untrusted_location(true);
    /// ```
    pub fn allow_untrusted_location(mut self, yes: bool) -> Self {
        self.untrusted_ok = yes;
        self
    }

    /// What to check before a check, or `None` when a key or the opt-in makes it moot.
    pub(super) fn location(&self) -> Option<Location> {
        if self.untrusted_ok || self.signed {
            return None;
        }
        let mut side = vec![self.rollout_path.clone()];
        if self.sidecar {
            side.push(self.sidecar_path.clone());
        }
        Some(Location {
            file: self.path.clone(),
            side,
        })
    }

    /// [`Location::check`] off the runtime's threads, when there is something to check.
    pub(super) async fn check_trusted(&self) -> Result<(), FetchError> {
        let Some(location) = self.location() else {
            return Ok(());
        };
        match tokio::task::spawn_blocking(move || location.check()).await {
            Ok(checked) => checked,
            Err(e) => Err(FetchError::Source(format!(
                "checking who owns the watched file: {e}"
            ))),
        }
    }
}

/// The watched file and its side files.
pub(super) struct Location {
    file: PathBuf,
    side: Vec<PathBuf>,
}

impl Location {
    /// Checks that only this process's user (or root) can have put the file and its side files
    /// where they are: each existing one, and the directory holding each (and, through a
    /// symlink, the one holding its target), must be owned by this user or root and not be
    /// writable by group or others. A few `stat`s; blocking.
    pub(super) fn check(&self) -> Result<(), FetchError> {
        let side: Vec<&Path> = self.side.iter().map(PathBuf::as_path).collect();
        check_location(&self.file, &side)
    }
}

fn check_location(file: &Path, side: &[&Path]) -> Result<(), FetchError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut dirs: Vec<PathBuf> = Vec::new();
    for path in std::iter::once(file).chain(side.iter().copied()) {
        dirs.push(parent(path));
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(path, e)),
        };
        check_one(path, &meta, me, "file")?;
        // Through a symlink, whoever can write the directory the link points into decides too.
        if let Ok(real) = std::fs::canonicalize(path) {
            dirs.push(parent(&real));
        }
    }
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        match std::fs::metadata(&dir) {
            Ok(meta) => check_one(&dir, &meta, me, "directory")?,
            // No directory yet: nothing can be watched there, and the next check looks again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&dir, e)),
        }
    }
    Ok(())
}

fn check_one(path: &Path, meta: &std::fs::Metadata, me: u32, what: &str) -> Result<(), FetchError> {
    let owner = meta.uid();
    let problem = if owner != me && owner != 0 {
        format!("is owned by uid {owner}, not by this process's user (uid {me}) or root")
    } else if meta.mode() & 0o022 != 0 {
        let sticky = match meta.is_dir() && meta.mode() & 0o1000 != 0 {
            true => " (sticky, as /tmp: anyone can still create the watched name there)",
            false => "",
        };
        format!(
            "is writable by group or others (mode {:o}){sticky}",
            meta.mode() & 0o7777
        )
    } else {
        return Ok(());
    };
    let shown = path.display();
    Err(FetchError::Source(format!(
        "refusing to watch {what} {shown}: it {problem}, so another user could hand this \
         service a build to run. Fix it with `chown {me} {shown}` and `chmod go-w {shown}` \
         (or watch a path in a directory only this user or root can write), or configure a \
         minisign public key (Upgrader::minisign_public_key), or accept the risk with \
         FileFetcher::allow_untrusted_location(true)"
    )))
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn io_error(path: &Path, source: std::io::Error) -> FetchError {
    FetchError::Io {
        what: format!("checking who owns {}", path.display()),
        source,
    }
}
