//! The poll loop and the install pipeline's order of stages, in the master.
//!
//! Each fetcher gets its own loop (its interval, with jitter; backoff on errors). Upgrades never
//! overlap: a release is taken through stage → test-run → veto → install → readiness-gated
//! restart → probation under one lock, and rolled back if the new worker fails.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{mpsc, mpsc::UnboundedSender, Mutex, Notify};

use super::{Event, RestartOutcome};
use crate::events::UpgradeEvent;
use crate::fetch::{Current, FetchError, Fetcher, Release};
use crate::install::{self, InstallError, StageOptions};

/// Called with every event; runs in the master.
pub(crate) type EventHook = Arc<dyn Fn(&UpgradeEvent) + Send + Sync>;
/// May veto a release that passed every check, like overseer's PreUpgrade.
pub(crate) type VetoHook = Arc<dyn Fn(&crate::ReleaseInfo) -> Result<(), String> + Send + Sync>;

/// How many rejected releases are remembered.
const REJECTED_MEMORY: usize = 64;
/// The longest pause between attempts after repeated fetch errors.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(600);

/// The pipeline's settings, shared by every fetcher's loop.
pub(crate) struct PipelineConfig {
    pub(crate) stage: StageOptions,
    pub(crate) test_run_timeout: Duration,
    pub(crate) on_event: Option<EventHook>,
    pub(crate) veto: Option<VetoHook>,
    pub(crate) version: Option<String>,
    /// Jitter, staged rollout, hold and pin.
    pub(crate) fleet: crate::rollout::Fleet,
}

/// How a check ended, for the poll loop's next delay.
enum Checked {
    /// Nothing new, or a release handled (installed, refused or set aside).
    Done,
    /// A release this machine could not install (disk full): try it again after a backoff.
    RetryAfterFault(String),
}

/// What is installed and what was refused: one per master, behind the lock that keeps upgrades
/// from overlapping.
struct Installed {
    /// The file upgrades replace: the invoked path with symlinks resolved.
    target: PathBuf,
    /// Also holds (in `rejected`) the keys and binary hashes of releases that were rejected or
    /// rolled back, so the fetchers can skip them too.
    current: Current,
    /// The hash of the installed binary while it is on probation: installing over it keeps
    /// `.prev`, which must stay the last binary that proved itself.
    on_probation: Option<String>,
    /// A release refused for a fault of this machine (disk full, file too large), not of the
    /// release: its fetcher is asked to offer it again, after a backoff.
    retry: Option<String>,
}

/// A release from the moment it is installed: what to remember if it fails.
struct Candidate {
    key: String,
    identity: String,
    binary_sha256: String,
}

pub(crate) struct Updater {
    cfg: PipelineConfig,
    master: UnboundedSender<Event>,
    installed: Mutex<Option<Installed>>,
    invoked: PathBuf,
    /// The master's arguments, which the test-run gets too.
    args: Vec<std::ffi::OsString>,
    /// Who serves now, published by the master.
    serving: tokio::sync::watch::Receiver<Option<super::ServingWorker>>,
}

impl Updater {
    pub(crate) fn new(
        cfg: PipelineConfig,
        invoked: PathBuf,
        args: Vec<std::ffi::OsString>,
        master: UnboundedSender<Event>,
        serving: tokio::sync::watch::Receiver<Option<super::ServingWorker>>,
    ) -> Arc<Self> {
        Arc::new(Updater {
            cfg,
            master,
            installed: Mutex::new(None),
            invoked,
            args,
            serving,
        })
    }

