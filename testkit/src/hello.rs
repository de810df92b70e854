//! The root package's `hello` example as a real self-upgrading server under test: located (and
//! built when missing or stale), copied into a private directory so that an upgrade replaces the
//! copy, started as a master on 127.0.0.1, watched, and killed by PID on drop with every
//! descendant it was seen to have.
//!
//! Every fetcher crate's `hello_upgrade` test uses it (re-exported from its `tests/common`).

pub use crate::builds::{hello_binary, new_build, run_bounded};
pub use crate::load::{greet, parse_greeting, Greeting, PollReport, Poller};
pub use crate::procs::{is_alive, proc_stat, ProcStat};

use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::procs::{descendants_of, kill_if_same};

/// How long the first worker may take to serve (a debug build of `hello` is a few hundred MB).
const START: Duration = Duration::from_secs(30);

/// A private directory under the system temp dir, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "upshift-hello-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        // Private whatever the umask: the File fetcher refuses a directory others may write.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        Scratch(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
/// A port on 127.0.0.1 that was free a moment ago.
fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// Removes ANSI escapes, should a log be colored despite `NO_COLOR`.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `hello` running as an upshift master from `<scratch>/bin/hello` (a copy: an upgrade replaces
/// it), listening on one loopback port, its stdout and stderr in `<scratch>/hello.log`.
///
/// A watcher thread records every descendant it sees; on drop the master and every recorded
/// descendant still alive are SIGKILLed by PID (checked against the start time, so that a
/// recycled PID is never hit), and the log is printed when the test is failing.
pub struct Hello {
    child: Child,
    pid: u32,
    pub addr: SocketAddr,
    dir: PathBuf,
    seen: Arc<Mutex<BTreeMap<u32, ProcStat>>>,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
    /// `None` once handed to another attempt: then not removed on drop.
    scratch: Option<Scratch>,
    /// How it was started, for [`Hello::restart`].
    launch: Launch,
}

/// The arguments, environment and log filter a [`Hello`] was started with.
#[derive(Clone)]
struct Launch {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    rust_log: String,
}

impl Hello {
    /// Copies `binary` to a private directory and starts it with `--listen 127.0.0.1:<free port>
    /// --interval 0.3` and `args`, in an environment of `PATH`, `RUST_LOG=rust_log`, `NO_COLOR` and
    /// `envs` only; waits until it serves generation 1.
    pub fn start(
        binary: &Path,
        args: &[String],
        envs: &[(String, String)],
        rust_log: &str,
    ) -> Hello {
        let scratch = Scratch::new("master");
        let bin = scratch.path().join("bin");
        fs::create_dir_all(&bin).expect("mkdir bin");
        let exe = bin.join("hello");
        fs::copy(binary, &exe)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", binary.display(), exe.display()));
        let launch = Launch {
            args: args.to_vec(),
            envs: envs.to_vec(),
            rust_log: rust_log.to_string(),
        };
        Hello::launch(scratch, launch)
    }

    /// Stops the master with SIGTERM (it drains and exits; SIGKILL after `timeout`) and starts it
    /// again from the same path (whatever the binary there is now), with the same arguments, on a
    /// new port; waits until it serves generation 1. The log goes on in the same file.
    pub fn restart(&mut self, timeout: Duration) {
        self.terminate(timeout);
        self.stop_watcher();
        let scratch = self.scratch.take().expect("the scratch dir");
        let next = Hello::launch(scratch, self.launch.clone());
        // The old value's drop finds its master reaped and its scratch dir taken.
        drop(std::mem::replace(self, next));
    }

