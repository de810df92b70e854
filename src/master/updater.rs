//! The poll loop and the install pipeline's order of stages, in the master.
//!
//! Each fetcher gets its own loop (its interval, with jitter; backoff on errors). Upgrades never
//! overlap: a release is taken through admit → stage → veto → test-run → install →
//! readiness-gated restart → probation under one lock, and rolled back if the new worker fails.
//! Every decision is asked of the release state ([`crate::release`]) after the disk was read
//! again; this file does the I/O in between.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, mpsc::UnboundedSender, Mutex, Notify};

use super::backoff::{error_backoff, rate_limit_wait};
use super::books::Books;
use super::handover::HandedRefusal;
use super::installing::install_blocking;
use super::progress::Progress;
use super::{Event, RestartOutcome, ServingWorker};
use crate::config::InstallMode;
use crate::events::UpgradeEvent;
use crate::fetch::{FetchError, Fetcher, Release, StagingArea};
use crate::install::{self, InstallError, StageOptions};
use crate::release::disk::RestorePoint;
use crate::release::model::{refusal_kind, Admission, Build, Offer, Policy, Staging};
use crate::release::{parse_version, vouch, Expected};

/// Called with every event; runs in the master.
pub(crate) type EventHook = Arc<dyn Fn(&UpgradeEvent) + Send + Sync>;
/// May veto a release that passed every check, like overseer's PreUpgrade.
pub(crate) type VetoHook = Arc<dyn Fn(&crate::ReleaseInfo) -> Result<(), String> + Send + Sync>;

/// The pipeline's settings, shared by every fetcher's loop.
pub(crate) struct PipelineConfig {
    pub(crate) stage: StageOptions,
    pub(crate) test_run_timeout: Duration,
    pub(crate) on_event: Option<EventHook>,
    pub(crate) veto: Option<VetoHook>,
    pub(crate) version: Option<String>,
    /// The product a signed release must name; `None`: the invoked binary's file name.
    pub(crate) product: Option<String>,
    /// The target triple a signed release must name.
    pub(crate) target: String,
    pub(crate) install_mode: InstallMode,
    /// Jitter, staged rollout, hold and pin.
    pub(crate) fleet: crate::rollout::Fleet,
    /// The master re-executes into new builds, so a candidate's test run must prove that it can
    /// read the handover document.
    pub(crate) master_reexec: bool,
}

impl PipelineConfig {
    fn policy(&self) -> Policy {
        Policy {
            require_checksum_for_remote: self.stage.require_checksum_for_remote,
            require_signature: !self.stage.public_keys.is_empty(),
        }
    }
}

/// How a check ended, for the poll loop's next delay.
enum Checked {
    /// Nothing new, or a release handled (installed, refused or set aside).
    Done,
    /// A release that could not be installed for a reason not its own (a cut transfer, a full
    /// disk): try it again after a backoff.
    RetryAfterFault(String),
}

/// A release from the moment it is installed: what to remember if it fails, and what to put back.
pub(super) struct Candidate {
    pub(super) identity: String,
    pub(super) build: Build,
    /// The build to record as installed if it fails: what served when it was installed.
    pub(super) restored: Build,
    /// What served when it was installed, held open.
    pub(super) restore: RestorePoint,
    /// Its rejection key's parts, to remember it if it fails.
    pub(super) sha256: Option<String>,
    pub(super) signature: Option<String>,
    pub(super) source: Option<String>,
    pub(super) origin: crate::fetch::Origin,
}

impl Candidate {
    pub(super) fn offer(&self) -> Offer<'_> {
        Offer {
            identity: &self.identity,
            sha256: self.sha256.as_deref(),
            signature: self.signature.as_deref(),
            version: None,
            source: self.source.as_deref(),
            origin: self.origin,
            unvouched: None,
        }
    }
}

