//! Delta releases: a release published as a patch against a previous build, so that a server
//! downloads a few hundred kilobytes instead of the whole binary.
//!
//! `upshift-publish --delta-from OLD…` writes, beside the full release `NAME`, one patch per
//! previous build, named by that build's sha256 ([`patch_name`]):
//!
//! ```text
//! app                                     the full release
//! app.sha256, app.minisig
//! app.from-9f86d081884c7d65.bidiff.zst    the patch from the build whose sha256 starts 9f86d081…
//! app.from-9f86d081884c7d65.bidiff.zst.sha256, ….minisig
//! ```
//!
//! A patch has its own checksum and signature, made as the full release's are (its signature's
//! trusted comment names the build it applies to: [`SignedMetadata::base`]). A master that runs
//! the build a patch names downloads the patch, checks the patch's own sha256 (and signature)
//! before using it, [applies](apply) it to its installed binary, [mapped](Mapped) rather than
//! read into memory, and then holds the result to the full release's sha256 and signature, as if
//! it had downloaded the full release.
//!
//! # The format
//!
//! A patch is a [bidiff] patch (bsdiff's method: the new file as runs of "old bytes plus a
//! small difference" and runs of new bytes, which is what turns a build whose code moved by a
//! few bytes, with every address in it shifted, into a patch of a few kilobytes) compressed as
//! one zstd stream, hence `.bidiff.zst`: `zstd -d` and bidiff's `bipatch` rebuild the file by
//! hand. The zstd stream is written with a 1 MiB window and a content checksum; the decoder here
//! refuses a window over [`MAX_WINDOW_LOG`], so applying a patch needs about 1 MiB of memory plus
//! the mapped old build, whatever the patch claims.
//!
//! Measured on the `hello` example (22.2 MiB; `cargo run --release -p upshift-bench --
//! deltas`): a build that differs only by its `BUILD_ID` gives a 12 KB patch, a one-line source
//! change 30 KB, a dependency's patch-version change 0.46 MB (2 % of the full release). zstd's
//! own `--patch-from` mode made patches 2.4 to 4.6 times larger, and its streaming decoder
//! buffers the whole output (22 MiB) on the heap.
//!
//! [bidiff]: https://docs.rs/bidiff
//! [`SignedMetadata::base`]: crate::release::SignedMetadata::base

mod map;

use std::io::{self, Read, Write};

pub use map::Mapped;

/// How a patch's name ends: a bidiff patch, zstd-compressed. Installers skip the name (GitHub's
/// asset selection passes over `.zst` assets), so a patch is never taken for the release itself.
pub const PATCH_SUFFIX: &str = ".bidiff.zst";

/// How many hex digits of the old build's sha256 a patch name carries.
pub const BASE_PREFIX_LEN: usize = 16;

/// The largest zstd window (as a power of two) a patch may use: 4 MiB. Patches are written
/// with 1 MiB (`2^20`); the rest is room for a later publisher that trades memory for size.
pub const MAX_WINDOW_LOG: u32 = 22;

/// The window patches are written with: 1 MiB. On the `hello` pairs a 4 MiB window saved 1 %.
#[cfg(any(test, feature = "delta-make"))]
const WINDOW_LOG: u32 = 20;

/// The zstd level patches are written with (the highest before the `--ultra` levels).
#[cfg(any(test, feature = "delta-make"))]
const LEVEL: i32 = 19;

/// The name of the patch that turns the build whose sha256 is `base_sha256` into the release
/// published as `published_name`: `NAME.from-<first 16 hex digits>.bidiff.zst`.
///
/// ```
/// let sha = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
/// assert_eq!(
///     upshift::delta::patch_name("app", sha),
///     "app.from-9f86d081884c7d65.bidiff.zst"
/// );
/// ```
pub fn patch_name(published_name: &str, base_sha256: &str) -> String {
    let prefix: String = base_sha256
        .chars()
        .take(BASE_PREFIX_LEN)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("{published_name}.from-{prefix}{PATCH_SUFFIX}")
}

