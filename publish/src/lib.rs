//! `upshift-publish` publishes a built binary as a release in exactly the shape upshift's
//! fetchers read, so that a running server upgrades itself to it.
//!
//! ```text
//! upshift-publish BINARY --dir DIR                      # FileFetcher / HttpFetcher
//! upshift-publish BINARY --github OWNER/REPO --tag TAG  # GithubFetcher
//! upshift-publish BINARY --s3 s3://BUCKET/KEY           # S3Fetcher
//! ```
//!
//! It stages a snapshot of the binary (optionally packed as `.gz`, `.tar.gz` or `.zip`, with
//! the extension fetchers read the packaging from), computes its sha256, signs it with minisign
//! if asked, and uploads, always in this order: the checksum (`NAME.sha256` and/or a line in
//! `SHA256SUMS`), the signature (`NAME.minisig`), then the file itself. A fetcher therefore never
//! sees the new file next to a stale checksum; if a step fails, the side files are put back as
//! they were (and a GitHub release the run created is deleted again). On success it prints what
//! it published on stdout; progress and logs go to stderr.
//!
//! # A directory: the File and HTTP fetchers
//!
//! ```text
//! upshift-publish target/release/app --dir /srv/app --name next --sign ~/.minisign/minisign.key
//! ```
//!
//! writes `/srv/app/next.sha256`, `/srv/app/next.minisig` and then `/srv/app/next`, each through a
//! temporary dot file in the same directory, `fsync` and `rename` (and the directory flushed),
//! so that a watcher never sees a partial file. A server running
//! `FileFetcher::new("/srv/app/next")` upgrades at once; one running
//! `HttpFetcher::new("https://releases.example.com/next")` upgrades at its next poll when a web
//! server serves `/srv/app`. With `--checksum sums`, the line for NAME in `/srv/app/SHA256SUMS`
//! is replaced (or added) and the other lines kept, for `HttpFetcher::sha256sums_url`.
//!
//! # GitHub releases
//!
//! ```text
//! GITHUB_TOKEN=… upshift-publish target/release/app --github acme/app --tag v1.4.0 \
//!     --archive tar.gz --sign minisign.key
//! ```
//!
//! uploads `app-x86_64-unknown-linux-gnu.tar.gz` (the target triple in the name is what the
//! GitHub fetcher's asset selection looks for: `--target` for a cross-compiled build) with
//! `.sha256` and `.minisig` assets to the release tagged `v1.4.0`. A missing release is created
//! as a draft and published only once every asset is up; `--draft` leaves it a draft,
//! `--prerelease` marks it. An asset of the same name is refused (nothing is changed) unless
//! `--replace`. The token comes from `GITHUB_TOKEN` or `--github-token-file`, is sent only to
//! the API and the upload host the API names, and is never logged. `--github-api
//! https://HOST/api/v3` targets GitHub Enterprise Server. TLS is rustls with ring.
//!
//! # S3 and S3-compatible stores
//!
//! ```text
//! upshift-publish target/release/app --s3 s3://releases/app/linux/app --region eu-west-1
//! upshift-publish target/release/app --s3 s3://releases/app/ --s3-endpoint http://minio:9000
//! ```
//!
//! uploads `KEY.sha256` and `KEY.minisig` first, then the object with its sha256 both as
//! `x-amz-meta-sha256` and (below `--part-size`, 16 MiB by default) as S3's own SHA256 checksum,
//! which the server verifies. Larger objects go up as a multipart upload, four parts at a time,
//! each part with its own SHA256 checksum; a failed one is aborted. Credentials come from the
//! standard AWS chain (environment, profile, IMDS…), or `--s3-access-key-id` with the secret in
//! `$AWS_SECRET_ACCESS_KEY`.
//!
//! # Delta releases
//!
//! ```text
//! upshift-publish target/release/app --dir /srv/app --sign app.key --delta-from old/app-1.3.0
//! ```
//!
//! also publishes `/srv/app/app.from-<16 hex of old/app-1.3.0's sha256>.bidiff.zst`, a patch from
//! that build to this one (`upshift::delta`), with its own `.sha256` / `SHA256SUMS` line and
//! `.minisig` (whose signed metadata names the old build: `base:`), to any destination, before
//! the release itself. `--delta-from` may be repeated; raw releases only; a patch not under 90 %
//! of the release is skipped with a note.
//!
//! # Signing
//!
//! `--sign KEYFILE` takes a minisign secret key (`minisign -G` writes one). An encrypted key's
//! password is read from `$MINISIGN_PASSWORD` (or the variable `--password-env` names), never
//! from the command line. Signatures are prehashed, the only kind upshift's verifier
//! (`minisign-verify`) accepts, and each is checked against the key's public key before
//! anything is uploaded; the report prints that public key, for
//! `Upgrader::minisign_public_key`.
//!
//! Everything that can fail before the destination is touched is checked first: the binary,
//! the name, the key and its password, the token.
//!
//! Run `upshift-publish --help` for every flag; `docs/publishing.md` walks through each
//! destination.
//!
//! # Crates this uses, and why
//!
//! - `minisign` (jedisct1's, pure Rust): its `sign` writes only prehashed signatures, the kind
//!   `minisign-verify` in the install pipeline accepts, and it reads encrypted secret keys; it
//!   was in the workspace already (the core's tests sign with it).
//! - `octocrab` with the same features as upshift-github (rustls with ring, no aws-lc, no
//!   OpenSSL), through its raw requests: its typed upload buffers a whole asset in memory and
//!   hides statuses, while a streaming body is needed for progress and GitHub's error bodies
//!   for messages. `http`, `http-body`, `http-body-util`, `bytes`, `serde_json` and `rustls`
//!   (to install ring) come with it.
//! - `aws-sdk-s3`, `aws-config`, `aws-smithy-http-client` (rustls + ring) and
//!   `aws-smithy-types` (base64, the progress-counting body), set up as upshift-s3 does.
//! - `upshift` with `delta-make` for the patches: bidiff and zstd, the format masters apply.
//! - `flate2`, `tar` and `zip`: the crates, versions and features upshift's installer unpacks
//!   with, so both sides agree on the formats; `sha2` and `hex` as in the core.
//! - `tokio`, `tracing` with `tracing-subscriber` (logs on stderr, `RUST_LOG`), `thiserror`.
//!   No argument parser: the flags are parsed by hand, like the workspace's other binaries.

