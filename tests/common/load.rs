//! The load generator: many client connections on a tokio runtime of their own, counting every
//! kind of failure, and the report they produce.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{parse_response, request_bytes, Addr, Parsed, Response};

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
