//! A minimal blocking HTTP/1.1 client, and the response parser the load generator shares.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Whether the response was HTTP/1.0 (close by default).
    pub http10: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the server will close the connection after this response.
    pub fn closes(&self) -> bool {
        match self.header("connection") {
            Some(v) => v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")),
            None => self.http10,
        }
    }

    /// The worker pid in a fixture body (`fixture pid N gen G exe PATH`).
    pub fn pid(&self) -> Option<u32> {
        body_field(&self.body, "pid")
    }

    pub fn generation(&self) -> Option<u32> {
        body_field(&self.body, "gen")
    }

    pub fn exe(&self) -> Option<&str> {
        let i = self.body.find(" exe ")?;
        Some(self.body[i + 5..].trim_end())
    }
}

pub fn body_field(body: &str, name: &str) -> Option<u32> {
    let mut words = body.split_whitespace();
    if words.next()? != "fixture" {
        return None;
    }
    while let Some(w) = words.next() {
        if w == name {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// Result of parsing a buffer that may hold a response.
#[derive(Debug)]
pub enum Parsed {
    Incomplete,
    /// The response and how many bytes of the buffer it used.
    Done(Response, usize),
}

/// Parses one response from the start of `buf`. `eof` says no more bytes will come (a response
/// without a length then ends at the end of the buffer).
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Parsed, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 64 * 1024 {
            Err("response head over 64 KiB".into())
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut resp = Response {
        status,
        headers,
        body: String::new(),
        http10: version == "HTTP/1.0",
    };
    let body_start = head_end + 4;
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut pos = body_start;
        let mut body = Vec::new();
        loop {
            let Some(line_end) = find(&buf[pos..], b"\r\n") else {
                return Ok(Parsed::Incomplete);
            };
            let size_str =
                std::str::from_utf8(&buf[pos..pos + line_end]).map_err(|_| "bad chunk size")?;
            let size_str = size_str.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_str, 16)
                .map_err(|_| format!("bad chunk size {size_str:?}"))?;
            pos += line_end + 2;
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    let Some(end) = find(&buf[pos..], b"\r\n") else {
                        return Ok(Parsed::Incomplete);
                    };
                    pos += end + 2;
                    if end == 0 {
                        break;
                    }
                }
                resp.body = String::from_utf8_lossy(&body).into_owned();
                return Ok(Parsed::Done(resp, pos));
            }
            if buf.len() < pos + size + 2 {
                return Ok(Parsed::Incomplete);
            }
            body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
    }
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    let len = if no_body {
        Some(0)
    } else {
        match resp.header("content-length") {
            Some(v) => Some(
                v.parse::<usize>()
                    .map_err(|_| format!("bad content-length {v:?}"))?,
            ),
            None => None,
        }
    };
    match len {
        Some(len) => {
            if buf.len() < body_start + len {
                return Ok(Parsed::Incomplete);
            }
            resp.body = String::from_utf8_lossy(&buf[body_start..body_start + len]).into_owned();
            Ok(Parsed::Done(resp, body_start + len))
        }
        None if eof => {
            resp.body = String::from_utf8_lossy(&buf[body_start..]).into_owned();
            Ok(Parsed::Done(resp, buf.len()))
        }
        None => Ok(Parsed::Incomplete),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn request_bytes(path: &str, close: bool) -> Vec<u8> {
    let conn = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: upshift-tests\r\n{conn}\r\n")
        .into_bytes()
}

enum SyncStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl SyncStream {
    fn connect(addr: &Addr, timeout: Duration) -> io::Result<SyncStream> {
        let s = match addr {
            Addr::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, Duration::from_secs(5))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                SyncStream::Tcp(s)
            }
            Addr::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                SyncStream::Unix(s)
            }
        };
        Ok(s)
    }
}

impl Read for SyncStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SyncStream::Tcp(s) => s.read(buf),
            SyncStream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for SyncStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SyncStream::Tcp(s) => s.write(buf),
            SyncStream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A blocking connection, reopened for the next request once a request or the server closed it.
pub struct Client {
    addr: Addr,
    timeout: Duration,
    conn: Option<(SyncStream, Vec<u8>)>,
    /// Connections opened so far.
    pub connects: u32,
}

impl Client {
    pub fn new(addr: &Addr) -> Client {
        Client {
            addr: addr.clone(),
            timeout: Duration::from_secs(15),
            conn: None,
            connects: 0,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// `GET path` with `Connection: close`.
    pub fn get_close(&mut self, path: &str) -> io::Result<Response> {
        self.request(path, true)
    }

    fn request(&mut self, path: &str, close: bool) -> io::Result<Response> {
        if self.conn.is_none() {
            self.conn = Some((SyncStream::connect(&self.addr, self.timeout)?, Vec::new()));
            self.connects += 1;
        }
        let (stream, buf) = self.conn.as_mut().unwrap();
        let result = (|| {
            stream.write_all(&request_bytes(path, close))?;
            read_response_sync(stream, buf)
        })();
        match result {
            Ok(resp) => {
                if close || resp.closes() {
                    self.conn = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

fn read_response_sync(stream: &mut SyncStream, buf: &mut Vec<u8>) -> io::Result<Response> {
    let mut chunk = [0u8; 8192];
    let mut eof = false;
    loop {
        match parse_response(buf, eof).map_err(io::Error::other)? {
            Parsed::Done(resp, used) => {
                buf.drain(..used);
                return Ok(resp);
            }
            Parsed::Incomplete if eof => {
                let what = if buf.is_empty() {
                    "before any byte of the response"
                } else {
                    "within the response"
                };
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed {what}"),
                ));
            }
            Parsed::Incomplete => {}
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            eof = true;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One `GET path` on a new connection, with `Connection: close`.
pub fn get(addr: &Addr, path: &str) -> io::Result<Response> {
    Client::new(addr).get_close(path)
}

/// Like [`get`] with a custom read timeout.
pub fn get_timeout(addr: &Addr, path: &str, timeout: Duration) -> io::Result<Response> {
    Client::new(addr).with_timeout(timeout).get_close(path)
}

/// Whether a TCP connect to `addr` is refused right now.
pub fn connect_refused(addr: &Addr) -> bool {
    match addr {
        Addr::Tcp(a) => matches!(
            TcpStream::connect_timeout(a, Duration::from_secs(2)),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
        ),
        Addr::Unix(p) => UnixStream::connect(p).is_err(),
    }
}

/// Runs `GET path` on a thread (a new connection), returning a handle to join.
pub fn get_in_thread(
    addr: &Addr,
    path: &str,
    timeout: Duration,
) -> JoinHandle<io::Result<Response>> {
    let addr = addr.clone();
    let path = path.to_string();
    std::thread::spawn(move || get_timeout(&addr, &path, timeout))
}
