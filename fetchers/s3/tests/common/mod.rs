//! The S3 test bed is the test kit's (`upshift_testkit::s3`); this adds the fetcher under test.

#![allow(dead_code)]

use std::time::Duration;

use upshift_fetcher_conformance::Loopback;
use upshift_s3::S3Fetcher;
#[allow(unused_imports)]
pub use upshift_testkit::hello;
pub use upshift_testkit::s3::*;

/// A fetcher for [`KEY`] at `endpoint` (a loopback server), with test credentials and short
/// timeouts.
pub fn fetcher_for(endpoint: &str) -> S3Fetcher {
    S3Fetcher::new(BUCKET, KEY)
        .endpoint(endpoint)
        .region("us-east-1")
        .credentials(ACCESS_KEY, SECRET_KEY, None)
        .interval(Duration::from_millis(200))
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        // s3s-fs on 127.0.0.1 speaks plain http: the opt-in `Upgrader::run` would hand over.
        .loopback()
}

/// `bed.fetcher()`: the fetcher under test, pointed at a [`Bed`].
pub trait BedFetcher {
    /// A fetcher for [`KEY`] through the bed's proxy, with test credentials and short timeouts.
    fn fetcher(&self) -> S3Fetcher;
}

impl BedFetcher for Bed {
    fn fetcher(&self) -> S3Fetcher {
        fetcher_for(&self.endpoint())
    }
}
