//! The blocking heart of an install, run on the ledger off the master's runtime.

use crate::config::InstallMode;
use crate::events::UpgradeEvent;
use crate::install::{self, InstallError};
use crate::release::disk::RestorePoint;
use crate::release::model::Build;
use crate::release::Ledger;

/// The blocking part of an install: capture the restore point, put the file in place, re-read
/// the target. Returns a divergence event (after repairing) when the target does not hold the
/// new build afterwards.
pub(super) fn install_blocking(
    ledger: &mut Ledger,
    staged: install::Staged,
    invoked: &std::path::Path,
    mode: InstallMode,
    serving_pid: Option<u32>,
    identity: &str,
    expected: &str,
) -> Result<(RestorePoint, Build, Option<UpgradeEvent>), InstallError> {
    let disk = ledger
        .observe()
        .map_err(|e| InstallError::io(format!("reading {}", invoked.display()), e))?;
    let link = match mode {
        InstallMode::InPlace => None,
        InstallMode::ReleaseDirectories => Some(install::read_link(invoked)?),
    };
    let restore = RestorePoint::capture(&mut ledger.hasher, serving_pid, &disk.target, link)
        .map_err(|e| InstallError::io("opening the serving build to keep it for a rollback", e))?;
    let previous = ledger.state.restore_build(&restore.sha256);
    let keep_prev = !ledger.state.keep_as_prev();
    let written = match mode {
        InstallMode::InPlace => {
            install::install(staged, &disk.target, keep_prev)?;
            disk.target.clone()
        }
        InstallMode::ReleaseDirectories => {
            install::install_flip(staged, invoked, &disk.target, identity)?
        }
    };
    let now = ledger.hasher.read_target(invoked).map_err(|e| {
        InstallError::io(
            format!("reading {} after the install", invoked.display()),
            e,
        )
    })?;
    if now.sha256 == expected {
        return Ok((restore, previous, None));
    }
    tracing::error!(path = %written.display(), expected, found = %now.sha256, "the binary is not what was just installed");
    let repaired = matches!(
        super::probation::put_back(ledger, invoked, &restore),
        Ok(None)
    );
    let event = UpgradeEvent::Diverged {
        path: now.target.display().to_string(),
        expected: expected.to_string(),
        found: now.sha256,
        repaired,
    };
    Ok((restore, previous, Some(event)))
}
