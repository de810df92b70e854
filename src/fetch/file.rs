//! The File fetcher: a local path watched (inotify on Linux) for new builds.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, Notify};

use super::{
    Current, FetchError, Fetcher, Format, LocalFile, Origin, Release, StagingArea, TrustPolicy,
};

const DEFAULT_SETTLE: Duration = Duration::from_millis(50); // why: see `settle`
const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// With inotify, "modified and not closed since" means a writer still holds the file open: a pause
/// counts as the end of the copy only after this long (bounded, in case the close was missed).
const OPEN_WRITER_SETTLE: Duration = Duration::from_secs(1);
/// How long a file may keep changing before a check gives up on it.
const MAX_WRITE_WAIT: Duration = Duration::from_secs(30);
/// The largest `.sha256` / `.minisig` file read.
const SIDE_FILE_LIMIT: u64 = 64 * 1024;

/// Watches a file for new builds: copy (or `mv`) a build to the path and the server upgrades.
///
/// Optional side files next to it: `<path>.sha256` (the expected digest, `sha256sum` format) and
/// `<path>.minisig` (a detached minisign signature), `<path>.rollout` (the share of the fleet that
/// should take it: [`Release::rollout_percent`], see [`rollout`](crate::rollout)). Write them
/// *before* the file, or move the file into place last, so a check never pairs a new file with a
/// stale digest.
///
/// ```no_run
/// use std::time::Duration;
/// use upshift::fetch::{Fetcher, FileFetcher};
///
/// let fetcher = FileFetcher::new("/srv/app/next").settle(Duration::from_millis(100));
/// assert_eq!(fetcher.name(), "file:/srv/app/next");
/// let _boxed: Box<dyn Fetcher> = Box::new(fetcher);
/// ```
#[derive(Debug)]
pub struct FileFetcher {
    path: PathBuf,
    name: String,
    sidecar_path: PathBuf,
    minisig_path: PathBuf,
    settle: Duration,
    poll_interval: Duration,
    sidecar: bool,
    /// `None`: not started yet (the first `changed` starts it), or polling because no watcher
    /// could be set up (retried on each `changed`).
    watch: Option<Watch>,
    /// Whether `changed` may (re)create the watcher; off only in tests of the polling path.
    rewatch: bool,
    /// A watcher failed to start once already: later failures are logged quietly.
    warned: bool,
    /// Where the pipeline stages (see [`Fetcher::staging_area`]): a new file is copied there
    /// while it is hashed.
    staging: Option<StagingArea>,
    /// What the last completed check saw: the file, `.sha256` and `.minisig`.
    last: Option<[Option<Stamp>; 3]>,
    rollout_path: PathBuf,
    /// The poll loop set the last release aside (see [`Fetcher::deferred`]): offer it again.
    reoffer: bool,
    /// The file last offered and its sha256, so that offering it again costs no hashing.
    offered: Option<(Stamp, String)>,
    /// Whether to skip the location check (see [`FileFetcher::allow_untrusted_location`]).
    untrusted_ok: bool,
    /// A minisign key is configured ([`Fetcher::apply_policy`]): the signature, not the
    /// location, vouches for a build.
    signed: bool,
}

