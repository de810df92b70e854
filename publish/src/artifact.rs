//! The file that is published: a snapshot of the binary, raw or packed the way upshift's
//! installer unpacks it, with its size and sha256.
//!
//! Everything is staged in a private temporary directory first, so that the bytes hashed, signed
//! and uploaded are the same even if a build overwrites the binary meanwhile.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::Error;

const CHUNK: usize = 256 * 1024;

/// How the binary is packaged. Fetchers tell the packaging from the published name's extension
/// (`upshift::fetch::Format::from_name`), so the name always carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archive {
    /// The executable itself.
    Raw,
    /// The executable, gzip-compressed: `.gz`.
    Gz,
    /// A gzip-compressed tar archive holding only the executable (mode 0755): `.tar.gz`.
    TarGz,
    /// A zip archive holding only the executable, with sizes in its local header so that it can
    /// be read as a stream: `.zip`.
    Zip,
}

impl Archive {
    /// `raw`, `gz`, `tar.gz` (or `tgz`), `zip`.
    pub fn parse(s: &str) -> Option<Archive> {
        match s.to_ascii_lowercase().trim_start_matches('.') {
            "raw" | "none" => Some(Archive::Raw),
            "gz" | "gzip" => Some(Archive::Gz),
            "tar.gz" | "tgz" => Some(Archive::TarGz),
            "zip" => Some(Archive::Zip),
            _ => None,
        }
    }

    /// The extension a default name gets: `""`, `".gz"`, `".tar.gz"`, `".zip"`.
    pub fn extension(self) -> &'static str {
        match self {
            Archive::Raw => "",
            Archive::Gz => ".gz",
            Archive::TarGz => ".tar.gz",
            Archive::Zip => ".zip",
        }
    }

    /// The packaging a fetcher infers from `name`, by the same rule as upshift's
    /// `Format::from_name`.
    pub fn of_name(name: &str) -> Archive {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Archive::TarGz
        } else if lower.ends_with(".zip") {
            Archive::Zip
        } else if lower.ends_with(".gz") {
            Archive::Gz
        } else {
            Archive::Raw
        }
    }
}

/// The published name: `explicit` (which must carry the packaging's extension, since fetchers
/// read the packaging from it), or `base` plus the extension.
pub fn published_name(
    explicit: Option<&str>,
    base: &str,
    archive: Archive,
) -> Result<String, Error> {
    let Some(name) = explicit else {
        return Ok(format!("{base}{}", archive.extension()));
    };
    let implied = Archive::of_name(name);
    if implied == archive {
        return Ok(name.to_string());
    }
    Err(Error::Usage(match (archive, implied) {
        (Archive::Raw, _) => format!(
            "--name {name:?}: fetchers would unpack a file named like that; pass --archive \
             {} or choose another name",
            match implied {
                Archive::TarGz => "tar.gz",
                Archive::Zip => "zip",
                _ => "gz",
            }
        ),
        _ => format!(
            "--name {name:?}: fetchers read the packaging from the name, so a {} archive's name \
             must end in {}",
            archive.extension().trim_start_matches('.'),
            archive.extension()
        ),
    }))
}

/// A private temporary directory (mode 0700), removed with everything in it on drop.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// Creates `upshift-publish-<pid>-<nanos>` under the system's temporary directory.
    pub fn new() -> Result<Staging, Error> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("upshift-publish-{}-{nanos}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                Error::io(
                    format!("creating the staging directory {}", dir.display()),
                    e,
                )
            })?;
        Ok(Staging { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The staged file, ready to publish.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The published name (also the staged file's name).
    pub name: String,
    /// The staged file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its lower-case hex sha256: what fetchers check.
    pub sha256: String,
    /// The packaging.
    pub archive: Archive,
    /// For a delta patch: the sha256 of the build it applies to.
    pub base: Option<String>,
}

/// The media type sent with an upload of `name`.
pub fn content_type(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".gz") || lower.ends_with(".tgz") {
        "application/gzip"
    } else if lower.ends_with(".zip") {
        "application/zip"
    } else if lower.ends_with(".sha256")
        || lower.ends_with(".minisig")
        || (!lower.contains('.') && lower.contains("sums"))
    {
        "text/plain"
    } else {
        "application/octet-stream"
    }
}

/// Lower-case hex sha256 and length of a file.
pub fn sha256_file(path: &Path) -> Result<(String, u64), Error> {
    let what = || format!("hashing {}", path.display());
    let mut file = File::open(path).map_err(|e| Error::io(what(), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(what(), e)),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), len))
}

