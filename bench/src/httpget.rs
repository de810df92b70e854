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

/// `hello from <BUILD_ID> pid <pid> gen <n>`, as the `hello` example answers.
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
        _ => None,
    }
}