impl FileFetcher {
    /// Watches `path` (which need not exist yet). Never fails: without a watcher (no parent
    /// directory, no inotify instance left) it logs a warning and falls back to polling.
    ///
    /// ```no_run
    /// use upshift::fetch::FileFetcher;
    /// let fetcher = FileFetcher::new("target/release/app-next");
    /// ```
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        FileFetcher {
            name: format!("file:{}", path.display()),
            sidecar_path: with_suffix(&path, ".sha256"),
            minisig_path: with_suffix(&path, ".minisig"),
            rollout_path: with_suffix(&path, ".rollout"),
            reoffer: false,
            offered: None,
            untrusted_ok: false,
            signed: false,
            path,
            settle: DEFAULT_SETTLE,
            poll_interval: DEFAULT_POLL,
            sidecar: true,
            watch: None,
            rewatch: true,
            warned: false,
            staging: None,
            last: None,
        }
    }

    /// How long the file's size and mtime must stay unchanged before a copy in progress counts as
    /// complete, when no close-after-write or rename-into event said so already (polling,
    /// FSEvents, network file systems). Default 50 ms: above the coarse kernel clock that stamps
    /// mtimes (1–10 ms) and far above the gaps between a copying tool's writes, yet small against
    /// the 150 ms budget from `cp` to the new build's first response. On Linux, while the watcher
    /// knows a writer still holds the file (modified, not closed), a pause must last 1 s. Should
    /// the settle ever be too short, the partial file fails the pipeline's hash check and the
    /// complete one is offered at the next change.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use upshift::fetch::FileFetcher;
    /// let fetcher = FileFetcher::new("/mnt/nfs/app").settle(Duration::from_millis(500));
    /// ```
    pub fn settle(mut self, d: Duration) -> Self {
        self.settle = d;
        self
    }

    /// The interval for polling when no watcher could be set up, and this fetcher's
    /// [`Fetcher::interval`]. Default 1 s.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use upshift::fetch::{Fetcher, FileFetcher};
    /// let fetcher = FileFetcher::new("/srv/app/next").poll_interval(Duration::from_secs(5));
    /// assert_eq!(fetcher.interval(), Duration::from_secs(5));
    /// ```
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// Whether to read `<path>.sha256` (default `true`). Its digest (`sha256sum` output, plain,
    /// `--tag` or escaped, or the bare hex; read by [`checksum`](super::checksum)'s sidecar rules)
    /// becomes the release's expected sha256; a malformed one fails the check.
    ///
    /// ```no_run
    /// use upshift::fetch::FileFetcher;
    /// let fetcher = FileFetcher::new("/srv/app/next").sidecar(false);
    /// ```
    pub fn sidecar(mut self, yes: bool) -> Self {
        self.sidecar = yes;
        self
    }

    /// Test-only: the watcher started now, as the updater's first `changed` would.
    #[cfg(test)]
    pub(crate) fn watching(mut self) -> Self {
        self.watch = Watch::start(&self.path, false);
        self.warned = true;
        self
    }

    /// Test-only: no watcher, so only the settle logic and polling are exercised.
    #[cfg(test)]
    fn unwatched(mut self) -> Self {
        self.watch = None;
        self.rewatch = false;
        self
    }

    async fn snapshot(&self) -> Result<[Option<Stamp>; 3], FetchError> {
        let side = match self.sidecar {
            true => stat(&self.sidecar_path).await?,
            false => None,
        };
        Ok([
            stat(&self.path).await?,
            side,
            stat(&self.minisig_path).await?,
        ])
    }

    /// Asks about the watcher's view of the file; `false` without a watcher.
    fn phase_is(&self, f: impl FnOnce(&Phase) -> bool) -> bool {
        self.watch
            .as_ref()
            .is_some_and(|w| f(&lock(&w.shared.phase)))
    }

    fn required_settle(&self) -> Duration {
        let open_writer = cfg!(any(target_os = "linux", target_os = "android"))
            && self.phase_is(|p| matches!(p, Phase::Writing));
        match open_writer {
            true => self.settle.max(OPEN_WRITER_SETTLE),
            false => self.settle,
        }
    }

    /// Waits until the file is complete: closed after writing, or unchanged for `settle`.
    /// `None` if it vanished.
    async fn wait_complete(
        &self,
        mut seen: Stamp,
        deadline: Instant,
    ) -> Result<Option<Stamp>, FetchError> {
        let mut since = Instant::now();
        loop {
            // Closed after writing or renamed into place, and still as it was then: complete.
            if self.phase_is(|p| matches!(p, Phase::Closed(s) if s.same_content(&seen))) {
                return Ok(Some(seen));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(FetchError::Source(format!(
                    "{} is still being written after {MAX_WRITE_WAIT:?}",
                    self.path.display()
                )));
            }
            let settle = self.required_settle();
            let wait = settle.saturating_sub(since.elapsed()).min(deadline - now);
            match &self.watch {
                Some(w) => {
                    let _ = tokio::time::timeout(wait, w.shared.closed.notified()).await;
                }
                None => tokio::time::sleep(wait).await,
            }
            let Some(now) = stat(&self.path).await? else {
                return Ok(None);
            };
            if !now.same_content(&seen) {
                seen = now;
                since = Instant::now();
            } else if since.elapsed() >= self.required_settle() {
                return Ok(Some(seen));
            }
        }
    }
}

