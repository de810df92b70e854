//! The release pipeline end to end, with the real master: a copy of the fixture runs as
//! `<dir>/app --watch <dir>/next`, and each test publishes one release to `<dir>/next` the way a
//! deploy script does (side files first, then the build written to `next.tmp` and renamed).
//!
//! For every bad release the test asserts that traffic never left the old worker (same pid, build
//! `base`, polled throughout and for 2 s after the master logged its verdict), that `<dir>/app` is
//! byte-identical to the original, that no staging or rollback temp file is left behind, and that
//! the master's log says what was wrong. Releases are fixture copies with a build stamp
//! (`UPSHIFT-TEST-BUILD:<id>[:<behavior>]`, see `examples/fixture.rs`).

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};

const START: Duration = Duration::from_secs(20);
/// From publishing a release to the master's verdict (hashing, staging and test-running a 70 MB
/// debug build on 2 busy cores).
const VERDICT: Duration = Duration::from_secs(40);
/// How long the old worker must keep serving after a verdict.
const HOLD: Duration = Duration::from_secs(2);
const PROBATION_MS: &str = "2500";

// ---------------------------------------------------------------------------------------------
// The rig: a private dir with the app, a master running it, and what it served at first.

struct Rig {
    dir: TestDir,
    app: PathBuf,
    next: PathBuf,
    original_sha: String,
    listen: String,
    addr: Addr,
    master: Option<Master>,
    base_pid: u32,
}

impl Rig {
    /// A dir with a copy of the fixture as `app`; no master yet.
    fn new(tag: &str) -> Rig {
        let dir = TestDir::new(tag);
        let app = dir.join("app");
        fs::copy(fixture_path(), &app).expect("copy the fixture");
        let (listen, addr) = free_tcp_addr();
        Rig {
            next: dir.join("next"),
            original_sha: file_sha(&app),
            app,
            dir,
            listen,
            addr,
            master: None,
            base_pid: 0,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The master's arguments: listen, watch `next`, probation, a starts file, then `extra`.
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            self.listen.clone(),
            "--watch".into(),
            self.next.display().to_string(),
            "--probation-ms".into(),
            PROBATION_MS.into(),
            "--starts-file".into(),
            self.path("starts").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts `<dir>/app` as the master and waits until the base build serves.
    fn start(&mut self, extra: &[&str]) {
        self.start_with(extra, &[], None)
    }

    fn start_with(&mut self, extra: &[&str], envs: &[(&str, &str)], fsize_limit: Option<u64>) {
        let build = self.start_any(extra, envs, fsize_limit);
        self.expect(
            build == "base",
            format!("the first worker runs build {build:?}"),
        );
    }

    /// Starts the master from whatever `<dir>/app` is now; returns the build it serves.
    fn start_any(
        &mut self,
        extra: &[&str],
        envs: &[(&str, &str)],
        fsize_limit: Option<u64>,
    ) -> String {
        let args = self.args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let master = match fsize_limit {
            Some(limit) => Master::spawn_with_fsize_limit(&self.app, &args, envs, limit),
            None => Master::spawn(&self.app, &args, envs),
        };
        self.master = Some(master);
        let addr = self.addr.clone();
        let first = self.m_mut().wait_serving(&addr, START);
        let (pid, build) = served(&first).unwrap_or_else(|| self.fail("no pid/build in the body"));
        self.base_pid = pid;
        build
    }

    fn m(&self) -> &Master {
        self.master.as_ref().expect("the master was started")
    }

    fn m_mut(&mut self) -> &mut Master {
        self.master.as_mut().expect("the master was started")
    }

    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        match &self.master {
            Some(m) => m.fail(msg),
            None => panic!("{msg}"),
        }
    }

    fn expect(&self, ok: bool, msg: impl std::fmt::Display) {
        if !ok {
            self.fail(msg)
        }
    }

    // -- publishing ------------------------------------------------------------------------

    /// Writes `name` in the dir atomically (`<name>.tmp`, then rename).
    fn write_side(&self, name: &str, bytes: &[u8]) {
        let tmp = self.path(&format!("{name}.tmp"));
        fs::write(&tmp, bytes).unwrap();
        fs::rename(&tmp, self.path(name)).unwrap();
    }

    /// Publishes `bytes` as `next` (optionally with a `next.sha256` written first); returns the
    /// release's identity as the File fetcher names it.
    fn publish(&self, bytes: &[u8], sidecar: Option<&str>) -> String {
        if let Some(sum) = sidecar {
            self.write_side("next.sha256", format!("{sum}  next\n").as_bytes());
        }
        let tmp = self.path("next.tmp");
        fs::write(&tmp, bytes).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&tmp, &self.next).unwrap();
        identity_of(&sha_hex(bytes))
    }

