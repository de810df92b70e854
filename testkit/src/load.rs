//! The load client: `GET /` against `hello`, one greeting at a time ([`greet`]) or continually on
//! a kept-alive connection ([`Poller`]), every failure recorded.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::get::{connect, read_response};

/// One answer of `GET /`: `hello from <BUILD_ID> pid <pid> gen <n>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub build_id: String,
    pub pid: u32,
    pub generation: u64,
}

/// Parses a greeting (with its final newline); `None` if `body` is anything else.
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

/// `GET /` on a new connection (`Connection: close`), which must answer 200 with a greeting.
pub fn greet(addr: SocketAddr) -> Result<Greeting, String> {
    let mut conn = connect(addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    match read_response(&mut conn, "GET") {
        Ok(Some(r)) if r.status == 200 => {
            parse_greeting(&r.text()).ok_or_else(|| format!("malformed greeting {:?}", r.text()))
        }
        Ok(Some(r)) => Err(format!("status {} body {:?}", r.status, r.text())),
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
    let response = match read_response(stream, "GET") {
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
            response.status,
            response.text()
        ));
    }
    let body = response.text();
    parse_greeting(&body).ok_or_else(|| format!("malformed greeting {body:?}"))
}
