//! The publishing order every destination follows, so that no fetcher ever pairs the new file
//! with a stale checksum or signature, and a failure leaves the destination as it was:
//!
//! 1. the destination is prepared (`begin`: a GitHub release is found, or created as a draft);
//! 2. names that would be overwritten without leave are refused before anything is written;
//! 3. the side files' current contents are read, to put them back on failure;
//! 4. the side files are written (`NAME.sha256`, the `SHA256SUMS` line, `NAME.minisig`), and
//!    stale ones removed (a `.minisig` or `.sha256` of an earlier release that this one does
//!    not replace would make fetchers refuse it);
//! 5. the file itself is uploaded, with progress;
//! 6. the destination is committed (`commit`: a draft release is published).
//!
//! If 4–6 fail, the side files are restored and the destination's own `abort` undoes `begin`.

use std::time::Duration;

use crate::artifact::Artifact;
use crate::checksum;
use crate::progress::Progress;
use crate::Error;

/// A destination, seen as a flat set of named files.
#[allow(async_fn_in_trait)] // used with concrete types only, never boxed or spawned
pub(crate) trait Store {
    /// Where `name` is published, for messages and the report.
    fn location(&self, name: &str) -> String;
    /// Whether an existing file of the same name may be overwritten.
    fn may_replace(&self) -> bool;
    /// Prepares the destination.
    async fn begin(&mut self) -> Result<(), Error>;
    /// Whether `name` exists.
    async fn exists(&mut self, name: &str) -> Result<bool, Error>;
    /// The contents of a small file, `None` if it does not exist.
    async fn read_small(&mut self, name: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Writes a small file, replacing any of that name.
    async fn put_small(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), Error>;
    /// Removes a file; one that does not exist is no error.
    async fn remove(&mut self, name: &str) -> Result<(), Error>;
    /// Uploads the artifact (as `artifact.name`), counting bytes into `progress`.
    async fn put_main(&mut self, artifact: &Artifact, progress: &Progress) -> Result<(), Error>;
    /// Makes the whole release visible (if `begin` hid it); returns extra report lines.
    async fn commit(&mut self) -> Result<Vec<String>, Error>;
    /// After a failure: undoes `begin`. Returns what it did, for the error message.
    async fn abort(&mut self) -> String;
    /// Whether `abort` removes everything written (then the side files need no restoring).
    fn abort_removes_all(&self) -> bool;
}

/// What goes next to the artifact.
#[derive(Debug, Clone)]
pub(crate) struct Sides {
    /// Write `NAME.sha256`.
    pub sidecar: bool,
    /// Update the line for NAME in this checksum list.
    pub sums: Option<String>,
    /// The text of `NAME.minisig`, if signed.
    pub signature: Option<String>,
}

/// What was published, for the report on stdout.
#[derive(Debug, Clone)]
pub struct Published {
    /// The artifact's location.
    pub location: String,
    /// The published name.
    pub name: String,
    /// Its sha256.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// Side files written: (what, location).
    pub sides: Vec<(&'static str, String)>,
    /// Side files removed as stale.
    pub removed: Vec<String>,
    /// Destination-specific lines (a release URL).
    pub extra: Vec<String>,
    /// The public key that verifies the signature, if signed.
    pub public_key: Option<String>,
}

enum Action {
    Write(Vec<u8>),
    Remove,
}

struct Step {
    what: &'static str,
    name: String,
    action: Action,
}

/// Publishes `artifact` to `store` in the order described in the module documentation.
pub(crate) async fn publish<S: Store>(
    store: &mut S,
    artifact: &Artifact,
    sides: &Sides,
    quiet: bool,
    timeout: Duration,
) -> Result<Published, Error> {
    store.begin().await?;
    let mut written: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    match run(store, artifact, sides, quiet, timeout, &mut written).await {
        Ok(p) => Ok(p),
        Err(e) => {
            let mut notes = Vec::new();
            if !store.abort_removes_all() {
                notes.extend(restore(store, written).await);
            }
            let abort = store.abort().await;
            if !abort.is_empty() {
                notes.push(abort);
            }
            Err(e.with_note(notes.join("\n")))
        }
    }
}

async fn run<S: Store>(
    store: &mut S,
    artifact: &Artifact,
    sides: &Sides,
    quiet: bool,
    timeout: Duration,
    written: &mut Vec<(String, Option<Vec<u8>>)>,
) -> Result<Published, Error> {
    let name = &artifact.name;
    let sidecar_name = format!("{name}.sha256");
    let minisig_name = format!("{name}.minisig");
    let mut steps: Vec<Step> = Vec::new();

    // Names this release owns: refused when they exist and may not be replaced.
    let mut owned = vec![name.clone()];
    if store.exists(&sidecar_name).await? || sides.sidecar {
        owned.push(sidecar_name.clone());
    }
    if store.exists(&minisig_name).await? || sides.signature.is_some() {
        owned.push(minisig_name.clone());
    }
    if !store.may_replace() {
        let mut taken = Vec::new();
        for n in &owned {
            if store.exists(n).await? {
                taken.push(n.clone());
            }
        }
        if !taken.is_empty() {
            return Err(Error::Conflict(format!(
                "{} exist{} already: nothing was changed; pass --replace to replace {}",
                taken
                    .iter()
                    .map(|n| store.location(n))
                    .collect::<Vec<_>>()
                    .join(", "),
                if taken.len() == 1 { "s" } else { "" },
                if taken.len() == 1 { "it" } else { "them" },
            )));
        }
    }

    let sidecar_text = checksum::sidecar_text(&artifact.sha256, name);
    match sides.sidecar {
        true => steps.push(Step {
            what: "sha256",
            name: sidecar_name.clone(),
            action: Action::Write(sidecar_text.into_bytes()),
        }),
        false if owned.contains(&sidecar_name) => steps.push(Step {
            what: "stale sha256",
            name: sidecar_name.clone(),
            action: Action::Remove,
        }),
        false => {}
    }
    if let Some(list) = &sides.sums {
        let old = store.read_small(list).await?;
        let merged = checksum::merge_sums(
            old.as_deref(),
            name,
            &artifact.sha256,
            &store.location(list),
        )?;
        steps.push(Step {
            what: "sums",
            name: list.clone(),
            action: Action::Write(merged.into_bytes()),
        });
    }
    match &sides.signature {
        Some(sig) => steps.push(Step {
            what: "signature",
            name: minisig_name.clone(),
            action: Action::Write(sig.clone().into_bytes()),
        }),
        None if owned.contains(&minisig_name) => steps.push(Step {
            what: "stale signature",
            name: minisig_name.clone(),
            action: Action::Remove,
        }),
        None => {}
    }

    if !store.abort_removes_all() {
        for step in &steps {
            let old = store.read_small(&step.name).await?;
            written.push((step.name.clone(), old));
        }
    }
    let mut published = Published {
        location: store.location(name),
        name: name.clone(),
        sha256: artifact.sha256.clone(),
        size: artifact.size,
        sides: Vec::new(),
        removed: Vec::new(),
        extra: Vec::new(),
        public_key: None,
    };
    for step in steps {
        match step.action {
            Action::Write(bytes) => {
                store.put_small(&step.name, bytes).await?;
                tracing::info!(what = step.what, location = %store.location(&step.name), "written");
                published
                    .sides
                    .push((step.what, store.location(&step.name)));
            }
            Action::Remove => {
                store.remove(&step.name).await?;
                tracing::info!(what = step.what, location = %store.location(&step.name), "removed");
                published.removed.push(store.location(&step.name));
            }
        }
    }

    let label = format!("uploading {}", store.location(name));
    let progress = Progress::start(label, artifact.size, parts_hint(artifact), !quiet);
    let sent = progress
        .watch(store.put_main(artifact, &progress), timeout)
        .await;
    progress.finish(sent.is_ok());
    sent?;
    published.extra = store.commit().await?;
    Ok(published)
}

/// The number of parts the progress display tracks: S3 multipart uploads need more than one;
/// over-allocating is harmless.
fn parts_hint(artifact: &Artifact) -> usize {
    (artifact.size / crate::config::MIN_PART_SIZE + 1).min(10_000) as usize
}

/// Puts the side files back as they were before this run: old contents rewritten, new files
/// removed. Returns a note per file, saying what was done or what could not be.
async fn restore<S: Store>(store: &mut S, written: Vec<(String, Option<Vec<u8>>)>) -> Vec<String> {
    let mut failed = Vec::new();
    let mut restored = Vec::new();
    for (name, old) in written.into_iter().rev() {
        let location = store.location(&name);
        let result = match old {
            Some(bytes) => store.put_small(&name, bytes).await,
            None => store.remove(&name).await,
        };
        match result {
            Ok(()) => restored.push(location),
            Err(e) => failed.push(format!("could not restore {location}: {e}")),
        }
    }
    if !restored.is_empty() {
        restored.reverse();
        failed.insert(0, format!("put back as they were: {}", restored.join(", ")));
    }
    failed
}
