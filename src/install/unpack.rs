//! The blocking half of staging: turns the release's bytes, as they arrive, into the executable
//! on disk. Runs on a blocking thread fed through a bounded channel, so an archive is never held
//! whole in memory or on disk and decoders that only speak `std::io::Read` can be used.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{tarwalk, InstallError};
use crate::fetch::Format;

const CHUNK: usize = 64 * 1024;

/// How many entry names an error message lists before saying "and N more".
const LIST_MAX: usize = 20;

/// How many characters of an entry name an error message shows.
const NAME_SHOWN: usize = 200;

/// The release's bytes as a blocking reader. EOF when the sender is dropped: at the end of the
/// body, or when the async side gives up (its error then takes precedence over ours).
pub(super) struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    pub(super) fn new(rx: mpsc::Receiver<Vec<u8>>) -> Self {
        ChannelReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Writes the executable to the temporary file, hashing it and enforcing the size limit on the
/// unpacked bytes too (a small gzip bomb must not fill the disk).
pub(super) struct BinaryWriter {
    file: File,
    path: PathBuf,
    /// `None` for raw releases, whose binary hash is the asset hash computed on the async side.
    hasher: Option<Sha256>,
    bytes: u64,
    limit: u64,
    writeback: super::stage::Writeback,
}

/// What the blocking side produced.
pub(super) struct Unpacked {
    /// Hex sha256 of the executable, unless it is the release file itself.
    pub(super) sha256: Option<String>,
    pub(super) bytes: u64,
    /// The staged file as `fstat` saw it once complete.
    pub(super) stamp: crate::fetch::Stamp,
}

impl BinaryWriter {
    pub(super) fn new(file: File, path: PathBuf, hash: bool, limit: u64) -> Self {
        BinaryWriter {
            file,
            path,
            hasher: hash.then(Sha256::new),
            bytes: 0,
            limit,
            writeback: super::stage::Writeback::new(),
        }
    }

    pub(super) fn write_chunk(&mut self, buf: &[u8]) -> Result<(), InstallError> {
        self.bytes += buf.len() as u64;
        if self.bytes > self.limit {
            return Err(InstallError::TooLarge {
                what: "the unpacked executable",
                limit: self.limit,
            });
        }
        self.file.write_all(buf).map_err(|e| {
            InstallError::io(
                format!("writing the new binary to {}", self.path.display()),
                e,
            )
        })?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(buf);
        }
        self.writeback.advance(&self.file, self.bytes, false);
        Ok(())
    }

    /// Copies `from` to the file; read errors are the archive's fault, write errors the disk's.
    fn copy_from(&mut self, from: &mut impl Read, what: &str) -> Result<(), InstallError> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(what, e)),
            };
            self.write_chunk(&buf[..n])?;
        }
    }

    /// Makes the file executable by its owner only (`install` copies the real target's mode and
    /// owner over it, see [`STAGED_MODE`](super::STAGED_MODE)); `install` makes it durable before
    /// the rename.
    pub(super) fn finish(self) -> Result<Unpacked, InstallError> {
        let ctx = |what: &str, e| InstallError::io(format!("{what} {}", self.path.display()), e);
        self.file
            .set_permissions(std::fs::Permissions::from_mode(super::STAGED_MODE))
            .map_err(|e| ctx("making executable", e))?;
        let mut writeback = self.writeback;
        writeback.advance(&self.file, self.bytes, true);
        let meta = self.file.metadata().map_err(|e| ctx("reading", e))?;
        Ok(Unpacked {
            stamp: crate::fetch::Stamp::of(&meta),
            sha256: self.hasher.map(|h| hex::encode(h.finalize())),
            bytes: self.bytes,
        })
    }
}

