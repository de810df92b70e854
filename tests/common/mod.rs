//! Shared helpers for the process-level tests: real processes, real sockets, loopback only.
//!
//! Everything here is bounded in time. A [`Master`] kills its master process and every descendant it
//! ever saw when dropped (by PID, checked against the process start time so a recycled PID is never
//! hit), and prints the master's log when the test is failing.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

// ---------------------------------------------------------------------------------------------
// Locating binaries, temp dirs, ports
// ---------------------------------------------------------------------------------------------

/// The path of a built example: the test binary lives in `target/<profile>/deps/`, examples in
/// `target/<profile>/examples/`.
///
/// `cargo test` and `cargo nextest run` build the examples before the tests, but not when targets
/// are selected (`cargo test --test zero_downtime`): then a missing or stale example (older than
/// `src/` or its own source) is rebuilt here once per test process, so a test never runs an old
/// fixture against a new library.
pub fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    let deps = exe.parent().expect("test binary has a parent dir");
    let profile_dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent")
    } else {
        deps
    };
    let path = profile_dir.join("examples").join(name);
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|n| n == name) {
        if example_is_stale(&path, name) {
            build_example(profile_dir, name);
        }
        built.push(name.to_string());
    }
    assert!(
        path.is_file(),
        "example {name:?} not found at {}: build it with `cargo build --examples`",
        path.display()
    );
    path
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn example_is_stale(binary: &Path, name: &str) -> bool {
    let Some(built) = mtime(binary) else {
        return true;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![
        root.join("Cargo.toml"),
        root.join("examples").join(format!("{name}.rs")),
    ];
    let mut dirs = vec![root.join("src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                sources.push(p);
            }
        }
    }
    sources.iter().filter_map(|s| mtime(s)).any(|m| m > built)
}

fn build_example(profile_dir: &Path, name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO")
        .unwrap_or_else(|_| option_env!("CARGO").unwrap_or("cargo").to_string());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--example")
        .arg(name);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.arg("--profile").arg(other);
        }
        None => {}
    }
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    eprintln!("building example {name:?}: {cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn cargo to build the example");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(st) = child.try_wait().expect("wait for cargo") {
            assert!(st.success(), "building example {name:?} failed: {st}");
            return;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("building example {name:?} took over 600 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The fixture example.
pub fn fixture_path() -> PathBuf {
    example_path("fixture")
}

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
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
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

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// The fields of `/proc/<pid>/stat` the tests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub state: char,
    pub ppid: u32,
    /// Field 22: start time in clock ticks since boot; with the pid it names one process for good.
    pub starttime: u64,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may contain spaces and parentheses.
    let close = text.rfind(')')?;
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    Some(ProcStat {
        pid,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        starttime: rest.get(19)?.parse().ok()?,
    })
}

/// All processes, as (pid, stat).
pub fn all_procs() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(proc_stat)
        .collect()
}

/// Direct children of `pid` (zombies included).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = all_procs()
        .into_iter()
        .filter(|p| p.ppid == pid)
        .map(|p| p.pid)
        .collect();
    v.sort_unstable();
    v
}

/// Children of `pid` that are not zombies.
pub fn live_children_of(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = all_procs()
        .into_iter()
        .filter(|p| p.ppid == pid && p.state != 'Z' && p.state != 'X')
        .map(|p| p.pid)
        .collect();
    v.sort_unstable();
    v
}

/// Children of `pid` that are zombies (exited, not yet reaped by `pid`).
pub fn zombie_children_of(pid: u32) -> Vec<u32> {
    all_procs()
        .into_iter()
        .filter(|p| p.ppid == pid && p.state == 'Z')
        .map(|p| p.pid)
        .collect()
}

/// Every descendant of `pid`, with its stat.
pub fn descendants_of(pid: u32) -> Vec<ProcStat> {
    let procs = all_procs();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for c in procs.iter().filter(|s| s.ppid == p) {
            if !out.iter().any(|o: &ProcStat| o.pid == c.pid) {
                out.push(*c);
                frontier.push(c.pid);
            }
        }
    }
    out
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some(s) if s.state != 'Z' && s.state != 'X')
}

