//! The release state: what serves, what is on disk, what proved itself, what was refused and
//! why, and the version floor; the decisions over it are pure functions.

mod version;

pub use version::{parse_version, Version};