/// Unpacks `input` according to `format` into `out`. Always reads `input` to its end on success,
/// so that the async side can keep feeding it.
///
/// Every decompressed byte counts against `out`'s limit, whether it ends up in the executable or
/// not: tar headers, entries skipped, padding, whatever follows the end of the archive, further
/// gzip members. The compressed bytes are counted by the async side.
pub(super) fn unpack(
    format: Format,
    mut input: ChannelReader,
    mut out: BinaryWriter,
) -> Result<Unpacked, InstallError> {
    let mut budget = Budget::new(out.limit);
    match &format {
        Format::Raw => out.copy_from(&mut input, "reading the release")?,
        Format::Gzip => {
            let mut gz = budget.count(MultiGzDecoder::new(&mut input));
            out.copy_from(&mut gz, "decompressing the gzip release")?;
        }
        Format::TarGz { binary } => {
            let mut gz = budget.count(MultiGzDecoder::new(&mut input));
            unpack_tar(&mut gz, binary.as_deref(), &mut out)?;
            // What follows the end marker, and the gzip trailer with its CRC check.
            drain(&mut gz, "reading past the end of the tar archive")?;
        }
        Format::Zip { binary } => unpack_zip(&mut input, binary.as_deref(), &mut out, &mut budget)?,
    }
    drain(&mut input, "reading past the executable")?;
    out.finish()
}

fn drain(input: &mut impl Read, what: &str) -> Result<(), InstallError> {
    io::copy(input, &mut io::sink())
        .map(drop)
        .map_err(|e| read_error(what, e))
}

/// A read error while unpacking: the budget's, or else the archive's fault.
fn read_error(what: &str, e: io::Error) -> InstallError {
    if let Some(over) = e.get_ref().and_then(|i| i.downcast_ref::<OverBudget>()) {
        return InstallError::TooLarge {
            what: "the decompressed release (archive headers, skipped entries, padding and \
                   trailing data count too)",
            limit: over.0,
        };
    }
    InstallError::Unpack(format!("{what}: {e}"))
}

/// How many decompressed bytes may still be read.
struct Budget {
    used: u64,
    limit: u64,
}

#[derive(Debug)]
struct OverBudget(u64);

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "more than {} bytes decompressed", self.0)
    }
}

impl std::error::Error for OverBudget {}

impl Budget {
    fn new(limit: u64) -> Self {
        Budget { used: 0, limit }
    }

    fn count<R: Read>(&mut self, inner: R) -> Counted<'_, R> {
        Counted {
            inner,
            budget: self,
        }
    }
}

/// A reader whose bytes are charged to a [`Budget`]; past it, every read fails with
/// [`OverBudget`] (recognised by [`read_error`]).
struct Counted<'b, R> {
    inner: R,
    budget: &'b mut Budget,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let b = &mut *self.budget;
        if b.used > b.limit {
            return Err(io::Error::other(OverBudget(b.limit)));
        }
        // Never ask for more than one byte past the budget: a decoder is not run further.
        let room = usize::try_from(b.limit - b.used + 1).unwrap_or(usize::MAX);
        let n = buf.len().min(room);
        let n = self.inner.read(&mut buf[..n])?;
        b.used += n as u64;
        if b.used > b.limit {
            return Err(io::Error::other(OverBudget(b.limit)));
        }
        Ok(n)
    }
}

fn unpack_tar(
    input: &mut impl Read,
    wanted: Option<&str>,
    out: &mut BinaryWriter,
) -> Result<(), InstallError> {
    let mut found = Finder::new(wanted);
    tarwalk::walk(input, &read_error, |entry, data| {
        if entry.is_dir() {
            return Ok(());
        }
        let regular = entry.is_regular();
        let executable = regular && entry.mode & 0o111 != 0;
        if found.consider(&entry.name, regular, executable)? {
            out.copy_from(data, &format!("unpacking {} from the archive", entry.name))?;
            if data.limit() > 0 {
                return Err(InstallError::Unpack(format!(
                    "unpacking {} from the archive: it ends {} bytes short of its size",
                    entry.name,
                    data.limit()
                )));
            }
        }
        Ok(())
    })?;
    found.finish("a regular file with an execute bit", "Format::TarGz")
}

