//! What the install pipeline keeps behind its lock (the release state, a release to retry, the
//! install lock beside the binary), and how it is loaded: off the first worker's critical path,
//! with the refusals a previous image of the master handed over.

use std::sync::Arc;

use super::handover::HandedRefusal;
use super::updater::Updater;
use crate::config::InstallMode;
use crate::fetch::FetchError;
use crate::install::{self, InstallError};
use crate::release::model::{Refusal, RefusalKind};
use crate::release::Ledger;

/// What the pipeline keeps behind its lock: the release state and a release to retry.
pub(super) struct Books {
    /// Shared with blocking tasks (hashing, installing); the pipeline's lock already keeps two
    /// users apart, so this one is never contended.
    pub(super) ledger: Arc<std::sync::Mutex<Ledger>>,
    /// A release refused for a fault of this machine (disk full, file too large), not of the
    /// release: its fetcher is asked to offer it again, after a backoff.
    pub(super) retry: Option<String>,
    /// The lock beside the binary: one master installs (see `install::LockSlot`).
    pub(super) lock: install::LockSlot,
}

impl Books {
    /// The refusals remembered in memory, for the master's next image.
    pub(super) fn handed_refusals(&self) -> Vec<HandedRefusal> {
        let now = std::time::Instant::now();
        let ledger = self.ledger();
        let refusals = ledger.state.refusals.iter().map(|r| HandedRefusal {
            key: r.key.clone(),
            identity: r.identity.clone(),
            binary_sha256: r.binary_sha256.clone(),
            reason: r.reason.clone(),
            release_fault: r.kind == RefusalKind::Release,
            reminded_ago: now.saturating_duration_since(r.reminded),
            expires_in: r.expires.map(|t| t.saturating_duration_since(now)),
        });
        refusals.collect()
    }

    /// The ledger, for decisions (no I/O while it is held).
    pub(super) fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs file work on the ledger off the master's runtime.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        what: &str,
        work: impl FnOnce(&mut Ledger) -> Result<T, InstallError> + Send + 'static,
    ) -> Result<T, InstallError> {
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || {
            let mut l = ledger
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut l)
        })
        .await
        .map_err(|e| InstallError::io(what.to_string(), std::io::Error::other(e.to_string())))?
    }
}

impl Updater {
    /// Loads the persisted state and sweeps what an interrupted upgrade left, off the first
    /// worker's critical path.
    pub(super) async fn open_books(&self) -> Result<Books, FetchError> {
        let invoked = self.invoked.clone();
        let version = self.cfg.version.clone();
        let mode = self.cfg.install_mode;
        let (ledger, lock) = tokio::task::spawn_blocking(move || {
            let target = install::resolve_target(&invoked);
            // The lock goes beside what an install replaces: the file, or the release link.
            let locked = match (&target, mode) {
                (Ok(target), InstallMode::InPlace) => target.clone(),
                _ => invoked.clone(),
            };
            let lock = install::LockSlot::take(locked);
            // Holding the lock beside a path, this master is the only one that writes temps
            // there: whatever it finds is a dead master's, however young.
            let ours = |path: &std::path::Path| lock.holds() && lock.guards() == path;
            if let Ok(target) = &target {
                install::sweep_leftovers(target, ours(target));
            }
            if invoked.is_symlink() {
                install::sweep_leftovers(&invoked, ours(&invoked));
            }
            (Ledger::load(&invoked, version.as_deref()), lock)
        })
        .await
        .map_err(|e| FetchError::Source(format!("loading the release state: {e}")))?;
        let mut ledger = ledger;
        let handed = std::mem::take(&mut *self.handed.lock().unwrap_or_else(|p| p.into_inner()));
        let now = std::time::Instant::now();
        ledger
            .state
            .refusals
            .extend(handed.into_iter().map(|r| Refusal {
                key: r.key,
                identity: r.identity,
                binary_sha256: r.binary_sha256,
                reason: r.reason,
                kind: if r.release_fault {
                    RefusalKind::Release
                } else {
                    RefusalKind::Transient
                },
                reminded: now.checked_sub(r.reminded_ago).unwrap_or(now),
                expires: r.expires_in.map(|d| now + d),
            }));
        Ok(Books {
            ledger: Arc::new(std::sync::Mutex::new(ledger)),
            retry: None,
            lock,
        })
    }
}
