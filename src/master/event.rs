//! What wakes the master, and what it reports to whoever asked for a restart.

use nix::sys::signal::Signal;

use super::signals::Action;

/// Everything that can wake the master.
#[derive(Debug)]
pub(crate) enum Event {
    Signal(Signal, Action),
    Ready {
        generation: u64,
    },
    ReadyTimeout {
        generation: u64,
    },
    DrainTimeout {
        generation: u64,
    },
    ProbationOver {
        generation: u64,
    },
    BackoffElapsed,
    Restart {
        reason: String,
        reply: Option<Reply>,
    },
    /// The master should become the binary on disk (a release proved itself).
    Reexec(super::reexec::Wanted),
    /// The binary on disk was checked for a re-exec.
    ReexecPrepared(super::reexec::Prepared),
}

/// Where the master reports how a restart goes: `Ready`, then `Survived` or `Failed`; or only
/// `Failed`. Two messages, so that the pipeline can take the next release while this one is on
/// probation.
pub(crate) type Reply = tokio::sync::mpsc::UnboundedSender<RestartOutcome>;

/// How a restart asked for with a reply goes: the install pipeline rolls back on `Failed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RestartOutcome {
    /// The new worker is ready and serving; its probation window has begun.
    Ready { generation: u64, pid: u32 },
    /// The new worker served through the probation window (or was itself replaced or stopped
    /// after it became ready, before the window ended).
    Survived { generation: u64, pid: u32 },
    /// The new worker never became ready, or exited during probation. When `after_ready` is
    /// set, nobody is serving: the master waits for the pipeline to restart after its rollback
    /// (with a fallback in case it does not).
    Failed { reason: String, after_ready: bool },
}

/// The worker that serves now, as the master publishes it after every event: the release state
/// reads the build it runs from `/proc/<pid>/exe`, the exact file it executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServingWorker {
    pub(crate) generation: u64,
    pub(crate) pid: u32,
}
