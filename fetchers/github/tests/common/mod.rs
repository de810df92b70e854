//! The GitHub fixture server as the tests' real source: a child process on 127.0.0.1, built if
//! missing or older than its sources, killed by PID when dropped; plus temp dirs, publishing
//! helpers and a tiny blocking HTTP client for its admin endpoints.

#![allow(dead_code)] // each test crate uses part of this

pub mod setup;

/// The root package's `hello` example as a self-upgrading server under test.
/// The hello end-to-end harness, shared by every fetcher crate.
// Only the hello_upgrade test uses it.
#[allow(unused_imports)]
pub use upshift_fetcher_conformance::hello;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

/// Lower-case hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A private directory under the system temp dir, removed on drop.
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "upshift-github-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TestDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The fixture binary, next to the test binary's profile dir (`target/<profile>/`), built first
/// when it is missing or older than its sources (`cargo test -p upshift-github` does not build
/// another package's binaries).
pub fn fixture_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    let deps = exe.parent().expect("test binary has a parent dir");
    let profile_dir = match deps.file_name().is_some_and(|n| n == "deps") {
        true => deps.parent().expect("deps has a parent"),
        false => deps,
    };
    let bin = profile_dir.join("upshift-github-fixture");
    static CHECKED: Mutex<bool> = Mutex::new(false);
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if !*checked {
        if fixture_is_stale(&bin) {
            build_fixture(profile_dir);
        }
        *checked = true;
    }
    assert!(
        bin.is_file(),
        "{} not found: build it with `cargo build -p upshift-github-fixture`",
        bin.display()
    );
    bin
}

fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/github")
}

fn fixture_is_stale(bin: &Path) -> bool {
    let Some(built) = mtime(bin) else {
        return true;
    };
    let root = fixture_root();
    let mut sources = vec![root.join("Cargo.toml")];
    for e in std::fs::read_dir(root.join("src"))
        .into_iter()
        .flatten()
        .flatten()
    {
        sources.push(e.path());
    }
    sources.iter().filter_map(|s| mtime(s)).any(|m| m > built)
}

fn build_fixture(profile_dir: &Path) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("-p")
        .arg("upshift-github-fixture");
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
    eprintln!("building the GitHub fixture: {cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn cargo to build the fixture");
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if let Some(st) = child.try_wait().expect("wait for cargo") {
            assert!(st.success(), "building upshift-github-fixture failed: {st}");
            return;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("building upshift-github-fixture took over 900 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One request as the fixture logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub origin: String,
    pub method: String,
    pub path: String,
    pub had_authorization: bool,
    pub if_none_match: bool,
    /// The `If-None-Match` value as sent.
    pub if_none_match_value: Option<String>,
    pub user_agent: Option<String>,
    pub status: u16,
    pub body_bytes: u64,
}

/// A running fixture process.
pub struct Fixture {
    child: Option<Child>,
    pub api: String,
    pub objects: String,
    api_addr: SocketAddr,
    objects_addr: SocketAddr,
    args: Vec<String>,
    data: PathBuf,
}

fn spawn(data: &Path, args: &[String]) -> Result<(Child, String, String), String> {
    let mut child = Command::new(fixture_binary())
        .arg("--data")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn the fixture: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first: Vec<String> = lines.by_ref().take(2).map_while(Result::ok).collect();
        let _ = tx.send(first);
        // Keep reading so the fixture never blocks on a full pipe.
        for _ in lines {}
    });
    let lines = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(lines) if lines.len() == 2 => lines,
        other => {
            let _ = child.kill();
            let status = child.wait().ok();
            return Err(format!(
                "the fixture did not announce itself: {other:?} ({status:?})"
            ));
        }
    };
    let url = |prefix: &str, line: &str| line.strip_prefix(prefix).map(str::to_string);
    match (url("api ", &lines[0]), url("objects ", &lines[1])) {
        (Some(api), Some(objects)) => Ok((child, api, objects)),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "unexpected first lines from the fixture: {lines:?}"
            ))
        }
    }
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("fixture URL {url}: {e}"))
}

