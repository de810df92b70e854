//! A bounded tar reader: just what staging needs from a `.tar.gz` (walk the entries, stream one
//! out, skip the rest), for ustar, GNU (`L`/`K` long names) and PAX (`x`/`g`) archives.
//!
//! The `tar` crate reads a long-name or PAX extension whole into memory, whatever its size: a
//! 260 KB `.tar.gz` whose extension inflates to a gigabyte took the master's memory with it. Here
//! an extension is read only up to [`EXT_MAX`], every other byte is streamed, and nothing is
//! kept per entry but its name.

use std::io::{self, Read};

use super::InstallError;

/// The largest GNU long-name or PAX extension read (a path is at most 4 KiB on Linux; PAX
/// records of real archives are a few hundred bytes).
pub(super) const EXT_MAX: u64 = 64 * 1024;

const BLOCK: usize = 512;

/// One archive member, as the walker hands it over.
pub(super) struct Entry {
    /// The path: from a PAX `path` record, else a GNU long name, else the header (with the
    /// ustar prefix).
    pub(super) name: String,
    /// The type flag (`b'0'` regular file, `b'5'` directory, `b'2'` symlink, ...).
    pub(super) kind: u8,
    pub(super) mode: u32,
}

impl Entry {
    pub(super) fn is_dir(&self) -> bool {
        self.kind == b'5'
    }

    pub(super) fn is_regular(&self) -> bool {
        matches!(self.kind, b'0' | b'\0' | b'7')
    }
}

/// What extension headers said about the next entry.
#[derive(Default)]
struct Pending {
    long_name: Option<String>,
    pax_path: Option<String>,
    pax_size: Option<u64>,
}

/// Reads the archive from `input` to its end-of-archive marker, calling `each` with every entry
/// and a reader of exactly its data. Data `each` leaves unread, and the padding, are skipped
/// (read, so that a byte counter below sees them).
///
/// `wrap` turns a read error into the caller's error (so that a byte budget stays recognisable).
pub(super) fn walk<R: Read>(
    input: &mut R,
    wrap: &dyn Fn(&str, io::Error) -> InstallError,
    mut each: impl FnMut(&Entry, &mut io::Take<&mut R>) -> Result<(), InstallError>,
) -> Result<(), InstallError> {
    let mut pending = Pending::default();
    let mut block = [0u8; BLOCK];
    for index in 1u64.. {
        let what = || format!("reading the header of entry {index} of the .tar.gz archive");
        if !read_block(input, &mut block).map_err(|e| wrap(&what(), e))? {
            // An archive cut right after an entry, without its end marker: accepted like tar does.
            return Ok(());
        }
        if block.iter().all(|&b| b == 0) {
            return Ok(());
        }
        check_sum(&block, index)?;
        let kind = block[156];
        let header_size = number(&block[124..136]).ok_or_else(|| {
            bad(
                index,
                "its size field is not a number (is this a tar archive?)",
            )
        })?;
        let ext = |name: &str| format!("the {name} of entry {index} of the .tar.gz archive");
        match kind {
            b'L' | b'K' | b'x' | b'g' => {
                let label = match kind {
                    b'L' => "GNU long name",
                    b'K' => "GNU long link name",
                    b'x' => "PAX extended header",
                    _ => "PAX global header",
                };
                let data = read_ext(input, header_size, &ext(label), wrap)?;
                match kind {
                    b'L' => pending.long_name = Some(c_string(&data)),
                    b'x' => pax(&data, &mut pending, index)?,
                    // A link target and global defaults name nothing staging needs.
                    _ => {}
                }
                skip(input, padding(header_size), &ext("padding"), wrap)?;
            }
            _ => {
                let pending = std::mem::take(&mut pending);
                let size = pending.pax_size.unwrap_or(header_size);
                let name = pending
                    .pax_path
                    .or(pending.long_name)
                    .unwrap_or_else(|| header_name(&block));
                let entry = Entry {
                    name,
                    kind,
                    mode: number(&block[100..108]).unwrap_or(0) as u32,
                };
                let mut data = input.take(size);
                each(&entry, &mut data)?;
                let left = data.limit();
                let what = format!("skipping {} in the .tar.gz archive", entry.name);
                skip(input, left + padding(size), &what, wrap)?;
            }
        }
    }
    Ok(())
}

