//! The release install pipeline: the stages between "a fetcher found a release" and "the new
//! binary is in place", each a function the master's upgrade loop calls in order.
//!
//! 1. [`stage`] streams the release into a temporary file beside the target, unpacking on the fly
//!    and checking size, checksum and signature; nothing is left behind on any error.
//! 2. [`test_run`] executes the staged binary once with a handshake only an upshift program answers
//!    ([`answer_test_run_if_asked`] is that answer), proving it runs on this machine.
//! 3. [`install`] renames it over the target, keeping the previous binary as `<target>.prev` so that
//!    [`restore_from`] puts back the build that served when the new worker fails.
//!
//! The running binary is never touched until the rename, and the target path names a complete
//! executable at every instant.

mod child;
mod delta;
mod flip;
mod local;
mod lock;
mod replace;
mod stage;
mod tarwalk;
mod testrun;
mod unpack;

#[cfg(test)]
pub(crate) mod tests;

use std::io;
use std::time::Duration;

pub(crate) use delta::base_candidates;
pub(crate) use flip::{flip_link, install_flip, read_link};
pub(crate) use local::{hash_copying, PreStaged};
#[cfg(test)]
pub(crate) use lock::InstallLock;
pub(crate) use lock::LockSlot;
#[cfg(test)]
pub(crate) use replace::file_sha256;
pub(crate) use replace::{install, prev_path, resolve_target, restore_from, sweep_leftovers};
pub(crate) use stage::{flush, stage, StageOptions, Staged, DEFAULT_DOWNLOAD_DEADLINE};
pub(crate) use testrun::{answer_test_run_if_asked, test_run};

/// The mode of a staged binary until the install gives it the target's: executable (the test run
/// needs no more than the owner's execute bit) and private, so that no other user can run or read
/// a build that has not been vetted yet.
pub(crate) const STAGED_MODE: u32 = 0o700;

/// The mode of an installed binary that replaces nothing (no target to copy the mode from).
pub(crate) const NEW_TARGET_MODE: u32 = 0o755;