/// The base prefix a patch name carries (the 16 hex digits after `.from-`), or `None` when
/// `name` is not a patch's name.
///
/// ```
/// use upshift::delta::{patch_base_prefix, patch_name};
///
/// let sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
/// let name = patch_name("app-x86_64-unknown-linux-gnu", sha);
/// assert_eq!(patch_base_prefix(&name), Some("9f86d081884c7d65"));
/// assert!(sha.starts_with(patch_base_prefix(&name).unwrap()));
/// assert_eq!(patch_base_prefix("app-x86_64-unknown-linux-gnu"), None);
/// assert_eq!(patch_base_prefix("app.from-xyz.bidiff.zst"), None);
/// ```
pub fn patch_base_prefix(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(PATCH_SUFFIX)?;
    let at = stem.rfind(".from-")?;
    let prefix = &stem[at + ".from-".len()..];
    let ok = at > 0
        && prefix.len() == BASE_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then_some(prefix)
}

/// Why a patch could not be made or applied. Every message ends in what to do; for a master
/// that is to fall back to the full release.
///
/// ```
/// use upshift::delta::{apply, DeltaError};
///
/// let err = apply(b"old build", &mut &b"not a patch"[..], &mut Vec::new(), 1 << 20).unwrap_err();
/// assert!(matches!(err, DeltaError::NotAPatch(_)));
/// assert!(err.to_string().contains("download the full release"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// The patch is not a zstd-compressed bidiff patch at all.
    #[error(
        "not a delta patch ({0}): a patch is a zstd-compressed bidiff patch as `upshift-publish \
         --delta-from` writes it; download the full release instead"
    )]
    NotAPatch(String),
    /// The patch's zstd stream or its bidiff instructions are damaged, or it ends early.
    #[error(
        "the delta patch is corrupt or cut short ({0}); download the full release instead, and \
         republish the patch if it keeps happening"
    )]
    Corrupt(String),
    /// The patch's zstd stream needs a larger window than [`MAX_WINDOW_LOG`] allows.
    #[error(
        "the delta patch needs a zstd window over {} MiB to decode, more than upshift allows \
         (it was not written by upshift-publish); download the full release instead",
        1u64 << (MAX_WINDOW_LOG - 20)
    )]
    WindowTooLarge,
    /// The patch refers to bytes the old build does not have: it was made for another build.
    #[error(
        "the delta patch reads past the end of the installed build: it was made for another \
         build (or is corrupt); download the full release instead"
    )]
    WrongBase,
    /// The result would be larger than allowed.
    #[error("the delta patch produces more than {max} bytes, the largest release allowed")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// Reading the patch failed.
    #[error("reading the delta patch: {0}")]
    Read(#[source] io::Error),
    /// Writing the result failed.
    #[error("writing the patched release: {0}")]
    Write(#[source] io::Error),
}

/// Makes the patch from `base` (the old build) to `new`, written to `out`, and returns its size.
///
/// Takes a few seconds and about eight times `base`'s size in memory (a suffix array of it):
/// this is the publisher's side. Available with the `delta-make` feature.
///
/// ```
/// let base = b"hello from build 1, pid 12345, generation 7\n".repeat(50);
/// let new = b"hello from build 2, pid 12345, generation 7\n".repeat(50);
/// let mut patch = Vec::new();
/// upshift::delta::make(&base, &new, &mut patch).unwrap();
/// assert!(patch.len() < new.len() / 4);
///
/// let mut rebuilt = Vec::new();
/// let n = upshift::delta::apply(&base, &mut &patch[..], &mut rebuilt, 1 << 20).unwrap();
/// assert_eq!((n, rebuilt), (new.len() as u64, new));
/// ```
///
/// # Errors
/// Writing to `out` failed.
#[cfg(any(test, feature = "delta-make"))]
pub fn make(base: &[u8], new: &[u8], out: &mut dyn Write) -> Result<u64, DeltaError> {
    let mut counted = Counted { inner: out, n: 0 };
    let mut z =
        zstd::stream::write::Encoder::new(&mut counted, LEVEL).map_err(DeltaError::Write)?;
    z.window_log(WINDOW_LOG).map_err(DeltaError::Write)?;
    z.include_checksum(true).map_err(DeltaError::Write)?;
    // bidiff's suffix sort needs at least one byte on each side.
    if !base.is_empty() && !new.is_empty() {
        bidiff::simple_diff(base, new, &mut z).map_err(DeltaError::Write)?;
    } else {
        // What bidiff would write: its header, then at most one run of new bytes.
        let mut w = bidiff::enc::Writer::new(&mut z).map_err(DeltaError::Write)?;
        if !new.is_empty() {
            let run = bidiff::Control {
                add: &[],
                copy: new,
                seek: 0,
            };
            w.write(&run).map_err(DeltaError::Write)?;
        }
    }
    z.finish().map_err(DeltaError::Write)?;
    counted.inner.flush().map_err(DeltaError::Write)?;
    Ok(counted.n)
}

/// A writer that counts what passes through.
#[cfg(any(test, feature = "delta-make"))]
struct Counted<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}

