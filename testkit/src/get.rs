//! A tiny blocking HTTP/1.1 client on `std` only: the one copy of raw-response parsing, for the
//! load client ([`crate::load`]) and for the requests tests make to their servers (the GitHub
//! fixture's API and admin endpoints).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long [`request`] waits to connect, and for each read and write.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A complete HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The header lines as (lower-case name, trimmed value), in order.
    pub headers: Vec<(String, String)>,
    /// Whether the server closes the connection after this response.
    pub closes: bool,
    /// The body as sent (no transfer decoding: the servers under test send `Content-Length`).
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses a response head (status line and headers, up to the blank line).
pub fn parse_head(head: &str) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers))
}

/// Reads one response to a `method` request from `conn`: `None` if the connection closed before
/// its first byte. The body is `Content-Length` bytes, or everything up to EOF without one; a
/// `HEAD`, `204` or `304` has none.
pub fn read_response(conn: &mut impl Read, method: &str) -> io::Result<Option<Response>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return match buf.is_empty() {
                true => Ok(None),
                false => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed within a response head",
                )),
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let (status, headers) = parse_head(&String::from_utf8_lossy(&buf[..head_end]))?;
    let mut response = Response {
        status,
        headers,
        closes: false,
        body: buf[head_end..].to_vec(),
    };
    let closes = response
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let length = response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    let bodiless = method.eq_ignore_ascii_case("HEAD") || matches!(status, 204 | 304);
    match length {
        _ if bodiless => response.body.clear(),
        Some(len) => {
            while response.body.len() < len {
                let n = conn.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed within a response body",
                    ));
                }
                response.body.extend_from_slice(&chunk[..n]);
            }
            response.body.truncate(len);
        }
        None => {
            conn.read_to_end(&mut response.body)?;
        }
    }
    response.closes = closes || (length.is_none() && !bodiless);
    Ok(Some(response))
}

/// A connection to `addr` with `timeout` to connect and on every read and write.
pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let conn = TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// One request on a new connection (`Connection: close`, `Content-Length` of `body`, and
/// `headers` as given), bounded by [`TIMEOUT`]; its response.
///
/// ```no_run
/// let addr = "127.0.0.1:8080".parse().unwrap();
/// let r = upshift_testkit::get::request(addr, "GET", "/", &[("User-Agent", "t")], b"").unwrap();
/// assert_eq!(r.status, 200);
/// ```
pub fn request(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut conn = connect(addr, TIMEOUT)?;
    let mut head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    read_response(&mut conn, method)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{addr} closed the connection before answering {method} {path_and_query}"),
        )
    })
}

/// [`request`] for tests: panics (naming the request) on a transport error.
pub fn must(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    request(addr, method, path_and_query, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path_and_query} on {addr}: {e}"))
}
