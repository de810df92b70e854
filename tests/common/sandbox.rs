//! What a test borrows from the machine and must not share: a private temp dir, a free loopback
//! port, and the lock that keeps heavy tests from running side by side.

use std::fs::File;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Addr;

/// A directory under the system temp dir, removed when dropped. Short, so Unix socket paths fit.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let base = std::env::temp_dir();
        let path = base.join(format!("ups-{tag}-{}-{n}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create test dir");
        // Private whatever the umask: the File fetcher refuses a directory others may write.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .expect("make the test dir private");
        TestDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A loopback port that was free a moment ago (bind 127.0.0.1:0, read the port, drop).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// A free loopback address as a `--listen` argument and an [`Addr`].
pub fn free_tcp_addr() -> (String, Addr) {
    let port = free_port();
    let s = format!("127.0.0.1:{port}");
    let a = Addr::Tcp(s.parse().unwrap());
    (s, a)
}

/// Serialises the heavy (load) tests across threads and processes (`cargo nextest` runs each test
/// in its own process), so two load generators never fight over the 2 cores.
pub struct HeavyLock {
    _file: File,
}

pub fn heavy_lock() -> HeavyLock {
    let path = std::env::temp_dir().join("upshift-tests-heavy.lock");
    let file = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open lock file");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        // SAFETY: flock on a descriptor we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return HeavyLock { _file: file };
        }
        assert!(
            Instant::now() < deadline,
            "could not take {} within 300 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