/// Number of open descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `/proc/<pid>/fd` as `fd -> link target`, for diagnostics.
pub fn fd_listing(pid: u32) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.filter_map(|e| e.ok()) {
            if let Some(n) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                let target = std::fs::read_link(e.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "?".into());
                out.insert(n, target);
            }
        }
    }
    out
}

/// Polls `f` every 20 ms until it returns `Some`, or `None` after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` every 20 ms until it is true; false after `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || f().then_some(())).is_some()
}

pub fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("kill({pid}, {sig}): {e}"));
}

// ---------------------------------------------------------------------------------------------
// The master guard
// ---------------------------------------------------------------------------------------------

/// A spawned server process (an upshift master, or an in-process server when disabled).
///
/// A watcher thread records every descendant it sees (every 10 ms); on drop the master and all
/// recorded descendants still alive are SIGKILLed, by PID, after checking their start time.
pub struct Master {
    child: Child,
    pid: u32,
    /// The master's stat at spawn: its start time tells it apart from a later process with its pid.
    root: Option<ProcStat>,
    exit: Option<ExitStatus>,
    _logdir: TestDir,
    log: PathBuf,
    seen: Arc<Mutex<BTreeMap<u32, ProcStat>>>,
    seen_order: Arc<Mutex<Vec<u32>>>,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl Master {
    /// Spawns `program` with `args`; stdout and stderr go to a log file.
    pub fn spawn(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Master {
        let logdir = TestDir::new("log");
        let log = logdir.join("server.log");
        let out = File::create(&log).expect("create log");
        let err = out.try_clone().expect("dup log");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("RUST_BACKTRACE", "1")
            .env(
                "RUST_LOG",
                std::env::var("UPSHIFT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("UPSHIFT_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        // The server starts with nothing but stdio: descriptors this test process inherited
        // without close-on-exec (from cargo, a CI runner, a shell) must not show up in its workers
        // and be mistaken for leaks of the library.
        // SAFETY: the closure only makes raw syscalls, which is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                mark_fds_cloexec_from(3);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let pid = child.id();
        let root = proc_stat(pid);
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let seen_order = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (seen, seen_order, stop) = (seen.clone(), seen_order.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    record_descendants(root, &seen, &seen_order);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Master {
            child,
            pid,
            root,
            exit: None,
            _logdir: logdir,
            log,
            seen,
            seen_order,
            stop,
            watcher: Some(watcher),
        }
    }

    /// Spawns the fixture example.
    pub fn fixture(args: &[&str]) -> Master {
        Master::spawn(&fixture_path(), args, &[])
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `sig` to the master. Refused once the master has been reaped: its pid may name
    /// another process by then.
    pub fn signal(&self, sig: Signal) {
        assert!(
            self.exit.is_none(),
            "signal {sig} to master {} after it exited",
            self.pid
        );
        signal(self.pid, sig)
    }

    /// The exit status if the process has exited (reaping it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exit = Some(st);
            }
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every descendant the watcher has seen so far, in the order first seen.
    pub fn descendants_seen(&self) -> Vec<u32> {
        record_descendants(self.root, &self.seen, &self.seen_order);
        self.seen_order.lock().unwrap().clone()
    }

    /// Descendants seen that are still alive (same start time, not a zombie).
    pub fn live_descendants_seen(&self) -> Vec<u32> {
        let seen = self.seen.lock().unwrap().clone();
        seen.values()
            .filter(|s| matches!(proc_stat(s.pid), Some(now) if now.starttime == s.starttime && now.state != 'Z' && now.state != 'X'))
            .map(|s| s.pid)
            .collect()
    }

    /// The master's live (non-zombie) children right now.
    pub fn live_children(&self) -> Vec<u32> {
        live_children_of(self.pid)
    }

    pub fn log_contents(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `max` bytes of the log.
    pub fn log_tail(&self, max: usize) -> String {
        let log = self.log_contents();
        if log.len() <= max {
            return log;
        }
        let mut start = log.len() - max;
        while !log.is_char_boundary(start) {
            start += 1;
        }
        format!("[... {start} bytes cut ...]\n{}", &log[start..])
    }

    /// Panics with `msg` and the log tail.
    pub fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!(
            "{msg}\n----- server log (pid {}) -----\n{}\n----- end of log -----",
            self.pid,
            self.log_tail(24_000)
        )
    }

    /// Waits until `GET /` on `addr` answers 200, failing the test (with the log) after `timeout` or
    /// if the process exits first.
    pub fn wait_serving(&mut self, addr: &Addr, timeout: Duration) -> Response {
        let deadline = Instant::now() + timeout;
        let mut last_err: String;
        loop {
            if let Some(st) = self.try_exit() {
                self.fail(format!("server exited with {st} before serving on {addr}"));
            }
            match get(addr, "/") {
                Ok(r) if r.status == 200 => return r,
                Ok(r) => last_err = format!("status {} body {:?}", r.status, r.body),
                Err(e) => last_err = e.to_string(),
            }
            if Instant::now() >= deadline {
                self.fail(format!(
                    "GET / on {addr} did not answer 200 within {timeout:?}: last: {last_err}"
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The worker pid answering `GET /` on a fresh connection.
    pub fn serving_pid(&self, addr: &Addr) -> u32 {
        match get(addr, "/") {
            Ok(r) if r.status == 200 => r
                .pid()
                .unwrap_or_else(|| self.fail(format!("no pid in {:?}", r.body))),
            Ok(r) => self.fail(format!(
                "GET / on {addr}: status {} body {:?}",
                r.status, r.body
            )),
            Err(e) => self.fail(format!("GET / on {addr}: {e}")),
        }
    }

    /// Polls `GET /` until it is answered by a pid other than `old`; returns the new pid.
    pub fn wait_new_pid(&self, addr: &Addr, old: u32, timeout: Duration) -> u32 {
        self.wait_pid_not_in(addr, &[old], timeout)
    }

    /// Polls `GET /` until it is answered by a pid not in `old`. A worker told to drain may still
    /// accept a connection or two until it has read the order (they are served, nothing is lost),
    /// so after several quick restarts "not the previous pid" is not enough to name the newest.
    pub fn wait_pid_not_in(&self, addr: &Addr, old: &[u32], timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            match get(addr, "/") {
                Ok(r) if r.status == 200 => match r.pid() {
                    Some(p) if !old.contains(&p) => return p,
                    _ => last = r.body.clone(),
                },
                Ok(r) => last = format!("status {} {:?}", r.status, r.body),
                Err(e) => last = format!("error {e}"),
            }
            if Instant::now() >= deadline {
                self.fail(format!(
                    "no worker other than {old:?} answered on {addr} within {timeout:?}; last: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGUSR2 to the master, then waits for a new pid on `addr`.
    pub fn restart(&self, addr: &Addr, old: u32, timeout: Duration) -> u32 {
        self.signal(Signal::SIGUSR2);
        self.wait_new_pid(addr, old, timeout)
    }
}

/// Sets close-on-exec on every descriptor from `first` up. Runs between fork and exec: raw
/// syscalls only.
fn mark_fds_cloexec_from(first: i32) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // Older kernels: walk a generous range.
    for fd in first..4096 {
        // SAFETY: fcntl on a descriptor number; EBADF for closed ones is ignored.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// The worker starts recorded by the fixture's `--starts-file`: `(pid, generation, behavior)`.
pub fn read_starts(path: &Path) -> Vec<(u32, u64, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut w = l.splitn(3, ' ');
            Some((
                w.next()?.parse().ok()?,
                w.next()?.parse().ok()?,
                w.next().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// Records the descendants of `root`, if `root` is still that very process (once the master has
/// been reaped its pid may name another process, whose children are none of our business).
fn record_descendants(
    root: Option<ProcStat>,
    seen: &Mutex<BTreeMap<u32, ProcStat>>,
    order: &Mutex<Vec<u32>>,
) {
    let Some(root) = root else { return };
    let same = || matches!(proc_stat(root.pid), Some(s) if s.starttime == root.starttime);
    if !same() {
        return;
    }
    let found = descendants_of(root.pid);
    if !same() {
        return;
    }
    let mut seen = seen.lock().unwrap();
    let mut order = order.lock().unwrap();
    for s in found {
        let fresh = match seen.get(&s.pid) {
            None => true,
            Some(old) => old.starttime != s.starttime,
        };
        if fresh {
            seen.insert(s.pid, s);
            order.retain(|p| *p != s.pid);
            order.push(s.pid);
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        if self.exit.is_none() {
            record_descendants(self.root, &self.seen, &self.seen_order);
        }
        let panicking = std::thread::panicking();
        if self.try_exit().is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        for s in seen.values() {
            if let Some(now) = proc_stat(s.pid) {
                if now.starttime == s.starttime && now.state != 'Z' {
                    let _ = kill(Pid::from_raw(s.pid as i32), Signal::SIGKILL);
                }
            }
        }
        let _ = self.child.wait();
        if panicking {
            eprintln!(
                "----- server log (pid {}) at teardown -----\n{}\n----- end of log -----",
                self.pid,
                self.log_tail(24_000)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Whether the response was HTTP/1.0 (close by default).
    pub http10: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the server will close the connection after this response.
    pub fn closes(&self) -> bool {
        match self.header("connection") {
            Some(v) => v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")),
            None => self.http10,
        }
    }

    /// The worker pid in a fixture body (`fixture pid N gen G exe PATH`).
    pub fn pid(&self) -> Option<u32> {
        body_field(&self.body, "pid")
    }

    pub fn generation(&self) -> Option<u32> {
        body_field(&self.body, "gen")
    }

    pub fn exe(&self) -> Option<&str> {
        let i = self.body.find(" exe ")?;
        Some(self.body[i + 5..].trim_end())
    }
}

pub fn body_field(body: &str, name: &str) -> Option<u32> {
    let mut words = body.split_whitespace();
    if words.next()? != "fixture" {
        return None;
    }
    while let Some(w) = words.next() {
        if w == name {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// Result of parsing a buffer that may hold a response.
#[derive(Debug)]
pub enum Parsed {
    Incomplete,
    /// The response and how many bytes of the buffer it used.
    Done(Response, usize),
}

/// Parses one response from the start of `buf`. `eof` says no more bytes will come (a response
/// without a length then ends at the end of the buffer).
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Parsed, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 64 * 1024 {
            Err("response head over 64 KiB".into())
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut resp = Response {
        status,
        headers,
        body: String::new(),
        http10: version == "HTTP/1.0",
    };
    let body_start = head_end + 4;
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut pos = body_start;
        let mut body = Vec::new();
        loop {
            let Some(line_end) = find(&buf[pos..], b"\r\n") else {
                return Ok(Parsed::Incomplete);
            };
            let size_str =
                std::str::from_utf8(&buf[pos..pos + line_end]).map_err(|_| "bad chunk size")?;
            let size_str = size_str.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_str, 16)
                .map_err(|_| format!("bad chunk size {size_str:?}"))?;
            pos += line_end + 2;
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    let Some(end) = find(&buf[pos..], b"\r\n") else {
                        return Ok(Parsed::Incomplete);
                    };
                    pos += end + 2;
                    if end == 0 {
                        break;
                    }
                }
                resp.body = String::from_utf8_lossy(&body).into_owned();
                return Ok(Parsed::Done(resp, pos));
            }
            if buf.len() < pos + size + 2 {
                return Ok(Parsed::Incomplete);
            }
            body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
    }
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    let len = if no_body {
        Some(0)
    } else {
        match resp.header("content-length") {
            Some(v) => Some(
                v.parse::<usize>()
                    .map_err(|_| format!("bad content-length {v:?}"))?,
            ),
            None => None,
        }
    };
    match len {
        Some(len) => {
            if buf.len() < body_start + len {
                return Ok(Parsed::Incomplete);
            }
            resp.body = String::from_utf8_lossy(&buf[body_start..body_start + len]).into_owned();
            Ok(Parsed::Done(resp, body_start + len))
        }
        None if eof => {
            resp.body = String::from_utf8_lossy(&buf[body_start..]).into_owned();
            Ok(Parsed::Done(resp, buf.len()))
        }
        None => Ok(Parsed::Incomplete),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn request_bytes(path: &str, close: bool) -> Vec<u8> {
    let conn = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: upshift-tests\r\n{conn}\r\n")
        .into_bytes()
}

enum SyncStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl SyncStream {
    fn connect(addr: &Addr, timeout: Duration) -> io::Result<SyncStream> {
        let s = match addr {
            Addr::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, Duration::from_secs(5))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                SyncStream::Tcp(s)
            }
            Addr::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                SyncStream::Unix(s)
            }
        };
        Ok(s)
    }
}

impl Read for SyncStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SyncStream::Tcp(s) => s.read(buf),
            SyncStream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for SyncStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SyncStream::Tcp(s) => s.write(buf),
            SyncStream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A blocking keep-alive connection: reconnects when the server said `Connection: close`.
pub struct Client {
    addr: Addr,
    timeout: Duration,
    conn: Option<(SyncStream, Vec<u8>)>,
    /// Connections opened so far.
    pub connects: u32,
}

impl Client {
    pub fn new(addr: &Addr) -> Client {
        Client {
            addr: addr.clone(),
            timeout: Duration::from_secs(15),
            conn: None,
            connects: 0,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// `GET path` on the current connection (opening one if needed).
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.request(path, false)
    }

    /// `GET path` with `Connection: close`.
    pub fn get_close(&mut self, path: &str) -> io::Result<Response> {
        self.request(path, true)
    }

    fn request(&mut self, path: &str, close: bool) -> io::Result<Response> {
        if self.conn.is_none() {
            self.conn = Some((SyncStream::connect(&self.addr, self.timeout)?, Vec::new()));
            self.connects += 1;
        }
        let (stream, buf) = self.conn.as_mut().unwrap();
        let result = (|| {
            stream.write_all(&request_bytes(path, close))?;
            read_response_sync(stream, buf)
        })();
        match result {
            Ok(resp) => {
                if close || resp.closes() {
                    self.conn = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

fn read_response_sync(stream: &mut SyncStream, buf: &mut Vec<u8>) -> io::Result<Response> {
    let mut chunk = [0u8; 8192];
    let mut eof = false;
    loop {
        match parse_response(buf, eof).map_err(io::Error::other)? {
            Parsed::Done(resp, used) => {
                buf.drain(..used);
                return Ok(resp);
            }
            Parsed::Incomplete if eof => {
                let what = if buf.is_empty() {
                    "before any byte of the response"
                } else {
                    "within the response"
                };
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed {what}"),
                ));
            }
            Parsed::Incomplete => {}
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            eof = true;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One `GET path` on a new connection, with `Connection: close`.
pub fn get(addr: &Addr, path: &str) -> io::Result<Response> {
    Client::new(addr).get_close(path)
}

/// Like [`get`] with a custom read timeout.
pub fn get_timeout(addr: &Addr, path: &str, timeout: Duration) -> io::Result<Response> {
    Client::new(addr).with_timeout(timeout).get_close(path)
}

/// Whether a TCP connect to `addr` is refused right now.
pub fn connect_refused(addr: &Addr) -> bool {
    match addr {
        Addr::Tcp(a) => matches!(
            TcpStream::connect_timeout(a, Duration::from_secs(2)),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
        ),
        Addr::Unix(p) => UnixStream::connect(p).is_err(),
    }
}

/// Runs `GET path` on a thread (a new connection), returning a handle to join.
pub fn get_in_thread(
    addr: &Addr,
    path: &str,
    timeout: Duration,
) -> JoinHandle<io::Result<Response>> {
    let addr = addr.clone();
    let path = path.to_string();
    std::thread::spawn(move || get_timeout(&addr, &path, timeout))
}

// ---------------------------------------------------------------------------------------------
// The load generator
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub addr: Addr,
    pub connections: usize,
    /// Keep connections alive (reconnecting when the server closes); otherwise every request is
    /// sent with `Connection: close` on a new connection.
    pub keep_alive: bool,
    pub path: String,
    /// Pause between two requests of one connection.
    pub pause: Duration,
    /// A request that takes longer than this counts as an error.
    pub request_timeout: Duration,
}

impl LoadConfig {
    pub fn new(addr: &Addr, connections: usize, keep_alive: bool) -> LoadConfig {
        LoadConfig {
            addr: addr.clone(),
            connections,
            keep_alive,
            path: "/".into(),
            pause: Duration::ZERO,
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PidStats {
    pub count: u64,
    pub first: Instant,
    pub last: Instant,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    /// 200 responses.
    pub ok: u64,
    pub per_pid: BTreeMap<u32, PidStats>,
    /// Complete responses that were not 200.
    pub non_200: u64,
    /// connect() failed (refused, timed out, ...).
    pub connect_errors: u64,
    /// EOF before any byte of a response (the request was lost).
    pub eof_before_response: u64,
    /// Of those, how many were on a reused keep-alive connection.
    pub eof_before_response_reused: u64,
    /// Reset, EOF within a response, write failure, malformed response.
    pub io_errors: u64,
    /// Requests that took longer than the request timeout.
    pub timeouts: u64,
    /// The server closed a keep-alive connection normally (`Connection: close`, or EOF between
    /// responses): not an error.
    pub normal_closes: u64,
    pub connects: u64,
    /// The first few errors, with when they happened (ms since the load started).
    pub samples: Vec<String>,
    pub elapsed: Duration,
    pub started: Option<Instant>,
}

impl LoadReport {
    pub fn errors(&self) -> u64 {
        self.connect_errors + self.eof_before_response + self.io_errors + self.timeouts
    }

    /// Pids that answered at or after `t`.
    pub fn pids_serving_since(&self, t: Instant) -> Vec<u32> {
        self.per_pid
            .iter()
            .filter(|(_, s)| s.last >= t)
            .map(|(p, _)| *p)
            .collect()
    }

    pub fn summary(&self) -> String {
        let start = self.started.unwrap_or_else(Instant::now);
        let pids: Vec<String> = self
            .per_pid
            .iter()
            .map(|(p, s)| {
                format!(
                    "pid {p}: {} ok, {}..{} ms",
                    s.count,
                    s.first.saturating_duration_since(start).as_millis(),
                    s.last.saturating_duration_since(start).as_millis()
                )
            })
            .collect();
        format!(
            "{} ok, {} non-200, {} connect errors, {} EOF before response ({} on reused connections), \
             {} other I/O errors, {} timeouts, {} normal closes, {} connects, over {:?}\n  {}\n  errors: {:#?}",
            self.ok,
            self.non_200,
            self.connect_errors,
            self.eof_before_response,
            self.eof_before_response_reused,
            self.io_errors,
            self.timeouts,
            self.normal_closes,
            self.connects,
            self.elapsed,
            pids.join("\n  "),
            self.samples
        )
    }

    fn merge(&mut self, other: LoadReport) {
        self.ok += other.ok;
        for (pid, s) in other.per_pid {
            self.per_pid
                .entry(pid)
                .and_modify(|m| {
                    m.count += s.count;
                    m.first = m.first.min(s.first);
                    m.last = m.last.max(s.last);
                })
                .or_insert(s);
        }
        self.non_200 += other.non_200;
        self.connect_errors += other.connect_errors;
        self.eof_before_response += other.eof_before_response;
        self.eof_before_response_reused += other.eof_before_response_reused;
        self.io_errors += other.io_errors;
        self.timeouts += other.timeouts;
        self.normal_closes += other.normal_closes;
        self.connects += other.connects;
        for s in other.samples {
            if self.samples.len() < 30 {
                self.samples.push(s);
            }
        }
    }
}

/// A running load generator; [`LoadHandle::stop`] ends it and returns the report.
pub struct LoadHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<LoadReport>>,
    pub started: Instant,
}

impl LoadHandle {
    /// Stops the load (in-flight requests finish, bounded by the request timeout) and reports.
    pub fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("load generator thread panicked")
    }
}

impl Drop for LoadHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Starts `cfg.connections` client loops on a tokio runtime of their own, on a thread.
pub fn start_load(cfg: LoadConfig) -> LoadHandle {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("load generator runtime");
            rt.block_on(async move {
                let cfg = Arc::new(cfg);
                let mut tasks = Vec::new();
                for i in 0..cfg.connections {
                    tasks.push(tokio::spawn(client_loop(
                        i,
                        cfg.clone(),
                        stop.clone(),
                        started,
                    )));
                }
                let mut report = LoadReport {
                    started: Some(started),
                    ..Default::default()
                };
                for t in tasks {
                    match t.await {
                        Ok(r) => report.merge(r),
                        Err(e) => report.samples.push(format!("client task failed: {e}")),
                    }
                }
                report.elapsed = started.elapsed();
                report
            })
        })
    };
    LoadHandle {
        stop,
        thread: Some(thread),
        started,
    }
}

enum AsyncConn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl AsyncConn {
    async fn connect(addr: &Addr) -> io::Result<AsyncConn> {
        Ok(match addr {
            Addr::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a).await?;
                s.set_nodelay(true)?;
                AsyncConn::Tcp(s)
            }
            Addr::Unix(p) => AsyncConn::Unix(tokio::net::UnixStream::connect(p).await?),
        })
    }

    fn raw_fd(&self) -> i32 {
        match self {
            AsyncConn::Tcp(s) => s.as_raw_fd(),
            AsyncConn::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Without waiting: `Some(Ok(()))` if the peer has closed (EOF pending), `Some(Err)` on a pending
    /// error or unexpected data, `None` when the connection looks usable. Uses `recv(MSG_PEEK)` on
    /// the descriptor, which sees an EOF the reactor may not have reported yet.
    fn peer_state(&self) -> Option<io::Result<()>> {
        let mut b = [0u8; 1];
        // SAFETY: recv into a 1-byte stack buffer on a descriptor we own.
        let n = unsafe {
            libc::recv(
                self.raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return Some(Ok(()));
        }
        if n > 0 {
            return Some(Err(io::Error::other(
                "unsolicited bytes from the server between responses",
            )));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            None
        } else {
            Some(Err(e))
        }
    }

    async fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        match self {
            AsyncConn::Tcp(s) => s.write_all(b).await,
            AsyncConn::Unix(s) => s.write_all(b).await,
        }
    }

    async fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        match self {
            AsyncConn::Tcp(s) => s.read(b).await,
            AsyncConn::Unix(s) => s.read(b).await,
        }
    }
}

enum ReadErr {
    EofBefore,
    Eof,
    Io(io::Error),
    Parse(String),
}

async fn read_response_async(conn: &mut AsyncConn, buf: &mut Vec<u8>) -> Result<Response, ReadErr> {
    let mut chunk = [0u8; 8192];
    let mut eof = false;
    loop {
        match parse_response(buf, eof) {
            Err(e) => return Err(ReadErr::Parse(e)),
            Ok(Parsed::Done(resp, used)) => {
                buf.drain(..used);
                return Ok(resp);
            }
            Ok(Parsed::Incomplete) if eof => {
                return Err(if buf.is_empty() {
                    ReadErr::EofBefore
                } else {
                    ReadErr::Eof
                });
            }
            Ok(Parsed::Incomplete) => {}
        }
        let n = conn.read(&mut chunk).await.map_err(ReadErr::Io)?;
        if n == 0 {
            eof = true;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn client_loop(
    id: usize,
    cfg: Arc<LoadConfig>,
    stop: Arc<AtomicBool>,
    started: Instant,
) -> LoadReport {
    let mut r = LoadReport::default();
    let mut conn: Option<(AsyncConn, Vec<u8>, u32)> = None; // (stream, buffer, requests served on it)
    let req = request_bytes(&cfg.path, !cfg.keep_alive);
    let sample = |r: &mut LoadReport, what: String| {
        if r.samples.len() < 10 {
            r.samples.push(format!(
                "[conn {id} at {} ms] {what}",
                started.elapsed().as_millis()
            ));
        }
    };
    while !stop.load(Ordering::SeqCst) {
        if let Some((c, _, served)) = &conn {
            match c.peer_state() {
                None => {}
                Some(Ok(())) => {
                    // The server closed between responses: a normal end of a keep-alive connection.
                    r.normal_closes += 1;
                    conn = None;
                }
                Some(Err(e)) => {
                    r.io_errors += 1;
                    sample(
                        &mut r,
                        format!("idle connection (after {served} responses) failed: {e}"),
                    );
                    conn = None;
                }
            }
        }
        if conn.is_none() {
            match tokio::time::timeout(Duration::from_secs(5), AsyncConn::connect(&cfg.addr)).await
            {
                Ok(Ok(c)) => {
                    r.connects += 1;
                    conn = Some((c, Vec::new(), 0));
                }
                Ok(Err(e)) => {
                    r.connect_errors += 1;
                    sample(&mut r, format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    r.connect_errors += 1;
                    sample(&mut r, "connect timed out after 5 s".into());
                    continue;
                }
            }
        }
        let (c, buf, served) = conn.as_mut().unwrap();
        let reused = *served > 0;
        let attempt = async {
            c.write_all(&req).await.map_err(ReadErr::Io)?;
            read_response_async(c, buf).await
        };
        match tokio::time::timeout(cfg.request_timeout, attempt).await {
            Err(_) => {
                r.timeouts += 1;
                sample(
                    &mut r,
                    format!(
                        "request timed out after {:?} (reused: {reused})",
                        cfg.request_timeout
                    ),
                );
                conn = None;
            }
            Ok(Err(ReadErr::EofBefore)) => {
                r.eof_before_response += 1;
                if reused {
                    r.eof_before_response_reused += 1;
                }
                sample(&mut r, format!("EOF before any byte of the response (after {served} responses on this connection)"));
                conn = None;
            }
            Ok(Err(ReadErr::Eof)) => {
                r.io_errors += 1;
                sample(&mut r, format!("EOF within a response (reused: {reused})"));
                conn = None;
            }
            Ok(Err(ReadErr::Io(e))) => {
                r.io_errors += 1;
                sample(
                    &mut r,
                    format!(
                        "I/O error: {e} (kind {:?}, after {served} responses on this connection)",
                        e.kind()
                    ),
                );
                conn = None;
            }
            Ok(Err(ReadErr::Parse(e))) => {
                r.io_errors += 1;
                sample(&mut r, format!("malformed response: {e}"));
                conn = None;
            }
            Ok(Ok(resp)) => {
                *served += 1;
                let now = Instant::now();
                if resp.status == 200 {
                    r.ok += 1;
                    match resp.pid() {
                        Some(pid) => {
                            r.per_pid
                                .entry(pid)
                                .and_modify(|s| {
                                    s.count += 1;
                                    s.last = now;
                                })
                                .or_insert(PidStats {
                                    count: 1,
                                    first: now,
                                    last: now,
                                });
                        }
                        None => sample(&mut r, format!("200 without a pid: {:?}", resp.body)),
                    }
                } else {
                    r.non_200 += 1;
                    sample(&mut r, format!("status {}: {:?}", resp.status, resp.body));
                }
                if !cfg.keep_alive || resp.closes() {
                    if cfg.keep_alive {
                        r.normal_closes += 1;
                    }
                    conn = None;
                }
            }
        }
        if !cfg.pause.is_zero() {
            tokio::time::sleep(cfg.pause).await;
        }
    }
    r
}

/// Distinct pids in a set, for messages.
pub fn pid_set(pids: impl IntoIterator<Item = u32>) -> BTreeSet<u32> {
    pids.into_iter().collect()
}

/// Counts occurrences, for messages.
pub fn counts<T: std::hash::Hash + Eq + Ord + Clone>(items: &[T]) -> BTreeMap<T, usize> {
    let mut m: HashMap<T, usize> = HashMap::new();
    for i in items {
        *m.entry(i.clone()).or_default() += 1;
    }
    m.into_iter().collect()
}