pub(crate) struct Updater {
    pub(super) cfg: PipelineConfig,
    pub(super) master: UnboundedSender<Event>,
    /// Also held by the master's re-exec, so that no release is half-done when it happens.
    pub(super) books: super::reexec::PipelineLock,
    pub(super) invoked: PathBuf,
    /// With a minisign key: what a release's signed metadata must say.
    expected: Option<Expected>,
    /// The master's arguments, which the test-run gets too.
    args: Vec<std::ffi::OsString>,
    /// Who serves now, published by the master.
    serving: tokio::sync::watch::Receiver<Option<ServingWorker>>,
    /// Refusals the master's previous image remembered, taken into the ledger when it loads.
    pub(super) handed: std::sync::Mutex<Vec<HandedRefusal>>,
}

impl Updater {
    pub(crate) fn new(
        cfg: PipelineConfig,
        invoked: PathBuf,
        args: Vec<std::ffi::OsString>,
        master: UnboundedSender<Event>,
        serving: tokio::sync::watch::Receiver<Option<ServingWorker>>,
    ) -> Arc<Self> {
        let expected = (!cfg.stage.public_keys.is_empty()).then(|| Expected {
            product: cfg.product.clone().unwrap_or_else(|| {
                (invoked.file_name()).map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            }),
            target: cfg.target.clone(),
        });
        Arc::new(Updater {
            cfg,
            master,
            books: Arc::new(Mutex::new(None)),
            invoked,
            expected,
            args,
            serving,
            handed: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Refusals carried over a re-exec of the master (see `handover`).
    pub(crate) fn hand_refusals(&self, refusals: Vec<HandedRefusal>) {
        *self.handed.lock().unwrap_or_else(|p| p.into_inner()) = refusals;
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
        // The last release this fetcher offered, for reminders while it stays refused.
        let mut last_offered: Option<String> = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = fetcher.changed() => {}
                () = check_now.notified() => {}
            }
            let outcome = self.check_once(fetcher.as_mut(), &mut last_offered).await;
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
                    tracing::info!(fetcher = fetcher.name(), %identity, ?retry_in, "trying the release again after a backoff");
                    retry_in
                }
                Err(FetchError::RateLimited(wait)) => rate_limit_wait(fetcher.name(), wait),
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
        last_offered: &mut Option<String>,
    ) -> Result<Checked, FetchError> {
        let mut guard = self.books.lock().await;
        let books = match guard.as_mut() {
            Some(b) => b,
            None => guard.insert(self.open_books().await?),
        };
        // The disk is the truth: read it again (stat; hash only if it changed) before deciding.
        let observed = books
            .blocking("reading the installed binary", |l| {
                l.observe()
                    .map_err(|e| InstallError::io(format!("reading {}", l.invoked().display()), e))
            })
            .await;
        observed.map_err(|e| FetchError::Source(e.to_string()))?;
        let standing = self.cfg.fleet.standing(&self.invoked).await;
        if let crate::rollout::Standing::Held(why) = &standing {
            // Not even asked: a held host costs its release server nothing.
            self.cfg.fleet.note(None, why);
            return Ok(Checked::Done);
        }
        self.emit(UpgradeEvent::Checking {
            fetcher: fetcher.name().to_string(),
        });
        let now = std::time::Instant::now();
        let current = books.ledger().state.current(&self.cfg.policy(), now);
        if let Ok(target) = install::resolve_target(&self.invoked) {
            fetcher.staging_area(&StagingArea {
                target,
                max_bytes: self.cfg.stage.max_bytes,
            });
        }
        let Some(release) = fetcher.check(&current).await? else {
            tracing::debug!(fetcher = fetcher.name(), "no new release");
            // Nothing newer than what it offered last: if that was refused, it still is.
            if let Some(identity) = last_offered.as_deref() {
                let due = books.ledger().state.remind_due(identity, now);
                if let Some(reason) = due {
                    let identity = identity.to_string();
                    self.emit(UpgradeEvent::StillRejected { identity, reason });
                }
            }
            return Ok(Checked::Done);
        };
        *last_offered = Some(release.identity.clone());
        if let Some(why) = self.cfg.fleet.defers(&standing, &release) {
            self.cfg.fleet.note(Some(&release.identity), &why);
            fetcher.deferred(&release.identity);
            return Ok(Checked::Done); // dropping the release unread aborts its transfer
        }
        self.cfg.fleet.clear_note();
        self.upgrade(books, release).await;
        if let Some(identity) = books.retry.take() {
            // Nothing was wrong with the release: once there is room it must be tried again,
            // also by a fetcher that remembers what it handed out (the File fetcher's file is
            // unchanged, an HTTP server would answer 304).
            fetcher.deferred(&identity);
            return Ok(Checked::RetryAfterFault(identity));
        }
        Ok(Checked::Done)
    }

    async fn upgrade(self: &Arc<Self>, books: &mut Books, mut release: Release) {
        let identity = release.identity.clone();
        // A fetcher's word `Local` counts only with the File fetcher's proof (see `Origin`).
        release.origin = release.vouched_origin();
        let now = std::time::Instant::now();
        // With a key, the signed metadata is read before the body: a release for another
        // product or target, or a replayed old version, is refused unread.
        let (vouched, unvouched) = match &self.expected {
            None => (None, None),
            Some(expected) => {
                match vouch(
                    release.signature.as_deref(),
                    release.version.as_deref(),
                    expected,
                ) {
                    Ok(meta) => (Some(meta), None),
                    Err(reason) => (None, Some(reason)),
                }
            }
        };
        if let Some(meta) = &vouched {
            // The signed version is the release's version: the floor is held against it.
            release.version = Some(meta.version.clone());
        }
        let offer = Offer {
            identity: &release.identity,
            sha256: release.sha256.as_deref(),
            signature: release.signature.as_deref(),
            version: release.version.as_deref(),
            source: release.source.as_deref(),
            origin: release.origin,
            unvouched: unvouched.as_deref(),
        };
        // Bound first: a guard in a `match` scrutinee would live through the arms, which lock
        // the ledger again.
        let admission = books.ledger().state.admit(&offer, &self.cfg.policy(), now);
        match admission {
            Admission::Download => {}
            Admission::Refuse { reason } => {
                // Decided from what the release says about itself: not a byte of it was read.
                let kind = crate::release::model::RefusalKind::Release;
                books
                    .ledger()
                    .state
                    .refuse(&offer, None, &reason, kind, now);
                tracing::warn!(%identity, %reason, "release refused before downloading it; the running version keeps serving");
                self.emit(UpgradeEvent::Rejected { identity, reason });
                return;
            }
            Admission::AlreadyRefused { reason, remind } => {
                if remind {
                    self.emit(UpgradeEvent::StillRejected { identity, reason });
                } else {
                    tracing::debug!(%identity, %reason, "release was rejected before; not trying it again");
                }
                return;
            }
        }
        if let Err(e) = books.lock.ensure() {
            // Another master runs from this binary: installing would race it on the file.
            return self.reject(books, &offer, None, &e);
        }
        tracing::info!(%identity, "new release found");
        let release_version = release.version.as_deref().and_then(parse_version);
        let (sha256, signature, source, origin) = (
            release.sha256.clone(),
            release.signature.clone(),
            release.source.clone(),
            release.origin,
        );
        let offer = Offer {
            identity: &identity,
            sha256: sha256.as_deref(),
            signature: signature.as_deref(),
            version: None,
            source: source.as_deref(),
            origin,
            unvouched: None,
        };
        let body_read = Arc::new(std::sync::atomic::AtomicBool::new(false));
        release.body = Box::new(Progress::new(
            release.body,
            identity.clone(),
            release.size_hint,
            self.cfg.on_event.clone(),
            body_read.clone(),
        ));
        let target = match install::resolve_target(&self.invoked) {
            Ok(t) => t,
            Err(e) => {
                let e = InstallError::io(format!("resolving {}", self.invoked.display()), e);
                return self.reject(books, &offer, None, &e);
            }
        };
        let installed_sha =
            (books.ledger().state.persisted.installed.as_ref()).map(|b| b.sha256.clone());
        let mut stage_opts = self.cfg.stage.clone();
        stage_opts.delta_bases = install::base_candidates((*self.serving.borrow()).map(|w| w.pid));
        let staged = match install::stage(release, &target, &stage_opts).await {
            Ok(s) => s,
            Err(InstallError::ChecksumMismatch { actual, .. })
                if Some(&actual) == installed_sha.as_ref() =>
            {
                // The new checksum was published but the old file is still served (a deploy
                // writes the checksum first): not a bad release, the next poll gets the new file.
                tracing::info!(
                    %identity,
                    "the source still serves the installed binary under the new checksum; retrying on the next poll"
                );
                return;
            }
            Err(e) => return self.reject(books, &offer, None, &e),
        };
        if !body_read.load(std::sync::atomic::Ordering::Relaxed) && staged.bytes > 0 {
            // Staging copied a local file without reading the body: report its bytes once.
            self.emit(UpgradeEvent::Downloading {
                identity: identity.clone(),
                bytes: staged.bytes,
                total: Some(staged.bytes),
            });
        }
        if let Some(meta) = vouched.filter(|m| m.sha256 != staged.asset_sha256) {
            // The signature proved the comment is the publisher's: it names another file.
            let e = InstallError::BadSignature(format!(
                "the signed metadata names sha256 {}, but the release's sha256 is {} (the \
                 publisher signed metadata for another file)",
                meta.sha256, staged.asset_sha256
            ));
            return self.reject(books, &offer, Some(&staged.binary_sha256), &e);
        }
        tracing::debug!(%identity, downloaded = staged.bytes, binary_bytes = staged.binary_bytes, asset_sha256 = %staged.asset_sha256, "release staged and verified");
        let binary_sha256 = staged.binary_sha256.clone();
        let staging = books.ledger().state.after_staging(&binary_sha256);
        match staging {
            Staging::Proceed => {}
            Staging::AlreadyInstalled => {
                let mut ledger = books.ledger();
                ledger
                    .state
                    .name_installed(&offer, release_version.as_ref());
                ledger.save();
                drop(ledger);
                self.emit(UpgradeEvent::Skipped {
                    identity,
                    reason: "it is the binary already installed".into(),
                });
                return;
            }
            Staging::RefusedBefore { reason } => {
                let kind = crate::release::model::RefusalKind::Release;
                (books.ledger().state).refuse(&offer, Some(&binary_sha256), &reason, kind, now);
                self.emit(UpgradeEvent::Skipped { identity, reason });
                return;
            }
        }
        // The application's veto comes before the candidate runs at all, even its test run.
        if let Some(veto) = &self.cfg.veto {
            let info = crate::ReleaseInfo {
                identity: identity.clone(),
                sha256: binary_sha256.clone(),
            };
            if let Err(why) = veto(&info) {
                let e = InstallError::Vetoed(why);
                return self.reject(books, &offer, Some(&binary_sha256), &e);
            }
        }
        self.emit(UpgradeEvent::TestRunning {
            identity: identity.clone(),
        });
        let (tested, ()) = tokio::join!(
            install::test_run(
                &staged.path,
                &self.args,
                self.cfg.test_run_timeout,
                (self.cfg.master_reexec).then_some(crate::master::handover::WRITES),
            ),
            install::flush(&staged),
        );
        if let Err(e) = tested {
            return self.reject(books, &offer, Some(&binary_sha256), &e);
        }
        self.emit(UpgradeEvent::Installing {
            identity: identity.clone(),
        });
        let build = Build {
            sha256: binary_sha256.clone(),
            identity: Some(identity.clone()),
            version: release_version,
            source: source.as_deref().map(crate::fetch::source_digest),
        };
        let placed = self.install(books, staged, build.clone()).await;
        let (restore, restored) = match placed {
            Ok(p) => p,
            Err(e) => return self.reject(books, &offer, Some(&binary_sha256), &e),
        };
        let candidate = Candidate {
            identity: identity.clone(),
            build,
            restored,
            restore,
            sha256,
            signature,
            source,
            origin,
        };
        self.hand_off(books, candidate).await;
    }

    /// Puts the staged binary in place (re-reading the disk first: the path may resolve to
    /// another file than when the release was found), and checks that the target now holds it.
    /// Returns the restore point and the build it replaced.
    async fn install(
        &self,
        books: &mut Books,
        staged: install::Staged,
        build: Build,
    ) -> Result<(RestorePoint, Build), InstallError> {
        let mode = self.cfg.install_mode;
        let invoked = self.invoked.clone();
        let serving_pid = (*self.serving.borrow()).map(|w| w.pid);
        let identity = build.identity.clone().unwrap_or_default();
        let expected = build.sha256.clone();
        let (restore, previous, diverged) = books
            .blocking("installing the new binary", move |l| {
                install_blocking(l, staged, &invoked, mode, serving_pid, &identity, &expected)
            })
            .await?;
        if let Some(event) = diverged {
            self.emit(event);
            return Err(InstallError::io(
                format!("installing over {}", self.invoked.display()),
                std::io::Error::other(
                    "the file changed during the install; the serving build was put back",
                ),
            ));
        }
        let mut ledger = books.ledger();
        ledger.state.installed(build);
        ledger.save();
        Ok((restore, previous))
    }

    /// Starts a worker from the installed candidate and follows it: serving (probation watched
    /// without the lock, so the next release need not wait), or rolled back.
    async fn hand_off(self: &Arc<Self>, books: &mut Books, candidate: Candidate) {
        let identity = candidate.identity.clone();
        self.emit(UpgradeEvent::HandingOff {
            identity: identity.clone(),
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reason = format!("release {identity}");
        let asked = self.master.send(Event::Restart {
            reason,
            reply: Some(tx),
        });
        if asked.is_err() {
            return;
        }
        match rx.recv().await {
            Some(RestartOutcome::Ready { generation, .. })
            | Some(RestartOutcome::Survived { generation, .. }) => {
                self.emit(UpgradeEvent::Serving {
                    identity,
                    generation,
                });
                tokio::spawn(self.clone().watch_probation(rx, candidate));
            }
            Some(RestartOutcome::Failed {
                reason,
                after_ready,
            }) => {
                self.roll_back(books, candidate, &reason, after_ready).await;
            }
            None => {
                // A later restart superseded ours before it started; the binary on disk is the
                // new one and that later restart runs it.
            }
        }
    }

    pub(super) fn reject(
        &self,
        books: &mut Books,
        offer: &Offer<'_>,
        binary_sha256: Option<&str>,
        error: &InstallError,
    ) {
        let identity = offer.identity.to_string();
        let reason = error.to_string();
        // The same bytes refused again for the same reason (the source's description of them
        // changed, they did not) are not news.
        let news = !books.ledger().state.refused_alike(&identity, &reason);
        match refusal_kind(error) {
            Some(kind) => {
                let now = std::time::Instant::now();
                (books.ledger().state).refuse(offer, binary_sha256, &reason, kind, now)
            }
            None => {
                // Not the release's fault (a cut transfer, a full disk): not a refusal either.
                books.retry = Some(identity.clone());
                self.emit(UpgradeEvent::Retrying { identity, reason });
                return;
            }
        }
        if !news {
            tracing::debug!(%identity, %reason, "release refused again for the same reason");
            return;
        }
        tracing::warn!(%identity, %error, "release rejected; the running version keeps serving");
        if let InstallError::TestRunFailed { stderr_tail, .. } = error {
            // Only here: the reason travels further (STATUS=, hooks) and must not quote it.
            tracing::warn!(%identity, %stderr_tail, "the end of the failed test run's stderr");
        }
        self.emit(UpgradeEvent::Rejected { identity, reason });
    }

    pub(super) fn emit(&self, event: UpgradeEvent) {
        emit(&self.cfg.on_event, event);
    }

    pub(super) fn invoked(&self) -> &std::path::Path {
        &self.invoked
    }
}

pub(super) fn emit(hook: &Option<EventHook>, event: UpgradeEvent) {
    match &event {
        // Every poll: only worth a line when debugging.
        UpgradeEvent::Checking { .. } | UpgradeEvent::Downloading { .. } => {
            tracing::debug!(%event, "upgrade")
        }
        UpgradeEvent::Diverged { .. } => tracing::error!(%event, "upgrade"),
        UpgradeEvent::CheckFailed { .. }
        | UpgradeEvent::Rejected { .. }
        | UpgradeEvent::Retrying { .. }
        | UpgradeEvent::RolledBack { .. } => tracing::warn!(%event, "upgrade"),
        _ => tracing::info!(%event, "upgrade"),
    }
    if let Some(hook) = hook {
        hook(&event);
    }
}