#![warn(missing_docs)]

pub mod artifact;
pub mod checksum;
pub mod cli;
pub mod config;
pub mod delta;
mod dir;
mod error;
mod github;
pub mod progress;
mod publish;
mod s3;
pub mod sign;

use std::fmt;

pub use config::{Config, Destination};
pub use error::Error;
pub use publish::Published;

use artifact::{published_name, Staging};
use publish::{Item, Sides};
use sign::Signer;

/// The target triple this tool was built for: the default `--target`.
pub const TARGET: &str = env!("UPSHIFT_PUBLISH_TARGET");

/// OS and architecture words the GitHub fetcher recognises in asset names, by target part.
const PLATFORM_WORDS: &[(&str, &[&str])] = &[
    ("linux", &["linux"]),
    ("darwin", &["darwin", "macos", "apple", "osx", "mac"]),
    ("windows", &["windows", "win64", "win32", "win"]),
    ("freebsd", &["freebsd"]),
    ("x86_64", &["x86_64", "x86-64", "amd64", "x64"]),
    ("aarch64", &["aarch64", "arm64"]),
];

/// Whether `word` stands in `text` with no letter or digit around it.
fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// Whether the GitHub fetcher would take `name` to be for `target`: the triple in it, or an OS
/// and an architecture word of the target.
pub fn names_platform(name: &str, target: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let target = target.to_ascii_lowercase();
    if name.contains(&target) {
        return true;
    }
    let words = |key: &str| {
        PLATFORM_WORDS
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, w)| *w)
    };
    let mut parts = target.split('-');
    let arch = parts.next().unwrap_or("");
    let Some(os_words) = parts.find_map(words) else {
        return false;
    };
    let arch_ok = match words(arch) {
        Some(w) => w.iter().any(|w| has_word(&name, w)),
        None => has_word(&name, arch),
    };
    arch_ok && os_words.iter().any(|w| has_word(&name, w))
}

impl fmt::Display for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "published {}", self.location)?;
        writeln!(f, "  sha256     {}", self.sha256)?;
        writeln!(f, "  size       {} bytes", self.size)?;
        for (what, location) in &self.sides {
            writeln!(f, "  {what:<10} {location}")?;
        }
        for location in &self.removed {
            writeln!(f, "  removed    {location} (stale)")?;
        }
        for patch in &self.patches {
            writeln!(
                f,
                "  patch      {} ({} bytes, {:.2} % of the release)",
                patch.location,
                patch.size,
                100.0 * patch.size as f64 / self.size.max(1) as f64
            )?;
            if let Some(base) = &patch.base {
                writeln!(f, "    from     {base}")?;
            }
            writeln!(f, "    sha256   {}", patch.sha256)?;
            for (what, location) in &patch.sides {
                writeln!(f, "    {what:<8} {location}")?;
            }
            for location in &patch.removed {
                writeln!(f, "    removed  {location} (stale)")?;
            }
        }
        for note in &self.notes {
            writeln!(f, "  note       {note}")?;
        }
        if let Some(pk) = &self.public_key {
            writeln!(f, "  verify-key {pk}")?;
        }
        for line in &self.extra {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io(what, std::io::Error::other(e)))?
}

