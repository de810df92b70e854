//! The fetcher conformance suite (crate `upshift-fetcher-conformance`) against [`FileFetcher`]: the
//! source is a file in a private temp dir, published the way a deploy script should (side file
//! first, then the build written to a temporary name and renamed into place).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use common::TestDir;
use upshift::fetch::{Fetcher, FileFetcher};
use upshift_fetcher_conformance::{Failure, Source};

struct FileSource {
    _dir: TestDir,
    path: PathBuf,
    sidecar: PathBuf,
    /// The sidecar as last published, restored when a fault is cleared.
    published_sidecar: Mutex<Option<String>>,
}

impl FileSource {
    fn new() -> FileSource {
        let dir = TestDir::new("ffc");
        let path = dir.join("next");
        FileSource {
            sidecar: dir.join("next.sha256"),
            path,
            _dir: dir,
            published_sidecar: Mutex::new(None),
        }
    }

    fn write_sidecar(&self, text: Option<&str>) {
        match text {
            Some(t) => write_atomically(&self.sidecar, t.as_bytes()),
            None => remove_if_present(&self.sidecar),
        }
    }
}

/// Writes `<path>.tmp` and renames it to `path`, as a deploy script should.
fn write_atomically(path: &Path, bytes: &[u8]) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {tmp:?}: {e}"));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

fn remove_if_present(path: &Path) {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            panic!("remove {}: {e}", path.display())
        }
        _ => {}
    }
}

impl Source for FileSource {
    fn fetcher(&self) -> Box<dyn Fetcher> {
        Box::new(FileFetcher::new(&self.path).poll_interval(Duration::from_millis(200)))
    }

    fn publish(&self, bytes: &[u8], sha256: Option<&str>) {
        let text = sha256.map(|s| format!("{s}  next\n"));
        self.write_sidecar(text.as_deref());
        *self.published_sidecar.lock().unwrap() = text;
        write_atomically(&self.path, bytes);
    }

    fn publish_truncated(&self, _bytes: &[u8], _claimed_len: u64) -> bool {
        false // a local file has no announced length apart from its own
    }

    fn remove(&self) {
        remove_if_present(&self.path);
        remove_if_present(&self.sidecar);
        *self.published_sidecar.lock().unwrap() = None;
    }

    fn fail_next(&self, kind: Failure) -> bool {
        match kind {
            // What a file source can serve that is unusable: a malformed checksum file.
            Failure::ServerError => {
                self.write_sidecar(Some("this is not a sha256 digest\n"));
                true
            }
            Failure::NotFound | Failure::Refused | Failure::Slow => false,
        }
    }

    fn clear_faults(&self) {
        let published = self.published_sidecar.lock().unwrap().clone();
        self.write_sidecar(published.as_deref());
    }

    fn bytes_served(&self) -> Option<u64> {
        None
    }

    fn requests_served(&self) -> Option<u64> {
        None
    }

    fn uncounted_because(&self) -> Option<&'static str> {
        Some("the File fetcher reads a local file: there is no transfer or request to count")
    }

    fn locator(&self) -> String {
        // Errors name the path (or its side file, whose name starts with it).
        self.path.display().to_string()
    }
}

upshift_fetcher_conformance::fetcher_conformance_tests!(FileSource::new(); not_applicable {
    truncated_transfer_is_detectable: "a local file has no announced length but its own: a \
        shorter file is a different release, caught by its checksum",
    unvouched_release_is_not_downloaded: "a local release costs no download: the pipeline \
        refuses it before reading a byte it would not have read anyway",
});

/// The suite's own sanity: a check that must fail does fail against a source that lies. Here the
/// source claims to publish but writes a different file, so `published_release_reads_back_exactly`
/// must panic: the suite can catch a broken backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_catches_a_source_that_serves_other_bytes() {
    struct Lying(FileSource);
    impl Source for Lying {
        fn fetcher(&self) -> Box<dyn Fetcher> {
            self.0.fetcher()
        }
        fn publish(&self, bytes: &[u8], sha256: Option<&str>) {
            let mut other = bytes.to_vec();
            other[0] ^= 0xff;
            self.0.publish(&other, sha256);
        }
        fn publish_truncated(&self, _: &[u8], _: u64) -> bool {
            false
        }
        fn remove(&self) {
            self.0.remove()
        }
        fn fail_next(&self, kind: Failure) -> bool {
            self.0.fail_next(kind)
        }
        fn bytes_served(&self) -> Option<u64> {
            None
        }
        fn requests_served(&self) -> Option<u64> {
            None
        }
        fn locator(&self) -> String {
            self.0.locator()
        }
    }
    let outcome = tokio::spawn(async {
        let src = Lying(FileSource::new());
        upshift_fetcher_conformance::published_release_reads_back_exactly(&src).await;
    })
    .await;
    let err = outcome.expect_err("the suite accepted a source that serves other bytes");
    assert!(err.is_panic(), "{err}");
}

/// A check the backend cannot express fails unless the backend names it not applicable: the
/// File source cannot cut a transfer short, so running that check anyway must not pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_run_without_the_capability_it_needs_fails_instead_of_passing() {
    let outcome = tokio::spawn(async {
        let src = FileSource::new();
        upshift_fetcher_conformance::truncated_transfer_is_detectable(&src).await;
    })
    .await;
    let err = outcome.expect_err("a check passed without the capability it needs");
    assert!(err.is_panic(), "{err}");
}
