//! A small HTTP/1.1 proxy in front of s3s-fs (which keeps no access log): it forwards each
//! request unchanged (SigV4 signatures stay valid), records every exchange with its response's
//! header and body bytes, and injects faults: 404, 500, stalls, refused connections and a GET of
//! the release that announces more bytes than it sends.
//!
//! It frames messages itself (Content-Length, chunked, HEAD), which is all the fetcher's hyper
//! client needs: one request at a time per connection, no pipelining.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::task::{AbortHandle, JoinHandle};

/// What the proxy does with the requests it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward to the server.
    Pass,
    /// Answer 404 `NoSuchKey` to everything.
    NotFound,
    /// Answer 500 `InternalError` to everything.
    ServerError,
    /// Answer 503 `SlowDown` to everything, as S3 does when throttling.
    SlowDown,
    /// Read the request, never answer.
    Slow,
    /// Not listening: connections are refused.
    Refused,
    /// GETs of a `.sha256` object are answered with a chunked body (no Content-Length) of up to
    /// [`ENDLESS`] bytes, until the client hangs up; everything else is forwarded.
    EndlessSidecar,
}

/// How much an [`Mode::EndlessSidecar`] answer sends at most.
pub const ENDLESS: u64 = 64 << 20;

/// One request and its response, as seen on the wire.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    /// The request target without its query.
    pub path: String,
    pub query: String,
    pub status: u16,
    /// The request's bytes (head and body).
    pub request_bytes: u64,
    /// The response head's bytes (status line and headers).
    pub response_head_bytes: u64,
    /// The response body's bytes as sent (for a transfer cut short, what was sent of it).
    pub body_bytes: u64,
    /// When the request had been read (head and body).
    pub started: std::time::SystemTime,
    /// When the exchange ended: the response sent, or the transfer cut.
    pub finished: std::time::SystemTime,
}

