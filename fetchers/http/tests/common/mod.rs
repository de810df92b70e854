//! Test helpers: a real nginx on 127.0.0.1 (the test kit's), and the one fault nginx cannot
//! produce by itself (a transfer cut short), injected by a raw TCP upstream. Each test crate uses
//! part of them.

#![allow(dead_code)]

pub mod truncating;

#[allow(unused_imports)]
pub use truncating::Truncating;
#[allow(unused_imports)]
pub use upshift_fetcher_conformance::sha256_hex;
#[allow(unused_imports)]
pub use upshift_testkit::servers::nginx;
#[allow(unused_imports)]
pub use upshift_testkit::servers::nginx::{nginx_or_skip, start_tls, Hit, Nginx, Options, TOKEN};

/// What a fetcher is told on a host where nothing it could find is installed yet.
#[allow(unused_imports)]
pub use upshift_fetcher_conformance::unrelated_current as nothing_installed;