/// Reads one block: `false` at a clean end of input, an error for a partial block.
fn read_block(input: &mut impl Read, block: &mut [u8; BLOCK]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < BLOCK {
        match input.read(&mut block[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the archive ends in the middle of a header",
                ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn read_ext(
    input: &mut impl Read,
    size: u64,
    what: &str,
    wrap: &dyn Fn(&str, io::Error) -> InstallError,
) -> Result<Vec<u8>, InstallError> {
    if size > EXT_MAX {
        return Err(InstallError::Unpack(format!(
            "{what} is {size} bytes, more than the {EXT_MAX} upshift reads: not a release archive"
        )));
    }
    let mut data = Vec::with_capacity(size as usize);
    input
        .take(size)
        .read_to_end(&mut data)
        .map_err(|e| wrap(what, e))?;
    if (data.len() as u64) < size {
        return Err(InstallError::Unpack(format!(
            "{what}: the archive ends after {} of its {size} bytes",
            data.len()
        )));
    }
    Ok(data)
}

fn skip(
    input: &mut impl Read,
    n: u64,
    what: &str,
    wrap: &dyn Fn(&str, io::Error) -> InstallError,
) -> Result<(), InstallError> {
    let skipped = io::copy(&mut input.take(n), &mut io::sink()).map_err(|e| wrap(what, e))?;
    if skipped < n {
        return Err(InstallError::Unpack(format!(
            "{what}: the archive ends {} bytes early",
            n - skipped
        )));
    }
    Ok(())
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn bad(index: u64, why: &str) -> InstallError {
    InstallError::Unpack(format!(
        "entry {index} of the .tar.gz archive has a bad header: {why}"
    ))
}

/// The header checksum: the unsigned (POSIX) or signed (old tars) byte sum, with the checksum
/// field itself counted as spaces.
fn check_sum(block: &[u8; BLOCK], index: u64) -> Result<(), InstallError> {
    let stored = number(&block[148..156]).ok_or_else(|| {
        bad(
            index,
            "its checksum field is not a number (is this a tar archive?)",
        )
    })?;
    let field = 148..156;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if field.contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        return Ok(());
    }
    Err(bad(
        index,
        &format!("checksum {stored} stored, {unsigned} computed (corrupt, or not a tar archive)"),
    ))
}

/// A numeric field: octal ASCII (space or NUL padded), or GNU base-256 when the high bit of the
/// first byte is set. `None` when malformed or beyond `u64`.
fn number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        let mut value: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let text = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ');
    // An empty field is zero: old archives leave unused numbers blank.
    let mut value = 0u64;
    for b in text {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The path in a ustar/GNU header: `prefix/name` for POSIX ustar, `name` otherwise.
fn header_name(block: &[u8; BLOCK]) -> String {
    let name = c_string(&block[0..100]);
    let posix_ustar = &block[257..263] == b"ustar\0";
    let prefix = if posix_ustar {
        c_string(&block[345..500])
    } else {
        String::new()
    };
    match prefix.is_empty() {
        true => name,
        false => format!("{prefix}/{name}"),
    }
}

/// Applies the `path` and `size` records of a PAX extended header (`"<len> <key>=<value>\n"`).
fn pax(data: &[u8], pending: &mut Pending, index: u64) -> Result<(), InstallError> {
    let malformed = || bad(index, "a malformed PAX extended header");
    let mut rest = data;
    while !rest.is_empty() && rest.iter().any(|&b| b != 0) {
        let space = rest.iter().position(|&b| b == b' ').ok_or_else(malformed)?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&n| n > space && n <= rest.len())
            .ok_or_else(malformed)?;
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").ok_or_else(malformed)?;
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(malformed)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => pending.pax_path = Some(String::from_utf8_lossy(value).into_owned()),
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad(index, "a PAX size record that is not a number"))?;
                pending.pax_size = Some(size);
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(())
}