#[async_trait::async_trait]
impl Fetcher for FileFetcher {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&mut self, current: &Current) -> Result<Option<Release>, FetchError> {
        // Every time: an owner or a mode may change while the master runs.
        self.check_trusted().await?;
        let snap = self.snapshot().await?;
        let reoffer = std::mem::take(&mut self.reoffer);
        // The first look after a start most likely finds the installed build: hash it only.
        let first_look = self.last.is_none();
        if self.last.as_ref() == Some(&snap) && !reoffer {
            return Ok(None);
        }
        let Some(mut seen) = snap[0] else {
            tracing::debug!(path = %self.path.display(), "no file to upgrade to");
            self.last = Some(snap);
            return Ok(None);
        };
        let deadline = Instant::now() + MAX_WRITE_WAIT;
        let (file, stamp) = loop {
            let Some(stable) = self.wait_complete(seen, deadline).await? else {
                tracing::debug!(path = %self.path.display(), "file vanished while settling");
                return Ok(None);
            };
            let path = self.path.clone();
            let open = move || match absent(std::fs::File::open(path))? {
                Some(f) => f.metadata().map(|m| Some((Stamp::of(&m), f))),
                None => Ok(None),
            };
            let what = format!("opening {}", self.path.display());
            let Some((opened, file)) = blocking(what, open).await? else {
                return Ok(None);
            };
            if opened.same_content(&stable) {
                break (file, opened);
            }
            seen = opened; // replaced between settling and opening: settle the new one
        };
        // Only a re-offer trusts the stamp: a same-size rewrite within one mtime tick would
        // otherwise pass for the file hashed before.
        let known = self
            .offered
            .as_ref()
            .filter(|(s, _)| reoffer && *s == stamp);
        // Copied while hashed only where staging would copy it: a raw file, no signature to
        // verify on the way (staging's streaming path does that).
        let file_name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let format = Format::from_name(&file_name);
        let copy_to = (self.staging.clone())
            .filter(|_| !first_look && !self.signed && matches!(format, Format::Raw));
        let (file, sha256, copy) = match known.map(|(_, h)| h.clone()) {
            Some(h) => (file, h, None),
            None => {
                let what = format!("hashing {}", self.path.display());
                blocking(what, move || {
                    hash_and_rewind(file, &stamp, copy_to.as_ref())
                })
                .await?
            }
        };
        let new_last = [Some(stamp), snap[1], snap[2]];
        if sha256 == current.sha256 {
            tracing::debug!(path = %self.path.display(), %sha256, "file is the installed build");
            self.last = Some(new_last);
            return Ok(None);
        }
        let expected = match self.sidecar {
            true => match read_small(&self.sidecar_path).await? {
                Some(text) => Some(parse_sidecar(&text, &self.sidecar_path)?),
                None => None,
            },
            false => None,
        };
        let signature = read_small(&self.minisig_path).await?;
        let rollout_percent = match crate::rollout::read_percent_file(&self.rollout_path).await {
            Ok(p) => p,
            Err(e) => {
                self.reoffer = reoffer; // the file's fix changes nothing `last` compares
                return Err(e);
            }
        };
        // A second descriptor for staging's kernel copy; without one, staging reads the body.
        let local_file = match file.try_clone() {
            Ok(clone) => Some(LocalFile {
                file: clone,
                sha256: sha256.clone(),
                stamp,
                copy,
            }),
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "cannot duplicate the file descriptor; staging will read the file");
                None
            }
        };
        self.last = Some(new_last);
        self.offered = Some((stamp, sha256.clone()));
        tracing::debug!(path = %self.path.display(), %sha256, "new build");
        Ok(Some(Release {
            identity: format!("sha256:{sha256}"),
            sha256: Some(expected.unwrap_or(sha256)),
            signature,
            size_hint: Some(stamp.size),
            format,
            origin: Origin::Local,
            body: Box::new(tokio::fs::File::from_std(file)),
            local_file,
            rollout_percent,
            version: None,
            source: Some(stamp.describe()),
            // The file is on this machine already: a patch would save no transfer.
            delta: None,
        }))
    }

    fn staging_area(&mut self, area: &StagingArea) {
        self.staging = Some(area.clone());
    }

    fn apply_policy(&mut self, policy: &TrustPolicy) -> Result<(), FetchError> {
        self.signed = policy.signature_required;
        self.location().map_or(Ok(()), |l| l.check())
    }

    fn deferred(&mut self, _identity: &str) {
        self.reoffer = true;
    }

    async fn changed(&mut self) {
        if self
            .watch
            .as_ref()
            .is_some_and(|w| w.shared.dead.load(Ordering::Relaxed))
        {
            tracing::debug!(path = %self.path.display(), "watched directory went away; polling");
            self.watch = None;
        }
        let Some(watch) = self.watch.as_mut() else {
            if self.rewatch {
                // Started here, not in `new`: a program builds its fetchers in every process
                // (workers, test runs), and only the master's updater ever waits on one.
                self.watch = Watch::start(&self.path, self.warned);
                self.warned = true;
                if self.watch.is_some() {
                    return; // watching again: check for whatever happened meanwhile
                }
            }
            return tokio::time::sleep(self.poll_interval).await;
        };
        match watch.rx.recv().await {
            Some(()) => while watch.rx.try_recv().is_ok() {},
            None => watch.shared.dead.store(true, Ordering::Relaxed),
        }
    }

    fn interval(&self) -> Duration {
        self.poll_interval
    }
}

