//! Test helpers: a real nginx on 127.0.0.1, and the one fault nginx cannot produce by itself (a
//! transfer cut short), injected by a raw TCP upstream. Each test crate uses part of them.

#![allow(dead_code)]

/// The hello end-to-end harness, shared by every fetcher crate.
// Only the hello_upgrade test uses it.
#[allow(unused_imports)]
pub use upshift_fetcher_conformance::hello;
pub mod nginx;
pub mod truncating;

#[allow(unused_imports)]
pub use nginx::{nginx_or_skip, Hit, Nginx, Options, TOKEN};
#[allow(unused_imports)]
pub use truncating::Truncating;

use sha2::{Digest, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What a fetcher is told on a host where nothing it could find is installed yet.
pub fn nothing_installed() -> upshift::fetch::Current {
    upshift::fetch::Current {
        sha256: sha256_hex(b"the installed binary, never published"),
        identity: None,
        version: None,
        rejected: Vec::new(),
        requires_checksum: false,
    }
}
