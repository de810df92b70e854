//! After the hand-off: a candidate proves itself through its probation, or fails and the build
//! that served when it was installed is put back — never anything older — and checked.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::books::Books;
use super::updater::{Candidate, Updater};
use super::{Event, RestartOutcome};
use crate::events::UpgradeEvent;
use crate::install::{self, InstallError};
use crate::release::disk::RestorePoint;
use crate::release::Ledger;

impl Updater {
    /// Waits for the end of a serving release's probation: proven, or rolled back if it failed
    /// and is still what is installed.
    pub(super) async fn watch_probation(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<RestartOutcome>,
        candidate: Candidate,
    ) {
        let outcome = rx.recv().await;
        let mut guard = self.books.lock().await;
        let Some(books) = guard.as_mut() else {
            return;
        };
        match outcome {
            Some(RestartOutcome::Survived { generation, .. }) => {
                // `.prev` takes it when the next release replaces it: `.prev` is always the
                // last proven build before the one installed.
                books.ledger().state.proven(&candidate.build.sha256);
                books.ledger().save();
                let reason = format!("release {} proved itself", candidate.identity);
                self.emit(UpgradeEvent::Upgraded {
                    identity: candidate.identity,
                    generation,
                });
                if self.cfg.master_reexec {
                    // The master becomes the proven build too, once this lock is released.
                    let wanted = super::reexec::Wanted {
                        reason,
                        restart: false,
                        expected: Some(candidate.build.sha256.clone()),
                    };
                    let _ = self.master.send(Event::Reexec(wanted));
                }
            }
            Some(RestartOutcome::Failed {
                reason,
                after_ready,
            }) => self.roll_back(books, candidate, &reason, after_ready).await,
            Some(RestartOutcome::Ready { .. }) | None => {}
        }
    }

    /// A candidate failed: remember it, and if it is still installed put back what served when
    /// it was installed; when nobody serves any more (it failed after it became ready), start a
    /// worker from that.
    pub(super) async fn roll_back(
        &self,
        books: &mut Books,
        candidate: Candidate,
        reason: &str,
        restart: bool,
    ) {
        let restored_build = candidate.restored.clone();
        let now = std::time::Instant::now();
        let offer = candidate.offer();
        let still =
            books
                .ledger()
                .state
                .failed(&candidate.build, &offer, &restored_build, reason, now);
        let identity = candidate.identity.clone();
        if !still {
            books.ledger().save();
            // A newer release (or the operator) replaced it already: nothing to put back.
            self.emit(UpgradeEvent::Rejected {
                identity,
                reason: format!("{reason} (already replaced by a newer build)"),
            });
            return;
        }
        let invoked = self.invoked().to_path_buf();
        let restore = candidate.restore;
        let put = books
            .blocking("restoring the serving build", move |l| {
                put_back(l, &invoked, &restore)
            })
            .await;
        match put {
            Ok(None) => {
                tracing::warn!(%identity, %reason, sha256 = %restored_build.sha256, "rolled back to the previous binary (the build that served before it)")
            }
            Ok(Some(diverged)) => self.emit(diverged),
            Err(e) => {
                tracing::error!(%identity, error = %e, "could not restore the build that served before it")
            }
        }
        books.ledger().save();
        self.emit(UpgradeEvent::RolledBack {
            identity: identity.clone(),
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
}

/// Puts the restore point back at the invoked path and reads the path again to check it; if it
/// does not hold the restored build, tries once more and reports the divergence (`Some`).
pub(super) fn put_back(
    ledger: &mut Ledger,
    invoked: &Path,
    restore: &RestorePoint,
) -> Result<Option<UpgradeEvent>, InstallError> {
    // The held file must still be the build it was when it was kept.
    let held = ledger
        .hasher
        .sha256_of(&restore.file)
        .map_err(|e| InstallError::io("reading the kept serving build", e))?;
    if held != restore.sha256 {
        return Err(InstallError::io(
            "restoring the serving build",
            std::io::Error::other(format!(
                "the kept file changed since (sha256 {held}, expected {}); not restoring it",
                restore.sha256
            )),
        ));
    }
    write_back(invoked, restore)?;
    let read = |ledger: &mut Ledger| {
        ledger
            .hasher
            .read_target(invoked)
            .map_err(|e| InstallError::io(format!("reading {}", invoked.display()), e))
    };
    let now = read(ledger)?;
    if now.sha256 == restore.sha256 {
        return Ok(None);
    }
    tracing::error!(path = %now.target.display(), expected = %restore.sha256, found = %now.sha256, "the binary is not the build just restored; writing it again");
    let repaired = write_back(invoked, restore).is_ok()
        && read(ledger).is_ok_and(|d| d.sha256 == restore.sha256);
    Ok(Some(UpgradeEvent::Diverged {
        path: now.target.display().to_string(),
        expected: restore.sha256.clone(),
        found: now.sha256,
        repaired,
    }))
}

fn write_back(invoked: &Path, restore: &RestorePoint) -> Result<(), InstallError> {
    match &restore.link {
        Some(link) => install::flip_link(invoked, link),
        None => {
            let target = install::resolve_target(invoked)
                .map_err(|e| InstallError::io(format!("resolving {}", invoked.display()), e))?;
            install::restore_from(&restore.file, &target)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::path::PathBuf;

    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "upshift-putback-{tag}-{}-{}",
            std::process::id(),
            crate::install::random_hex()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `app` holds `serving`, kept as the restore point; then a candidate is renamed over it.
    fn serving_then_candidate(dir: &Path) -> (PathBuf, Ledger, RestorePoint) {
        let app = dir.join("app");
        fs::write(&app, b"serving build").unwrap();
        let mut ledger = Ledger::load(&app, None);
        ledger.observe().unwrap();
        let restore = RestorePoint::capture(&mut ledger.hasher, None, &app, None).unwrap();
        fs::write(dir.join("staged"), b"candidate build").unwrap();
        fs::rename(dir.join("staged"), &app).unwrap();
        (app, ledger, restore)
    }

    #[test]
    fn the_kept_serving_build_is_put_back_and_checked() {
        let dir = scratch("ok");
        let (app, mut ledger, restore) = serving_then_candidate(&dir);
        assert!(put_back(&mut ledger, &app, &restore).unwrap().is_none());
        assert_eq!(fs::read(&app).unwrap(), b"serving build");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_kept_build_that_changed_since_is_not_put_back() {
        let dir = scratch("changed");
        let (app, mut ledger, restore) = serving_then_candidate(&dir);
        // Someone wrote into the kept file's inode: its earlier hash no longer holds.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(format!("/proc/self/fd/{}", {
                use std::os::fd::AsRawFd;
                restore.file.as_raw_fd()
            }));
        f.as_mut().unwrap().write_all(b" tampered").unwrap();
        drop(f);
        let err = put_back(&mut ledger, &app, &restore).unwrap_err();
        assert!(err.to_string().contains("changed since"), "{err}");
        assert_eq!(fs::read(&app).unwrap(), b"candidate build");
        fs::remove_dir_all(&dir).unwrap();
    }
}