/// A file's identity and version as `stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    pub(crate) size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    pub(crate) fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// A description for [`Release::source`]: which file, which version of it.
    pub(crate) fn describe(&self) -> String {
        format!(
            "dev {} ino {} size {} mtime {}.{:09}",
            self.dev, self.ino, self.size, self.mtime.0, self.mtime.1
        )
    }

    /// Same file, same content as far as `stat` can tell (a `chmod` changes only the ctime).
    pub(crate) fn same_content(&self, o: &Stamp) -> bool {
        (self.dev, self.ino, self.size, self.mtime) == (o.dev, o.ino, o.size, o.mtime)
    }
}

/// What the watcher last saw happen to the file's content.
#[derive(Debug)]
enum Phase {
    Unknown,
    /// Modified, and not closed since.
    Writing,
    /// Closed after writing, or renamed into place; as `stat` saw it then.
    Closed(Stamp),
}

/// State shared with notify's callback thread.
#[derive(Debug)]
struct Shared {
    phase: Mutex<Phase>,
    /// Woken when the file is closed after writing or renamed into place.
    closed: Notify,
    /// The watched directory was removed or moved: the watch is useless.
    dead: AtomicBool,
}

#[derive(Debug)]
struct Watch {
    _watcher: RecommendedWatcher,
    rx: mpsc::Receiver<()>,
    shared: Arc<Shared>,
}

/// What notify's callback needs: it classifies events on notify's thread and never blocks.
struct Handler {
    dir: PathBuf,
    path: PathBuf,
    file: OsString,
    side: [OsString; 2],
    shared: Arc<Shared>,
    tx: mpsc::Sender<()>,
}

