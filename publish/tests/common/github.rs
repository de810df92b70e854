//! The GitHub REST fixture server (`fixtures/github`) as a child process on 127.0.0.1: built
//! when missing or older than its sources, its three origins read from its first lines, killed
//! by PID on drop. Like the harness in `fetchers/github/tests/common`, with this crate's paths.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// `target/<profile>` of this test binary.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test binary dir");
    match deps.file_name().is_some_and(|n| n == "deps") {
        true => deps.parent().expect("profile dir").to_path_buf(),
        false => deps.to_path_buf(),
    }
}

fn is_stale(bin: &Path) -> bool {
    let Some(built) = mtime(bin) else {
        return true;
    };
    let root = workspace().join("fixtures/github");
    let mut dirs = vec![root.join("src")];
    let mut sources = vec![root.join("Cargo.toml")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.path().is_dir() {
                true => dirs.push(e.path()),
                false => sources.push(e.path()),
            }
        }
    }
    sources.iter().filter_map(|s| mtime(s)).any(|m| m > built)
}

/// The fixture binary, built first if needed (`cargo test -p upshift-publish` does not build
/// another package's binaries).
pub fn fixture_binary() -> PathBuf {
    static CHECKED: Mutex<bool> = Mutex::new(false);
    let profile = profile_dir();
    let bin = profile.join("upshift-github-fixture");
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if !*checked {
        if is_stale(&bin) {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.arg("build")
                .arg("--manifest-path")
                .arg(workspace().join("Cargo.toml"))
                .args(["-p", "upshift-github-fixture"]);
            match profile.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => {}
                Some("release") => {
                    cmd.arg("--release");
                }
                Some(other) => {
                    cmd.arg("--profile").arg(other);
                }
            }
            if let Some(target_dir) = profile.parent() {
                cmd.arg("--target-dir").arg(target_dir);
            }
            let mut child = cmd.stdin(Stdio::null()).spawn().expect("spawn cargo");
            let deadline = Instant::now() + Duration::from_secs(900);
            loop {
                if let Some(st) = child.try_wait().expect("wait for cargo") {
                    assert!(st.success(), "building the GitHub fixture failed: {st}");
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("building the GitHub fixture took over 900 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        *checked = true;
    }
    bin
}

/// One request as the fixture logged it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub origin: String,
    pub method: String,
    pub path: String,
    pub had_authorization: bool,
    pub status: u16,
    pub request_bytes: u64,
}

/// A running fixture.
pub struct Fixture {
    child: Child,
    pub api: String,
    pub objects: String,
    pub uploads: String,
    api_addr: SocketAddr,
}

impl Fixture {
    /// Serves `data` (creating `data/<owner>/<repo>` for each of `repos`), with extra flags.
    pub fn start(data: &Path, repos: &[&str], args: &[&str]) -> Fixture {
        for repo in repos {
            std::fs::create_dir_all(data.join(repo)).expect("mkdir repo");
        }
        let mut child = Command::new(fixture_binary())
            .arg("--data")
            .arg(data)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the GitHub fixture");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first: Vec<String> = lines.by_ref().take(3).map_while(Result::ok).collect();
            let _ = tx.send(first);
            for _ in lines {}
        });
        let lines = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) if l.len() == 3 => l,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the GitHub fixture did not announce its origins: {other:?}");
            }
        };
        let origin = |i: usize, prefix: &str| {
            lines[i]
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("unexpected line {:?}", lines[i]))
                .to_string()
        };
        let (api, objects, uploads) = (
            origin(0, "api "),
            origin(1, "objects "),
            origin(2, "uploads "),
        );
        let api_addr = api
            .trim_start_matches("http://")
            .parse()
            .expect("api address");
        Fixture {
            child,
            api,
            objects,
            uploads,
            api_addr,
        }
    }

    /// A request to an admin endpoint, which must answer 200.
    pub fn admin(&self, method: &str, path_and_query: &str) -> String {
        let (status, body) = http(self.api_addr, method, path_and_query);
        assert_eq!(status, 200, "{method} {path_and_query}: {body}");
        body
    }

    /// Every request logged so far.
    pub fn log(&self) -> Vec<Logged> {
        self.admin("GET", "/_fixture/log")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("log line");
                Logged {
                    origin: v["origin"].as_str().unwrap_or_default().to_string(),
                    method: v["method"].as_str().unwrap_or_default().to_string(),
                    path: v["path"].as_str().unwrap_or_default().to_string(),
                    had_authorization: v["had_authorization"].as_bool().unwrap_or(false),
                    status: v["status"].as_u64().unwrap_or(0) as u16,
                    request_bytes: v["request_bytes"].as_u64().unwrap_or(0),
                }
            })
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP/1.1 request with no body, bounded by 10 s socket timeouts.
pub fn http(addr: SocketAddr, method: &str, path_and_query: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let req = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}