#[cfg(any(test, feature = "delta-make"))]
impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Applies `patch` to `base` (the installed build, usually [`Mapped`]), writing the result to
/// `out`; returns the number of bytes written.
///
/// Synchronous and streaming: call it on a blocking thread. It holds a 1 MiB zstd window (4 MiB
/// at most, [`MAX_WINDOW_LOG`]) and small buffers, whatever the patch claims; it stops with
/// [`DeltaError::TooLarge`] as soon as the result would exceed `max_out` bytes. It never panics
/// on a corrupt, cut-short or hostile patch, but a patch made for another build may well apply
/// and produce garbage: the caller must check the result's sha256, as for any download.
///
/// ```
/// use std::io::Write;
/// use upshift::delta::{apply, Mapped};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = std::env::temp_dir().join(format!("upshift-delta-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let base_path = dir.join("app");
/// # std::fs::write(&base_path, b"old build")?;
/// # let patch_path = dir.join("app.from-x.bidiff.zst");
/// # // bidiff's header, one run of 9 new bytes, as `upshift::delta::make` (feature
/// # // `delta-make`) would write it.
/// # let mut stream = vec![0xdf, 0xb1, 0, 0, 0, 0x10, 0, 0, 0, 9];
/// # stream.extend(b"new build");
/// # stream.push(0);
/// # std::fs::write(&patch_path, zstd::encode_all(&stream[..], 3)?)?;
/// let base = Mapped::open(&base_path)?;
/// let mut patch = std::io::BufReader::new(std::fs::File::open(&patch_path)?);
/// let mut out = std::fs::File::create(dir.join(".app.staged"))?;
/// let written = apply(base.as_slice(), &mut patch, &mut out, 512 << 20)?;
/// out.flush()?;
/// assert_eq!(written, 9);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// See [`DeltaError`]: not a patch, corrupt or cut short, too large a window, reads beyond
/// `base`, a result over `max_out`, or an I/O error on either side.
pub fn apply(
    base: &[u8],
    patch: &mut dyn Read,
    out: &mut dyn Write,
    max_out: u64,
) -> Result<u64, DeltaError> {
    let source = Source {
        inner: patch,
        error: None,
        n: 0,
    };
    let mut decoder = match zstd::stream::read::Decoder::new(source) {
        Ok(d) => d,
        // Only an allocation failure of the decoder's context ends up here.
        Err(e) => return Err(DeltaError::Corrupt(e.to_string())),
    };
    decoder
        .window_log_max(MAX_WINDOW_LOG)
        .map_err(|e| DeltaError::Corrupt(e.to_string()))?;
    let mut stream = Stream {
        inner: decoder,
        error: None,
        ended: false,
        read: 0,
        // The bidiff stream holds every output byte once plus a few bytes of instructions per
        // run: twice the output bounds the work a decompression bomb can cause.
        limit: max_out.saturating_mul(2).saturating_add(1 << 20),
    };
    let written = run(base, &mut stream, out, max_out);
    // bipatch stopped at what looked like the end of its instructions: the zstd stream must end
    // there too.
    let written = match written {
        Ok(n) if !stream.ended => match stream.read(&mut [0u8; 1]) {
            Ok(0) => Ok(n),
            Ok(_) => Err(DeltaError::Corrupt(
                "its instructions end before its compressed stream does".into(),
            )),
            Err(_) => Err(DeltaError::Corrupt("unreadable end".into())),
        },
        other => other,
    };
    // An error of the patch's source or of its zstd stream explains whatever bipatch made of it
    // (bipatch takes an error at the start of an instruction for the end of the patch).
    if let Some(e) = stream.inner.get_mut().get_mut().error.take() {
        return Err(DeltaError::Read(e));
    }
    if let Some(e) = stream.error.take() {
        return Err(e);
    }
    written
}