    /// SIGTERM to the master; waits up to `timeout` for it to exit, then SIGKILLs it. Fails the
    /// test if it did not exit by itself.
    pub fn terminate(&mut self, timeout: Duration) {
        if let Some(root) = proc_stat(self.pid) {
            record_descendants(Some(root), &self.seen);
        }
        if !self.has_exited() {
            let _ = Command::new("kill")
                .args(["-s", "TERM", &self.pid.to_string()])
                .stdin(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + timeout;
        while !self.has_exited() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.fail(format!(
                    "the master did not exit within {timeout:?} of SIGTERM"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `<scratch>/bin/hello` as a master, retrying on another port if it could not bind.
    fn launch(mut scratch: Scratch, launch: Launch) -> Hello {
        let exe = scratch.path().join("bin").join("hello");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let addr = free_addr();
            let log = fs::File::options()
                .create(true)
                .append(true)
                .open(scratch.path().join("hello.log"))
                .expect("open the log");
            let err = log.try_clone().expect("dup the log");
            let child = Command::new(&exe)
                .args(["--listen", &addr.to_string(), "--interval", "0.3"])
                .args(&launch.args)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", scratch.path())
                .env("RUST_LOG", &launch.rust_log)
                .env("RUST_BACKTRACE", "1")
                .env("NO_COLOR", "1")
                .envs(launch.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .current_dir(scratch.path())
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", exe.display()));
            let mut hello = Hello::watch(child, addr, scratch, launch.clone());
            match hello.wait_first_worker() {
                Ok(()) => return hello,
                // Most likely the port was taken meanwhile: another port, same directory.
                Err(e) if attempt < 3 && hello.has_exited() => {
                    eprintln!("hello did not start ({e}); retrying on another port");
                    scratch = hello.scratch.take().expect("the scratch dir");
                }
                Err(e) => hello.fail(e),
            }
        }
    }

    fn watch(child: Child, addr: SocketAddr, scratch: Scratch, launch: Launch) -> Hello {
        let pid = child.id();
        let root = proc_stat(pid);
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    record_descendants(root, &seen);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Hello {
            child,
            pid,
            addr,
            dir: scratch.path().to_path_buf(),
            seen,
            stop,
            watcher: Some(watcher),
            scratch: Some(scratch),
            launch,
        }
    }

    fn wait_first_worker(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START;
        let mut last = String::new();
        loop {
            if self.has_exited() {
                return Err(format!("hello exited before serving: last: {last}"));
            }
            match greet(self.addr) {
                Ok(g) if g.generation == 1 => return Ok(()),
                Ok(g) => return Err(format!("the first answer is not generation 1: {g:?}")),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "GET / on {} did not answer within {START:?}: last: {last}",
                    self.addr
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    fn stop_watcher(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }

    /// The master's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the master is still running (not reaped, not a zombie).
    pub fn is_running(&mut self) -> bool {
        !self.has_exited() && is_alive(self.pid)
    }

    /// The path the master was started from, which upgrades replace.
    pub fn exe(&self) -> PathBuf {
        self.dir.join("bin").join("hello")
    }

    /// The directory holding [`Hello::exe`] and nothing else, unless something was left behind.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// The names in [`Hello::bin_dir`], sorted.
    pub fn bin_dir_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.bin_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The bytes of [`Hello::exe`] now.
    pub fn installed(&self) -> Vec<u8> {
        fs::read(self.exe())
            .unwrap_or_else(|e| self.fail(format!("read the installed binary: {e}")))
    }

    /// The master's log so far (stdout and stderr), without color codes.
    pub fn log(&self) -> String {
        let bytes = fs::read(self.dir.join("hello.log")).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&bytes))
    }

    /// The log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// After a release was refused: the refusal (`rejected: `) was logged once at WARN level
    /// over `polls` polls, `before` still answers, the binary on disk is still `installed`, and
    /// the master runs.
    pub fn assert_refused_once(&mut self, polls: usize, before: &Greeting, installed: &[u8]) {
        let warnings: Vec<String> = self
            .log_lines(" rejected: ")
            .into_iter()
            .filter(|l| l.contains(" WARN "))
            .collect();
        if warnings.len() != 1 {
            self.fail(format!(
                "the refusal was logged {} times over {polls} polls: {warnings:#?}",
                warnings.len()
            ));
        }
        let now = self.greeting();
        if now != *before {
            self.fail(format!("after the refusal {now:?} answers, not {before:?}"));
        }
        if self.installed() != installed {
            self.fail("the binary on disk changed after the refusal");
        }
        if !self.is_running() {
            self.fail("the master exited after the refusal");
        }
    }

    /// Waits until the log has a line containing `needle`; the line, or `None` after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log_lines(needle).into_iter().next() {
                return Some(line);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the log has more than `count` lines containing `needle`.
    pub fn wait_log_count(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_lines(needle).len() > count {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `GET /` on a new connection; fails the test (with the log) on anything but a greeting.
    pub fn greeting(&self) -> Greeting {
        greet(self.addr).unwrap_or_else(|e| self.fail(format!("GET / on {}: {e}", self.addr)))
    }

    /// Polls `GET /` until a greeting satisfies `pred`; `None` after `timeout`.
    pub fn wait_greeting(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Greeting) -> bool,
    ) -> Option<Greeting> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(g) = greet(self.addr) {
                if pred(&g) {
                    return Some(g);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The master's live (non-zombie) children right now.
    pub fn live_children(&self) -> Vec<u32> {
        let mut v: Vec<u32> = descendants_of(self.pid)
            .into_iter()
            .filter(|s| s.ppid == self.pid && s.state != 'Z' && s.state != 'X')
            .map(|s| s.pid)
            .collect();
        v.sort_unstable();
        v
    }

    /// Panics with `msg` and the end of the log.
    #[track_caller]
    pub fn fail(&self, msg: impl std::fmt::Display) -> ! {
        let log = self.log();
        let tail = match log.len() > 24_000 {
            true => {
                let mut start = log.len() - 24_000;
                while !log.is_char_boundary(start) {
                    start += 1;
                }
                format!("[... {start} bytes cut ...]\n{}", &log[start..])
            }
            false => log,
        };
        panic!(
            "{msg}\n----- hello log (master pid {}) -----\n{tail}\n----- end of log -----",
            self.pid
        )
    }
}

fn record_descendants(root: Option<ProcStat>, seen: &Mutex<BTreeMap<u32, ProcStat>>) {
    let Some(root) = root else { return };
    let same = || matches!(proc_stat(root.pid), Some(s) if s.starttime == root.starttime);
    if !same() {
        return;
    }
    let found = descendants_of(root.pid);
    if !same() {
        return;
    }
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    for s in found {
        seen.insert(s.pid, s);
    }
}

impl Drop for Hello {
    fn drop(&mut self) {
        self.stop_watcher();
        let root = proc_stat(self.pid);
        if matches!(self.child.try_wait(), Ok(None)) {
            record_descendants(root, &self.seen);
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let seen: Vec<ProcStat> = self
            .seen
            .lock()
            .map(|s| s.values().copied().collect())
            .unwrap_or_default();
        for s in &seen {
            kill_if_same(s);
        }
        if std::thread::panicking() {
            let log = self.log();
            let start = log.len().saturating_sub(24_000);
            let start = (start..=log.len())
                .find(|&i| log.is_char_boundary(i))
                .unwrap_or(0);
            eprintln!(
                "----- hello log (master pid {}) at teardown -----\n{}\n----- end of log -----",
                self.pid,
                &log[start..]
            );
        }
    }
}