fn unpack_zip(
    input: &mut ChannelReader,
    wanted: Option<&str>,
    out: &mut BinaryWriter,
    budget: &mut Budget,
) -> Result<(), InstallError> {
    // Names and extra fields are at most 64 KiB each (16-bit lengths); entries not picked are
    // skipped as compressed bytes (counted by the async side), and what is decompressed is
    // charged to the budget.
    let mut found = Finder::new(wanted);
    loop {
        let mut file = match zip::read::read_zipfile_from_stream(input) {
            Ok(Some(file)) => file,
            Ok(None) => break,
            Err(e) => {
                return Err(InstallError::Unpack(format!(
                    "reading the .zip archive as a stream: {e} (zips written with sizes after \
                     the data cannot be streamed; publish a .tar.gz or re-create the zip)"
                )))
            }
        };
        if file.is_dir() {
            continue;
        }
        let name = file.name().to_owned();
        let what = format!("unpacking {name} from the archive");
        let mut data = budget.count(&mut file);
        // A streamed zip has no permission bits (they live in the central directory at the end),
        // so without a name the executable is recognised by its first bytes.
        let mut head = Vec::with_capacity(4);
        if wanted.is_none() {
            (&mut data)
                .take(4)
                .read_to_end(&mut head)
                .map_err(|e| read_error(&what, e))?;
        }
        if found.consider(&name, true, looks_executable(&head))? {
            out.write_chunk(&head)?;
            out.copy_from(&mut data, &what)?;
        }
    }
    found.finish(
        "a file that starts like an executable (ELF, Mach-O or #!)",
        "Format::Zip",
    )
}

fn looks_executable(head: &[u8]) -> bool {
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

/// Decides, entry by entry, which one is the executable: the named one, or else the only
/// executable-looking one. The first candidate is streamed out at once (it cannot be known to be
/// the only one until the end); a second one turns the result into an error.
struct Finder<'a> {
    wanted: Option<&'a str>,
    chosen: Names,
    others: Names,
}

/// The names an error message may list: the first [`LIST_MAX`], each cut to [`NAME_SHOWN`]
/// characters, and a count. An archive of a million entries with long names costs no memory.
#[derive(Default)]
struct Names {
    shown: Vec<String>,
    count: usize,
}

impl Names {
    fn push(&mut self, name: &str) {
        self.count += 1;
        if self.shown.len() < LIST_MAX {
            let mut shown: String = name.chars().take(NAME_SHOWN).collect();
            if shown.len() < name.len() {
                shown.push('…');
            }
            self.shown.push(shown);
        }
    }
}

impl<'a> Finder<'a> {
    fn new(wanted: Option<&'a str>) -> Self {
        Finder {
            wanted,
            chosen: Names::default(),
            others: Names::default(),
        }
    }

    /// Whether to stream this entry to the output.
    fn consider(
        &mut self,
        name: &str,
        regular: bool,
        executable: bool,
    ) -> Result<bool, InstallError> {
        let pick = match self.wanted {
            Some(wanted) if same_path(name, wanted) => {
                if !regular {
                    return Err(InstallError::BinaryNotInArchive(format!(
                        "{name} is not a regular file in the archive (a link or a device)"
                    )));
                }
                true
            }
            Some(_) => false,
            None => executable,
        };
        if pick {
            self.chosen.push(name);
        } else {
            self.others.push(name);
        }
        Ok(pick && self.chosen.count == 1)
    }

    fn finish(self, criterion: &str, format: &str) -> Result<(), InstallError> {
        match (self.chosen.count, self.wanted) {
            (1, _) => Ok(()),
            (0, Some(wanted)) => Err(InstallError::BinaryNotInArchive(format!(
                "no entry {wanted:?} in the archive, which holds: {}",
                list(&self.others)
            ))),
            (0, None) => Err(InstallError::BinaryNotInArchive(format!(
                "no {criterion} in the archive, which holds: {}; name the executable with \
                 {format} {{ binary: Some(..) }}",
                list(&self.others)
            ))),
            (_, Some(wanted)) => Err(InstallError::BinaryNotInArchive(format!(
                "the archive holds {wanted:?} more than once"
            ))),
            (_, None) => Err(InstallError::BinaryNotInArchive(format!(
                "several executables in the archive: {}; name the one to install with {format} \
                 {{ binary: Some(..) }}",
                list(&self.chosen)
            ))),
        }
    }
}

/// Archive paths compare equal ignoring `./` prefixes and doubled slashes.
fn same_path(a: &str, b: &str) -> bool {
    let parts = |p: &'_ str| -> Vec<String> {
        Path::new(p)
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect()
    };
    parts(a) == parts(b)
}

fn list(names: &Names) -> String {
    if names.count == 0 {
        return "nothing".into();
    }
    let mut out = names.shown.join(", ");
    if names.count > names.shown.len() {
        out.push_str(&format!(" and {} more", names.count - names.shown.len()));
    }
    out
}
