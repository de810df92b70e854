//! The crafted archives live in the test kit (`testkit/src/crafted.rs`). This file remains for
//! `tests/release_bounds.rs`, which still includes it by path.

#[allow(unused_imports)]
pub use upshift_testkit::crafted::*;
