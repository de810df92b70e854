//! Tests of the File fetcher: real files, real inotify events, bounded in time.

use super::*;
use sha2::{Digest, Sha256};
use std::sync::atomic::AtomicUsize;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(10);

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("upshift-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        // Private whatever the umask: the fetcher refuses a directory others may write.
        chmod(&p, 0o700);
        TempDir(p)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn current(sha256: &str) -> Current {
    Current {
        sha256: sha256.into(),
        identity: None,
        version: None,
        rejected: Vec::new(),
        requires_checksum: false,
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn body(release: Release) -> Vec<u8> {
    let mut out = Vec::new();
    let mut body = release.body;
    body.read_to_end(&mut out).await.unwrap();
    out
}

async fn check(f: &mut FileFetcher, cur: &Current) -> Option<Release> {
    timeout(BOUND, f.check(cur))
        .await
        .expect("check timed out")
        .expect("check failed")
}

#[tokio::test]
async fn missing_then_written() {
    let dir = TempDir::new("missing");
    let path = dir.join("app");
    let mut f = FileFetcher::new(&path);
    assert_eq!(f.name(), format!("file:{}", path.display()));
    assert_eq!(f.interval(), Duration::from_secs(1));
    let none = current("0000");
    assert!(check(&mut f, &none).await.is_none());

    let content = b"#!/bin/sh\necho new build\n".repeat(1000);
    std::fs::write(&path, &content).unwrap();
    let r = check(&mut f, &none).await.expect("a release");
    let hash = sha(&content);
    assert_eq!(r.identity, format!("sha256:{hash}"));
    assert_eq!(r.sha256.as_deref(), Some(hash.as_str()));
    assert_eq!(r.size_hint, Some(content.len() as u64));
    assert_eq!(r.format, Format::Raw);
    assert_eq!(r.origin, Origin::Local);
    assert_eq!(
        r.vouched_origin(),
        Origin::Local,
        "the File fetcher proves it"
    );
    assert!(r.signature.is_none());
    assert_eq!(body(r).await, content);
}

#[tokio::test]
async fn unchanged_touched_or_installed_is_none() {
    let dir = TempDir::new("unchanged");
    let path = dir.join("app");
    std::fs::write(&path, b"build 1").unwrap();
    let mut f = FileFetcher::new(&path);
    let old = current("0000");
    assert!(check(&mut f, &old).await.is_some());
    // Nothing changed: None even though the content differs from `current` (no re-read).
    assert!(check(&mut f, &old).await.is_none());

    // touch: a new mtime, the same content, which is now installed.
    let installed = current(&sha(b"build 1"));
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(file);
    assert!(check(&mut f, &installed).await.is_none());

    // A re-copy of the installed build: None.
    std::fs::write(&path, b"build 1").unwrap();
    assert!(check(&mut f, &installed).await.is_none());
    // A fresh fetcher, content equal to current: None.
    let mut fresh = FileFetcher::new(&path);
    assert!(check(&mut fresh, &installed).await.is_none());
    // A different build: offered. (Another size: a same-size rewrite within the same tick of
    // the kernel's coarse mtime clock is invisible to `stat`.)
    std::fs::write(&path, b"build 2!").unwrap();
    let r = check(&mut f, &installed).await.expect("build 2");
    assert_eq!(body(r).await, b"build 2!");
}

#[tokio::test]
async fn sidecar_digest_is_the_expected_hash() {
    let dir = TempDir::new("sidecar");
    let path = dir.join("app");
    let claimed = "AB".repeat(32);
    std::fs::write(dir.join("app.sha256"), format!("{claimed}  app\n")).unwrap();
    std::fs::write(&path, b"content").unwrap();
    let mut f = FileFetcher::new(&path);
    let r = check(&mut f, &current("0000")).await.expect("a release");
    assert_eq!(r.sha256, Some(claimed.to_ascii_lowercase()));
    assert_eq!(r.identity, format!("sha256:{}", sha(b"content")));

    // Sidecar changed alone: checked again; the `--tag` format.
    std::fs::write(
        dir.join("app.sha256"),
        format!("SHA256 (app) = {}\n", sha(b"content")),
    )
    .unwrap();
    let r = check(&mut f, &current("0000")).await.expect("re-offered");
    assert_eq!(r.sha256, Some(sha(b"content")));

    // Turned off: the computed hash.
    let mut off = FileFetcher::new(&path).sidecar(false);
    std::fs::write(dir.join("app.sha256"), format!("{claimed}  app\n")).unwrap();
    let r = check(&mut off, &current("0000")).await.expect("a release");
    assert_eq!(r.sha256, Some(sha(b"content")));
}

#[tokio::test]
async fn malformed_sidecar_is_an_error_naming_it() {
    let dir = TempDir::new("badsidecar");
    let path = dir.join("app");
    let side = dir.join("app.sha256");
    std::fs::write(&path, b"content").unwrap();
    let mut f = FileFetcher::new(&path);
    for bad in ["not-a-digest  app\n", "", &"a".repeat(63), &"g".repeat(64)] {
        std::fs::write(&side, bad).unwrap();
        let res = timeout(BOUND, f.check(&current("0000"))).await.unwrap();
        let err = res.expect_err("a malformed sidecar must fail the check");
        assert!(matches!(err, FetchError::Source(_)), "{err:?}");
        assert!(
            err.to_string().contains(&side.display().to_string()),
            "{err}"
        );
    }
}

#[tokio::test]
async fn minisig_is_the_signature() {
    let dir = TempDir::new("minisig");
    let path = dir.join("app");
    let sig = "untrusted comment: signature\nRWQ...\ntrusted comment: t\nabc\n";
    std::fs::write(dir.join("app.minisig"), sig).unwrap();
    std::fs::write(&path, b"content").unwrap();
    let mut f = FileFetcher::new(&path);
    let r = check(&mut f, &current("0000")).await.expect("a release");
    assert_eq!(r.signature.as_deref(), Some(sig));
}

#[tokio::test]
async fn format_from_the_file_name() {
    let dir = TempDir::new("format");
    let path = dir.join("app.tar.gz");
    std::fs::write(&path, b"not really a tarball").unwrap();
    let mut f = FileFetcher::new(&path);
    let r = check(&mut f, &current("0000")).await.expect("a release");
    assert_eq!(r.format, Format::TarGz { binary: None });
}

/// Waits for `changed()` while another thread runs `act`; returns how long after `act`
/// finished `changed()` resolved (zero if it resolved before), and when `act` finished.
async fn changed_after(
    f: &mut FileFetcher,
    act: impl FnOnce() + Send + 'static,
) -> (Duration, Instant) {
    let actor = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        act();
        Instant::now()
    });
    timeout(Duration::from_secs(1), f.changed())
        .await
        .expect("changed() did not resolve");
    let resolved = Instant::now();
    let done = tokio::task::spawn_blocking(move || actor.join().unwrap())
        .await
        .unwrap();
    (resolved.saturating_duration_since(done), done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_after_copy_and_rename_not_for_other_files() {
    let dir = TempDir::new("changed");
    let path = dir.join("app");
    let src = dir.join("build-output");
    let content: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(&src, &content).unwrap();
    let mut f = FileFetcher::new(&path).watching();
    // Events queued by the setup above are for other files: nothing pending.
    assert!(timeout(Duration::from_millis(300), f.changed())
        .await
        .is_err());

    let (s, p) = (src.clone(), path.clone());
    let (lag, copied) = changed_after(&mut f, move || {
        std::fs::copy(&s, &p).unwrap();
    })
    .await;
    let r = check(&mut f, &current("0000"))
        .await
        .expect("the copied build");
    eprintln!(
        "cp of 4 MiB: changed() resolved {lag:?} after cp returned, release in hand after {:?}",
        copied.elapsed()
    );
    assert_eq!(body(r).await, content);
    // Drain what the copy queued; then reading the file (as check and the pipeline do)
    // wakes nothing.
    while timeout(Duration::from_millis(100), f.changed())
        .await
        .is_ok()
    {}
    assert_eq!(std::fs::read(&path).unwrap().len(), content.len());
    assert!(timeout(Duration::from_millis(300), f.changed())
        .await
        .is_err());

    // Write a temporary file, then rename it into place.
    let tmp = dir.join("app.tmp");
    let p = path.clone();
    let (lag, renamed) = changed_after(&mut f, move || {
        std::fs::write(&tmp, b"renamed build").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
    })
    .await;
    let r = check(&mut f, &current("0000"))
        .await
        .expect("the renamed build");
    eprintln!(
        "write + rename: changed() resolved {lag:?} after rename, release in hand after {:?}",
        renamed.elapsed()
    );
    assert_eq!(body(r).await, b"renamed build");
    while timeout(Duration::from_millis(100), f.changed())
        .await
        .is_ok()
    {}

    // Unrelated files in the same directory: changed() stays pending.
    let other = dir.join("other");
    std::fs::write(&other, b"x").unwrap();
    std::fs::rename(&other, dir.join("other2")).unwrap();
    std::fs::write(dir.join("app.log"), b"x").unwrap();
    assert!(timeout(Duration::from_millis(300), f.changed())
        .await
        .is_err());

    // The sidecar counts.
    let side = dir.join("app.sha256");
    let (lag, _) = changed_after(&mut f, move || std::fs::write(&side, sha(b"x")).unwrap()).await;
    eprintln!("changed() {lag:?} after writing the sidecar");
}

/// Writes five chunks 40 ms apart to `path`, holding it open; signals after the first.
fn slow_writer(path: PathBuf) -> (tokio::sync::oneshot::Receiver<()>, Vec<u8>) {
    use std::io::Write;
    let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'a' + i; 100_000]).collect();
    let all = chunks.concat();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(&path).unwrap();
        let mut tx = Some(tx);
        for chunk in chunks {
            file.write_all(&chunk).unwrap();
            file.flush().unwrap();
            if let Some(tx) = tx.take() {
                let _ = tx.send(());
            }
            std::thread::sleep(Duration::from_millis(40));
        }
    });
    (rx, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_progress_yields_the_complete_file() {
    let dir = TempDir::new("inprogress");
    let path = dir.join("app");
    // Watched (the default settle; inotify shows the writer still has it open), then polling
    // with a settle well clear of the 40 ms gaps, so a busy machine that oversleeps cannot
    // fake a pause.
    let mut f = FileFetcher::new(&path);
    let (first, all) = slow_writer(path.clone());
    first.await.unwrap();
    let started = Instant::now();
    let r = check(&mut f, &current("0000")).await.expect("a release");
    eprintln!("check during a 5-chunk write took {:?}", started.elapsed());
    assert_eq!(r.size_hint, Some(all.len() as u64));
    assert_eq!(body(r).await, all);

    let path = dir.join("app2");
    let mut f = FileFetcher::new(&path)
        .settle(Duration::from_millis(150))
        .unwatched();
    let (first, all) = slow_writer(path.clone());
    first.await.unwrap();
    let r = check(&mut f, &current("0000")).await.expect("a release");
    assert_eq!(body(r).await, all);
}

#[tokio::test]
async fn polling_fallback_without_a_parent_directory() {
    let dir = TempDir::new("noparent");
    let path = dir.join("not-yet").join("app");
    let mut f = FileFetcher::new(&path).poll_interval(Duration::from_millis(20));
    assert!(f.watch.is_none());
    let started = Instant::now();
    timeout(BOUND, f.changed()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(20));
    assert!(check(&mut f, &current("0000")).await.is_none());
    // The directory appears: the next changed() sets the watcher up and resolves at once.
    std::fs::create_dir(dir.join("not-yet")).unwrap();
    timeout(BOUND, f.changed()).await.unwrap();
    assert!(f.watch.is_some());
    let p = path.clone();
    changed_after(&mut f, move || std::fs::write(&p, b"build").unwrap()).await;
    assert!(check(&mut f, &current("0000")).await.is_some());
}

#[test]
fn sidecar_formats() {
    let p = Path::new("app.sha256");
    let h = "0123456789abcdef".repeat(4);
    assert_eq!(parse_sidecar(&format!("{h}  app\n"), p).unwrap(), h);
    assert_eq!(parse_sidecar(&format!("{h} *app\n"), p).unwrap(), h);
    assert_eq!(parse_sidecar(&format!("\\{h}  a\\\\pp\n"), p).unwrap(), h);
    assert_eq!(parse_sidecar(&h.to_ascii_uppercase(), p).unwrap(), h);
    assert_eq!(parse_sidecar(&format!("\n{h}\n"), p).unwrap(), h);
    assert_eq!(
        parse_sidecar(&format!("SHA256 (app) = {h}\n"), p).unwrap(),
        h
    );
    assert!(parse_sidecar("", p).is_err());
    assert!(parse_sidecar("SHA256 (app) = xyz", p).is_err());
}

#[tokio::test]
async fn a_deferred_release_is_offered_again_with_its_rollout() {
    let dir = TempDir::new("deferred");
    let path = dir.join("app");
    let mut f = FileFetcher::new(&path);
    let cur = current("0000");
    let content = b"a build held back by a staged rollout\n".repeat(100);
    std::fs::write(dir.join("app.rollout"), "rollout: 10\n").unwrap();
    std::fs::write(&path, &content).unwrap();
    let r = check(&mut f, &cur).await.expect("a release");
    assert_eq!(r.rollout_percent, Some(10.0));
    let identity = r.identity.clone();
    drop(r);
    // Set aside: offered again, with the percentage as it is now, from the same hash.
    f.deferred(&identity);
    std::fs::write(dir.join("app.rollout"), "25%").unwrap();
    let again = check(&mut f, &cur).await.expect("offered again");
    assert_eq!(again.identity, identity);
    assert_eq!(again.rollout_percent, Some(25.0));
    assert_eq!(body(again).await, content);
    // Not set aside (installed, refused or failed): not offered again until the file changes.
    assert!(check(&mut f, &cur).await.is_none());
    std::fs::write(dir.join("app.rollout"), "all of them").unwrap();
    f.deferred(&identity);
    let err = timeout(BOUND, f.check(&cur)).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("app.rollout"), "{err}");
    // Corrected, the release is offered again although the file itself never changed.
    std::fs::write(dir.join("app.rollout"), "100").unwrap();
    let fixed = check(&mut f, &cur)
        .await
        .expect("offered once the rollout is readable");
    assert_eq!(fixed.rollout_percent, Some(100.0));
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// What a check says: the release's identity, or the error.
async fn outcome(f: &mut FileFetcher) -> Result<Option<String>, String> {
    match timeout(BOUND, f.check(&current("0000"))).await {
        Ok(r) => r.map(|r| r.map(|r| r.identity)).map_err(|e| e.to_string()),
        Err(_) => panic!("check timed out"),
    }
}

#[tokio::test]
async fn a_directory_or_file_others_may_write_is_refused_until_fixed() {
    let dir = TempDir::new("trust");
    let path = dir.join("app");
    std::fs::write(&path, b"build 1").unwrap();
    chmod(&dir.0, 0o1777); // sticky and world-writable, as /tmp
    let mut f = FileFetcher::new(&path);
    let err = f
        .apply_policy(&TrustPolicy::default())
        .unwrap_err()
        .to_string();
    for fix in [
        "writable by group or others",
        "chmod go-w",
        "minisign",
        "allow_untrusted_location(true)",
    ] {
        assert!(err.contains(fix), "{fix:?} missing: {err}");
    }
    // Refused at every check too: the operator may chmod it back while the master runs.
    let err = outcome(&mut f).await.unwrap_err();
    assert!(err.contains("sticky"), "{err}");
    chmod(&dir.0, 0o700);
    let found = outcome(&mut f).await.unwrap();
    assert!(found.is_some(), "a private directory is fine");

    // The file itself, and a side file that says what the file must hash to.
    for (name, mode) in [("app", 0o666), ("app.sha256", 0o646)] {
        let side = dir.join(name);
        if name != "app" {
            std::fs::write(&side, format!("{}  app\n", sha(b"build 2"))).unwrap();
        }
        std::fs::write(&path, b"build 2").unwrap();
        chmod(&side, mode);
        let mut f = FileFetcher::new(&path);
        let err = f
            .apply_policy(&TrustPolicy::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&side.display().to_string()), "{err}");
        chmod(&side, 0o600);
        assert!(f.apply_policy(&TrustPolicy::default()).is_ok(), "{name}");
    }
}

