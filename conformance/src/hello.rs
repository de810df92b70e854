//! The root package's `hello` example as a real self-upgrading server under test: located (and
//! built when missing or stale), copied into a private directory so that an upgrade replaces the
//! copy, started as a master on 127.0.0.1, watched, and killed by PID on drop with every
//! descendant it was seen to have.
//!
//! Every fetcher crate's `hello_upgrade` test uses it (re-exported from its `tests/common`).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// How long the first worker may take to serve (a debug build of `hello` is a few hundred MB).
const START: Duration = Duration::from_secs(30);

/// The workspace root: fetcher crates live two levels below it.
fn workspace_root() -> PathBuf {
    // This crate sits one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/<profile>` of this test executable (`target/<profile>/deps/<test>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    let deps = exe.parent().expect("test binary has a parent dir");
    match deps.file_name().is_some_and(|n| n == "deps") {
        true => deps.parent().expect("deps has a parent").to_path_buf(),
        false => deps.to_path_buf(),
    }
}

fn build_hello(profile_dir: &Path) {
    let cargo = std::env::var("CARGO")
        .unwrap_or_else(|_| option_env!("CARGO").unwrap_or("cargo").to_string());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .args(["-p", "upshift-hello", "--example", "hello"])
        .args(["--features", "remote-fetchers"]);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.arg("--profile").arg(other);
        }
    }
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    eprintln!("building the hello example: {cmd:?}");
    run_bounded(
        &mut cmd,
        "building the hello example",
        Duration::from_secs(900),
    );
}

/// Runs `cmd` (stdin closed) to its end, failing the test if it fails or outlives `timeout`
/// (then it is killed).
pub fn run_bounded(cmd: &mut Command, what: &str, timeout: Duration) {
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("wait for a child") {
            assert!(st.success(), "{what} failed: {st}");
            return;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} took over {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `target/<profile>/examples/hello` with the remote fetchers, built first (once per test
/// process). Cargo decides whether anything needs building: `cargo test --workspace` builds the
/// example without the `remote-fetchers` feature, and only cargo knows which features a binary
/// was built with (a missing or older file is not the only way to be stale).
pub fn hello_binary() -> PathBuf {
    static CHECKED: Mutex<bool> = Mutex::new(false);
    let profile = profile_dir();
    let path = profile.join("examples").join("hello");
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if !*checked {
        build_hello(&profile);
        *checked = true;
    }
    assert!(
        path.is_file(),
        "the hello example is not at {}: build it with \
         `cargo build --example hello --features remote-fetchers`",
        path.display()
    );
    path
}

/// A "new build" of `binary` without compiling: the same bytes with `tag` appended. Trailing
/// bytes do not change how an ELF file loads, but its sha256 differs: a distinct release.
pub fn new_build(binary: &[u8], tag: &str) -> Vec<u8> {
    let mut out = binary.to_vec();
    out.extend_from_slice(format!("\nUPSHIFT-E2E-BUILD:{tag}\n").as_bytes());
    out
}

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

/// `/proc/<pid>/stat`: state, parent, start time (with the pid, it names one process for good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub state: char,
    pub ppid: u32,
    pub starttime: u64,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = text.rfind(')')?;
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    Some(ProcStat {
        pid,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        starttime: rest.get(19)?.parse().ok()?,
    })
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some(s) if s.state != 'Z' && s.state != 'X')
}

fn descendants_of(pid: u32) -> Vec<ProcStat> {
    let procs: Vec<ProcStat> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(proc_stat)
        .collect();
    let mut out: Vec<ProcStat> = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for c in procs.iter().filter(|s| s.ppid == p) {
            if !out.iter().any(|o| o.pid == c.pid) {
                out.push(*c);
                frontier.push(c.pid);
            }
        }
    }
    out
}

