//! The GitHub REST fixture server (`fixtures/github`) as a child process on 127.0.0.1: its three
//! origins (API, objects, uploads) read from its first lines, its request log read from its admin
//! endpoint, killed by PID on drop. Started from [`crate::builds::fixture_binary`], or from any
//! binary (the fixture's own tests run theirs).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::get;
use crate::procs::ChildGuard;

/// One request as the fixture logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// `api`, `objects` or `uploads`.
    pub origin: String,
    pub method: String,
    pub path: String,
    pub had_authorization: bool,
    pub if_none_match: bool,
    /// The `If-None-Match` value as sent.
    pub if_none_match_value: Option<String>,
    pub user_agent: Option<String>,
    pub status: u16,
    /// Bytes of the response body sent.
    pub body_bytes: u64,
    /// Bytes of the request body received.
    pub request_bytes: u64,
}

/// A running fixture.
pub struct Fixture {
    child: ChildGuard,
    /// `http://<addr>` of each origin.
    pub api: String,
    pub objects: String,
    pub uploads: String,
    api_addr: SocketAddr,
    objects_addr: SocketAddr,
    uploads_addr: SocketAddr,
    binary: PathBuf,
    args: Vec<String>,
    data: PathBuf,
}

/// `binary --data <data> <args>`: stdout piped (for [`read_origins`]), stdin closed, stderr
/// inherited (the bench redirects it).
pub fn command(binary: &Path, data: &Path, args: &[String]) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg("--data")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// Reads the three origins the fixture announces on its first lines (at most 20 s): `http://`
/// URLs of its API, objects and uploads hosts. A thread keeps reading the rest so that the
/// fixture never blocks on a full pipe.
pub fn read_origins(stdout: ChildStdout) -> Result<[String; 3], String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first: Vec<String> = lines.by_ref().take(3).map_while(Result::ok).collect();
        let _ = tx.send(first);
        // Keep reading so the fixture never blocks on a full pipe.
        for _ in lines {}
    });
    let lines = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(lines) if lines.len() == 3 => lines,
        other => return Err(format!("the fixture did not announce itself: {other:?}")),
    };
    let origin = |i: usize, prefix: &str| {
        lines[i]
            .strip_prefix(prefix)
            .map(str::to_string)
            .ok_or_else(|| format!("unexpected first lines from the fixture: {lines:?}"))
    };
    Ok([
        origin(0, "api ")?,
        origin(1, "objects ")?,
        origin(2, "uploads ")?,
    ])
}

/// Starts `binary --data <data> <args>` and reads its three origins (at most 20 s).
fn spawn(binary: &Path, data: &Path, args: &[String]) -> Result<(ChildGuard, [String; 3]), String> {
    let mut child = ChildGuard::new(
        command(binary, data, args)
            .spawn()
            .map_err(|e| format!("spawn the fixture {}: {e}", binary.display()))?,
    );
    let stdout = child.stdout().ok_or("the fixture has no stdout pipe")?;
    Ok((child, read_origins(stdout)?))
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("fixture URL {url}: {e}"))
}

impl Fixture {
    /// Starts the workspace's fixture (built first if need be) serving `data`, with extra flags
    /// (`--rate-limit 3`, `--token T`).
    pub fn start(data: &Path, args: &[&str]) -> Fixture {
        Fixture::start_binary(&crate::builds::fixture_binary(), data, args)
    }

    /// Like [`Fixture::start`], from `binary`.
    pub fn start_binary(binary: &Path, data: &Path, args: &[&str]) -> Fixture {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, [api, objects, uploads]) =
            spawn(binary, data, &args).unwrap_or_else(|e| panic!("{e}"));
        Fixture {
            child,
            api_addr: addr_of(&api),
            objects_addr: addr_of(&objects),
            uploads_addr: addr_of(&uploads),
            api,
            objects,
            uploads,
            binary: binary.to_path_buf(),
            args,
            data: data.to_path_buf(),
        }
    }

    /// Kills the process (by PID) and waits for it: its ports refuse connections.
    pub fn stop(&mut self) {
        self.child.kill();
    }

    /// Whether it was not stopped (see [`Fixture::stop`]).
    pub fn is_running(&self) -> bool {
        self.child.pid().is_some()
    }

    /// Starts the process again on the same three ports (a fresh log and rate-limit window).
    pub fn restart(&mut self) {
        self.stop();
        let mut args = self.args.clone();
        args.extend([
            "--listen".to_string(),
            self.api_addr.to_string(),
            "--objects-listen".to_string(),
            self.objects_addr.to_string(),
            "--uploads-listen".to_string(),
            self.uploads_addr.to_string(),
        ]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match spawn(&self.binary, &self.data, &args) {
                Ok((child, _)) => {
                    self.child = child;
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
                    request_bytes: v["request_bytes"].as_u64().unwrap_or(0),
                }
            })
            .collect()
    }

    /// The API origin's address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The objects (downloads) origin's address.
    pub fn objects_addr(&self) -> SocketAddr {
        self.objects_addr
    }

    /// The uploads origin's address.
    pub fn uploads_addr(&self) -> SocketAddr {
        self.uploads_addr
    }
}

/// A request without a body (`Connection: close`, 10 s bounds), with a `User-Agent` unless
/// `headers` name one (GitHub refuses a request without, and so does the fixture): the status
/// and the body as text. Panics on a transport error.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path_and_query, headers);
    (status, body)
}

/// Like [`http`], also returning the response's headers (lower-case names).
pub fn http_full(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut all: Vec<(&str, &str)> = Vec::with_capacity(headers.len() + 1);
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
    {
        all.push(("User-Agent", "upshift-tests"));
    }
    all.extend_from_slice(headers);
    let r = get::must(addr, method, path_and_query, &all, b"");
    let body = r.text();
    (r.status, r.headers, body)
}
