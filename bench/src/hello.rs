//! One `hello` server under test: its master process (a [`Guard`]), its address and its log.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::httpget::{self, Greeting};
use crate::procs::{self, Guard};

/// How long a started server may take to answer its first request.
const START_LIMIT: Duration = Duration::from_secs(20);
/// SIGTERM drains; hello's default drain timeout is 30 s, so give it a little more.
const STOP_GRACE: Duration = Duration::from_secs(40);

pub struct Server {
    guard: Guard,
    pub addr: SocketAddr,
    pub log: PathBuf,
    /// The directory the binary runs from: whatever still runs from it after the master is
    /// stopped is a leftover.
    dir: PathBuf,
}

/// What stopping the server found.
pub struct Stopped {
    pub status: Option<ExitStatus>,
    /// The master had to be SIGKILLed.
    pub killed: bool,
    /// Processes still running from the server's directory after the master exited (killed).
    pub leftovers: Vec<u32>,
}

/// What [`Server::start_with`] adds to [`Server::start`].
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Extra environment, set last: credentials, `RUST_LOG`, `UPSHIFT_DISABLE`.
    pub env: Vec<(String, String)>,
    /// This address instead of a free port: a server started again where the last one listened.
    pub addr: Option<SocketAddr>,
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16, String> {
    let l =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind 127.0.0.1:0: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

impl Server {
    /// Starts `exe --listen 127.0.0.1:<free port> <extra...>` with its stdout and stderr in `log`,
    /// and waits for its first `200` answer. Retries on another port if the first was taken.
    pub fn start(exe: &Path, extra: &[String], log: &Path) -> Result<Server, String> {
        Server::start_with(exe, extra, log, &Launch::default())
    }

    /// [`Server::start`] with extra environment and, optionally, a fixed address.
    pub fn start_with(
        exe: &Path,
        extra: &[String],
        log: &Path,
        launch: &Launch,
    ) -> Result<Server, String> {
        let dir = exe
            .parent()
            .ok_or("the server binary has no directory")?
            .to_path_buf();
        let mut last_err = String::new();
        for _attempt in 0..3 {
            let addr: SocketAddr = match launch.addr {
                Some(a) => a,
                None => ([127, 0, 0, 1], free_port()?).into(),
            };
            let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
            let err = out.try_clone().map_err(|e| e.to_string())?;
            let mut cmd = Command::new(exe);
            cmd.arg("--listen")
                .arg(addr.to_string())
                .args(extra)
                .current_dir(&dir)
                .env("NO_COLOR", "1")
                .env("RUST_LOG", "info")
                .env_remove("UPSHIFT_DISABLE")
                .envs(launch.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err));
            let guard =
                Guard::spawn(&mut cmd, "hello master", STOP_GRACE).map_err(|e| e.to_string())?;
            let mut server = Server {
                guard,
                addr,
                log: log.to_path_buf(),
                dir: dir.clone(),
            };
            let until = Instant::now() + START_LIMIT;
            loop {
                if let Some(st) = server.guard.try_wait() {
                    last_err = format!(
                        "{} exited with {st} before answering; log:\n{}",
                        exe.display(),
                        tail(log, 20)
                    );
                    break;
                }
                if let Ok(g) = server.greet() {
                    eprintln!(
                        "upshift-bench: {} serving on {addr}: master pid {}, {} pid {} gen {}",
                        exe.display(),
                        server.master_pid(),
                        g.build,
                        g.pid,
                        g.generation
                    );
                    return Ok(server);
                }
                if Instant::now() >= until || procs::interrupted() {
                    last_err = format!(
                        "{} did not answer on {addr} within {START_LIMIT:?}; log:\n{}",
                        exe.display(),
                        tail(log, 20)
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            server.stop();
            if !std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains("in use")
            {
                break;
            }
        }
        Err(last_err)
    }

    pub fn master_pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Whether the master process is still running (not exited).
    pub fn master_alive(&mut self) -> bool {
        self.guard.try_wait().is_none()
    }

    /// One `GET /` on a fresh connection, parsed.
    pub fn greet(&self) -> Result<Greeting, String> {
        let reply =
            httpget::get(self.addr, "/", Duration::from_secs(2)).map_err(|e| e.to_string())?;
        if reply.status != 200 {
            return Err(format!("status {}: {}", reply.status, reply.body.trim()));
        }
        httpget::parse_greeting(&reply.body)
            .ok_or_else(|| format!("unexpected answer {:?}", reply.body))
    }

    /// Asks every 50 ms until an answer satisfies `done` or `limit` passes; returns the last answer.
    pub fn greet_until(
        &self,
        limit: Duration,
        done: impl Fn(&Greeting) -> bool,
    ) -> Option<Greeting> {
        let until = Instant::now() + limit;
        let mut last = None;
        loop {
            if let Ok(g) = self.greet() {
                let ok = done(&g);
                last = Some(g);
                if ok {
                    return last;
                }
            }
            if Instant::now() >= until || procs::interrupted() {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to the master (SIGKILL after a grace period), then SIGKILL to anything still
    /// running from its directory.
    pub fn stop(&mut self) -> Stopped {
        let (status, killed) = self.guard.stop();
        // Workers drain and exit with the master; give stragglers a moment before calling them so.
        let until = Instant::now() + Duration::from_secs(5);
        while !procs::processes_running_from(&self.dir).is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        let leftovers = procs::kill_leftovers(&self.dir);
        Stopped {
            status,
            killed,
            leftovers,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The WARN and ERROR lines of a server log.
pub fn log_problems(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
        .collect()
}

/// The log lines containing `needle`.
pub fn log_lines(log: &Path, needle: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains(needle))
        .collect()
}

pub fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(strip_ansi).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The first log line containing `needle`, without its timestamp, level and target, and with
/// sha256 digests cut to 12 digits.
pub fn log_first(log: &Path, needle: &str) -> Option<String> {
    log_lines(log, needle).into_iter().next().map(|l| {
        let t = l.split_once("  ").map_or(l.as_str(), |(_, r)| r).trim();
        let t = t.split_once(": ").map_or(t, |(_, r)| r);
        shorten_digests(t).chars().take(300).collect()
    })
}

/// `sha256:<64 hex>` → `sha256:<12 hex>…`: log lines stay readable in a table.
fn shorten_digests(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    for c in s.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        if run.len() == 64 {
            out.push_str(&run[..12]);
            out.push('…');
        } else {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}