#[tokio::test]
async fn a_key_or_the_opt_in_accepts_an_untrusted_location() {
    let dir = TempDir::new("trust-opt");
    let path = dir.join("app");
    std::fs::write(&path, b"build 1").unwrap();
    chmod(&dir.0, 0o777);
    let signed = TrustPolicy {
        signature_required: true,
        ..TrustPolicy::default()
    };
    let mut f = FileFetcher::new(&path);
    assert!(f.apply_policy(&signed).is_ok());
    assert!(outcome(&mut f).await.unwrap().is_some());
    let mut f = FileFetcher::new(&path).allow_untrusted_location(true);
    assert!(f.apply_policy(&TrustPolicy::default()).is_ok());
    assert!(outcome(&mut f).await.unwrap().is_some());
    chmod(&dir.0, 0o700);
}

#[tokio::test]
async fn tmp_and_files_of_other_users_are_refused() {
    let name = format!(
        "upshift-trust-{}-{}",
        std::process::id(),
        crate::install::random_hex()
    );
    let mut f = FileFetcher::new(std::env::temp_dir().join(&name));
    if std::fs::metadata(std::env::temp_dir()).unwrap().mode() & 0o002 != 0 {
        let err = f.apply_policy(&TrustPolicy::default()).unwrap_err();
        assert!(err.to_string().contains("sticky"), "{err}");
    }
    // Root can hand a file to another user; others cannot make one.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return upshift_testkit::skip::skip_unavailable(
            "root",
            "only root can give a file to another owner",
            "UPSHIFT_REQUIRE_ROOT",
        );
    }
    let dir = TempDir::new("trust-owner");
    let path = dir.join("app");
    std::fs::write(&path, b"build").unwrap();
    std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    let mut f = FileFetcher::new(&path);
    let err = f
        .apply_policy(&TrustPolicy::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("owned by uid 65534") && err.contains("chown"),
        "{err}"
    );
    std::os::unix::fs::chown(&dir.0, Some(65534), None).unwrap();
    std::os::unix::fs::chown(&path, Some(0), None).unwrap();
    let err = f
        .apply_policy(&TrustPolicy::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("directory"), "{err}");
}