/// The bidiff instructions from `stream`, applied to `base`, into `out`.
fn run(
    base: &[u8],
    stream: &mut dyn Read,
    out: &mut dyn Write,
    max_out: u64,
) -> Result<u64, DeltaError> {
    let mut reader = bipatch::Reader::new(stream, io::Cursor::new(base)).map_err(|e| match e {
        bipatch::DecodeError::IO(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            DeltaError::Corrupt("the patch ends before its header".into())
        }
        bipatch::DecodeError::IO(e) => DeltaError::Corrupt(e.to_string()),
        other => DeltaError::NotAPatch(other.to_string()),
    })?;
    let mut buf = vec![0u8; 64 << 10];
    let mut written = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(written),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Reading base past its end (an UnexpectedEof of the cursor) or seeking before its
            // start (InvalidInput); an error of the stream itself is reported by the caller.
            Err(_) => return Err(DeltaError::WrongBase),
        };
        if written + n as u64 > max_out {
            return Err(DeltaError::TooLarge { max: max_out });
        }
        out.write_all(&buf[..n]).map_err(DeltaError::Write)?;
        written += n as u64;
    }
}

/// The patch as downloaded: remembers its I/O error, which the zstd decoder passes on.
struct Source<'a> {
    inner: &'a mut dyn Read,
    error: Option<io::Error>,
    /// Bytes read so far.
    n: u64,
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let copy = io::Error::new(e.kind(), e.to_string());
                    self.error.get_or_insert(e);
                    return Err(copy);
                }
                Ok(n) => {
                    self.n += n as u64;
                    return Ok(n);
                }
            }
        }
    }
}

/// The decompressed bidiff stream: remembers how it ended and caps its length.
struct Stream<'a> {
    inner: zstd::stream::read::Decoder<'static, io::BufReader<Source<'a>>>,
    error: Option<DeltaError>,
    ended: bool,
    read: u64,
    limit: u64,
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.error {
            return Err(io::Error::other(e.to_string()));
        }
        let n = loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let msg = e.to_string();
                    let empty = self.inner.get_ref().get_ref().n == 0;
                    self.error = Some(if empty {
                        DeltaError::NotAPatch("it is empty".into())
                    } else if msg.contains("too much memory") {
                        DeltaError::WindowTooLarge
                    } else if msg.contains("Unknown frame descriptor") && self.read == 0 {
                        DeltaError::NotAPatch("no zstd frame at its start".into())
                    } else {
                        DeltaError::Corrupt(msg)
                    });
                    return Err(e);
                }
                Ok(n) => break n,
            }
        };
        if n == 0 && !buf.is_empty() {
            if self.read == 0 {
                self.error = Some(DeltaError::NotAPatch("it is empty".into()));
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.ended = true;
        }
        self.read += n as u64;
        if self.read > self.limit {
            self.error = Some(DeltaError::Corrupt(format!(
                "its instructions exceed {} bytes, more than a patch for the largest release \
                 allowed needs",
                self.limit
            )));
            return Err(io::Error::other("patch stream too long"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