impl Fixture {
    /// Starts a fixture serving `data`, with extra flags (`--rate-limit 3`, `--token T`).
    pub fn start(data: &Path, args: &[&str]) -> Fixture {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, api, objects) = spawn(data, &args).unwrap_or_else(|e| panic!("{e}"));
        Fixture {
            child: Some(child),
            api_addr: addr_of(&api),
            objects_addr: addr_of(&objects),
            api,
            objects,
            args,
            data: data.to_path_buf(),
        }
    }

    /// Kills the process (by PID) and waits for it: its ports refuse connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the process again on the same two ports (a fresh log and rate-limit window).
    pub fn restart(&mut self) {
        self.stop();
        let mut args = self.args.clone();
        args.extend([
            "--listen".to_string(),
            self.api_addr.to_string(),
            "--objects-listen".to_string(),
            self.objects_addr.to_string(),
        ]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match spawn(&self.data, &args) {
                Ok((child, _, _)) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() >= deadline => panic!("restarting the fixture: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// A request to an admin endpoint; panics unless it answers 200.
    pub fn admin(&self, method: &str, path_and_query: &str) -> String {
        let (status, body) = http(self.api_addr, method, path_and_query, &[]);
        assert_eq!(status, 200, "{method} {path_and_query}: {body}");
        body
    }

    /// Every request the fixture logged so far.
    pub fn log(&self) -> Vec<Logged> {
        self.admin("GET", "/_fixture/log")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("log line is JSON");
                Logged {
                    origin: v["origin"].as_str().unwrap_or_default().to_string(),
                    method: v["method"].as_str().unwrap_or_default().to_string(),
                    path: v["path"].as_str().unwrap_or_default().to_string(),
                    had_authorization: v["had_authorization"].as_bool().unwrap_or(false),
                    if_none_match: v["if_none_match"].as_bool().unwrap_or(false),
                    if_none_match_value: v["if_none_match_value"].as_str().map(str::to_string),
                    user_agent: v["user_agent"].as_str().map(str::to_string),
                    status: v["status"].as_u64().unwrap_or(0) as u16,
                    body_bytes: v["body_bytes"].as_u64().unwrap_or(0),
                }
            })
            .collect()
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A blocking HTTP/1.1 request (`Connection: close`), bounded by a 10 s socket timeout: the
/// status and the body as text. Headers as (name, value); a `User-Agent` unless they name one.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let (status, head, body) = http_full(addr, method, path_and_query, headers);
    let _ = head;
    (status, body)
}

/// Like [`http`], also returning the response head's header lines.
pub fn http_full(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.set_write_timeout(Some(Duration::from_secs(10))).ok();
    let mut req = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    // GitHub refuses a request without a User-Agent, and so does the fixture.
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
    {
        req.push_str("User-Agent: upshift-github-tests\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read from {addr}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let hdrs = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, hdrs, body.to_string())
}

/// A repository in the fixture's data dir, published into by writing files.
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn new(data: &Path, owner: &str, repo: &str) -> Repo {
        let dir = data.join(owner).join(repo).join("releases");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Repo { dir }
    }

    pub fn tag_dir(&self, tag: &str) -> PathBuf {
        let d = self.dir.join(tag);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        d
    }

    /// Writes `release.json` for `tag`.
    pub fn meta(&self, tag: &str, json: serde_json::Value) {
        write_atomically(
            &self.tag_dir(tag).join("release.json"),
            json.to_string().as_bytes(),
        );
    }

    /// Writes an asset (or marker) file of `tag`, atomically.
    pub fn file(&self, tag: &str, name: &str, bytes: &[u8]) {
        write_atomically(&self.tag_dir(tag).join(name), bytes);
    }

    pub fn remove_file(&self, tag: &str, name: &str) {
        remove_if_present(&self.dir.join(tag).join(name));
    }

    /// Publishes a whole release at once: its files are written into a dot directory (which the
    /// fixture ignores) and that is renamed to `tag`, so that no request ever sees the release
    /// with only some of its assets. `tag` must not be published yet.
    pub fn publish(&self, tag: &str, files: &[(&str, &[u8])]) {
        let staging = self.dir.join(format!(".{tag}.publishing"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", staging.display()));
        for (name, bytes) in files {
            let path = staging.join(name);
            std::fs::write(&path, bytes)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        let target = self.dir.join(tag);
        assert!(!target.exists(), "release {tag} is published already");
        std::fs::rename(&staging, &target)
            .unwrap_or_else(|e| panic!("rename to {}: {e}", target.display()));
    }

    pub fn remove_all(&self) {
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Writes `.<name>.tmp` (a dot file, which the fixture ignores) and renames it into place.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

pub fn remove_if_present(path: &Path) {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            panic!("remove {}: {e}", path.display())
        }
        _ => {}
    }
}
