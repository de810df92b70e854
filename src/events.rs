//! What the upgrade pipeline reports, phase by phase: logged through `tracing` and handed to
//! the callback given to [`Upgrader::on_event`](crate::Upgrader::on_event).

use std::fmt;
use std::time::Duration;

/// One step of checking for, installing, or rejecting a release.
///
/// ```
/// use upshift::UpgradeEvent;
/// let e = UpgradeEvent::Rejected { identity: "v2".into(), reason: "checksum mismatch".into() };
/// assert_eq!(e.to_string(), "release v2 rejected: checksum mismatch");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpgradeEvent {
    /// A fetcher is being asked for something new.
    Checking {
        /// The fetcher's name.
        fetcher: String,
    },
    /// A check failed; it is retried after `retry_in`.
    CheckFailed {
        /// The fetcher's name.
        fetcher: String,
        /// What went wrong.
        error: String,
        /// When the next attempt is.
        retry_in: Duration,
    },
    /// Bytes of a release have arrived (reported at most every 100 ms and at the end).
    Downloading {
        /// The release.
        identity: String,
        /// Bytes so far.
        bytes: u64,
        /// The size, when the fetcher knew it.
        total: Option<u64>,
    },
    /// The release's bytes are in and verified; the new binary is being test-run.
    TestRunning {
        /// The release.
        identity: String,
    },
    /// The new binary is being put in place of the old one.
    Installing {
        /// The release.
        identity: String,
    },
    /// A new worker is starting from the new binary.
    HandingOff {
        /// The release.
        identity: String,
    },
    /// The new worker is ready and serving; its probation window has begun.
    Serving {
        /// The release.
        identity: String,
        /// The new worker's generation.
        generation: u64,
    },
    /// The new worker served through its probation window (or until a newer release replaced it).
    Upgraded {
        /// The release.
        identity: String,
        /// The new worker's generation.
        generation: u64,
    },
    /// The release was refused before it reached traffic; nothing changed.
    Rejected {
        /// The release.
        identity: String,
        /// Why.
        reason: String,
    },
    /// The new worker failed; the previous binary is back on disk and serving again.
    RolledBack {
        /// The release.
        identity: String,
        /// Why.
        reason: String,
    },
    /// The release could not be installed this time for a reason that is not the release's
    /// fault (the transfer was cut, the disk was full); nothing changed, and it is tried again
    /// after a backoff.
    Retrying {
        /// The release.
        identity: String,
        /// What went wrong.
        reason: String,
    },
    /// A release that was already rejected or is already running was not installed.
    Skipped {
        /// The release.
        identity: String,
        /// Why.
        reason: String,
    },
    /// A release refused earlier is still what the source offers (a reminder, at most every few
    /// minutes per release; nothing is downloaded for it).
    StillRejected {
        /// The release.
        identity: String,
        /// Why it was refused.
        reason: String,
    },
    /// The file at the binary's path is not what the master just wrote there (after an install
    /// or a rollback): something else changed it. The master wrote the expected build back when
    /// `repaired` is true.
    Diverged {
        /// The file that was checked (the invoked path resolved).
        path: String,
        /// The sha256 the master expected there.
        expected: String,
        /// The sha256 found there (`missing` when there is no file).
        found: String,
        /// Whether the expected build was put back.
        repaired: bool,
    },
    /// The master re-executed itself into the build on disk, keeping its PID and its workers
    /// (see [`Upgrader::master_reexec`](crate::Upgrader::master_reexec)). Reported by the new
    /// image once it has taken over.
    MasterReexecuted {
        /// The build the master ran before (its `build_id`).
        from: String,
        /// The build it runs now.
        to: String,
    },
}

impl fmt::Display for UpgradeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeEvent::Checking { fetcher } => write!(f, "checking {fetcher}"),
            UpgradeEvent::CheckFailed {
                fetcher,
                error,
                retry_in,
            } => {
                write!(
                    f,
                    "checking {fetcher} failed: {error}; retrying in {retry_in:?}"
                )
            }
            UpgradeEvent::Downloading {
                identity,
                bytes,
                total: Some(t),
            } => {
                write!(f, "downloading release {identity}: {bytes}/{t} bytes")
            }
            UpgradeEvent::Downloading {
                identity,
                bytes,
                total: None,
            } => {
                write!(f, "downloading release {identity}: {bytes} bytes")
            }
            UpgradeEvent::TestRunning { identity } => write!(f, "test-running release {identity}"),
            UpgradeEvent::Installing { identity } => write!(f, "installing release {identity}"),
            UpgradeEvent::HandingOff { identity } => {
                write!(f, "starting a worker from release {identity}")
            }
            UpgradeEvent::Serving {
                identity,
                generation,
            } => {
                write!(
                    f,
                    "release {identity} is serving (generation {generation}), on probation"
                )
            }
            UpgradeEvent::Upgraded {
                identity,
                generation,
            } => {
                write!(
                    f,
                    "release {identity} passed probation (generation {generation})"
                )
            }
            UpgradeEvent::Rejected { identity, reason } => {
                write!(f, "release {identity} rejected: {reason}")
            }
            UpgradeEvent::RolledBack { identity, reason } => {
                write!(f, "release {identity} rolled back: {reason}")
            }
            UpgradeEvent::Retrying { identity, reason } => {
                write!(
                    f,
                    "release {identity} not installed this time: {reason}; it will be tried again"
                )
            }
            UpgradeEvent::Skipped { identity, reason } => {
                write!(f, "release {identity} skipped: {reason}")
            }
            UpgradeEvent::StillRejected { identity, reason } => {
                write!(f, "release {identity} is still refused: {reason}")
            }
            UpgradeEvent::Diverged {
                path,
                expected,
                found,
                repaired,
            } => {
                let what = if *repaired {
                    "put back"
                } else {
                    "could not be put back"
                };
                write!(
                    f,
                    "{path} diverged from the serving build: sha256 {found}, expected {expected}; the serving build {what}"
                )
            }
            UpgradeEvent::MasterReexecuted { from, to } => {
                write!(f, "master re-executed in place: {from} -> {to}")
            }
        }
    }
}

/// What a [`pre_upgrade`](crate::Upgrader::pre_upgrade) hook is told about a release that passed
/// every check and is about to be installed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReleaseInfo {
    /// The release's identity as the fetcher gave it.
    pub identity: String,
    /// Lower-case hex sha256 of the new executable.
    pub sha256: String,
}
