//! (placeholder; the lead replaces this file)

pub(crate) const WRITES: u32 = 1;
pub(crate) const READS: &[u32] = &[1];
