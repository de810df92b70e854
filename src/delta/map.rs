//! A read-only memory map of a file: the installed build a patch applies to, read in place so
//! that its pages count as the page cache's (file-backed, reclaimable) and not the master's heap.

use std::fs::File;
use std::num::NonZeroUsize;
use std::path::Path;
use std::ptr::NonNull;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// A file mapped read-only (`mmap(PROT_READ, MAP_PRIVATE)`), unmapped when dropped. An empty
/// file maps to an empty slice.
///
/// The file must not shrink while it is mapped (reading a page past its new end raises
/// `SIGBUS`): map files that are replaced by `rename`, never rewritten in place, as upshift's
/// installed binary is.
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// let path = std::env::temp_dir().join(format!("upshift-mapped-doc-{}", std::process::id()));
/// std::fs::write(&path, b"the installed build")?;
/// let mapped = upshift::delta::Mapped::open(&path)?;
/// assert_eq!(mapped.as_slice(), b"the installed build");
/// # std::fs::remove_file(&path)?;
/// # Ok(())
/// # }
/// ```
pub struct Mapped {
    /// `None` for an empty file (mmap refuses a zero length).
    map: Option<(NonNull<std::ffi::c_void>, NonZeroUsize)>,
}

// SAFETY: the mapping is read-only and owned by this value; `&[u8]` of it may be shared and sent
// like any other immutable byte slice.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Maps the file at `path`.
    ///
    /// # Errors
    /// The file cannot be opened or mapped, or does not fit in the address space.
    pub fn open(path: &Path) -> std::io::Result<Mapped> {
        Mapped::new(&File::open(path)?)
    }

    /// Maps `file` as it is now (its current length). The mapping stays valid after `file` is
    /// closed.
    ///
    /// # Errors
    /// The file cannot be mapped, or does not fit in the address space.
    pub fn new(file: &File) -> std::io::Result<Mapped> {
        let len = file.metadata()?.len();
        let len = usize::try_from(len).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the file is larger than the address space",
            )
        })?;
        let Some(len) = NonZeroUsize::new(len) else {
            return Ok(Mapped { map: None });
        };
        // SAFETY: a fresh private read-only mapping that no Rust object aliases; its lifetime is
        // this value's (munmap in Drop). See the type's note on files that shrink.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_PRIVATE,
                file,
                0,
            )
        }?;
        Ok(Mapped {
            map: Some((ptr, len)),
        })
    }

    /// The file's bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self.map {
            // SAFETY: `len` readable bytes at `ptr`, mapped until `self` is dropped.
            Some((ptr, len)) => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr().cast::<u8>(), len.get())
            },
            None => &[],
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if let Some((ptr, len)) = self.map.take() {
            // SAFETY: exactly the region mmap returned; no slice of it outlives `self`.
            if let Err(e) = unsafe { munmap(ptr, len.get()) } {
                tracing::warn!(error = %e, "munmap of a mapped release failed");
            }
        }
    }
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapped")
            .field("len", &self.as_slice().len())
            .finish()
    }
}
