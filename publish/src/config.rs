//! What one run publishes, where, and how: the [`Config`] the command line is parsed into.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::artifact::Archive;

/// The smallest part S3 accepts (except for the last one).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// How the checksum is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumMode {
    /// `NAME.sha256`, in `sha256sum` format.
    Sidecar,
    /// A line for NAME in a `SHA256SUMS` list next to it (other lines kept).
    Sums,
    /// Both.
    Both,
    /// Neither (the S3 object still carries its sha256 in its metadata).
    None,
}

impl ChecksumMode {
    /// Whether a `NAME.sha256` sidecar is written.
    pub fn sidecar(self) -> bool {
        matches!(self, ChecksumMode::Sidecar | ChecksumMode::Both)
    }

    /// Whether the `SHA256SUMS` list is updated.
    pub fn sums(self) -> bool {
        matches!(self, ChecksumMode::Sums | ChecksumMode::Both)
    }
}

/// A secret from a file or the environment. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Signing settings.
#[derive(Debug, Clone)]
pub struct SignConfig {
    /// The minisign secret key file.
    pub key: PathBuf,
    /// The environment variable holding an encrypted key's password.
    pub password_env: String,
    /// A note added to the signed metadata (`note:<text>`).
    pub trusted_comment: Option<String>,
    /// The product the signature binds the release to.
    pub product: String,
    /// The release's version, bound by the signature.
    pub version: String,
}

/// Where to publish.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A directory.
    Dir(PathBuf),
    /// A GitHub release.
    Github(GithubConfig),
    /// An S3 object.
    S3(S3Config),
}

/// GitHub settings.
#[derive(Debug, Clone)]
pub struct GithubConfig {
    /// The repository's owner.
    pub owner: String,
    /// The repository's name.
    pub repo: String,
    /// The release's tag.
    pub tag: String,
    /// The REST API base, without a trailing slash.
    pub api: String,
    /// The token: from `--github-token-file`, else `GITHUB_TOKEN`.
    pub token: Option<Secret>,
    /// A new release's title.
    pub release_name: Option<String>,
    /// A new release's description.
    pub notes: Option<String>,
    /// Leave a new release as a draft.
    pub draft: bool,
    /// Mark a new release as a prerelease.
    pub prerelease: bool,
    /// Replace assets of the same names.
    pub replace: bool,
}

/// S3 settings.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// The key, or a prefix ending in `/`.
    pub key: String,
    /// A custom endpoint URL.
    pub endpoint: Option<String>,
    /// Path-style addressing; `None`: with a custom endpoint only.
    pub path_style: Option<bool>,
    /// The region; `None`: the AWS chain, else `us-east-1`.
    pub region: Option<String>,
    /// The AWS profile.
    pub profile: Option<String>,
    /// Explicit credentials: key id and secret.
    pub credentials: Option<(String, Secret)>,
    /// The multipart part size in bytes.
    pub part_size: u64,
}

/// Everything one run needs, from the command line and the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// The built executable.
    pub binary: PathBuf,
    /// Where to publish it.
    pub destination: Destination,
    /// The published name, if given (`{target}` already replaced).
    pub name: Option<String>,
    /// The target triple named in default GitHub asset names.
    pub target: String,
    /// The packaging.
    pub archive: Archive,
    /// Previous builds to publish delta patches from (`--delta-from`, raw releases only).
    pub delta_from: Vec<PathBuf>,
    /// The executable's name inside an archive.
    pub archive_entry: Option<String>,
    /// Which checksum files to write.
    pub checksum: ChecksumMode,
    /// The checksum list's name.
    pub sums_name: String,
    /// Signing, if asked for.
    pub sign: Option<SignConfig>,
    /// No progress output.
    pub quiet: bool,
    /// Debug logs.
    pub verbose: bool,
    /// The longest a request or upload may go without progress.
    pub timeout: Duration,
}