/// SIGKILL to `pid`, if it is still the process `seen` (same start time, not a zombie). Through
/// `kill(1)`: this file stays on the standard library.
fn kill_if_same(seen: &ProcStat) {
    if matches!(proc_stat(seen.pid), Some(now) if now.starttime == seen.starttime && now.state != 'Z')
    {
        let _ = Command::new("kill")
            .args(["-s", "KILL", &seen.pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One answer of `GET /`: `hello from <BUILD_ID> pid <pid> gen <n>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub build_id: String,
    pub pid: u32,
    pub generation: u64,
}

pub fn parse_greeting(body: &str) -> Option<Greeting> {
    let line = body.strip_suffix('\n')?;
    match line.split(' ').collect::<Vec<_>>().as_slice() {
        ["hello", "from", id, "pid", pid, "gen", generation] if !id.is_empty() => Some(Greeting {
            build_id: id.to_string(),
            pid: pid.parse().ok()?,
            generation: generation.parse().ok()?,
        }),
        _ => None,
    }
}

/// A complete HTTP/1.1 response: status, whether the server closes after it, body.
struct Response {
    status: u16,
    closes: bool,
    body: String,
}

fn read_response(conn: &mut TcpStream) -> io::Result<Option<Response>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return match buf.is_empty() {
                true => Ok(None),
                false => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed within a response head",
                )),
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let closes = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let mut body = buf[head_end..].to_vec();
    match header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(len) => {
            while body.len() < len {
                let n = conn.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed within a response body",
                    ));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None => {
            conn.read_to_end(&mut body)?;
        }
    }
    Ok(Some(Response {
        status,
        closes: closes || header("content-length").is_none(),
        body: String::from_utf8_lossy(&body).into_owned(),
    }))
}

fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let conn = TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// `GET /` on a new connection (`Connection: close`), which must answer 200 with a greeting.
pub fn greet(addr: SocketAddr) -> Result<Greeting, String> {
    let mut conn = connect(addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    match read_response(&mut conn) {
        Ok(Some(r)) if r.status == 200 => {
            parse_greeting(&r.body).ok_or_else(|| format!("malformed greeting {:?}", r.body))
        }
        Ok(Some(r)) => Err(format!("status {} body {:?}", r.status, r.body)),
        Ok(None) => Err("connection closed before a response".into()),
        Err(e) => Err(format!("reading the response: {e}")),
    }
}

/// What a [`Poller`] saw.
#[derive(Debug, Default)]
pub struct PollReport {
    /// Every greeting, with when it arrived.
    pub answers: Vec<(Instant, Greeting)>,
    /// Every failed request, with when and why.
    pub failures: Vec<(Instant, String)>,
    /// Connections opened (the server closes kept-alive ones politely when a worker drains).
    pub connections: u64,
}

impl PollReport {
    /// The distinct (pid, generation) pairs that answered, in order of first answer.
    pub fn workers(&self) -> Vec<(u32, u64)> {
        let mut out: Vec<(u32, u64)> = Vec::new();
        for (_, g) in &self.answers {
            if !out.contains(&(g.pid, g.generation)) {
                out.push((g.pid, g.generation));
            }
        }
        out
    }
}

/// A client polling `GET /` every `pause` on a kept-alive connection, reconnecting when the
/// server says `Connection: close`, as a well-behaved HTTP client does. Any request without a
/// complete 200 greeting is a failure: a refused connect, an error or EOF before or within the
/// response (on a reused connection too: the server must not close it under a request), a
/// non-200, a malformed body, a 5 s timeout.
pub struct Poller {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<PollReport>>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    pub fn start(addr: SocketAddr, pause: Duration) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(PollReport::default()));
        let thread = {
            let (stop, report) = (stop.clone(), report.clone());
            std::thread::spawn(move || {
                let mut conn: Option<TcpStream> = None;
                while !stop.load(Ordering::SeqCst) {
                    let outcome = poll_once(addr, &mut conn, &report);
                    let now = Instant::now();
                    let mut r = report.lock().unwrap_or_else(|e| e.into_inner());
                    match outcome {
                        Ok(g) => r.answers.push((now, g)),
                        Err(e) => {
                            conn = None;
                            r.failures.push((now, e));
                        }
                    }
                    drop(r);
                    std::thread::sleep(pause);
                }
            })
        };
        Poller {
            stop,
            report,
            thread: Some(thread),
        }
    }

    /// Greetings so far.
    pub fn answers(&self) -> Vec<(Instant, Greeting)> {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .answers
            .clone()
    }

    pub fn finish(mut self) -> PollReport {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.report.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn poll_once(
    addr: SocketAddr,
    conn: &mut Option<TcpStream>,
    report: &Mutex<PollReport>,
) -> Result<Greeting, String> {
    let reused = conn.is_some();
    if conn.is_none() {
        *conn = Some(connect(addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?);
        report.lock().unwrap_or_else(|e| e.into_inner()).connections += 1;
    }
    let stream = conn.as_mut().expect("connected");
    let what = match reused {
        true => "on a reused connection",
        false => "on a new connection",
    };
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| format!("send {what}: {e}"))?;
    let response = match read_response(stream) {
        Ok(Some(r)) => r,
        Ok(None) => return Err(format!("connection closed before a response {what}")),
        Err(e) => return Err(format!("reading the response {what}: {e}")),
    };
    if response.closes {
        *conn = None;
    }
    if response.status != 200 {
        return Err(format!(
            "status {} body {:?}",
            response.status, response.body
        ));
    }
    parse_greeting(&response.body).ok_or_else(|| format!("malformed greeting {:?}", response.body))
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
