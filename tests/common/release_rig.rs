//! The release-pipeline test rig: a copy of the fixture running as `<dir>/app --watch <dir>/next`,
//! publishing helpers, a traffic watcher, and the "refused, nothing changed" contract.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::*;
use sha2::{Digest, Sha256};

pub const START: Duration = Duration::from_secs(20);
/// From publishing a release to the master's verdict (hashing, staging and test-running a 70 MB
/// debug build on 2 busy cores).
pub const VERDICT: Duration = Duration::from_secs(40);
/// How long the old worker must keep serving after a verdict.
pub const HOLD: Duration = Duration::from_secs(2);
pub const PROBATION_MS: &str = "2500";

// ---------------------------------------------------------------------------------------------
// The rig: a private dir with the app, a master running it, and what it served at first.

pub struct Rig {
    pub dir: TestDir,
    pub app: PathBuf,
    pub next: PathBuf,
    pub original_sha: String,
    pub listen: String,
    pub addr: Addr,
    pub master: Option<Master>,
    pub base_pid: u32,
}

impl Rig {
    /// A dir with a copy of the fixture as `app`; no master yet.
    pub fn new(tag: &str) -> Rig {
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

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The master's arguments: listen, watch `next`, probation, a starts file, then `extra`.
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
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
    pub fn start(&mut self, extra: &[&str]) {
        self.start_with(extra, &[], None)
    }

    pub fn start_with(&mut self, extra: &[&str], envs: &[(&str, &str)], fsize_limit: Option<u64>) {
        let build = self.start_any(extra, envs, fsize_limit);
        self.expect(
            build == "base",
            format!("the first worker runs build {build:?}"),
        );
    }

    /// Starts the master from whatever `<dir>/app` is now; returns the build it serves.
    pub fn start_any(
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

    pub fn m(&self) -> &Master {
        self.master.as_ref().expect("the master was started")
    }

    pub fn m_mut(&mut self) -> &mut Master {
        self.master.as_mut().expect("the master was started")
    }

    pub fn fail(&self, msg: impl std::fmt::Display) -> ! {
        match &self.master {
            Some(m) => m.fail(msg),
            None => panic!("{msg}"),
        }
    }

    pub fn expect(&self, ok: bool, msg: impl std::fmt::Display) {
        if !ok {
            self.fail(msg)
        }
    }

    // -- publishing ------------------------------------------------------------------------

    /// Writes `name` in the dir atomically (`<name>.tmp`, then rename).
    pub fn write_side(&self, name: &str, bytes: &[u8]) {
        let tmp = self.path(&format!("{name}.tmp"));
        fs::write(&tmp, bytes).unwrap();
        fs::rename(&tmp, self.path(name)).unwrap();
    }

    /// Publishes `bytes` as `next` (optionally with a `next.sha256` written first); returns the
    /// release's identity as the File fetcher names it.
    pub fn publish(&self, bytes: &[u8], sidecar: Option<&str>) -> String {
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
    pub fn prepare_build(&self, stamp: &str, padding: usize) -> String {
        write_build(&self.path("next.tmp"), stamp, padding)
    }

    /// Renames the prepared `next.tmp` to `next`; returns the identity.
    pub fn publish_prepared(&self, sha: &str) -> String {
        fs::rename(self.path("next.tmp"), &self.next).unwrap();
        identity_of(sha)
    }

    /// A manual deploy: a stamped build written beside `app` and renamed over it; returns its
    /// sha256.
    pub fn deploy_build(&self, stamp: &str) -> String {
        let tmp = self.path("app.deploy.tmp");
        let sha = write_build(&tmp, stamp, 0);
        fs::rename(&tmp, &self.app).unwrap();
        sha
    }

    /// A stamped build, published; returns (identity, sha256).
    pub fn publish_build(&self, stamp: &str) -> (String, String) {
        let sha = self.prepare_build(stamp, 0);
        (self.publish_prepared(&sha), sha)
    }

    // -- observing --------------------------------------------------------------------------

    /// Waits for the first log line with `needle`; fails with the log after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        wait_for(timeout, || {
            log_lines_with(self.m(), needle).into_iter().next()
        })
        .unwrap_or_else(|| self.fail(format!("no log line with {needle:?} within {timeout:?}")))
    }