/// The shared checksum table's sidecar rows, written as `app.sha256` and read by `check()`: the
/// File fetcher answers every row as the other backends do.
#[tokio::test]
async fn the_shared_checksum_table() {
    use crate::fetch::checksum::{table, ChecksumError, Kind};
    let dir = TempDir::new("sumtable");
    let path = dir.join(table::SIDECAR_NAME);
    let side = dir.join("app.sha256");
    std::fs::write(&path, b"content").unwrap();
    for row in table::rows()
        .into_iter()
        .filter(|r| r.kind == Kind::Sidecar)
    {
        assert_eq!(
            parse_sidecar(&row.document, &side).map_err(|e| e.to_string()),
            row.expected
                .clone()
                .map_err(|e| format!("{}: {e}", side.display())),
            "{}",
            row.what
        );
        std::fs::write(&side, &row.document).unwrap();
        let mut f = FileFetcher::new(&path).unwatched();
        let res = timeout(BOUND, f.check(&current("0000"))).await.unwrap();
        match (&row.expected, res) {
            (Ok(h), Ok(Some(r))) => assert_eq!(r.sha256.as_ref(), Some(h), "{}", row.what),
            // The fetcher reads at most 64 KiB of a side file.
            (Err(ChecksumError::TooLarge { .. }), Err(e)) => {
                assert!(e.to_string().contains("larger than"), "{}: {e}", row.what)
            }
            (Err(want), Err(e)) => {
                let e = e.to_string();
                assert!(e.contains(&want.to_string()), "{}: {e}", row.what);
                assert!(e.contains(&side.display().to_string()), "{}: {e}", row.what);
            }
            (want, got) => panic!("{}: expected {want:?}, got {got:?}", row.what),
        }
    }
}

#[tokio::test]
async fn the_watcher_starts_with_the_first_wait_not_with_the_fetcher() {
    // Workers and test runs build the same fetchers as the master and never wait on them: an
    // inotify instance and its thread there would be pure cost.
    let dir = TempDir::new("lazy-watch");
    let mut f = FileFetcher::new(dir.join("app"));
    assert!(f.watch.is_none(), "new() started a watcher");
    timeout(Duration::from_secs(1), f.changed())
        .await
        .expect("the first changed() returns once the watcher is up, for a fresh check");
    assert!(
        f.watch.is_some(),
        "the first changed() did not start the watcher"
    );
}