    /// Writes a stamped fixture build (`padding` zero bytes, then the stamp) to `next.tmp`, not
    /// yet published; returns its sha256.
    fn prepare_build(&self, stamp: &str, padding: usize) -> String {
        let tmp = self.path("next.tmp");
        fs::copy(fixture_path(), &tmp).unwrap();
        let mut f = fs::OpenOptions::new().append(true).open(&tmp).unwrap();
        if padding > 0 {
            f.write_all(&vec![0u8; padding]).unwrap();
        }
        f.write_all(format!("UPSHIFT-TEST-BUILD:{stamp}\n").as_bytes())
            .unwrap();
        f.sync_all().unwrap();
        file_sha(&tmp)
    }

    /// Renames the prepared `next.tmp` to `next`; returns the identity.
    fn publish_prepared(&self, sha: &str) -> String {
        fs::rename(self.path("next.tmp"), &self.next).unwrap();
        identity_of(sha)
    }

    /// A stamped build, published; returns (identity, sha256).
    fn publish_build(&self, stamp: &str) -> (String, String) {
        let sha = self.prepare_build(stamp, 0);
        (self.publish_prepared(&sha), sha)
    }

    // -- observing --------------------------------------------------------------------------

    /// Waits for the first log line with `needle`; fails with the log after `timeout`.
    fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        wait_for(timeout, || {
            log_lines_with(self.m(), needle).into_iter().next()
        })
        .unwrap_or_else(|| self.fail(format!("no log line with {needle:?} within {timeout:?}")))
    }

    /// Waits for the master to reject `identity`; returns the reason.
    fn wait_rejected(&self, identity: &str) -> String {
        let needle = format!("release {identity} rejected: ");
        let line = self.wait_log(&needle, VERDICT);
        let reason = line.split_once(&needle).unwrap().1.to_string();
        self.expect(
            log_lines_with(self.m(), &format!("release {identity} is serving")).is_empty(),
            format!("{identity} was rejected, yet it also served"),
        );
        reason
    }

    /// Everything that must hold after a release was refused before it reached traffic.
    fn assert_untouched(&mut self, traffic: Traffic, why: &str) {
        std::thread::sleep(HOLD);
        let seen = traffic.stop();
        self.assert_master_alive(why);
        self.assert_only_base_served(&seen, why);
        self.assert_app_is_original(why);
        self.assert_no_temp_files(why);
    }

    fn assert_only_base_served(&self, seen: &[Obs], why: &str) {
        let bad: Vec<&Obs> = seen
            .iter()
            .filter(|o| !matches!(o, Obs::Served { pid, build } if *pid == self.base_pid && build == "base"))
            .collect();
        self.expect(
            bad.is_empty() && seen.len() >= 20,
            format!(
                "{why}: expected every response from the old worker {} (build base); {} of {} \
                 were not: {:?}",
                self.base_pid,
                bad.len(),
                seen.len(),
                bad.iter().take(5).collect::<Vec<_>>()
            ),
        );
    }

    fn assert_app_is_original(&self, why: &str) {
        let now = file_sha(&self.app);
        self.expect(
            now == self.original_sha,
            format!(
                "{why}: {} changed: sha256 {now}, originally {}",
                self.app.display(),
                self.original_sha
            ),
        );
        let mode = fs::metadata(&self.app).unwrap().permissions().mode();
        self.expect(
            mode & 0o111 != 0,
            format!("{why}: app lost its x bits: {mode:o}"),
        );
    }

    fn assert_no_temp_files(&self, why: &str) {
        let stray = stray_temp_files(&self.dir.join(""));
        self.expect(
            stray.is_empty(),
            format!("{why}: temporary files left behind: {stray:?}"),
        );
    }

    /// The master is still alive (the log is shown otherwise).
    fn assert_master_alive(&mut self, why: &str) {
        if let Some(st) = self.m_mut().try_exit() {
            self.fail(format!("{why}: the master exited: {st}"));
        }
    }

    fn watch(&self) -> Traffic {
        watch_traffic(&self.addr)
    }
}

fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn file_sha(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

fn identity_of(sha: &str) -> String {
    format!("sha256:{sha}")
}

/// Lines of the master's log containing `needle`.
fn log_lines_with(m: &Master, needle: &str) -> Vec<String> {
    m.log_contents()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Staging temp files (`.app.upshift-*`), rollback temp names and `.prev.tmp` in `dir`.
fn stray_temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(".app.upshift-") || n.starts_with("app.rollback-") || n == "app.prev.tmp"
        })
        .collect()
}

/// The worker pid and build in a fixture body (`fixture pid N gen G build B exe PATH`).
fn served(r: &Response) -> Option<(u32, String)> {
    let pid = r.pid()?;
    let mut words = r.body.split_whitespace();
    words.find(|w| *w == "build")?;
    Some((pid, words.next()?.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Traffic: `GET /` on a fresh connection every 40 ms, on a thread, for the whole of a release.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Obs {
    Served { pid: u32, build: String },
    Failed(String),
}

struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Obs>>>,
}

impl Traffic {
    fn stop(mut self) -> Vec<Obs> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().expect("traffic thread")
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn watch_traffic(addr: &Addr) -> Traffic {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = addr.clone();
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !flag.load(Ordering::SeqCst) {
            let obs = match get_timeout(&addr, "/", Duration::from_secs(10)) {
                Ok(r) if r.status == 200 => match served(&r) {
                    Some((pid, build)) => Obs::Served { pid, build },
                    None => Obs::Failed(format!("unexpected body {:?}", r.body)),
                },
                Ok(r) => Obs::Failed(format!("status {} body {:?}", r.status, r.body)),
                Err(e) => Obs::Failed(e.to_string()),
            };
            seen.push(obs);
            std::thread::sleep(Duration::from_millis(40));
        }
        seen
    });
    Traffic {
        stop,
        thread: Some(thread),
    }
}

/// Collapses consecutive equal observations: the sequence of who served.
fn phases(seen: &[Obs]) -> Vec<(Obs, usize)> {
    let mut out: Vec<(Obs, usize)> = Vec::new();
    for o in seen {
        match out.last_mut() {
            Some((last, n)) if last == o => *n += 1,
            _ => out.push((o.clone(), 1)),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Releases the pipeline must refuse before they reach traffic.

/// Publishes `bytes` (with an optional sidecar) to a started rig and asserts the full "refused,
/// nothing changed" contract; `expected` are substrings the rejection reason must contain.
fn refused(rig: &mut Rig, bytes: &[u8], sidecar: Option<&str>, expected: &[&str]) -> String {
    let traffic = rig.watch();
    let identity = rig.publish(bytes, sidecar);
    let reason = rig.wait_rejected(&identity);
    for e in expected {
        rig.expect(
            reason.contains(e),
            format!("the rejection of {identity} does not say {e:?}: {reason}"),
        );
    }
    rig.assert_untouched(traffic, &format!("after rejecting {identity}"));
    reason
}

#[test]
fn wrong_checksum_is_rejected() {
    let mut rig = Rig::new("rp-sum");
    rig.start(&[]);
    let mut bytes = fs::read(fixture_path()).unwrap();
    bytes.extend_from_slice(b"UPSHIFT-TEST-BUILD:bad-sum\n");
    let wrong = sha_hex(b"some other build");
    let actual = sha_hex(&bytes);
    refused(
        &mut rig,
        &bytes,
        Some(&wrong),
        &[
            "checksum mismatch",
            &actual,
            &format!("but {wrong} was published"),
        ],
    );
}

#[test]
fn garbage_bytes_are_rejected() {
    let mut rig = Rig::new("rp-junk");
    rig.start(&[]);
    // 1 MiB of xorshift noise: neither ELF magic nor `#!`.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    let mut bytes: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    bytes[..8].copy_from_slice(b"GARBAGE!");
    refused(
        &mut rig,
        &bytes,
        None,
        &["is not an executable for this machine"],
    );
}

#[test]
fn binary_for_another_architecture_is_rejected_without_running() {
    let mut rig = Rig::new("rp-arch");
    rig.start(&[]);
    let mut bytes = fs::read(fixture_path()).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([bytes[18], bytes[19]]),
        62,
        "the fixture is not x86_64"
    );
    bytes[18..20].copy_from_slice(&0xB7u16.to_le_bytes()); // EM_AARCH64
    bytes.extend_from_slice(b"UPSHIFT-TEST-BUILD:arm\n");
    refused(
        &mut rig,
        &bytes,
        None,
        &["is not an executable for this machine"],
    );
    // It never ran: no worker but the base one ever started.
    let starts = read_starts(&rig.path("starts"));
    rig.expect(
        starts.len() == 1 && starts[0].0 == rig.base_pid,
        format!("workers started: {starts:?}"),
    );
}

#[test]
fn binary_that_exits_at_once_fails_its_test_run() {
    let mut rig = Rig::new("rp-exit");
    rig.start(&[]);
    let mut bytes = fs::read(fixture_path()).unwrap();
    bytes.extend_from_slice(b"UPSHIFT-TEST-BUILD:quits:exit-at-start\n");
    refused(
        &mut rig,
        &bytes,
        None,
        &[
            "failed its test run (exit status: 4)",
            "fixture: stamped exit-at-start",
        ],
    );
}

#[test]
fn binary_not_built_with_upshift_is_rejected() {
    let mut rig = Rig::new("rp-true");
    rig.start(&[]);
    let bytes = fs::read("/bin/true").unwrap();
    refused(
        &mut rig,
        &bytes,
        None,
        &["did not answer upshift's test-run handshake"],
    );
}

#[test]
fn release_larger_than_the_file_size_limit_is_rejected_and_the_master_survives() {
    let mut rig = Rig::new("rp-fsize");
    let app_len = fs::metadata(&rig.app).unwrap().len();
    // The master may write files up to just over the app's size; the release is 2 MiB larger.
    let limit = app_len + (1 << 20);
    rig.start_with(&[], &[], Some(limit));
    let traffic = rig.watch();
    let sha = rig.prepare_build("big", 2 << 20);
    assert!(fs::metadata(rig.path("next.tmp")).unwrap().len() > limit);
    let identity = rig.publish_prepared(&sha);
    let reason = rig.wait_rejected(&identity);
    for e in ["writing the new binary", "File too large"] {
        rig.expect(
            reason.contains(e),
            format!("the rejection does not say {e:?}: {reason}"),
        );
    }
    rig.assert_master_alive("after EFBIG");
    rig.assert_untouched(traffic, "after EFBIG");
    rig.assert_master_alive("2 s after EFBIG");
}

// ---------------------------------------------------------------------------------------------
// Releases that pass every check and fail once they run.

#[test]
fn worker_that_never_becomes_ready_is_rolled_back() {
    let mut rig = Rig::new("rp-nready");
    rig.start(&["--ready-timeout-ms", "1500"]);
    let traffic = rig.watch();
    let (identity, _) = rig.publish_build("nr:never-ready");
    rig.wait_log(&format!("installing release {identity}"), VERDICT);
    let line = rig.wait_log(&format!("release {identity} rolled back: "), VERDICT);
    rig.expect(
        line.contains("not ready within 1.5s"),
        format!("the rollback does not say why: {line}"),
    );
    rig.wait_log("rolled back to the previous binary", Duration::from_secs(5));
    rig.assert_untouched(traffic, "after a never-ready worker");
    // It did run (and was killed): a second worker started, of the never-ready build.
    let starts = read_starts(&rig.path("starts"));
    rig.expect(
        starts.len() == 2 && starts[1].2.contains("NeverReady"),
        format!("worker starts: {starts:?}"),
    );
    rig.expect(
        file_sha(&rig.path("app.prev")) == rig.original_sha,
        "app.prev is not the original",
    );
}

#[test]
fn worker_that_crashes_during_probation_is_rolled_back() {
    let mut rig = Rig::new("rp-crash");
    rig.start(&["--probation-ms", "5000"]);
    let traffic = rig.watch();
    let (identity, _) = rig.publish_build("cr:crash-after-ready 2000");
    let line = rig.wait_log(&format!("release {identity} rolled back: "), VERDICT);
    rig.expect(
        line.contains("within the probation window"),
        format!("the rollback does not say why: {line}"),
    );
    // Back on a base-build worker, started after the rollback.
    let addr = rig.addr.clone();
    let back = wait_for(VERDICT, || {
        get(&addr, "/")
            .ok()
            .and_then(|r| served(&r))
            .filter(|(pid, build)| *pid != rig.base_pid && build == "base")
    })
    .unwrap_or_else(|| rig.fail("no new base-build worker after the rollback"));
    std::thread::sleep(HOLD);
    let seen = traffic.stop();
    let phases = phases(&seen);
    // Who served, in order of first appearance: the old base worker, the cr worker, then a
    // third, base-build worker. (A worker told to drain may answer a request or two after its
    // successor became ready, so the phases may interleave briefly at a handover.)
    let mut order: Vec<(u32, String)> = Vec::new();
    for o in &seen {
        if let Obs::Served { pid, build } = o {
            if !order.iter().any(|(p, _)| p == pid) {
                order.push((*pid, build.clone()));
            }
        }
    }
    let errors = seen.iter().filter(|o| matches!(o, Obs::Failed(_))).count();
    let last = seen
        .iter()
        .rev()
        .take(10)
        .all(|o| matches!(o, Obs::Served { pid, build } if *pid == back.0 && build == "base"));
    let ok = order.len() == 3
        && order[0] == (rig.base_pid, "base".to_string())
        && order[1].1 == "cr"
        && order[2] == (back.0, "base".to_string())
        && last
        && errors <= 3;
    rig.expect(
        ok,
        format!(
            "traffic went {phases:?}; expected the old base worker, then cr, then a new base \
             worker (at most 3 failed requests, around the crash)"
        ),
    );
    rig.assert_app_is_original("after the rollback");
    rig.assert_no_temp_files("after the rollback");
    eprintln!(
        "crash rollback: traffic {:?}",
        phases
            .iter()
            .map(|(o, n)| format!("{o:?} x{n}"))
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Releases that go through.

#[test]
fn good_release_is_served_and_the_original_kept_as_prev() {
    let mut rig = Rig::new("rp-good");
    rig.start(&[]);
    let traffic = rig.watch();
    let (identity, sha) = rig.publish_build("good1");
    let addr = rig.addr.clone();
    let (new_pid, _) = wait_for(VERDICT, || {
        get(&addr, "/")
            .ok()
            .and_then(|r| served(&r))
            .filter(|(_, b)| b == "good1")
    })
    .unwrap_or_else(|| rig.fail("build good1 never served"));
    rig.expect(new_pid != rig.base_pid, "good1 served by the old pid");
    rig.wait_log(
        &format!("release {identity} passed probation"),
        Duration::from_secs(15),
    );
    let seen = traffic.stop();
    let failed = seen.iter().filter(|o| matches!(o, Obs::Failed(_))).count();
    rig.expect(
        failed == 0,
        format!("requests failed during the upgrade: {:?}", phases(&seen)),
    );
    rig.expect(file_sha(&rig.app) == sha, "app is not the new build");
    rig.expect(
        file_sha(&rig.path("app.prev")) == rig.original_sha,
        "app.prev is not the original binary",
    );
    rig.assert_no_temp_files("after a good release");
    let r = get(&rig.addr, "/").unwrap();
    rig.expect(
        served(&r) == Some((new_pid, "good1".into())),
        format!("after probation: {:?}", r.body),
    );
}

#[test]
fn minisign_signature_by_another_key_is_rejected_and_a_good_one_accepted() {
    let mut rig = Rig::new("rp-sig");
    let right = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let wrong = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let pubfile = rig.path("minisign.pub");
    fs::write(&pubfile, right.pk.to_box().unwrap().into_string()).unwrap();
    let pubarg = pubfile.display().to_string();
    rig.start(&["--minisign-pubkey", &pubarg]);
    let sign = |kp: &minisign::KeyPair, path: &Path| {
        let data = fs::File::open(path).unwrap();
        minisign::sign(Some(&kp.pk), &kp.sk, data, None, None)
            .unwrap()
            .into_string()
    };

    // Signed by the wrong key: refused.
    let traffic = rig.watch();
    let sha = rig.prepare_build("sig-wrong", 0);
    let sig = sign(&wrong, &rig.path("next.tmp"));
    rig.write_side("next.minisig", sig.as_bytes());
    let identity = rig.publish_prepared(&sha);
    let reason = rig.wait_rejected(&identity);
    rig.expect(
        reason.contains("minisign signature is not valid for the configured public key"),
        format!("the rejection does not say the signature is bad: {reason}"),
    );
    rig.assert_untouched(traffic, "after a release signed by another key");

    // Signed by the configured key: served.
    let sha = rig.prepare_build("sig-ok", 0);
    let sig = sign(&right, &rig.path("next.tmp"));
    rig.write_side("next.minisig", sig.as_bytes());
    let identity = rig.publish_prepared(&sha);
    let addr = rig.addr.clone();
    wait_for(VERDICT, || {
        get(&addr, "/")
            .ok()
            .and_then(|r| served(&r))
            .filter(|(_, b)| b == "sig-ok")
    })
    .unwrap_or_else(|| rig.fail(format!("the correctly signed {identity} never served")));
    rig.expect(file_sha(&rig.app) == sha, "app is not the signed build");
}

#[test]
fn rejected_release_is_not_retried_on_later_polls_or_a_touch() {
    let mut rig = Rig::new("rp-once");
    // The updater's debug lines show each time the fetcher offers the release again.
    rig.start_with(
        &[],
        &[(
            "RUST_LOG",
            "info,upshift::master::updater=debug,upshift::install=debug",
        )],
        None,
    );
    let mut bytes = fs::read(fixture_path()).unwrap();
    bytes.extend_from_slice(b"UPSHIFT-TEST-BUILD:once\n");
    let wrong = sha_hex(b"not this build");
    let traffic = rig.watch();
    let identity = rig.publish(&bytes, Some(&wrong));
    rig.wait_rejected(&identity);
    // Three poll intervals (1 s each): nothing new may happen.
    std::thread::sleep(Duration::from_millis(3500));
    // A touch (mtime only, same inode and bytes) makes the File fetcher offer it again...
    let f = fs::File::options().write(true).open(&rig.next).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    let again = format!("release was rejected before; not trying it again identity={identity}");
    rig.wait_log(&again, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    // ... and the updater refuses it from memory: exactly one attempt in the whole log.
    let found = log_lines_with(rig.m(), &format!("new release found identity={identity}"));
    let rejected = log_lines_with(rig.m(), &format!("release {identity} rejected: "));
    let staged = log_lines_with(rig.m(), "staging a release");
    rig.expect(
        found.len() == 1 && rejected.len() == 1,
        format!(
            "expected exactly one attempt at {identity}: {} 'new release found', {} rejections",
            found.len(),
            rejected.len()
        ),
    );
    rig.expect(
        staged.len() == 1,
        format!("staged {} times: {staged:?}", staged.len()),
    );
    let refusals = log_lines_with(rig.m(), &again).len();
    eprintln!(
        "not retried: {} 'new release found', {} rejection, {} staging, {refusals} refusal(s) \
         from memory after the touch",
        found.len(),
        rejected.len(),
        staged.len()
    );
    let seen = traffic.stop();
    rig.assert_only_base_served(&seen, "while a rejected release sat in next");
    rig.assert_app_is_original("after the touch");
    rig.assert_no_temp_files("after the touch");
}

/// When a round of the SIGKILL test kills the master.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// A random moment 0–300 ms after publishing.
    RandomAfterPublish,
    /// The staged temp file `.app.upshift-*` appears: during staging.
    StagedCreated,
    /// `app.prev.tmp` is linked: inside the install, before any rename.
    PrevTmpLinked,
    /// `app.prev` is renamed into place: inside the install, just before the target's rename.
    PrevRenamed,
    /// `app` is renamed over: the install's rename has just happened.
    AppRenamed,
}

/// Watches `dir` and SIGKILLs `pid` (a child of this process, not yet reaped, so the pid cannot
/// have been reused) the moment the install step `at` shows in the directory. Returns the
/// watcher (keep it alive) and the flag saying it fired.
fn kill_on_step(dir: &Path, pid: u32, at: KillAt) -> (notify::RecommendedWatcher, Arc<AtomicBool>) {
    use notify::event::{ModifyKind, RenameMode};
    use notify::{EventKind, Watcher};
    let fired = Arc::new(AtomicBool::new(false));
    let flag = fired.clone();
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if flag.load(Ordering::SeqCst) {
            return;
        }
        let name = |i: usize| {
            ev.paths
                .get(i)
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let last = name(ev.paths.len().saturating_sub(1));
        let renamed_to = matches!(
            ev.kind,
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
        );
        let hit = match at {
            KillAt::RandomAfterPublish => false,
            KillAt::StagedCreated => {
                matches!(ev.kind, EventKind::Create(_)) && name(0).starts_with(".app.upshift-")
            }
            KillAt::PrevTmpLinked => {
                matches!(ev.kind, EventKind::Create(_)) && last == "app.prev.tmp"
            }
            KillAt::PrevRenamed => renamed_to && last == "app.prev",
            KillAt::AppRenamed => renamed_to && last == "app",
        };
        if hit {
            // SAFETY: kill(2) with a pid and a signal number.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            flag.store(true, Ordering::SeqCst);
        }
    };
    let mut watcher = notify::recommended_watcher(handler).expect("inotify watcher");
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .expect("watch the rig dir");
    (watcher, fired)
}

#[test]
fn sigkill_of_the_master_during_install_leaves_a_whole_binary() {
    let mut rig = Rig::new("rp-kill9");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    eprintln!("sigkill_of_the_master_during_install: seed {seed}");
    let mut rand_ms = |max: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % (max + 1)
    };
    let rounds = [
        KillAt::RandomAfterPublish,
        KillAt::StagedCreated,
        KillAt::PrevTmpLinked,
        KillAt::PrevRenamed,
        KillAt::AppRenamed,
        KillAt::RandomAfterPublish,
    ];
    let mut outcomes = Vec::new();
    let mut leftovers: Vec<String> = Vec::new();
    for (i, at) in rounds.into_iter().enumerate() {
        // Each round: a fresh master running whatever app is now, nothing pending in `next`, and
        // no `.prev` (so that the install takes every step). Temp files of earlier kills stay:
        // the new master must sweep the staged files of the masters that were killed.
        for name in ["next", "next.tmp", "app.prev"] {
            let _ = fs::remove_file(rig.path(name));
        }
        let before = file_sha(&rig.app);
        let running = rig.start_any(&[], &[], None);
        let staged_by_dead: Vec<String> = leftovers
            .iter()
            .filter(|n| n.starts_with(".app.upshift-"))
            .cloned()
            .collect();
        assert!(
            wait_until(Duration::from_secs(5), || stray_temp_files(&rig.dir.join(""))
                .iter()
                .all(|n| !staged_by_dead.contains(n))),
            "round {i}: the new master left the staged files of killed masters: {staged_by_dead:?}"
        );
        let sha = rig.prepare_build(&format!("k{i}"), 0);
        let (watcher, fired) = kill_on_step(&rig.dir.join(""), rig.m().pid(), at);
        let published = Instant::now();
        let identity = rig.publish_prepared(&sha);
        let how = match at {
            KillAt::RandomAfterPublish => {
                let delay = rand_ms(300);
                std::thread::sleep(Duration::from_millis(delay));
                rig.m().signal(Signal::SIGKILL);
                format!("{delay} ms after publishing")
            }
            step => {
                let m = rig.m();
                let done = format!("release {identity} is serving");
                wait_until(VERDICT, || {
                    fired.load(Ordering::SeqCst) || m.log_contents().contains(&done)
                });
                if !fired.load(Ordering::SeqCst) {
                    rig.fail(format!("round {i}: {step:?} never happened"));
                }
                format!(
                    "at {step:?}, {} ms after publishing",
                    published.elapsed().as_millis()
                )
            }
        };
        drop(watcher);
        let st = rig.m_mut().wait_exit(Duration::from_secs(10));
        rig.expect(st.is_some(), "the master did not die of SIGKILL");
        let installed = rig.m().log_contents().contains("installed the new binary");
        drop(rig.master.take());

        let after = file_sha(&rig.app);
        let mode = fs::metadata(&rig.app).unwrap().permissions().mode();
        let which = if after == before {
            "old"
        } else if after == sha {
            "new"
        } else {
            panic!(
                "round {i}: after SIGKILL {how}, app is neither the old binary ({before}) nor \
                 the new one ({sha}): {after}"
            )
        };
        assert!(
            mode & 0o111 != 0,
            "round {i}: app is not executable: {mode:o}"
        );
        assert!(
            !(which == "old" && installed),
            "round {i}: the log says the new binary was installed, but app is the old one"
        );
        if matches!(at, KillAt::AppRenamed) {
            assert_eq!(
                which, "new",
                "round {i}: killed after the rename, app is not new"
            );
        }
        let left = stray_temp_files(&rig.dir.join(""));
        let new: Vec<&String> = left.iter().filter(|n| !leftovers.contains(n)).collect();
        let kept = leftovers.iter().filter(|n| left.contains(n)).count();
        outcomes.push(format!(
            "round {i}: running {running}, published k{i}, SIGKILL {how} -> {which} binary; \
             new temp files {new:?}, {kept} of {} earlier ones still there",
            leftovers.len()
        ));
        leftovers = left;
    }
    eprintln!("{}", outcomes.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Fixing what was wrong without republishing the binary. Both fail today (library bug): the
// updater remembers a refused release by `identity#expected-sha256` (src/master/updater.rs,
// `upgrade`), which includes neither the signature nor whether the failure was the machine's, so
// a corrected `.minisig` or a freed disk is ignored until the master restarts or another build
// is published. Run with `--ignored` once that is fixed.

#[test]
fn release_re_signed_with_the_right_key_is_accepted() {
    let mut rig = Rig::new("rp-resign");
    let right = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let wrong = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let pubfile = rig.path("minisign.pub");
    fs::write(&pubfile, right.pk.to_box().unwrap().into_string()).unwrap();
    let pubarg = pubfile.display().to_string();
    rig.start_with(
        &["--minisign-pubkey", &pubarg],
        &[("RUST_LOG", "info,upshift::master::updater=debug")],
        None,
    );
    let sign = |kp: &minisign::KeyPair, path: &Path| {
        let data = fs::File::open(path).unwrap();
        minisign::sign(Some(&kp.pk), &kp.sk, data, None, None)
            .unwrap()
            .into_string()
    };
    let sha = rig.prepare_build("resigned", 0);
    let bad = sign(&wrong, &rig.path("next.tmp"));
    let good = sign(&right, &rig.path("next.tmp"));
    rig.write_side("next.minisig", bad.as_bytes());
    let identity = rig.publish_prepared(&sha);
    rig.wait_rejected(&identity);
    // The operator notices and publishes the right signature for the same build.
    rig.write_side("next.minisig", good.as_bytes());
    let addr = rig.addr.clone();
    if wait_for(VERDICT.min(Duration::from_secs(10)), || {
        get(&addr, "/")
            .ok()
            .and_then(|r| served(&r))
            .filter(|(_, b)| b == "resigned")
    })
    .is_none()
    {
        rig.fail(format!(
            "the same build re-signed with the configured key was never installed ({identity})"
        ));
    }
}

#[test]
fn release_refused_for_a_full_disk_is_retried_once_there_is_room() {
    let mut rig = Rig::new("rp-room");
    let app_len = fs::metadata(&rig.app).unwrap().len();
    rig.start_with(
        &[],
        &[("RUST_LOG", "info,upshift::master::updater=debug")],
        Some(app_len + (1 << 20)),
    );
    let sha = rig.prepare_build("roomy", 2 << 20);
    let identity = rig.publish_prepared(&sha);
    let reason = rig.wait_rejected(&identity);
    rig.expect(reason.contains("File too large"), &reason);
    // The operator makes room: lift the master's limit, then touch the release.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit on our own child's pid with a struct we own.
    let r = unsafe {
        libc::prlimit(
            rig.m().pid() as i32,
            libc::RLIMIT_FSIZE,
            &unlimited,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let f = fs::File::options().write(true).open(&rig.next).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    let addr = rig.addr.clone();
    if wait_for(Duration::from_secs(10), || {
        get(&addr, "/")
            .ok()
            .and_then(|r| served(&r))
            .filter(|(_, b)| b == "roomy")
    })
    .is_none()
    {
        rig.fail(format!(
            "{identity}, refused for want of room, was never retried once there was room"
        ));
    }
}