/// Publishes as `config` says: stages the binary, signs it, uploads. Must run on a tokio
/// runtime.
pub async fn publish(config: &Config) -> Result<Published, Error> {
    let bin_name = config
        .binary
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::binary(&config.binary, "has no usable file name"))?
        .to_string();
    let explicit = match &config.destination {
        Destination::S3(s) if !s.key.ends_with('/') => {
            if config.name.is_some() {
                return Err(Error::Usage(
                    "--name with a full S3 key: give a prefix ending in / to name the object \
                     with --name, or put the name in the key"
                        .into(),
                ));
            }
            s.key.rsplit('/').next().map(str::to_string)
        }
        _ => config.name.clone(),
    };
    let base = match &config.destination {
        Destination::Github(_) => format!("{bin_name}-{}", config.target),
        _ => bin_name.clone(),
    };
    let name = published_name(explicit.as_deref(), &base, config.archive)?;
    if matches!(config.destination, Destination::Github(_))
        && !names_platform(&name, &config.target)
    {
        tracing::warn!(
            %name,
            target = %config.target,
            "the GitHub fetcher picks assets by the platform in their name, and this one names \
             none for the target: fetchers must set an asset pattern"
        );
    }
    let entry = config.archive_entry.clone().unwrap_or(bin_name);

    // Kept until the upload is done: the staged file lives in it.
    let staging = Staging::new()?;
    let artifact = {
        let (binary, name, archive) = (config.binary.clone(), name.clone(), config.archive);
        let dir = staging.path().to_path_buf();
        blocking("staging the binary", move || {
            artifact::prepare(&binary, &name, archive, &entry, &dir)
        })
        .await?
    };

    if !config.delta_from.is_empty() && config.archive != artifact::Archive::Raw {
        return Err(delta::refused_archive());
    }
    let patches = {
        let (release, olds) = (artifact.clone(), config.delta_from.clone());
        let dir = staging.path().to_path_buf();
        blocking("making delta patches", move || {
            delta::stage(&release, &olds, &dir)
        })
        .await?
    };

    // Every file of the run, patches first: each with its checksum and, if asked, signature.
    let files: Vec<artifact::Artifact> = patches
        .artifacts
        .iter()
        .cloned()
        .chain(std::iter::once(artifact.clone()))
        .collect();
    let mut public_key = None;
    let signatures: Vec<Option<String>> = match &config.sign {
        None => vec![None; files.len()],
        Some(sign) => {
            let (sign, files, target) = (sign.clone(), files.clone(), config.target.clone());
            let (texts, pk) = blocking("signing", move || {
                let signer = Signer::load(&sign)?;
                let mut texts = Vec::new();
                for file in &files {
                    let metadata = upshift::release::SignedMetadata {
                        product: sign.product.clone(),
                        version: sign.version.clone(),
                        target: target.clone(),
                        sha256: file.sha256.clone(),
                        base: file.base.clone(),
                    };
                    texts.push(Some(signer.sign_file(&file.path, &file.name, &metadata)?));
                }
                Ok((texts, signer.public_key()))
            })
            .await?;
            tracing::info!(public_key = %pk, "signed");
            public_key = Some(pk);
            texts
        }
    };
    let items: Vec<Item> = files
        .into_iter()
        .zip(signatures)
        .map(|(artifact, signature)| Item {
            artifact,
            sides: Sides {
                sidecar: config.checksum.sidecar(),
                sums: config.checksum.sums().then(|| config.sums_name.clone()),
                signature,
            },
        })
        .collect();
    let (quiet, timeout) = (config.quiet, config.timeout);
    let mut published = match &config.destination {
        Destination::Dir(dir) => {
            let mut store = dir::DirStore::new(dir.clone());
            publish::publish(&mut store, &items, quiet, timeout).await?
        }
        Destination::Github(g) => {
            let mut store = github::GithubStore::new(g.clone(), timeout);
            publish::publish(&mut store, &items, quiet, timeout).await?
        }
        Destination::S3(s) => {
            let mut store = s3::S3Store::new(s.clone(), timeout);
            publish::publish(&mut store, &items, quiet, timeout).await?
        }
    };
    published.notes = patches.notes;
    published.public_key = public_key;
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_names() {
        let t = "x86_64-unknown-linux-gnu";
        assert!(names_platform("app-x86_64-unknown-linux-gnu.tar.gz", t));
        assert!(names_platform("app_1.0_linux_amd64.tar.gz", t));
        assert!(!names_platform("app.tar.gz", t));
        assert!(!names_platform("app-linux", t));
        assert!(!names_platform("app-darwin-amd64", t));
        assert!(names_platform("app-macos-arm64", "aarch64-apple-darwin"));
        assert!(!names_platform("app-machine-arm64", "aarch64-apple-darwin"));
    }
}