    /// Waits for the master to reject `identity`; returns the reason.
    pub fn wait_rejected(&self, identity: &str) -> String {
        self.wait_verdict(identity, "rejected")
    }

    /// As [`wait_rejected`](Self::wait_rejected), for a failure that is not the release's fault
    /// (a full disk, a cut transfer, another master's lock): tried again later.
    pub fn wait_not_installed(&self, identity: &str) -> String {
        self.wait_verdict(identity, "not installed this time")
    }

    fn wait_verdict(&self, identity: &str, verdict: &str) -> String {
        let needle = format!("release {identity} {verdict}: ");
        let line = self.wait_log(&needle, VERDICT);
        let reason = line.split_once(&needle).unwrap().1.to_string();
        self.expect(
            log_lines_with(self.m(), &format!("release {identity} is serving")).is_empty(),
            format!("{identity}: {verdict}, yet it also served"),
        );
        reason
    }

    /// Everything that must hold after a release was refused before it reached traffic.
    pub fn assert_untouched(&mut self, traffic: Traffic, why: &str) {
        std::thread::sleep(HOLD);
        let seen = traffic.stop();
        self.assert_master_alive(why);
        self.assert_only_base_served(&seen, why);
        self.assert_app_is_original(why);
        self.assert_no_temp_files(why);
    }