/// Whether the first bytes are those of an executable, by the rule upshift's installer uses to
/// find the executable in a zip (ELF, Mach-O, `#!`).
pub fn looks_executable(head: &[u8]) -> bool {
    const MAGICS: [&[u8]; 6] = [
        b"\x7fELF",
        b"#!",
        &[0xfe, 0xed, 0xfa, 0xce],
        &[0xfe, 0xed, 0xfa, 0xcf],
        &[0xce, 0xfa, 0xed, 0xfe],
        &[0xcf, 0xfa, 0xed, 0xfe],
    ];
    MAGICS.iter().any(|m| head.starts_with(m))
}

/// Size and modification time: if they change while the binary is read, a build is still
/// writing it.
fn stamp(m: &fs::Metadata) -> (u64, Option<SystemTime>) {
    (m.len(), m.modified().ok())
}

/// Checks `binary` and stages it in `staging` as `name`, packed as `archive` (with `entry` as
/// the executable's name inside a tar.gz or zip). Blocking: run it off the async runtime.
pub fn prepare(
    binary: &Path,
    name: &str,
    archive: Archive,
    entry: &str,
    staging: &Path,
) -> Result<Artifact, Error> {
    let meta = fs::metadata(binary).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::binary(binary, "does not exist (build it first?)"),
        _ => Error::binary(binary, format!("cannot be read: {e}")),
    })?;
    if !meta.is_file() {
        return Err(Error::binary(binary, "is not a regular file"));
    }
    if meta.len() == 0 {
        return Err(Error::binary(binary, "is empty"));
    }
    let mut input =
        File::open(binary).map_err(|e| Error::binary(binary, format!("cannot be opened: {e}")))?;
    let out_path = staging.join(name);
    let what = format!("staging {} as {}", binary.display(), out_path.display());
    let out = File::create(&out_path).map_err(|e| Error::io(what.clone(), e))?;
    let io_err = |e| Error::io(what.clone(), e);
    match archive {
        Archive::Raw => {
            copy(&mut input, &mut &out).map_err(io_err)?;
        }
        Archive::Gz => {
            let mut gz = flate2::GzBuilder::new()
                .filename(entry.rsplit('/').next().unwrap_or(entry))
                .write(&out, flate2::Compression::default());
            copy(&mut input, &mut gz).map_err(io_err)?;
            gz.finish().map_err(io_err)?;
        }
        Archive::TarGz => {
            let gz = flate2::write::GzEncoder::new(&out, flate2::Compression::default());
            let mut tar = tar::Builder::new(gz);
            let mut header = tar::Header::new_gnu();
            header.set_size(meta.len());
            // The installer takes the one regular file with an execute bit.
            header.set_mode(0o755);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_uid(0);
            header.set_gid(0);
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            header.set_mtime(mtime);
            tar.append_data(&mut header, entry, &mut input)
                .map_err(io_err)?;
            let gz = tar.into_inner().map_err(io_err)?;
            gz.finish().map_err(io_err)?;
        }
        Archive::Zip => {
            let mut head = [0u8; 4];
            let got = input.read(&mut head).map_err(io_err)?;
            if !looks_executable(&head[..got]) {
                return Err(Error::binary(
                    binary,
                    "does not start like an executable (ELF, Mach-O or #!), and upshift's \
                     installer recognises the executable in a zip by its first bytes; publish \
                     it raw or as tar.gz",
                ));
            }
            let mut rest = (&head[..got]).chain(&mut input);
            let options = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated)
                .unix_permissions(0o755)
                .large_file(meta.len() >= u64::from(u32::MAX));
            // A `File` is seekable, so the writer puts the sizes into the local header (no data
            // descriptor): the installer reads zips as a stream and needs them there.
            let mut zip = zip::ZipWriter::new(&out);
            zip.start_file(entry, options)
                .map_err(|e| Error::io(what.clone(), io::Error::other(e)))?;
            copy(&mut rest, &mut zip).map_err(io_err)?;
            zip.finish()
                .map_err(|e| Error::io(what.clone(), io::Error::other(e)))?;
        }
    }
    out.sync_all().map_err(io_err)?;
    drop(out);
    let after =
        fs::metadata(binary).map_err(|e| Error::binary(binary, format!("vanished: {e}")))?;
    if stamp(&after) != stamp(&meta) {
        return Err(Error::binary(
            binary,
            "changed while it was being read (is a build still writing it?)",
        ));
    }
    let (sha256, size) = sha256_file(&out_path)?;
    tracing::debug!(name, size, %sha256, ?archive, "staged");
    Ok(Artifact {
        name: name.to_string(),
        path: out_path,
        size,
        sha256,
        archive,
        base: None,
    })
}

