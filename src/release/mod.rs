//! The release state: what serves, what is on disk, what proved itself, what was refused and
//! why, and the version floor.
//!
//! The decisions over it are pure functions ([`model`]); the master's updater reads the disk
//! ([`disk`]: the invoked path resolved again and `stat`ed before every decision, hashed only
//! when it changed), asks them, acts, and persists what must survive a restart ([`persist`]:
//! `<binary>.upshift-state`). Public: [`parse_version`] and [`Version`] (how upshift reads a
//! version is part of its contract with fetchers) and [`SignedMetadata`] (what a release's
//! signature must bind, the publisher's side of the contract).

pub(crate) mod disk;
pub(crate) mod model;
pub(crate) mod persist;
mod signed;
mod version;

#[cfg(test)]
mod model_tests;

use std::path::{Path, PathBuf};

pub(crate) use signed::{vouch, vouch_patch, Expected};
pub use signed::{MetadataError, SignedMetadata, BUILD_TARGET};
pub use version::{parse_version, Version};

use disk::{Hasher, OnDisk};
use model::{DiskChange, Persisted, ReleaseState};

/// The release state with its disk: loaded once, re-checked against the disk at every decision,
/// saved after every change. Blocking: call from a blocking task.
#[derive(Debug)]
pub(crate) struct Ledger {
    pub(crate) state: ReleaseState,
    pub(crate) hasher: Hasher,
    invoked: PathBuf,
    state_path: PathBuf,
    saved: Persisted,
}

impl Ledger {
    /// Reads the state file beside `invoked`; a missing or damaged one is rebuilt from the disk
    /// (with a warning for a damaged one).
    pub(crate) fn load(invoked: &Path, running_version: Option<&str>) -> Ledger {
        let state_path = persist::state_path(invoked);
        let persisted = match persist::load(&state_path) {
            Ok(Some(p)) => p,
            Ok(None) => Persisted::default(),
            Err(e) => {
                tracing::warn!(error = %e, "rebuilding the release state from the binary on disk");
                Persisted::default()
            }
        };
        Ledger {
            state: ReleaseState::new(persisted.clone(), running_version),
            hasher: Hasher::default(),
            invoked: invoked.to_path_buf(),
            state_path,
            saved: persisted,
        }
    }

    /// Reads the build at the invoked path (resolving it again) and brings the state in line
    /// with it.
    pub(crate) fn observe(&mut self) -> std::io::Result<OnDisk> {
        let disk = self.hasher.read_target(&self.invoked)?;
        match self.state.observe_disk(&disk.sha256) {
            DiskChange::Unchanged => {}
            DiskChange::Adopted => {
                tracing::debug!(target = %disk.target.display(), sha256 = %disk.sha256, "installed binary");
            }
            DiskChange::ChangedOutside { was } => tracing::info!(
                path = %self.invoked.display(),
                target = %disk.target.display(),
                sha256 = %disk.sha256,
                was = %was,
                "the binary was replaced outside upshift (a manual deploy?); releases are now compared with it"
            ),
        }
        self.save();
        Ok(disk)
    }

    /// Writes the state file if what it holds changed; a failure is logged, never fatal.
    pub(crate) fn save(&mut self) {
        if self.state.persisted == self.saved {
            return;
        }
        match persist::store(&self.state_path, &self.state.persisted) {
            Ok(()) => self.saved = self.state.persisted.clone(),
            Err(e) => tracing::warn!(
                path = %self.state_path.display(),
                error = %e,
                "cannot save the release state; the version floor may not survive a restart"
            ),
        }
    }

    pub(crate) fn invoked(&self) -> &Path {
        &self.invoked
    }
}