struct Shared {
    mode: Mutex<Mode>,
    /// `Some(claimed)`: GETs of the release announce `claimed` bytes, then the connection closes
    /// after the real body.
    truncate: Mutex<Option<u64>>,
    log: Mutex<Vec<Exchange>>,
    conns: Mutex<Vec<AbortHandle>>,
    /// Exchanges begun and not yet logged.
    in_flight: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Proxy {
    handle: Handle,
    addr: SocketAddr,
    upstream: SocketAddr,
    object_path: String,
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`; `bucket`/`key` name the
    /// release, whose GET body bytes [`Proxy::release_body_bytes`] counts.
    pub fn start(handle: Handle, upstream: SocketAddr, bucket: &str, key: &str) -> Proxy {
        let mut proxy = Proxy {
            handle,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream,
            object_path: format!("/{bucket}/{key}"),
            shared: Arc::new(Shared {
                mode: Mutex::new(Mode::Pass),
                truncate: Mutex::new(None),
                log: Mutex::new(Vec::new()),
                conns: Mutex::new(Vec::new()),
                in_flight: AtomicUsize::new(0),
            }),
            accept: Mutex::new(None),
        };
        proxy.addr = proxy.listen();
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Binds `self.addr` (again, after a refusal) and starts accepting.
    fn listen(&self) -> SocketAddr {
        let _rt = self.handle.enter();
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(self.addr)
            .unwrap_or_else(|e| panic!("proxy bind {}: {e}", self.addr));
        let listener = socket.listen(128).expect("listen");
        let addr = listener.local_addr().expect("local addr");
        let shared = self.shared.clone();
        let upstream = self.upstream;
        let object_path = self.object_path.clone();
        let task = self.handle.spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let task = tokio::spawn(serve(conn, shared.clone(), upstream, object_path.clone()));
                let mut conns = lock(&shared.conns);
                conns.retain(|h| !h.is_finished());
                conns.push(task.abort_handle());
            }
        });
        *lock(&self.accept) = Some(task);
        addr
    }

    fn close_connections(&self) {
        for h in lock(&self.shared.conns).drain(..) {
            h.abort();
        }
    }

    fn stop_listening(&self) {
        if let Some(task) = lock(&self.accept).take() {
            task.abort();
        }
    }

    /// Switches the mode. Refusing closes the listener and every connection; leaving a refusal
    /// listens again on the same port; leaving a stall closes the stalled connections.
    pub fn set_mode(&self, mode: Mode) {
        let previous = std::mem::replace(&mut *lock(&self.shared.mode), mode);
        if mode == Mode::Refused {
            self.stop_listening();
            self.close_connections();
            // Let the aborted tasks drop their sockets before anyone connects.
            std::thread::sleep(Duration::from_millis(50));
        } else if previous == Mode::Refused {
            self.listen();
        } else if previous == Mode::Slow {
            self.close_connections();
        }
    }

    /// GETs of the release announce `claimed` bytes from now on (`None`: as served).
    pub fn truncate(&self, claimed: Option<u64>) {
        *lock(&self.shared.truncate) = claimed;
    }

    /// Waits (up to 2 s) until no exchange is in progress: a client may have its whole response
    /// a moment before the proxy logs it.
    fn settle(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.shared.in_flight.load(Ordering::Acquire) > 0
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Every exchange so far, once those in progress are done (or 2 s passed).
    pub fn log(&self) -> Vec<Exchange> {
        self.settle();
        self.log_now()
    }

    /// The exchanges logged so far, without waiting for those in progress.
    pub fn log_now(&self) -> Vec<Exchange> {
        lock(&self.shared.log).clone()
    }

    /// Body bytes of GETs of the release object itself (not its sidecars).
    pub fn release_body_bytes(&self) -> u64 {
        self.log()
            .iter()
            .filter(|e| e.method == "GET" && e.path == self.object_path)
            .map(|e| e.body_bytes)
            .sum()
    }

    pub fn requests(&self) -> u64 {
        self.log().len() as u64
    }

    pub fn shutdown(&self) {
        self.stop_listening();
        self.close_connections();
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    content_length: u64,
}

struct Response {
    status: u16,
    content_length: Option<u64>,
    chunked: bool,
    close: bool,
}

const MAX_HEAD: usize = 64 * 1024;

/// Reads one message head (through the empty line); `None` at a clean end of stream.
async fn read_head<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = r.read_until(b'\n', &mut head).await?;
        if n == 0 {
            return match head.is_empty() {
                true => Ok(None),
                false => Err(io::ErrorKind::UnexpectedEof.into()),
            };
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            // Skip stray empty lines before a request line.
            if before == 0 {
                head.clear();
                continue;
            }
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::other("message head too long"));
        }
    }
}

fn headers(head: &str) -> impl Iterator<Item = (String, &str)> {
    head.lines().skip(1).filter_map(|l| {
        let (name, value) = l.split_once(':')?;
        Some((name.trim().to_ascii_lowercase(), value.trim()))
    })
}

fn parse_request(head: &[u8]) -> io::Result<Request> {
    let text = String::from_utf8_lossy(head);
    let mut first = text.lines().next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let content_length = headers(&text)
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    Ok(Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        content_length,
    })
}

fn parse_response(head: &[u8]) -> io::Result<Response> {
    let text = String::from_utf8_lossy(head);
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("bad status line"))?;
    let mut response = Response {
        status,
        content_length: None,
        chunked: false,
        close: false,
    };
    for (name, value) in headers(&text) {
        match name.as_str() {
            "content-length" => response.content_length = value.parse().ok(),
            "transfer-encoding" => {
                response.chunked = value.to_ascii_lowercase().contains("chunked")
            }
            "connection" => response.close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    Ok(response)
}

/// The head with its Content-Length replaced by `len`.
fn with_content_length(head: &[u8], len: u64) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split_inclusive("\r\n") {
        match line.split_once(':') {
            Some((name, _)) if name.trim().eq_ignore_ascii_case("content-length") => {
                out.push_str(&format!("content-length: {len}\r\n"))
            }
            _ => out.push_str(line),
        }
    }
    out.into_bytes()
}

fn canned(method: &str, status: &str, code: &str, message: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nx-amz-request-id: proxy-injected\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        out.push_str(&body);
    }
    out.into_bytes()
}

async fn copy_exact<R, W>(from: &mut R, to: &mut W, n: u64) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let copied = tokio::io::copy(&mut from.take(n), to).await?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(copied)
}

/// Copies a chunked body through, framing included.
async fn copy_chunked<R, W>(from: &mut BufReader<R>, to: &mut W) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut data = 0;
    loop {
        let mut line = Vec::new();
        if from.read_until(b'\n', &mut line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        to.write_all(&line).await?;
        let text = String::from_utf8_lossy(&line);
        let size = text.trim().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size, 16).map_err(|_| io::Error::other("bad chunk size"))?;
        if size == 0 {
            // Trailers, through the empty line.
            loop {
                let mut line = Vec::new();
                if from.read_until(b'\n', &mut line).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                to.write_all(&line).await?;
                if line == b"\r\n" || line == b"\n" {
                    return Ok(data);
                }
            }
        }
        data += copy_exact(from, to, size).await?;
        let mut crlf = Vec::new();
        from.read_until(b'\n', &mut crlf).await?;
        to.write_all(&crlf).await?;
    }
}

/// One exchange in progress: logged when dropped, however the exchange ends (complete, cut
/// short, the connection aborted).
struct InFlight {
    shared: Arc<Shared>,
    exchange: Exchange,
    body: Arc<AtomicU64>,
}

impl InFlight {
    fn new(shared: &Arc<Shared>, req: &Request, request_bytes: u64) -> InFlight {
        shared.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            shared: shared.clone(),
            exchange: Exchange {
                method: req.method.clone(),
                path: req.path.clone(),
                query: req.query.clone(),
                status: 0,
                request_bytes,
                response_head_bytes: 0,
                body_bytes: 0,
                started: std::time::SystemTime::now(),
                finished: std::time::SystemTime::UNIX_EPOCH,
            },
            body: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.exchange.body_bytes = self.body.load(Ordering::Acquire);
        self.exchange.finished = std::time::SystemTime::now();
        lock(&self.shared.log).push(self.exchange.clone());
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts what is written through it.
struct Counting<'a, W> {
    inner: &'a mut W,
    n: Arc<AtomicU64>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<'_, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = std::pin::Pin::new(&mut *this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &poll {
            this.n.fetch_add(*n as u64, Ordering::AcqRel);
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

async fn serve(
    conn: TcpStream,
    shared: Arc<Shared>,
    upstream: SocketAddr,
    object_path: String,
) -> io::Result<()> {
    let mut client = BufReader::new(conn);
    let mut server: Option<BufReader<TcpStream>> = None;
    loop {
        let Some(head) = read_head(&mut client).await? else {
            return Ok(());
        };
        let req = parse_request(&head)?;
        let mut body = Vec::new();
        (&mut client)
            .take(req.content_length)
            .read_to_end(&mut body)
            .await?;
        let request_bytes = (head.len() + body.len()) as u64;
        let mode = *lock(&shared.mode);
        if mode == Mode::EndlessSidecar && req.method == "GET" && req.path.ends_with(".sha256") {
            let mut exchange = InFlight::new(&shared, &req, request_bytes);
            let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
            exchange.exchange.status = 200;
            exchange.exchange.response_head_bytes = head.len() as u64;
            client.get_mut().write_all(head).await?;
            let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "a".repeat(64 << 10));
            let mut out = Counting {
                inner: client.get_mut(),
                n: exchange.body.clone(),
            };
            for _ in 0..ENDLESS / (64 << 10) {
                out.write_all(chunk.as_bytes()).await?;
            }
            out.write_all(b"0\r\n\r\n").await?;
            return Ok(());
        }
        let injected = match mode {
            Mode::Pass | Mode::EndlessSidecar => None,
            Mode::NotFound => Some((
                404,
                canned(
                    &req.method,
                    "404 Not Found",
                    "NoSuchKey",
                    "The specified key does not exist.",
                ),
            )),
            Mode::ServerError => Some((
                500,
                canned(
                    &req.method,
                    "500 Internal Server Error",
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                ),
            )),
            Mode::SlowDown => Some((
                503,
                canned(
                    &req.method,
                    "503 Slow Down",
                    "SlowDown",
                    "Please reduce your request rate.",
                ),
            )),
            // Never answered, so not logged.
            Mode::Slow => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return Ok(());
            }
            Mode::Refused => return Ok(()),
        };
        let mut exchange = InFlight::new(&shared, &req, request_bytes);
        if let Some((status, response)) = injected {
            let head_len = response
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(response.len(), |p| p + 4);
            exchange.exchange.status = status;
            exchange.exchange.response_head_bytes = head_len as u64;
            client.get_mut().write_all(&response[..head_len]).await?;
            let mut out = Counting {
                inner: client.get_mut(),
                n: exchange.body.clone(),
            };
            out.write_all(&response[head_len..]).await?;
            continue;
        }

        if server.is_none() {
            server = Some(BufReader::new(TcpStream::connect(upstream).await?));
        }
        let Some(up) = server.as_mut() else {
            return Ok(());
        };
        up.get_mut().write_all(&head).await?;
        up.get_mut().write_all(&body).await?;
        let Some(response_head) = read_head(up).await? else {
            return Err(io::ErrorKind::UnexpectedEof.into());
        };
        let response = parse_response(&response_head)?;
        let truncate =
            match req.method == "GET" && req.path == object_path && response.status == 200 {
                true => *lock(&shared.truncate),
                false => None,
            };
        let out_head = match truncate {
            Some(claimed) => with_content_length(&response_head, claimed),
            None => response_head.clone(),
        };
        exchange.exchange.status = response.status;
        exchange.exchange.response_head_bytes = out_head.len() as u64;
        client.get_mut().write_all(&out_head).await?;
        let no_body = req.method == "HEAD"
            || response.status / 100 == 1
            || response.status == 204
            || response.status == 304;
        let mut out = Counting {
            inner: client.get_mut(),
            n: exchange.body.clone(),
        };
        if no_body {
        } else if let Some(n) = response.content_length {
            copy_exact(up, &mut out, n).await?;
        } else if response.chunked {
            copy_chunked(up, &mut out).await?;
        } else {
            tokio::io::copy(up, &mut out).await?;
        }
        out.flush().await?;
        drop(exchange);
        if truncate.is_some() {
            // The announced length was a lie: end the transfer here.
            let _ = client.get_mut().shutdown().await;
            return Ok(());
        }
        if response.close || (!no_body && response.content_length.is_none() && !response.chunked) {
            return Ok(());
        }
    }
}