fn copy(from: &mut impl Read, to: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ELF: &[u8] = b"\x7fELF\x02\x01\x01 pretend executable, long enough to compress\n";

    fn binary(staging: &Staging, bytes: &[u8]) -> PathBuf {
        let p = staging.path().join("input-app");
        fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn names_carry_the_packaging() {
        assert_eq!(
            published_name(None, "app", Archive::TarGz).unwrap(),
            "app.tar.gz"
        );
        assert_eq!(published_name(None, "app", Archive::Raw).unwrap(), "app");
        assert_eq!(
            published_name(Some("x.tgz"), "app", Archive::TarGz).unwrap(),
            "x.tgz"
        );
        let e = published_name(Some("x.zip"), "app", Archive::Raw)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--archive zip"), "{e}");
        let e = published_name(Some("x"), "app", Archive::Gz)
            .unwrap_err()
            .to_string();
        assert!(e.contains("end in .gz"), "{e}");
        for (s, a) in [
            ("tgz", Archive::TarGz),
            ("raw", Archive::Raw),
            ("zip", Archive::Zip),
        ] {
            assert_eq!(Archive::parse(s), Some(a));
        }
        assert_eq!(Archive::parse("7z"), None);
        assert_eq!(content_type("app.tar.gz"), "application/gzip");
        assert_eq!(content_type("SHA256SUMS"), "text/plain");
        assert_eq!(content_type("app-linux-amd64"), "application/octet-stream");
    }

    #[test]
    fn raw_and_gz() {
        let s = Staging::new().unwrap();
        let bin = binary(&s, ELF);
        let a = prepare(&bin, "app", Archive::Raw, "app", s.path()).unwrap();
        assert_eq!(fs::read(&a.path).unwrap(), ELF);
        assert_eq!(a.sha256, hex::encode(Sha256::digest(ELF)));
        assert_eq!(a.size, ELF.len() as u64);
        let g = prepare(&bin, "app.gz", Archive::Gz, "app", s.path()).unwrap();
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(File::open(&g.path).unwrap())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, ELF);
    }

    /// Read the way upshift's installer reads them (`src/install/unpack.rs`): a tar.gz as a
    /// stream of entries, the executable being the one regular file with an execute bit.
    #[test]
    fn tar_gz_as_the_installer_reads_it() {
        let s = Staging::new().unwrap();
        let bin = binary(&s, ELF);
        let a = prepare(&bin, "app.tar.gz", Archive::TarGz, "app", s.path()).unwrap();
        let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(
            File::open(&a.path).unwrap(),
        ));
        let mut found = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mode = entry.header().mode().unwrap();
            assert!(entry.header().entry_type().is_file());
            assert_eq!(mode & 0o111, 0o111);
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            found.push((entry.path().unwrap().to_string_lossy().into_owned(), bytes));
        }
        assert_eq!(found, vec![("app".to_string(), ELF.to_vec())]);
    }

    /// Read as a stream, as the installer does: sizes must be in the local header.
    #[test]
    fn zip_reads_as_a_stream() {
        let s = Staging::new().unwrap();
        let bin = binary(&s, ELF);
        let a = prepare(&bin, "app.zip", Archive::Zip, "bin/app", s.path()).unwrap();
        let mut input = File::open(&a.path).unwrap();
        let mut file = zip::read::read_zipfile_from_stream(&mut input)
            .unwrap()
            .expect("one entry");
        assert_eq!(file.name(), "bin/app");
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes, ELF);
        drop(file);
        assert!(zip::read::read_zipfile_from_stream(&mut input)
            .unwrap()
            .is_none());
        // Not an executable: the installer could not find it in a zip.
        let text = binary(&s, b"just text");
        let e = prepare(&text, "t.zip", Archive::Zip, "t", s.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not start like an executable"), "{e}");
    }

    #[test]
    fn bad_binaries() {
        let s = Staging::new().unwrap();
        let missing = s.path().join("nope");
        let e = prepare(&missing, "x", Archive::Raw, "x", s.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let empty = binary(&s, b"");
        let e = prepare(&empty, "x", Archive::Raw, "x", s.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("is empty"), "{e}");
        let e = prepare(s.path(), "x", Archive::Raw, "x", s.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn staging_is_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let s = Staging::new().unwrap();
        let dir = s.path().to_path_buf();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        drop(s);
        assert!(!dir.exists());
    }
}
