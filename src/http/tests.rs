//! Tests of polite-drain serving: real sockets on 127.0.0.1, a hand-written HTTP/1.1 client for
//! exact control over keep-alive, each bounded in time.

use super::*;
use crate::listener::ListenerSocket;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(5);

/// `/` answers at once; `/slow` after 300 ms, setting `done` just before it answers.
fn app(done: Arc<AtomicBool>) -> axum::Router {
    let slow = move || {
        let done = done.clone();
        async move {
            sleep(Duration::from_millis(300)).await;
            done.store(true, Ordering::SeqCst);
            "slow"
        }
    };
    axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .route("/slow", axum::routing::get(slow))
}

fn tcp_listener() -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

struct Running {
    shutdown: CancellationToken,
    server: JoinHandle<io::Result<()>>,
    ready_calls: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
}

/// Starts a server on `listeners` and returns once `on_ready` has been called.
async fn start(listeners: Vec<Listener>, grace: Duration) -> Running {
    let shutdown = CancellationToken::new();
    let ready_calls = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let calls = ready_calls.clone();
    let on_ready = move || {
        calls.fetch_add(1, Ordering::SeqCst);
        let _ = ready_tx.send(());
    };
    let server = Server::new(app(done.clone())).idle_grace(grace);
    let server = tokio::spawn(server.serve_listeners(
        listeners,
        shutdown.clone().cancelled_owned(),
        on_ready,
    ));
    timeout(BOUND, ready_rx).await.unwrap().unwrap();
    Running {
        shutdown,
        server,
        ready_calls,
        done,
    }
}

async fn start_tcp(grace: Duration) -> (Running, SocketAddr) {
    let (l, addr) = tcp_listener();
    let listener = Listener::new(addr.to_string(), ListenerSocket::Tcp(l));
    (start(vec![listener], grace).await, addr)
}

impl Running {
    /// Fires shutdown and gives the server a moment to see it.
    async fn drain(&self) {
        self.shutdown.cancel();
        sleep(Duration::from_millis(100)).await;
    }
    async fn finished(self) {
        timeout(BOUND, self.server).await.unwrap().unwrap().unwrap();
    }
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A hand-rolled HTTP/1.1 client, to see exactly what the server does on one connection.
struct Client<T> {
    stream: T,
    buf: Vec<u8>,
}

impl Client<TcpStream> {
    async fn connect(addr: SocketAddr) -> Self {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Client<T> {
    async fn send(&mut self, path: &str) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.stream.write_all(req.as_bytes()).await.unwrap();
    }

    async fn get(&mut self, path: &str) -> Resp {
        self.send(path).await;
        self.response().await
    }

    async fn read_more(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a full response");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn response(&mut self) -> Resp {
        timeout(BOUND, async {
            let head_end = loop {
                if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i;
                }
                self.read_more().await;
            };
            let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
            let mut lines = head.split("\r\n");
            let status = lines
                .next()
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            let headers: Vec<(String, String)> = lines
                .map(|l| l.split_once(':').unwrap())
                .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            while self.buf.len() < head_end + 4 + len {
                self.read_more().await;
            }
            let body = String::from_utf8(self.buf[head_end + 4..head_end + 4 + len].to_vec());
            self.buf.drain(..head_end + 4 + len);
            Resp {
                status,
                headers,
                body: body.unwrap(),
            }
        })
        .await
        .expect("no response in time")
    }