impl Watch {
    fn start(path: &Path, quiet: bool) -> Option<Watch> {
        let failed = |why: String| {
            match quiet {
                true => tracing::trace!(path = %path.display(), %why, "no file watcher"),
                false => tracing::warn!(path = %path.display(), %why, "no file watcher; polling"),
            }
            None
        };
        // notify reports absolute paths; compare against the same.
        let abs = match std::path::absolute(path) {
            Ok(abs) => abs,
            Err(e) => return failed(e.to_string()),
        };
        let (Some(dir), Some(file)) = (abs.parent(), abs.file_name()) else {
            return failed("the path names no file in a directory".into());
        };
        let (dir, file) = (dir.to_path_buf(), file.to_os_string());
        if !dir.is_dir() {
            return failed(format!("{} is not a directory", dir.display()));
        }
        let shared = Arc::new(Shared {
            phase: Mutex::new(Phase::Unknown),
            closed: Notify::new(),
            dead: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(1);
        let handler = Handler {
            path: dir.join(&file),
            side: [".sha256", ".minisig"].map(|s| {
                let mut n = file.clone();
                n.push(s);
                n
            }),
            dir: dir.clone(),
            file,
            shared: shared.clone(),
            tx,
        };
        let watcher = notify::recommended_watcher(move |res| handler.handle(res))
            .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        match watcher {
            Ok(w) => Some(Watch {
                _watcher: w,
                rx,
                shared,
            }),
            Err(e) => failed(e.to_string()),
        }
    }
}

impl Handler {
    fn handle(&self, res: notify::Result<Event>) {
        let relevant = match res {
            Ok(ev) => self.classify(&ev),
            Err(e) => {
                tracing::debug!(error = %e, "file watcher error");
                self.set(Phase::Unknown);
                true
            }
        };
        if relevant {
            let _ = self.tx.try_send(()); // full: a wake-up is pending already
        }
    }

    fn classify(&self, ev: &Event) -> bool {
        use EventKind::{Access, Modify, Remove};
        use ModifyKind::{Data, Metadata, Name};
        if ev.need_rescan() {
            self.set(Phase::Unknown);
            return true;
        }
        // Opens and reads (ours and the pipeline's among them) change nothing.
        if matches!(ev.kind, Access(a) if a != AccessKind::Close(AccessMode::Write)) {
            return false;
        }
        let mut relevant = false;
        for (i, p) in ev.paths.iter().enumerate() {
            let name = p.file_name();
            if *p == self.dir {
                if matches!(ev.kind, Remove(_) | Modify(Name(_))) {
                    self.shared.dead.store(true, Ordering::Relaxed);
                    relevant = true;
                }
            } else if name == Some(self.file.as_os_str()) {
                relevant = true;
                let into = i + 1 == ev.paths.len(); // `Both` lists [from, to]
                match ev.kind {
                    Access(_) | Modify(Name(RenameMode::To)) => self.set_closed(),
                    Modify(Name(RenameMode::Both)) if into => self.set_closed(),
                    Modify(Metadata(_)) => {}
                    Modify(Data(_) | ModifyKind::Any | ModifyKind::Other) => {
                        self.set(Phase::Writing)
                    }
                    _ => self.set(Phase::Unknown),
                }
            } else if name.is_some_and(|n| self.side.iter().any(|s| s == n)) {
                relevant = true;
            }
        }
        relevant
    }

    fn set_closed(&self) {
        match std::fs::metadata(&self.path) {
            Ok(m) => {
                self.set(Phase::Closed(Stamp::of(&m)));
                self.shared.closed.notify_one();
            }
            Err(_) => self.set(Phase::Unknown),
        }
    }

    fn set(&self, phase: Phase) {
        *lock(&self.shared.phase) = phase;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Runs blocking file work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, FetchError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(FetchError::Io { what, source }),
        Err(e) => Err(FetchError::Source(format!("{what}: {e}"))),
    }
}

/// "Not found" as `None`.
fn absent<T>(r: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        r => r.map(Some),
    }
}

/// `stat`s a regular file; `None` if it does not exist.
async fn stat(path: &Path) -> Result<Option<Stamp>, FetchError> {
    let p = path.to_path_buf();
    let what = format!("stat {}", path.display());
    match blocking(what, move || absent(std::fs::metadata(p))).await? {
        Some(m) if !m.is_file() => {
            let msg = format!("{} is not a regular file", path.display());
            Err(FetchError::Source(msg))
        }
        m => Ok(m.as_ref().map(Stamp::of)),
    }
}

/// Streams the file through sha256, with `copy_to` also into a copy there (see
/// [`crate::install::hash_copying`]), and rewinds it for the pipeline.
fn hash_and_rewind(
    mut file: std::fs::File,
    stamp: &Stamp,
    copy_to: Option<&StagingArea>,
) -> std::io::Result<(std::fs::File, String, Option<crate::install::PreStaged>)> {
    let (sha256, copy) = crate::install::hash_copying(&mut file, stamp, copy_to)?;
    file.seek(SeekFrom::Start(0))?;
    Ok((file, sha256, copy))
}

/// Reads a small text side file; `None` if it does not exist.
async fn read_small(path: &Path) -> Result<Option<String>, FetchError> {
    let p = path.to_path_buf();
    let read = move || {
        let Some(file) = absent(std::fs::File::open(p))? else {
            return Ok(None);
        };
        let mut text = String::new();
        file.take(SIDE_FILE_LIMIT + 1).read_to_string(&mut text)?;
        Ok(Some(text))
    };
    let text = blocking(format!("reading {}", path.display()), read).await?;
    if text
        .as_ref()
        .is_some_and(|t| t.len() as u64 > SIDE_FILE_LIMIT)
    {
        let msg = format!("{} is larger than {SIDE_FILE_LIMIT} bytes", path.display());
        return Err(FetchError::Source(msg));
    }
    Ok(text)
}

/// The digest in the `.sha256` sidecar at `path`, read as every fetcher reads one
/// ([`checksum`](super::checksum)); errors name the sidecar.
fn parse_sidecar(text: &str, path: &Path) -> Result<String, FetchError> {
    let name = path
        .file_stem()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    super::checksum::sha256(super::checksum::Kind::Sidecar, text, &name)
        .map_err(|e| FetchError::Source(format!("{}: {e}", path.display())))
}

#[path = "file_trust.rs"]
mod trust;

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
