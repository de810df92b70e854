//! The fetcher conformance suite against a real S3-compatible server (s3s-fs, SigV4 checked),
//! reached through a counting, fault-injecting proxy. Releases are published the way a deploy
//! script should: the `.sha256` sidecar first, then the object.

mod common;

use std::sync::Mutex;

use common::{Bed, BedFetcher, Mode, Vouch, KEY};
use upshift::fetch::Fetcher;
use upshift_fetcher_conformance::{Failure, Source};

struct S3Source {
    bed: Bed,
    /// What `remove` took away for a `NotFound` fault, restored by `clear_faults`.
    hidden: Mutex<Option<(Vec<u8>, Option<String>)>>,
    /// The last publication, for `NotFound`.
    last: Mutex<Option<(Vec<u8>, Option<String>)>>,
}

impl S3Source {
    fn start() -> Option<S3Source> {
        Some(S3Source {
            bed: Bed::start_or_skip()?,
            hidden: Mutex::new(None),
            last: Mutex::new(None),
        })
    }
}

impl Source for S3Source {
    fn fetcher(&self) -> Box<dyn Fetcher> {
        Box::new(self.bed.fetcher())
    }

    fn publish(&self, bytes: &[u8], sha256: Option<&str>) {
        self.bed.proxy.truncate(None);
        self.bed.publish(bytes, sha256, Vouch::Sidecar);
        *self.last.lock().unwrap() = Some((bytes.to_vec(), sha256.map(str::to_string)));
    }

    fn publish_truncated(&self, bytes: &[u8], claimed_len: u64) -> bool {
        let sha = upshift_fetcher_conformance::sha256_hex(bytes);
        self.bed.publish(bytes, Some(&sha), Vouch::Sidecar);
        self.bed.proxy.truncate(Some(claimed_len));
        true
    }

    fn remove(&self) {
        self.bed.remove();
        *self.last.lock().unwrap() = None;
    }

    fn fail_next(&self, kind: Failure) -> bool {
        match kind {
            // Really gone from the store (restored on clear), not a proxy's fake 404.
            Failure::NotFound => {
                let last = self.last.lock().unwrap().clone();
                self.bed.remove();
                *self.hidden.lock().unwrap() = last;
            }
            Failure::ServerError => self.bed.proxy.set_mode(Mode::ServerError),
            Failure::Refused => self.bed.proxy.set_mode(Mode::Refused),
            Failure::Slow => self.bed.proxy.set_mode(Mode::Slow),
        }
        true
    }

    fn clear_faults(&self) {
        self.bed.proxy.set_mode(Mode::Pass);
        if let Some((bytes, sha)) = self.hidden.lock().unwrap().take() {
            self.bed.publish(&bytes, sha.as_deref(), Vouch::Sidecar);
        }
    }

    fn bytes_served(&self) -> Option<u64> {
        Some(self.bed.proxy.release_body_bytes())
    }

    fn requests_served(&self) -> Option<u64> {
        Some(self.bed.proxy.requests())
    }
}

upshift_fetcher_conformance::fetcher_conformance_tests!(optional: S3Source::start());

/// The proxy measures what it should: a GET of the release counts its body, a sidecar does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_counts_release_bytes_only() {
    let Some(src) = S3Source::start() else {
        return;
    };
    let bytes = upshift_fetcher_conformance::payload("count", 100_000);
    src.publish(
        &bytes,
        Some(&upshift_fetcher_conformance::sha256_hex(&bytes)),
    );
    assert_eq!(src.bytes_served(), Some(0));
    let mut f = src.fetcher();
    let current = upshift::fetch::Current {
        sha256: "0".repeat(64),
        identity: None,
        version: None,
        rejected: Vec::new(),
        requires_checksum: false,
    };
    let mut release = f.check(&current).await.unwrap().expect("a release");
    upshift_fetcher_conformance::read_body(&mut release, bytes.len())
        .await
        .unwrap();
    assert_eq!(src.bytes_served(), Some(bytes.len() as u64));
    assert!(src
        .bed
        .proxy
        .log()
        .iter()
        .any(|e| e.method == "GET" && e.path.ends_with(&format!("{KEY}.sha256"))));
}