    /// Waits until the server closes the connection (EOF or reset), returning how long it took.
    async fn closed(&mut self) -> Duration {
        let start = Instant::now();
        let mut chunk = [0u8; 64];
        match timeout(BOUND, self.stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => start.elapsed(),
            Ok(Ok(n)) => panic!("unexpected bytes: {:?}", &chunk[..n]),
            Err(_) => panic!("connection still open after {BOUND:?}"),
        }
    }
}

#[tokio::test]
async fn keep_alive_before_drain() {
    let (server, addr) = start_tcp(Duration::from_millis(100)).await;
    let mut c = Client::connect(addr).await;
    for _ in 0..3 {
        let r = c.get("/").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        assert_eq!(r.header("connection"), None);
    }
    server.shutdown.cancel();
    server.finished().await;
}

#[tokio::test]
async fn next_response_after_drain_closes_the_connection() {
    let (server, addr) = start_tcp(Duration::from_secs(3)).await;
    let mut c = Client::connect(addr).await;
    assert_eq!(c.get("/").await.header("connection"), None);
    server.drain().await;
    let r = c.get("/").await;
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    // Closed because of the header, long before the grace period would have closed it.
    assert!(c.closed().await < Duration::from_secs(1));
    server.finished().await;
}

#[tokio::test]
async fn request_in_flight_finishes_before_serve_returns() {
    let (server, addr) = start_tcp(Duration::from_secs(1)).await;
    let mut c = Client::connect(addr).await;
    c.send("/slow").await;
    sleep(Duration::from_millis(50)).await;
    server.drain().await;
    assert!(!server.server.is_finished());
    let r = c.response().await;
    assert_eq!((r.status, r.body.as_str()), (200, "slow"));
    assert_eq!(r.header("connection"), Some("close"));
    let done = server.done.clone();
    server.finished().await;
    assert!(done.load(Ordering::SeqCst));
}

#[tokio::test]
async fn idle_connection_closed_only_after_grace() {
    let (server, addr) = start_tcp(Duration::from_millis(500)).await;
    let (mut a, mut b) = (Client::connect(addr).await, Client::connect(addr).await);
    assert_eq!(a.get("/").await.status, 200);
    assert_eq!(b.get("/").await.status, 200);
    let drain_start = Instant::now();
    server.shutdown.cancel();
    sleep(Duration::from_millis(200)).await;
    // Still open within the grace period, and answered with a close.
    let r = a.get("/").await;
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    a.closed().await;
    // The other one, left idle, is closed once the grace period is over.
    b.closed().await;
    let waited = drain_start.elapsed();
    assert!(
        waited >= Duration::from_millis(450),
        "closed after {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "closed after {waited:?}");
    server.finished().await;
}

#[tokio::test]
async fn listener_released_when_draining_begins() {
    let (l, addr) = tcp_listener();
    let kept = l.try_clone().unwrap();
    let listener = Listener::new(addr.to_string(), ListenerSocket::Tcp(l));
    let server = start(vec![listener], Duration::from_secs(1)).await;
    // An idle connection keeps the server draining while we connect again.
    let mut c = Client::connect(addr).await;
    assert_eq!(c.get("/").await.status, 200);
    server.drain().await;
    assert!(!server.server.is_finished());
    let _late = TcpStream::connect(addr).await.unwrap();
    let kept = tokio::net::TcpListener::from_std(kept).unwrap();
    timeout(BOUND, kept.accept())
        .await
        .expect("the server took the connection")
        .unwrap();
    server.finished().await;
}

#[tokio::test]
async fn on_ready_called_once() {
    let (server, addr) = start_tcp(Duration::from_millis(100)).await;
    assert_eq!(server.ready_calls.load(Ordering::SeqCst), 1);
    assert_eq!(Client::connect(addr).await.get("/").await.status, 200);
    let calls = server.ready_calls.clone();
    server.shutdown.cancel();
    server.finished().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn no_listeners_is_an_error_and_not_ready() {
    let ready = AtomicBool::new(false);
    let serving = Server::new(app(Arc::default())).serve_listeners(
        Vec::new(),
        std::future::pending(),
        || ready.store(true, Ordering::SeqCst),
    );
    let err = timeout(BOUND, serving).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(!ready.load(Ordering::SeqCst));
}

#[tokio::test]
async fn serves_unix_sockets() {
    let path = std::env::temp_dir().join(format!("upshift-http-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    l.set_nonblocking(true).unwrap();
    let listener = Listener::new("unix".into(), ListenerSocket::Unix(l));
    let server = start(vec![listener], Duration::from_millis(100)).await;
    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut c = Client {
        stream,
        buf: Vec::new(),
    };
    assert_eq!(c.get("/").await.body, "ok");
    server.shutdown.cancel();
    server.finished().await;
    let _ = std::fs::remove_file(&path);
}
