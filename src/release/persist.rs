//! The state file beside the binary (`<binary>.upshift-state`): what upshift installed, the
//! highest version it ever accepted, the last build that proved itself, and the release an
//! operator's manual deploy replaced. Written atomically
//! (temp file, fsync, rename, directory fsync); a missing or unreadable file is rebuilt from the
//! disk with a warning, never a crash and never an upgrade storm.
//!
//! The format is a few `key value` lines ending in a checksum of the lines above it, so a torn
//! or edited file is recognised:
//!
//! ```text
//! upshift-state 1
//! installed_sha256 9f86…
//! installed_identity v1.4.0
//! installed_version 1.4.0
//! installed_source 5c1f…
//! replaced_sha256 07d2…
//! replaced_identity sha256:07d2…
//! replaced_source e4a0…
//! highest_version 1.4.0
//! proven_sha256 9f86…
//! check 3a7b…
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::model::{Build, Persisted};
use super::version::parse_version;

const MAGIC: &str = "upshift-state 1";
/// A state file is a few hundred bytes; anything larger is not one.
const MAX_STATE_BYTES: u64 = 16 * 1024;

/// Where the state of the binary at `invoked` is kept: beside the path the program was started
/// by (a symlink's own directory, which stays when releases come and go).
pub(crate) fn state_path(invoked: &Path) -> PathBuf {
    let mut s = invoked.as_os_str().to_owned();
    s.push(".upshift-state");
    PathBuf::from(s)
}

/// Why a state file could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is not an upshift state file or is damaged: {why}")]
    Corrupt { path: String, why: String },
}

/// Reads the state file; `Ok(None)` when there is none.
pub(crate) fn load(path: &Path) -> Result<Option<Persisted>, LoadError> {
    let shown = path.display().to_string();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LoadError::Io {
                path: shown,
                source,
            })
        }
    };
    let mut text = String::new();
    let read = io::Read::read_to_string(&mut io::Read::take(file, MAX_STATE_BYTES + 1), &mut text);
    read.map_err(|source| LoadError::Io {
        path: shown.clone(),
        source,
    })?;
    let corrupt = |why: String| LoadError::Corrupt {
        path: shown.clone(),
        why,
    };
    if text.len() as u64 > MAX_STATE_BYTES {
        return Err(corrupt(format!("larger than {MAX_STATE_BYTES} bytes")));
    }
    parse(&text).map(Some).map_err(corrupt)
}

/// Writes the state file atomically and durably.
pub(crate) fn store(path: &Path, state: &Persisted) -> io::Result<()> {
    let text = render(state);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", &crate::install::random_hex()[..12]));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    File::open(dir)?.sync_all()
}

fn render(state: &Persisted) -> String {
    let mut body = format!("{MAGIC}\n");
    let mut line = |k: &str, v: &str| body.push_str(&format!("{k} {v}\n"));
    for (prefix, build) in [
        ("installed", &state.installed),
        ("replaced", &state.replaced),
    ] {
        let Some(b) = build else { continue };
        line(&format!("{prefix}_sha256"), &b.sha256);
        if let Some(id) = &b.identity {
            line(&format!("{prefix}_identity"), &one_line(id));
        }
        if let Some(v) = &b.version {
            line(&format!("{prefix}_version"), &v.to_string());
        }
        if let Some(source) = &b.source {
            line(&format!("{prefix}_source"), &one_line(source));
        }
    }
    if let Some(v) = &state.highest_version {
        line("highest_version", &v.to_string());
    }
    if let Some(p) = &state.proven {
        line("proven_sha256", p);
    }
    let check = hex::encode(Sha256::digest(body.as_bytes()));
    body.push_str(&format!("check {check}\n"));
    body
}

fn parse(text: &str) -> Result<Persisted, String> {
    let Some((body, last)) = text.trim_end_matches('\n').rsplit_once('\n') else {
        return Err("too short".into());
    };
    let body = format!("{body}\n");
    let check = last
        .strip_prefix("check ")
        .ok_or("the last line is not its checksum")?;
    if hex::encode(Sha256::digest(body.as_bytes())) != check {
        return Err("its checksum does not match its content".into());
    }
    let mut lines = body.lines();
    if lines.next() != Some(MAGIC) {
        return Err(format!("the first line is not {MAGIC:?}"));
    }
    let mut out = Persisted::default();
    for l in lines {
        let (k, v) = l.split_once(' ').ok_or_else(|| format!("bad line {l:?}"))?;
        let version = || parse_version(v).ok_or_else(|| format!("{k}: {v:?} is not a version"));
        let (build, field) = match k.split_once('_') {
            Some(("installed", field)) => (&mut out.installed, field),
            Some(("replaced", field)) => (&mut out.replaced, field),
            _ => {
                match k {
                    "highest_version" => out.highest_version = Some(version()?),
                    "proven_sha256" => out.proven = Some(sha(v)?),
                    // Written by a newer upshift: what this one does not know it leaves alone.
                    _ => {}
                }
                continue;
            }
        };
        if field == "sha256" {
            *build = Some(Build::found(sha(v)?));
            continue;
        }
        let b = build
            .as_mut()
            .ok_or_else(|| format!("{k} before its sha256"))?;
        match field {
            "identity" => b.identity = Some(v.into()),
            "version" => b.version = Some(version()?),
            "source" => b.source = Some(v.into()),
            _ => {}
        }
    }
    Ok(out)
}

fn sha(v: &str) -> Result<String, String> {
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(v.to_ascii_lowercase())
    } else {
        Err(format!("{v:?} is not a sha256"))
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Persisted {
        Persisted {
            installed: Some(Build {
                sha256: "ab".repeat(32),
                identity: Some("v1.4.0".into()),
                version: parse_version("1.4.0"),
                source: Some("0123456789abcdef".into()),
            }),
            highest_version: parse_version("2.0.0"),
            proven: Some("cd".repeat(32)),
            replaced: Some(Build {
                sha256: "ef".repeat(32),
                identity: Some("sha256:ef".into()),
                version: None,
                source: Some("fedcba9876543210".into()),
            }),
        }
    }

    #[test]
    fn round_trips_and_survives_a_reload() {
        let dir = std::env::temp_dir().join(format!("upshift-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = state_path(&dir.join("app"));
        assert_eq!(load(&path).unwrap(), None);
        store(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(sample()));
        store(&path, &Persisted::default()).unwrap();
        assert_eq!(load(&path).unwrap(), Some(Persisted::default()));
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1, "no temp file is left: {leftovers:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_or_foreign_file_is_an_error_not_a_panic() {
        let good = render(&sample());
        for bad in [
            String::new(),
            "garbage".into(),
            good.replace("2.0.0", "9.0.0"),
            good.replace(MAGIC, "upshift-state 0"),
            good[..good.len() / 2].to_string(),
        ] {
            assert!(parse(&bad).is_err(), "accepted {bad:?}");
        }
        assert_eq!(parse(&good), Ok(sample()));
    }

    #[test]
    fn an_identity_cannot_inject_lines() {
        let mut s = sample();
        if let Some(b) = s.installed.as_mut() {
            b.identity = Some("v1\nhighest_version 0.0.1".into());
        }
        let back = parse(&render(&s)).unwrap();
        assert_eq!(back.highest_version, parse_version("2.0.0"));
    }
}