/// Why a release was not installed. Each message says what was wrong with the release or the
/// machine, so the operator knows whether to republish, re-sign, free disk space or rebuild.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// The downloaded file does not match the published checksum: corrupted in transit, or the
    /// checksum belongs to another file.
    #[error("checksum mismatch: the release's sha256 is {actual}, but {expected} was published")]
    ChecksumMismatch {
        /// The sha256 the release announced.
        expected: String,
        /// The sha256 of what was received.
        actual: String,
    },

    /// A release from the network came without a checksum, and unchecked remote releases are
    /// refused.
    #[error(
        "the release came over the network without a sha256 checksum; publish one, or allow \
         unchecked remote releases in the configuration"
    )]
    MissingChecksum,

    /// The release, the executable unpacked from it, or the decompressed archive is larger than
    /// the configured limit ([`Upgrader::max_release_bytes`](crate::Upgrader::max_release_bytes)).
    #[error(
        "{what} is larger than the limit of {limit} bytes; raise max_release_bytes if it is genuine"
    )]
    TooLarge {
        /// What was too large: the release as published, the unpacked executable, or the
        /// decompressed archive.
        what: &'static str,
        /// The limit in bytes.
        limit: u64,
    },

    /// The transfer ended before the announced size was received.
    #[error("the release ended after {received} of {expected} bytes; the transfer was cut short")]
    Truncated {
        /// The announced size.
        expected: u64,
        /// What arrived.
        received: u64,
    },

    /// The download did not finish within the configured deadline
    /// ([`Upgrader::download_deadline`](crate::Upgrader::download_deadline)): a slow origin or
    /// network, not a fault of the release, so it is tried again later.
    #[error(
        "the download did not finish within {deadline:?} ({received} bytes received): the source \
         or the network is too slow; it will be tried again (raise download_deadline if \
         releases genuinely take this long)"
    )]
    DeadlineExceeded {
        /// The deadline that passed.
        deadline: Duration,
        /// The bytes received by then.
        received: u64,
    },

    /// The archive or compressed stream is corrupt or of an unsupported kind.
    #[error("cannot unpack the release: {0}")]
    Unpack(String),

    /// The archive does not contain exactly one executable to install; the message lists what it
    /// holds.
    #[error("cannot find the executable in the release archive: {0}")]
    BinaryNotInArchive(String),

    /// The minisign signature does not verify with the configured public key.
    #[error("the release's minisign signature is not valid for the configured public key: {0}")]
    BadSignature(String),

    /// A public key is configured but the release has no signature.
    #[error(
        "a minisign public key is configured but the release is not signed; publish its .minisig"
    )]
    Unsigned,

    /// The kernel refused to execute the new binary (`ENOEXEC`).
    #[error(
        "the release is not an executable for this machine (wrong architecture or not a binary): {0}"
    )]
    NotExecutable(String),

    /// The new binary's test run exited with a failure or was killed by a signal.
    ///
    /// The message leaves out what the binary wrote: it travels to places other users may read
    /// (systemd's `STATUS=`, event hooks). The master logs the stderr tail at `WARN`.
    #[error("the new binary failed its test run ({status}); its stderr is in the master's log")]
    TestRunFailed {
        /// How it ended.
        status: std::process::ExitStatus,
        /// The end of what it wrote to stderr (at most about 2 KiB).
        stderr_tail: String,
    },

    /// The new binary exited successfully without answering the handshake.
    #[error(
        "the new binary did not answer upshift's test-run handshake: is it built with upshift and \
         does it call Upgrader::run?"
    )]
    NotUpshift,

    /// The new binary answered the test-run handshake but cannot take over the running master:
    /// it does not read the version of the handover document this master writes when it
    /// re-executes itself into a new build (the release was built with an older or different
    /// upshift). Only asked for with master re-exec on
    /// ([`Upgrader::master_reexec`](crate::Upgrader::master_reexec)).
    ///
    /// ```
    /// let err = upshift::InstallError::HandoverIncompatible { version: 1 };
    /// assert!(err.is_release_fault());
    /// assert!(err.to_string().contains("master_reexec(false)"));
    /// ```
    #[error(
        "the release cannot take over the running master: it does not read version {version} of \
         upshift's handover document (it was built with an older or different upshift); it was \
         not installed and the running version keeps serving. Rebuild it with an upshift that \
         reads version {version}, or, to accept such releases for the workers only, turn master \
         re-exec off with Upgrader::master_reexec(false)"
    )]
    HandoverIncompatible {
        /// The handover document version the running master writes.
        version: u32,
    },

    /// The test run did not finish in time; the process was killed.
    #[error(
        "the new binary's test run did not finish within {0:?}; it must exit as soon as it \
         starts (does it do work before calling Upgrader::run?)"
    )]
    TestRunTimeout(Duration),

    /// The application's own check refused the release.
    #[error("the release was vetoed: {0}")]
    Vetoed(String),

    /// Another process (a second master started from the same binary) holds the lock beside the
    /// binary: this master does not install while it does. The first master to look for a
    /// release takes `<binary>.upshift-lock` and holds it for its life.
    #[error(
        "another upshift master holds {} (two masters run from this binary): this one installs \
         nothing while that one runs, and keeps serving its build; give each master its own copy \
         of the binary, or stop the other master",
        path.display()
    )]
    Locked {
        /// The lock file.
        path: std::path::PathBuf,
    },

    /// Reading the release from its source failed part-way (the server closed the connection,
    /// the network dropped, the source stopped sending): the network's or the source's fault,
    /// not the release's, so it is tried again after a backoff.
    #[error("the download failed: {0}; it will be tried again")]
    DownloadFailed(io::Error),

    /// A file operation failed; `what` says which (running out of disk space shows up here).
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

impl InstallError {
    /// Whether the release itself is at fault, so that trying the same bytes again would fail
    /// the same way. A write error (disk full, file-size limit) is the machine's: once there is
    /// room, the same release should be tried again. A download cut at its deadline is the
    /// network's or the source's. So is a lock held by another master: once it exits, the
    /// release is tried again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use upshift::InstallError;
    ///
    /// let slow = InstallError::DeadlineExceeded { deadline: Duration::from_secs(1800), received: 7 };
    /// assert!(!slow.is_release_fault());
    /// ```
    pub fn is_release_fault(&self) -> bool {
        !matches!(
            self,
            InstallError::Io { .. }
                | InstallError::DownloadFailed(_)
                | InstallError::DeadlineExceeded { .. }
                | InstallError::Locked { .. }
        )
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        InstallError::Io {
            what: what.into(),
            source,
        }
    }
}

/// 128 unpredictable bits as hex, for temporary file names and the test-run token.
///
/// `RandomState` is seeded from the OS once per thread and changes with every use; time, pid and
/// a counter are mixed in so that two processes or two calls never share a value. No crate needed.
pub(crate) fn random_hex() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};

    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut out = String::with_capacity(32);
    for half in 0..2u8 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(count);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u8(half);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}
