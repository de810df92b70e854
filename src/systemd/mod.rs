//! Working under systemd without libsystemd: readiness and progress notifications over
//! `NOTIFY_SOCKET` ([`notify`]) and socket activation through `LISTEN_FDS` ([`activation`]).
//!
//! Both belong to the master, the process systemd started and watches. What systemd passed is
//! taken once, when the master starts, and the variables are removed from the environment so that
//! workers, test runs and whatever they start never act on them: a worker that sent `READY=1`
//! would be ignored at best (`NotifyAccess=main`), and one that took fds 3.. as systemd's sockets
//! would take the master's handoff for them. The same goes for `UPSHIFT_DISABLE` mode, which adopts
//! passed sockets in-process (and leaves notifications to the program).

pub(crate) mod activation;
pub(crate) mod notify;

use crate::error::Error;

/// What the service manager handed this process.
#[derive(Debug, Default)]
pub(crate) struct Environment {
    /// Where to send notifications, if anywhere.
    pub(crate) notify: Option<notify::Target>,
    /// Listening sockets passed at fds 3.., already checked, non-blocking and close-on-exec.
    pub(crate) passed: Vec<activation::Passed>,
}

impl Environment {
    /// Reads and removes `NOTIFY_SOCKET` and `LISTEN_*`, taking ownership of passed descriptors.
    /// Like the worker's own environment handling, this must run before other threads read the
    /// environment, which [`Upgrader::run`](crate::Upgrader::run) documents.
    ///
    /// # Errors
    /// Socket activation meant for this process that cannot work: malformed variables, or a passed
    /// descriptor that is not a listening stream socket.
    pub(crate) fn take() -> Result<Environment, Error> {
        let notify = notify::take_target();
        let passed = activation::take_passed()?;
        Ok(Environment { notify, passed })
    }
}
