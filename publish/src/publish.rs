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
//! With delta patches (`--delta-from`), 2–4 cover every patch and the release (one checksum list
//! write with a line for each), then 5 uploads the patches and last the release, so a patch too
//! is never visible before its checksum, and the release never before its patches.
//!
//! If 4–6 fail, the patches this run uploaded are removed, the side files are restored and the
//! destination's own `abort` undoes `begin`.

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
    /// For a delta patch: the sha256 of the build it applies to.
    pub base: Option<String>,
    /// The delta patches published before the release (`--delta-from`).
    pub patches: Vec<Published>,
    /// What the run chose not to publish, and why (a patch no smaller than the release).
    pub notes: Vec<String>,
}

/// One file to publish with what goes next to it.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub artifact: Artifact,
    pub sides: Sides,
}

enum Action {
    Write(Vec<u8>),
    Remove,
}

struct Step {
    what: &'static str,
    name: String,
    action: Action,
    /// The item whose report lists it; `None`: every item's (the shared checksum list).
    item: Option<usize>,
}

/// Publishes `items` to `store` in the order described in the module documentation: the side
/// files of all of them, then the files in the order given (delta patches first, the release
/// last), then one commit. Returns the report of the last item, the others as its `patches`.
pub(crate) async fn publish<S: Store>(
    store: &mut S,
    items: &[Item],
    quiet: bool,
    timeout: Duration,
) -> Result<Published, Error> {
    store.begin().await?;
    let mut written: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    let mut uploaded: Vec<String> = Vec::new();
    match run(store, items, quiet, timeout, &mut written, &mut uploaded).await {
        Ok(p) => Ok(p),
        Err(e) => {
            let mut notes = Vec::new();
            if !store.abort_removes_all() {
                // Patches uploaded before the release failed: their checksums are about to be
                // put back as they were, so the files go too.
                for name in uploaded.iter().rev() {
                    if let Err(e) = store.remove(name).await {
                        notes.push(format!("could not remove {}: {e}", store.location(name)));
                    }
                }
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
    items: &[Item],
    quiet: bool,
    timeout: Duration,
    written: &mut Vec<(String, Option<Vec<u8>>)>,
    uploaded: &mut Vec<String>,
) -> Result<Published, Error> {
    // Names this release owns: refused when they exist and may not be replaced.
    let mut owned = Vec::new();
    let mut existed = Vec::new();
    for Item { artifact, sides } in items {
        let name = &artifact.name;
        let (sidecar_name, minisig_name) = (format!("{name}.sha256"), format!("{name}.minisig"));
        if store.exists(name).await? {
            existed.push(name.clone());
        }
        owned.push(name.clone());
        if store.exists(&sidecar_name).await? || sides.sidecar {
            owned.push(sidecar_name);
        }
        if store.exists(&minisig_name).await? || sides.signature.is_some() {
            owned.push(minisig_name);
        }
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

    let mut steps: Vec<Step> = Vec::new();
    for (i, Item { artifact, sides }) in items.iter().enumerate() {
        let name = &artifact.name;
        let sidecar_name = format!("{name}.sha256");
        match sides.sidecar {
            true => steps.push(Step {
                what: "sha256",
                name: sidecar_name,
                action: Action::Write(checksum::sidecar_text(&artifact.sha256, name).into_bytes()),
                item: Some(i),
            }),
            false if owned.contains(&sidecar_name) => steps.push(Step {
                what: "stale sha256",
                name: sidecar_name,
                action: Action::Remove,
                item: Some(i),
            }),
            false => {}
        }
    }
    // One checksum list for the run (its name is the run's `--sums-name`), written once with a
    // line for each file.
    if let Some(list) = items.iter().find_map(|i| i.sides.sums.clone()) {
        let location = store.location(&list);
        let mut text = store.read_small(&list).await?;
        for Item { artifact, sides } in items {
            if sides.sums.as_ref() == Some(&list) {
                let merged = checksum::merge_sums(
                    text.as_deref(),
                    &artifact.name,
                    &artifact.sha256,
                    &location,
                )?;
                text = Some(merged.into_bytes());
            }
        }
        steps.push(Step {
            what: "sums",
            name: list,
            action: Action::Write(text.unwrap_or_default()),
            item: None,
        });
    }
    for (i, Item { artifact, sides }) in items.iter().enumerate() {
        let minisig_name = format!("{}.minisig", artifact.name);
        match &sides.signature {
            Some(sig) => steps.push(Step {
                what: "signature",
                name: minisig_name,
                action: Action::Write(sig.clone().into_bytes()),
                item: Some(i),
            }),
            None if owned.contains(&minisig_name) => steps.push(Step {
                what: "stale signature",
                name: minisig_name,
                action: Action::Remove,
                item: Some(i),
            }),
            None => {}
        }
    }

    if !store.abort_removes_all() {
        for step in &steps {
            let old = store.read_small(&step.name).await?;
            written.push((step.name.clone(), old));
        }
    }
    let mut published: Vec<Published> = items
        .iter()
        .map(|Item { artifact, .. }| Published {
            location: store.location(&artifact.name),
            name: artifact.name.clone(),
            sha256: artifact.sha256.clone(),
            size: artifact.size,
            sides: Vec::new(),
            removed: Vec::new(),
            extra: Vec::new(),
            public_key: None,
            base: artifact.base.clone(),
            patches: Vec::new(),
            notes: Vec::new(),
        })
        .collect();
    for step in steps {
        let location = store.location(&step.name);
        let reports: Vec<usize> = match step.item {
            Some(i) => vec![i],
            None => (0..items.len()).collect(),
        };
        match step.action {
            Action::Write(bytes) => {
                store.put_small(&step.name, bytes).await?;
                tracing::info!(what = step.what, %location, "written");
                for i in reports {
                    published[i].sides.push((step.what, location.clone()));
                }
            }
            Action::Remove => {
                store.remove(&step.name).await?;
                tracing::info!(what = step.what, %location, "removed");
                for i in reports {
                    published[i].removed.push(location.clone());
                }
            }
        }
    }

    for Item { artifact, .. } in items {
        let label = format!("uploading {}", store.location(&artifact.name));
        let progress = Progress::start(label, artifact.size, parts_hint(artifact), !quiet);
        let sent = progress
            .watch(store.put_main(artifact, &progress), timeout)
            .await;
        progress.finish(sent.is_ok());
        sent?;
        if !existed.contains(&artifact.name) {
            uploaded.push(artifact.name.clone());
        }
    }
    let extra = store.commit().await?;
    let mut release = published
        .pop()
        .ok_or_else(|| Error::io("publishing", std::io::Error::other("nothing to publish")))?;
    release.extra = extra;
    release.patches = published;
    Ok(release)
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