    pub fn assert_only_base_served(&self, seen: &[Obs], why: &str) {
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

    pub fn assert_app_is_original(&self, why: &str) {
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

    pub fn assert_no_temp_files(&self, why: &str) {
        let stray = stray_temp_files(&self.dir.join(""));
        self.expect(
            stray.is_empty(),
            format!("{why}: temporary files left behind: {stray:?}"),
        );
    }

    /// The master is still alive (the log is shown otherwise).
    pub fn assert_master_alive(&mut self, why: &str) {
        if let Some(st) = self.m_mut().try_exit() {
            self.fail(format!("{why}: the master exited: {st}"));
        }
    }

    pub fn watch(&self) -> Traffic {
        watch_traffic(&self.addr)
    }

    /// The (worker pid, build) answering `GET /` now, if any.
    pub fn serving(&self) -> Option<(u32, String)> {
        get(&self.addr, "/").ok().and_then(|r| served(&r))
    }

    /// Waits until build `build` answers `GET /`; returns its worker's pid.
    pub fn wait_build(&self, build: &str, timeout: Duration) -> u32 {
        let mut last = None;
        wait_for(timeout, || {
            last = self.serving();
            last.as_ref()
                .filter(|(_, b)| b == build)
                .map(|(pid, _)| *pid)
        })
        .unwrap_or_else(|| {
            self.fail(format!(
                "build {build} did not answer within {timeout:?}; last answer: {last:?}"
            ))
        })
    }
}

/// Writes a stamped fixture build to `path` (`padding` zero bytes, then the stamp), executable;
/// returns its sha256.
pub fn write_build(path: &Path, stamp: &str, padding: usize) -> String {
    fs::copy(fixture_path(), path).unwrap();
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    if padding > 0 {
        f.write_all(&vec![0u8; padding]).unwrap();
    }
    f.write_all(format!("UPSHIFT-TEST-BUILD:{stamp}\n").as_bytes())
        .unwrap();
    f.sync_all().unwrap();
    file_sha(path)
}

pub fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn file_sha(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

pub fn identity_of(sha: &str) -> String {
    format!("sha256:{sha}")
}

/// Lines of the master's log containing `needle`.
pub fn log_lines_with(m: &Master, needle: &str) -> Vec<String> {
    m.log_contents()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Staging temp files (`.app.upshift-*`), rollback temp names and `.prev` temp names in `dir`.
pub fn stray_temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(".app.upshift-")
                || n.starts_with("app.rollback-")
                || (n.starts_with("app.prev-") && n.ends_with(".tmp"))
                || n == "app.prev.tmp"
        })
        .collect()
}

/// The worker pid and build in a fixture body (`fixture pid N gen G build B exe PATH`).
pub fn served(r: &Response) -> Option<(u32, String)> {
    let pid = r.pid()?;
    let mut words = r.body.split_whitespace();
    words.find(|w| *w == "build")?;
    Some((pid, words.next()?.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Traffic: `GET /` on a fresh connection every 40 ms, on a thread, for the whole of a release.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Obs {
    Served { pid: u32, build: String },
    Failed(String),
}

pub struct Traffic {
    pub stop: Arc<AtomicBool>,
    pub thread: Option<JoinHandle<Vec<Obs>>>,
}

impl Traffic {
    pub fn stop(mut self) -> Vec<Obs> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().expect("traffic thread")
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

pub fn watch_traffic(addr: &Addr) -> Traffic {
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
pub fn phases(seen: &[Obs]) -> Vec<(Obs, usize)> {
    let mut out: Vec<(Obs, usize)> = Vec::new();
    for o in seen {
        match out.last_mut() {
            Some((last, n)) if last == o => *n += 1,
            _ => out.push((o.clone(), 1)),
        }
    }
    out
}

// Releases the pipeline must refuse before they reach traffic.

/// Publishes `bytes` (with an optional sidecar) to a started rig and asserts the full "refused,
/// nothing changed" contract; `expected` are substrings the rejection reason must contain.
pub fn refused(rig: &mut Rig, bytes: &[u8], sidecar: Option<&str>, expected: &[&str]) -> String {
    refused_as(rig, bytes, sidecar, expected, Rig::wait_rejected)
}

/// As [`refused`], for a release not installed for a reason that is not its own fault.
pub fn not_installed(
    rig: &mut Rig,
    bytes: &[u8],
    sidecar: Option<&str>,
    expected: &[&str],
) -> String {
    refused_as(rig, bytes, sidecar, expected, Rig::wait_not_installed)
}

fn refused_as(
    rig: &mut Rig,
    bytes: &[u8],
    sidecar: Option<&str>,
    expected: &[&str],
    verdict: fn(&Rig, &str) -> String,
) -> String {
    let traffic = rig.watch();
    let identity = rig.publish(bytes, sidecar);
    let reason = verdict(rig, &identity);
    for e in expected {
        rig.expect(
            reason.contains(e),
            format!("the rejection of {identity} does not say {e:?}: {reason}"),
        );
    }
    rig.assert_untouched(traffic, &format!("after rejecting {identity}"));
    reason
}

/// A minisign signature of the file at `path` whose trusted comment binds it to `product`,
/// `version` and `target`, as `upshift-publish --sign` writes it.
pub fn sign_for(
    kp: &minisign::KeyPair,
    path: &Path,
    product: &str,
    version: &str,
    target: &str,
) -> String {
    let meta = upshift::release::SignedMetadata {
        product: product.into(),
        version: version.into(),
        target: target.into(),
        sha256: file_sha(path),
        base: None,
    };
    let comment = meta.to_trusted_comment(1_764_770_000, "next").unwrap();
    sign_with_comment(kp, path, &comment)
}

/// A minisign signature of the file at `path` with exactly this trusted comment.
pub fn sign_with_comment(kp: &minisign::KeyPair, path: &Path, comment: &str) -> String {
    let data = fs::File::open(path).unwrap();
    minisign::sign(Some(&kp.pk), &kp.sk, data, Some(comment), None)
        .unwrap()
        .into_string()
}
