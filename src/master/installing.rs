//! The blocking heart of an install, run on the ledger off the master's runtime.

use crate::config::InstallMode;
use crate::events::UpgradeEvent;
use crate::fetch::Stamp;
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
    // `.prev` is left alone only while it really holds the last proven build: the state says
    // where the fallback should be, the disk says whether it still is (a `.prev` removed or
    // replaced by hand leaves the serving build as the best fallback there is).
    let keep_prev =
        !ledger.state.keep_as_prev() && prev_holds_proven(ledger, &disk.target).unwrap_or(false);
    // The staged file exactly as staging left it: its hash can stand for the installed file.
    let untouched = staged.stamp.filter(|stamp| {
        std::fs::symlink_metadata(&staged.path).is_ok_and(|m| Stamp::of(&m) == *stamp)
    });
    let written = match mode {
        InstallMode::InPlace => {
            install::install(staged, &disk.target, keep_prev)?;
            disk.target.clone()
        }
        InstallMode::ReleaseDirectories => {
            install::install_flip(staged, invoked, &disk.target, identity)?
        }
    };
    if let Some(stamp) = untouched {
        // Not read again: the file renamed into place is the one staging hashed.
        ledger.hasher.adopt_installed(&written, &stamp, expected);
    }
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

/// Whether `<target>.prev` is a regular file whose content is the build the state records as
/// proven (hashed only when `stat` shows it changed since the last look).
fn prev_holds_proven(ledger: &mut Ledger, target: &std::path::Path) -> std::io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(proven) = ledger.state.persisted.proven.clone() else {
        return Ok(false);
    };
    let prev = install::prev_path(target);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&prev)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Ok(false);
    }
    Ok(ledger.hasher.sha256_of(&file)? == proven)
}