    /// Polls one fetcher for the master's whole life. `check_now` is the manual trigger.
    pub(crate) async fn poll(
        self: Arc<Self>,
        mut fetcher: Box<dyn Fetcher>,
        check_now: Arc<Notify>,
    ) {
        let interval = fetcher.interval();
        let mut errors: u32 = 0;
        // Releases refused in a row for a fault of this machine: their own backoff.
        let mut faults: u32 = 0;
        // The first check is at once: the first worker is already starting, nothing waits on it.
        let mut delay = Duration::ZERO;
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = fetcher.changed() => {}
                () = check_now.notified() => {}
            }
            let outcome = self.check_once(fetcher.as_mut()).await;
            delay = match outcome {
                Ok(Checked::Done) => {
                    errors = 0;
                    faults = 0;
                    self.cfg.fleet.jittered(interval)
                }
                Ok(Checked::RetryAfterFault(identity)) => {
                    errors = 0;
                    faults = faults.saturating_add(1);
                    let retry_in = self.cfg.fleet.jittered(error_backoff(faults, interval));
                    tracing::info!(fetcher = fetcher.name(), %identity, ?retry_in, "this machine could not install the release; trying it again");
                    retry_in
                }
                Err(FetchError::RateLimited(wait)) => wait,
                Err(e) => {
                    errors = errors.saturating_add(1);
                    let retry_in = self.cfg.fleet.jittered(error_backoff(errors, interval));
                    tracing::warn!(fetcher = fetcher.name(), error = %e, ?retry_in, "checking for a release failed");
                    self.emit(UpgradeEvent::CheckFailed {
                        fetcher: fetcher.name().to_string(),
                        error: e.to_string(),
                        retry_in,
                    });
                    retry_in
                }
            };
        }
    }

    async fn check_once(
        self: &Arc<Self>,
        fetcher: &mut dyn Fetcher,
    ) -> Result<Checked, FetchError> {
        let mut guard = self.installed.lock().await;
        let installed = match guard.as_mut() {
            Some(i) => i,
            None => guard.insert(self.discover_installed().await?),
        };
        let standing = self.cfg.fleet.standing(&self.invoked).await;
        if let crate::rollout::Standing::Held(why) = &standing {
            // Not even asked: a held host costs its release server nothing.
            self.cfg.fleet.note(None, why);
            return Ok(Checked::Done);
        }
        self.emit(UpgradeEvent::Checking {
            fetcher: fetcher.name().to_string(),
        });
        let Some(release) = fetcher.check(&installed.current).await? else {
            tracing::debug!(fetcher = fetcher.name(), "no new release");
            return Ok(Checked::Done);
        };
        if let Some(why) = self.cfg.fleet.defers(&standing, &release) {
            self.cfg.fleet.note(Some(&release.identity), &why);
            fetcher.deferred(&release.identity);
            return Ok(Checked::Done); // dropping the release unread aborts its transfer
        }
        self.cfg.fleet.clear_note();
        self.upgrade(installed, release).await;
        if let Some(identity) = installed.retry.take() {
            // Nothing was wrong with the release: once there is room it must be tried again,
            // also by a fetcher that remembers what it handed out (the File fetcher's file is
            // unchanged, an HTTP server would answer 304).
            fetcher.deferred(&identity);
            return Ok(Checked::RetryAfterFault(identity));
        }
        Ok(Checked::Done)
    }

    /// Hashes the binary on disk once, off the first worker's critical path.
    async fn discover_installed(&self) -> Result<Installed, FetchError> {
        let invoked = self.invoked.clone();
        let found = tokio::task::spawn_blocking(move || {
            let target = install::resolve_target(&invoked)?;
            install::sweep_leftovers(&target);
            let sha256 = install::file_sha256(&target)?;
            Ok::<_, std::io::Error>((target, sha256))
        })
        .await
        .map_err(|e| FetchError::Source(format!("hashing the installed binary: {e}")))?
        .map_err(|e| FetchError::Io {
            what: format!("reading the installed binary {}", self.invoked.display()),
            source: e,
        })?;
        let (target, sha256) = found;
        tracing::debug!(target = %target.display(), %sha256, "installed binary");
        Ok(Installed {
            target,
            current: Current {
                sha256,
                identity: None,
                version: self.cfg.version.clone(),
                rejected: Vec::new(),
                requires_checksum: false,
            },
            on_probation: None,
            retry: None,
        })
    }

    async fn upgrade(self: &Arc<Self>, installed: &mut Installed, mut release: Release) {
        let identity = release.identity.clone();
        // What vouches for the bytes is part of what was refused: a sidecar or signature
        // corrected after the binary was published makes a new candidate.
        let key = rejection_key(&release);
        if installed.current.rejected.contains(&key) {
            tracing::debug!(%identity, "release was rejected before; not trying it again");
            return;
        }
        tracing::info!(%identity, "new release found");
        let body_read = Arc::new(AtomicBool::new(false));
        release.body = Box::new(Progress::new(
            release.body,
            identity.clone(),
            release.size_hint,
            self.cfg.on_event.clone(),
            body_read.clone(),
        ));
        let staged = match install::stage(release, &installed.target, &self.cfg.stage).await {
            Ok(s) => s,
            Err(InstallError::ChecksumMismatch { actual, .. })
                if actual == installed.current.sha256 =>
            {
                // The new checksum was published but the old file is still served (a deploy
                // writes the checksum first): not a bad release, the next poll gets the new file.
                tracing::info!(
                    %identity,
                    "the source still serves the installed binary under the new checksum; retrying on the next poll"
                );
                return;
            }
            Err(e) => return self.reject(installed, &key, &identity, None, &e),
        };
        if !body_read.load(Ordering::Relaxed) && staged.bytes > 0 {
            // Staging copied a local file without reading the body: report its bytes once.
            self.emit(UpgradeEvent::Downloading {
                identity: identity.clone(),
                bytes: staged.bytes,
                total: Some(staged.bytes),
            });
        }
        tracing::debug!(
            %identity,
            downloaded = staged.bytes,
            binary_bytes = staged.binary_bytes,
            asset_sha256 = %staged.asset_sha256,
            "release staged and verified"
        );
        if staged.binary_sha256 == installed.current.sha256 {
            self.emit(UpgradeEvent::Skipped {
                identity: identity.clone(),
                reason: "it is the binary already running".into(),
            });
            installed.current.identity = Some(identity);
            return;
        }
        let binary_sha256 = staged.binary_sha256.clone();
        if installed.current.rejected.contains(&binary_sha256) {
            self.emit(UpgradeEvent::Skipped {
                identity,
                reason: "the same binary was rejected before".into(),
            });
            return;
        }
        self.emit(UpgradeEvent::TestRunning {
            identity: identity.clone(),
        });
        if let Err(e) = install::test_run(&staged.path, &self.args, self.cfg.test_run_timeout).await
        {
            return self.reject(installed, &key, &identity, Some(&binary_sha256), &e);
        }
        if let Some(veto) = &self.cfg.veto {
            let info = crate::ReleaseInfo {
                identity: identity.clone(),
                sha256: binary_sha256.clone(),
            };
            if let Err(why) = veto(&info) {
                return self.reject(
                    installed,
                    &key,
                    &identity,
                    Some(&binary_sha256),
                    &InstallError::Vetoed(why),
                );
            }
        }
        self.emit(UpgradeEvent::Installing {
            identity: identity.clone(),
        });
        let target = installed.target.clone();
        let keep_prev = installed.on_probation.is_some();
        let installed_now =
            tokio::task::spawn_blocking(move || install::install(staged, &target, keep_prev)).await;
        match installed_now {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return self.reject(installed, &key, &identity, Some(&binary_sha256), &e),
            Err(e) => {
                let e = InstallError::Io {
                    what: "installing the new binary".into(),
                    source: std::io::Error::other(e.to_string()),
                };
                return self.reject(installed, &key, &identity, Some(&binary_sha256), &e);
            }
        }

        self.emit(UpgradeEvent::HandingOff {
            identity: identity.clone(),
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reason = format!("release {identity}");
        if self
            .master
            .send(Event::Restart {
                reason,
                reply: Some(tx),
            })
            .is_err()
        {
            return;
        }
        let candidate = Candidate {
            key,
            identity,
            binary_sha256,
        };
        match rx.recv().await {
            Some(RestartOutcome::Ready { generation, .. })
            | Some(RestartOutcome::Survived { generation, .. }) => {
                let previous = std::mem::replace(
                    &mut installed.current.sha256,
                    candidate.binary_sha256.clone(),
                );
                installed.current.identity = Some(candidate.identity.clone());
                installed.on_probation = Some(candidate.binary_sha256.clone());
                self.emit(UpgradeEvent::Serving {
                    identity: candidate.identity.clone(),
                    generation,
                });
                // Probation is watched without the lock: the next release need not wait for it.
                tokio::spawn(self.clone().watch_probation(rx, candidate, previous));
            }
            Some(RestartOutcome::Failed {
                reason,
                after_ready,
            }) => {
                self.roll_back(installed, &candidate, &reason, after_ready)
                    .await;
            }
            None => {
                // A later restart superseded ours before it started; the binary on disk is
                // the new one and that later restart runs it.
                installed.current.sha256 = candidate.binary_sha256;
                installed.current.identity = Some(candidate.identity);
            }
        }
    }

    /// Waits for the end of a serving release's probation; rolls back if it failed and is still
    /// what is installed.
    async fn watch_probation(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<RestartOutcome>,
        candidate: Candidate,
        previous_sha256: String,
    ) {
        let outcome = rx.recv().await;
        let mut guard = self.installed.lock().await;
        let Some(installed) = guard.as_mut() else {
            return;
        };
        let still_installed = installed.current.sha256 == candidate.binary_sha256;
        if still_installed {
            installed.on_probation = None;
        }
        match outcome {
            Some(RestartOutcome::Failed {
                reason,
                after_ready,
            }) if still_installed => {
                self.roll_back(installed, &candidate, &reason, after_ready)
                    .await;
                installed.current.sha256 = previous_sha256;
                installed.current.identity = None;
            }
            Some(RestartOutcome::Failed { reason, .. }) => {
                // A newer release replaced it already; only remember not to try it again.
                remember(&mut installed.current.rejected, &candidate.key);
                remember(&mut installed.current.rejected, &candidate.binary_sha256);
                let reason = format!("{reason} (already replaced by a newer release)");
                self.emit(UpgradeEvent::Rejected {
                    identity: candidate.identity,
                    reason,
                });
            }
            Some(RestartOutcome::Survived { generation, .. }) => {
                self.emit(UpgradeEvent::Upgraded {
                    identity: candidate.identity,
                    generation,
                });
            }
            Some(RestartOutcome::Ready { .. }) | None => {}
        }
    }

    /// Restores the last proven binary; when nobody serves any more (the release failed after it
    /// became ready), starts a worker from it.
    async fn roll_back(
        &self,
        installed: &mut Installed,
        candidate: &Candidate,
        reason: &str,
        restart: bool,
    ) {
        let (key, identity, binary_sha256) = (
            &candidate.key,
            &candidate.identity,
            &candidate.binary_sha256,
        );
        let target = installed.target.clone();
        match tokio::task::spawn_blocking(move || install::rollback(&target)).await {
            Ok(Ok(())) => tracing::warn!(%identity, %reason, "rolled back to the previous binary"),
            Ok(Err(e)) => {
                tracing::error!(%identity, error = %e, "could not restore the previous binary")
            }
            Err(e) => {
                tracing::error!(%identity, error = %e, "could not restore the previous binary")
            }
        }
        remember(&mut installed.current.rejected, key);
        remember(&mut installed.current.rejected, binary_sha256);
        self.emit(UpgradeEvent::RolledBack {
            identity: identity.to_string(),
            reason: reason.to_string(),
        });
        if restart {
            let reason = format!("rollback from release {identity}");
            let _ = self.master.send(Event::Restart {
                reason,
                reply: None,
            });
        }
    }

    fn reject(
        &self,
        installed: &mut Installed,
        key: &str,
        identity: &str,
        binary_sha256: Option<&str>,
        error: &InstallError,
    ) {
        tracing::warn!(%identity, %error, "release rejected; the running version keeps serving");
        if error.is_release_fault() {
            remember(&mut installed.current.rejected, key);
            if let Some(h) = binary_sha256 {
                remember(&mut installed.current.rejected, h);
            }
        } else {
            installed.retry = Some(identity.to_string());
        }
        self.emit(UpgradeEvent::Rejected {
            identity: identity.to_string(),
            reason: error.to_string(),
        });
    }

    fn emit(&self, event: UpgradeEvent) {
        emit(&self.cfg.on_event, event);
    }
}

fn emit(hook: &Option<EventHook>, event: UpgradeEvent) {
    match &event {
        // Every poll: only worth a line when debugging.
        UpgradeEvent::Checking { .. } | UpgradeEvent::Downloading { .. } => {
            tracing::debug!(%event, "upgrade")
        }
        UpgradeEvent::CheckFailed { .. }
        | UpgradeEvent::Rejected { .. }
        | UpgradeEvent::RolledBack { .. } => tracing::warn!(%event, "upgrade"),
        _ => tracing::info!(%event, "upgrade"),
    }
    if let Some(hook) = hook {
        hook(&event);
    }
}

fn rejection_key(release: &Release) -> String {
    Current::rejection_key(
        &release.identity,
        release.sha256.as_deref(),
        release.signature.as_deref(),
    )
}

fn remember(rejected: &mut Vec<String>, key: &str) {
    if !rejected.iter().any(|k| k == key) {
        if rejected.len() == REJECTED_MEMORY {
            rejected.remove(0);
        }
        rejected.push(key.to_string());
    }
}

fn error_backoff(errors: u32, interval: Duration) -> Duration {
    let exp = Duration::from_secs(1).saturating_mul(1u32 << errors.min(10));
    exp.min(MAX_ERROR_BACKOFF.max(interval))
}

/// Counts a release's bytes as they pass, for `Downloading` events.
struct Progress {
    inner: crate::fetch::ReleaseBody,
    identity: String,
    total: Option<u64>,
    bytes: u64,
    last_report: Instant,
    hook: Option<EventHook>,
    /// Raised at the first byte read.
    read: Arc<AtomicBool>,
}

impl Progress {
    fn new(
        inner: crate::fetch::ReleaseBody,
        identity: String,
        total: Option<u64>,
        hook: Option<EventHook>,
        read: Arc<AtomicBool>,
    ) -> Self {
        Progress {
            inner,
            identity,
            total,
            bytes: 0,
            last_report: Instant::now(),
            hook,
            read,
        }
    }

    fn report(&mut self) {
        self.last_report = Instant::now();
        let event = UpgradeEvent::Downloading {
            identity: self.identity.clone(),
            bytes: self.bytes,
            total: self.total,
        };
        tracing::debug!(%event, "upgrade");
        if let Some(hook) = &self.hook {
            hook(&event);
        }
    }
}

impl AsyncRead for Progress {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = (buf.filled().len() - before) as u64;
            self.bytes += n;
            self.read.store(true, Ordering::Relaxed);
            if n == 0 || self.last_report.elapsed() >= Duration::from_millis(100) {
                self.report();
            }
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_backoff_grows_and_is_capped() {
        let i = Duration::from_secs(60);
        assert_eq!(error_backoff(1, i), Duration::from_secs(2));
        assert_eq!(error_backoff(3, i), Duration::from_secs(8));
        assert_eq!(error_backoff(30, i), MAX_ERROR_BACKOFF);
    }

    #[test]
    fn rejected_memory_is_bounded_and_deduplicated() {
        let mut r = Vec::new();
        for i in 0..(REJECTED_MEMORY + 10) {
            remember(&mut r, &i.to_string());
            remember(&mut r, &i.to_string());
        }
        assert_eq!(r.len(), REJECTED_MEMORY);
        assert!(!r.contains(&"0".to_string()));
    }
}
