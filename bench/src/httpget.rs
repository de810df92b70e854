//! A minimal HTTP/1.1 GET over a fresh connection (`Connection: close`), for readiness checks and
//! the publish→traffic prober. The server closes first, so the client's ports are not left in
//! TIME_WAIT at a thousand probes a second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use upshift_testkit::get;

pub struct Reply {
    pub status: u16,
    pub body: String,
}

pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Reply> {
    let mut s = get::connect(addr, timeout)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: upshift-bench\r\nConnection: close\r\n\r\n"
    )?;
    let reply = get::read_response(&mut s, "GET")?
        .ok_or_else(|| std::io::Error::other("connection closed before a response"))?;
    // Wait for the server's close, so that it, not this client, holds the TIME_WAIT.
    let _ = s.read_to_end(&mut Vec::new());
    Ok(Reply {
        status: reply.status,
        body: reply.text(),
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
    // The head, then exactly Content-Length bytes of body: the connection stays open.
    let reply = get::read_response(&mut s, "GET")
        .map_err(|e| e.to_string())?
        .ok_or("the connection closed before a full response")?;
    if reply.header("content-length").is_none() {
        return Err(format!("no Content-Length in {:?}", reply.headers));
    }
    let body = reply.text();
    let g = parse_greeting(&body).ok_or_else(|| format!("unexpected answer {body:?}"))?;
    Ok((g.pid, s))
}
