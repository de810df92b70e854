//! Delta patches (`--delta-from OLD…`): one patch per previous build, from that build to the
//! binary being published, staged beside the release and published with it (see
//! `upshift::delta` for the format and how masters use them).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::artifact::{sha256_file, Archive, Artifact};
use crate::Error;

/// A patch at least this share of the release's size is not published: downloading the release
/// costs little more, and applying it less.
pub const MAX_SHARE: f64 = 0.9;

/// The patches to publish, and a note for each previous build that gets none.
#[derive(Debug, Default)]
pub struct Patches {
    /// Staged patches, in the order of `--delta-from`.
    pub artifacts: Vec<Artifact>,
    /// Why a previous build got no patch.
    pub notes: Vec<String>,
}

/// Makes and stages (in `staging`) a patch from each of `olds` to `release`, the staged raw
/// binary. Blocking: run it off the async runtime.
pub fn stage(release: &Artifact, olds: &[PathBuf], staging: &Path) -> Result<Patches, Error> {
    let mut patches = Patches::default();
    if olds.is_empty() {
        return Ok(patches);
    }
    if release.archive != Archive::Raw {
        return Err(refused_archive());
    }
    let new = fs::read(&release.path)
        .map_err(|e| Error::io(format!("reading {}", release.path.display()), e))?;
    let mut bases: Vec<String> = Vec::new();
    for old in olds {
        let old_bytes = read_old(old)?;
        let (base, _) = sha256_file(old)?;
        if base == release.sha256 {
            patches.notes.push(format!(
                "no patch from {}: it is the build being published",
                old.display()
            ));
            continue;
        }
        if bases.contains(&base) {
            patches.notes.push(format!(
                "no second patch from {}: the same build as an earlier --delta-from",
                old.display()
            ));
            continue;
        }
        bases.push(base.clone());
        let name = upshift::delta::patch_name(&release.name, &base);
        let path = staging.join(&name);
        let what = || format!("making the patch {} from {}", path.display(), old.display());
        let file = File::create(&path).map_err(|e| Error::io(what(), e))?;
        let mut out = BufWriter::new(&file);
        let made = upshift::delta::make(&old_bytes, &new, &mut out);
        let flushed = out.flush();
        drop(out);
        made.map_err(|e| Error::io(what(), std::io::Error::other(e)))?;
        flushed.map_err(|e| Error::io(what(), e))?;
        file.sync_all().map_err(|e| Error::io(what(), e))?;
        let (sha256, size) = sha256_file(&path)?;
        if size as f64 >= MAX_SHARE * release.size as f64 {
            patches.notes.push(format!(
                "no patch from {}: {size} bytes, {:.0} % of the release, is not worth it",
                old.display(),
                100.0 * size as f64 / release.size as f64
            ));
            let _ = fs::remove_file(&path);
            continue;
        }
        tracing::info!(%name, size, from = %old.display(), "patch made");
        patches.artifacts.push(Artifact {
            name,
            path,
            size,
            sha256,
            archive: Archive::Raw,
            base: Some(base),
        });
    }
    Ok(patches)
}

/// Why `--delta-from` is refused with an archive.
pub fn refused_archive() -> Error {
    Error::Usage(
        "--delta-from is for raw releases only: a patch rebuilds the executable itself, and a \
         master holds what it rebuilt to the published file's sha256 and signature, which for \
         --archive gz, tar.gz or zip are the archive's. Publish the binary raw (the patches keep \
         downloads small) or drop --delta-from"
            .into(),
    )
}

fn read_old(old: &Path) -> Result<Vec<u8>, Error> {
    let reason = |r: String| Error::Usage(format!("--delta-from {}: {r}", old.display()));
    let meta = fs::metadata(old).map_err(|e| reason(format!("cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(reason("not a regular file".into()));
    }
    fs::read(old).map_err(|e| reason(format!("cannot be read: {e}")))
}
