//! The errors upshift reports, each with the context a user needs to act on it.

use std::io;

/// Everything that can go wrong in upshift's own machinery.
///
/// ```
/// let e = upshift::Error::Config("no listeners".into());
/// assert!(e.to_string().contains("no listeners"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot work; the message says which setting.
    #[error("invalid upshift configuration: {0}")]
    Config(String),

    /// The master could not bind a listen address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address as configured.
        addr: String,
        /// The OS error.
        source: io::Error,
    },

    /// The worker's inherited environment is malformed: the process was started with upshift's
    /// variables set by something other than an upshift master.
    #[error("this process was started as an upshift worker but {0}; unset the UPSHIFT_* variables or start it through its master")]
    Protocol(String),

    /// A worker process could not be started.
    #[error("cannot start a worker from {path}: {source}")]
    Spawn {
        /// The executable path the master tried to run.
        path: String,
        /// The OS error.
        source: io::Error,
    },

    /// The master's runtime or signal handling could not be set up.
    #[error("upshift master: {what}: {source}")]
    Master {
        /// What the master was doing.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },

    /// Socket activation meant for this process cannot work: malformed `LISTEN_*` variables, a
    /// passed descriptor that is not a listening stream socket, or a configured listener that was
    /// not passed and cannot be bound either. The message names the descriptor or listener.
    #[error("socket activation: {0}")]
    Activation(String),

    /// An I/O error with what was being done at the time.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
