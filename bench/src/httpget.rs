//! A minimal HTTP/1.1 GET over a fresh connection (`Connection: close`), for readiness checks and
//! the publish→traffic prober. The server closes first, so the client's ports are not left in
//! TIME_WAIT at a thousand probes a second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct Reply {
    pub status: u16,
    pub body: String,
}

pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: upshift-bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::with_capacity(512);
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("incomplete response: {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    Ok(Reply {
        status,
        body: body.to_string(),
    })
}

/// `hello from <BUILD_ID> pid <pid> gen <n>`, as the `hello` example answers (or the `fixture`
/// example's `fixture pid <pid> gen <n> build <stamp> exe <path>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Greeting {
    pub build: String,
    pub pid: u32,
    pub generation: u64,
}

pub fn parse_greeting(body: &str) -> Option<Greeting> {
    let w: Vec<&str> = body.split_whitespace().collect();
    match w.as_slice() {
        ["hello", "from", build, "pid", pid, "gen", generation] => Some(Greeting {
            build: build.to_string(),
            pid: pid.parse().ok()?,
            generation: generation.parse().ok()?,
        }),
        ["fixture", "pid", pid, "gen", generation, "build", build, "exe", ..] => Some(Greeting {
            build: build.to_string(),
            pid: pid.parse().ok()?,
            generation: generation.parse().ok()?,
        }),
        _ => None,
    }
}

/// One `GET /` on a connection that is then kept open (HTTP/1.1 keep-alive): the pid of the
/// worker that answered and the idle connection, which that worker must close when it drains.
pub fn keep_alive(addr: SocketAddr) -> Result<(u32, TcpStream), String> {
    let timeout = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: upshift-bench\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    // Read the head, then exactly Content-Length bytes of body: the connection stays open.
    loop {
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed before a full response".into());
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| format!("no Content-Length in {head:?}"))?;
        if body.len() >= len {
            let g = parse_greeting(body).ok_or_else(|| format!("unexpected answer {body:?}"))?;
            return Ok((g.pid, s));
        }
    }
}
