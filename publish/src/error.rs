//! What can go wrong, each variant worded so that the user knows what to change.

use std::path::{Path, PathBuf};

/// An error of `upshift-publish`. Its `Display` is the whole message shown to the user: what was
/// being done, on what, and why it failed. Secrets (tokens, passwords, keys) never appear in it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is wrong: a missing or unknown flag, a bad value.
    #[error("{0}\n(run `upshift-publish --help` for the usage)")]
    Usage(String),

    /// The binary to publish cannot be used: missing, not a regular file, empty.
    #[error("the binary {}: {reason}", path.display())]
    Binary {
        /// The path given on the command line.
        path: PathBuf,
        /// Why it cannot be published.
        reason: String,
    },

    /// A local file operation failed (staging, archiving, writing into the directory).
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The minisign secret key cannot be read, decrypted or used.
    #[error("the minisign secret key {}: {reason}", path.display())]
    Key {
        /// The key file given with `--sign`.
        path: PathBuf,
        /// Why it cannot be used, and what to do about it.
        reason: String,
    },

    /// Signing failed after the key was loaded.
    #[error("signing {name}: {reason}")]
    Sign {
        /// The published name being signed.
        name: String,
        /// The signer's error.
        reason: String,
    },

    /// The GitHub API refused or failed a request.
    #[error("GitHub: {0}")]
    Github(String),

    /// S3 refused or failed a request.
    #[error("S3: {0}")]
    S3(String),

    /// Publishing would overwrite something the user did not ask to replace.
    #[error("{0}")]
    Conflict(String),

    /// A step failed, and the publisher then cleaned up (or tried to): `note` says what state the
    /// destination was left in.
    #[error("{error}\n{note}")]
    Aftermath {
        /// The failure.
        error: Box<Error>,
        /// What was rolled back, or what could not be.
        note: String,
    },

    /// An upload made no progress for too long.
    #[error("{what}: no progress for {secs} s (raise --timeout for slow links)")]
    Stalled {
        /// The upload.
        what: String,
        /// The `--timeout` in seconds.
        secs: u64,
    },
}

impl Error {
    /// An [`Error::Io`] about `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// An [`Error::Binary`] about `path`.
    pub fn binary(path: &Path, reason: impl Into<String>) -> Error {
        Error::Binary {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// The process exit status for this error: 2 for a usage error, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Aftermath { error, .. } => error.exit_code(),
            _ => 1,
        }
    }

    /// Adds what the publisher did about the failure (what it rolled back, or could not) to
    /// the message.
    pub(crate) fn with_note(self, note: String) -> Error {
        match note.is_empty() {
            true => self,
            false => Error::Aftermath {
                error: Box::new(self),
                note,
            },
        }
    }
}
