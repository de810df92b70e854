//! Polite-drain HTTP serving: serve a [`tower_service::Service`] (an `axum::Router`, say) on the
//! worker's listeners and, when the worker must drain, let clients go without failed requests.
//!
//! Hyper's own graceful shutdown closes idle keep-alive connections at once; a client that is
//! already sending its next request on such a connection then sees a reset (the keep-alive close
//! race: about one failed request per open connection per restart). Here, once draining begins:
//!
//! * the listeners are dropped at once, so the next worker gets every queued connection;
//! * each HTTP/1 connection's next response carries `Connection: close`, after which it closes;
//! * a connection that is idle is closed only once it has stayed idle for
//!   [`idle_grace`](Server::idle_grace), so a client that just got a response and sent another
//!   request gets an answer instead of a reset;
//! * HTTP/2 connections get a GOAWAY, which tells the client which requests were processed;
//! * requests in flight finish, and [`Server::serve`] returns when the last connection is closed.
//!
//! ```no_run
//! # async fn prog(mut state: upshift::State) -> std::io::Result<()> {
//! let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
//! upshift::http::serve(&mut state, app).await
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::listener::{Listener, TokioListener};
use crate::state::State;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client that keeps a connection busy sends its next request within a round trip of the last
/// response; one second covers that across continents, plus a little work between requests, so
/// such a client gets a `Connection: close` answer rather than a reset. A connection idle longer
/// sits in a pool, and pools see our FIN while idle and drop the connection. Longer only delays
/// the old worker's exit, which must stay well below the master's drain timeout (default 30 s).
const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(1);

/// Accept errors that mean we are out of descriptors or memory: retrying at once would spin.
const EXHAUSTED_BACKOFF: Duration = Duration::from_millis(100);
/// Unknown accept errors: a short pause so that a persistent one cannot spin the CPU either.
const UNKNOWN_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// An HTTP/1 and HTTP/2 server that drains politely; see the [module docs](self).
///
/// There is no internal drain timeout: serving returns when the last connection has finished, and
/// a worker whose clients hold it up longer is killed by the master after its drain timeout.
/// Connections taken over by an upgrade (WebSockets) are no longer tracked once upgraded; the code
/// handling them should watch [`Lifecycle::shutdown`](crate::Lifecycle::shutdown) itself.
///
/// ```no_run
/// # async fn prog(mut state: upshift::State) -> std::io::Result<()> {
/// use std::time::Duration;
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
/// upshift::http::Server::new(app)
///     .idle_grace(Duration::from_secs(2))
///     .serve(&mut state)
///     .await
/// # }
/// ```
pub struct Server<S> {
    service: S,
    idle_grace: Duration,
}

impl<S> fmt::Debug for Server<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("idle_grace", &self.idle_grace)
            .finish_non_exhaustive()
    }
}

impl<S, B> Server<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A server for `service`, which is cloned for every request.
    ///
    /// ```
    /// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    /// let server = upshift::http::Server::new(app);
    /// # drop(server);
    /// ```
    pub fn new(service: S) -> Self {
        Server {
            service,
            idle_grace: DEFAULT_IDLE_GRACE,
        }
    }

    /// How long a connection that is idle after draining began may stay open before it is closed
    /// (default 1 s): long enough for a client that just got a response to have sent its next
    /// request, which is then answered with `Connection: close` instead of being reset. Zero gives
    /// hyper's own behaviour.
    ///
    /// ```
    /// # let app = axum::Router::new();
    /// use std::time::Duration;
    /// let server = upshift::http::Server::new(app).idle_grace(Duration::from_millis(500));
    /// # drop(server);
    /// ```
    pub fn idle_grace(mut self, d: Duration) -> Self {
        self.idle_grace = d;
        self
    }

    /// Takes every listener (TCP and Unix) from `state`, registers them with tokio, calls
    /// [`State::ready`] once all are accepting, serves until [`State::shutdown`] resolves, then
    /// drains politely and returns when every connection has finished.
    ///
    /// # Errors
    /// Fails before serving anything if `state` has no listeners left or one cannot be registered
    /// with tokio (outside a runtime); `ready()` is then not called.
    ///
    /// ```no_run
    /// # async fn prog(mut state: upshift::State) -> std::io::Result<()> {
    /// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    /// upshift::http::Server::new(app).serve(&mut state).await
    /// # }
    /// ```
    pub async fn serve(self, state: &mut State) -> io::Result<()> {
        let lifecycle = state.lifecycle();
        let listeners = state.take_listeners();
        self.serve_listeners(listeners, state.shutdown(), move || lifecycle.ready())
            .await
    }

    /// Like [`serve`](Self::serve), on explicit listeners and an explicit shutdown future;
    /// `on_ready` is called once, when every listener is registered and accepting.
    ///
    /// Dropping the returned future stops accepting; connections then drain in the background.
    ///
    /// # Errors
    /// Fails before serving anything if `listeners` is empty or one cannot be registered with
    /// tokio; `on_ready` is then not called.
    ///
    /// ```no_run
    /// # async fn prog(mut state: upshift::State) -> std::io::Result<()> {
    /// // Serve HTTP on one listener only; the others are used for something else.
    /// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    /// let http = state.take_listener("127.0.0.1:8080").into_iter().collect();
    /// let lifecycle = state.lifecycle();
    /// upshift::http::Server::new(app)
    ///     .serve_listeners(http, state.shutdown(), move || lifecycle.ready())
    ///     .await
    /// # }
    /// ```
    pub async fn serve_listeners(
        self,
        listeners: Vec<Listener>,
        shutdown: impl Future<Output = ()> + Send,
        on_ready: impl FnOnce() + Send,
    ) -> io::Result<()> {
        if listeners.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "upshift::http: no listeners to serve",
            ));
        }
        let mut registered = Vec::with_capacity(listeners.len());
        for listener in listeners {
            let name = listener.name().to_string();
            registered.push((name, listener.into_tokio()?));
        }

        let mut builder = auto::Builder::new(TokioExecutor::new());
        // A timer arms hyper's HTTP/1 header read timeout (slow-loris) and HTTP/2 keep-alive.
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        let drain = CancellationToken::new();
        // Whoever drops this future mid-serve still gets the accept loops stopped.
        let _stop_on_drop = drain.clone().drop_guard();
        // Every connection task holds a sender; `recv` yields `None` once the last one is gone.
        let (conns_tx, mut conns_rx) = mpsc::channel::<()>(1);
        let ctx = ConnCtx {
            builder: Arc::new(builder),
            drain: drain.clone(),
            idle_grace: self.idle_grace,
            _alive: conns_tx,
        };

        let accept_loops: Vec<_> = registered
            .into_iter()
            .map(|(name, l)| {
                tokio::spawn(Self::accept_loop(
                    name,
                    l,
                    self.service.clone(),
                    ctx.clone(),
                ))
            })
            .collect();
        drop(ctx);
        on_ready();
        tracing::info!(listeners = accept_loops.len(), "serving HTTP");

        shutdown.await;
        tracing::info!("draining HTTP connections");
        drain.cancel();
        for task in accept_loops {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "an HTTP accept loop failed");
            }
        }
        let _ = conns_rx.recv().await;
        tracing::info!("all HTTP connections closed");
        Ok(())
    }

    async fn accept_loop(name: String, listener: TokioListener, service: S, ctx: ConnCtx) {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = ctx.drain.cancelled() => break,
                r = accept(&listener) => r,
            };
            match accepted {
                Ok(Accepted::Tcp(stream)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(listener = %name, error = %e, "could not set TCP_NODELAY");
                    }
                    tokio::spawn(Self::serve_conn(stream, service.clone(), ctx.clone()));
                }
                Ok(Accepted::Unix(stream)) => {
                    tokio::spawn(Self::serve_conn(stream, service.clone(), ctx.clone()));
                }
                Err(e) => {
                    let Some(pause) = accept_error_pause(&name, &e) else {
                        continue;
                    };
                    tokio::select! {
                        _ = ctx.drain.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        // The socket is shared with the next worker through the master: once our copy is closed, no
        // queued connection can land here, in a process that is going away.
        drop(listener);
        tracing::debug!(listener = %name, "stopped accepting");
    }

    async fn serve_conn<I>(io: I, service: S, ctx: ConnCtx)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (in_flight, mut in_flight_rx) = watch::channel(0usize);
        let state = Arc::new(ConnState {
            in_flight,
            h2: AtomicBool::new(false),
        });
        let svc = DrainService {
            inner: service,
            conn: state.clone(),
            drain: ctx.drain.clone(),
        };
        let conn = ctx
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);

        tokio::select! {
            r = conn.as_mut() => return log_conn_end(r),
            _ = ctx.drain.cancelled() => {}
        }
        // Draining. HTTP/1 responses now carry `Connection: close`, which ends busy connections; an
        // idle one is closed once it has stayed idle for the whole grace period. HTTP/2 has GOAWAY,
        // which is free of the race, so it is sent at once.
        loop {
            if state.h2.load(Ordering::Relaxed) {
                break;
            }
            let idle = *in_flight_rx.borrow_and_update() == 0;
            tokio::select! {
                // The connection first: a request already in its socket buffer is activity.
                biased;
                r = conn.as_mut() => return log_conn_end(r),
                changed = in_flight_rx.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(ctx.idle_grace), if idle => break,
            }
        }
        conn.as_mut().graceful_shutdown();
        log_conn_end(conn.await);
    }
}

/// Shorthand for [`Server::new(service).serve(state)`](Server::serve).
///
/// # Errors
/// As [`Server::serve`].
///
/// ```no_run
/// # async fn prog(mut state: upshift::State) -> std::io::Result<()> {
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
/// upshift::http::serve(&mut state, app).await
/// # }
/// ```
pub async fn serve<S, B>(state: &mut State, service: S) -> io::Result<()>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Server::new(service).serve(state).await
}

/// What every connection task shares.
#[derive(Clone)]
struct ConnCtx {
    builder: Arc<auto::Builder<TokioExecutor>>,
    drain: CancellationToken,
    idle_grace: Duration,
    _alive: mpsc::Sender<()>,
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &TokioListener) -> io::Result<Accepted> {
    match listener {
        TokioListener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        TokioListener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// How long to pause after a failed accept, if at all.
fn accept_error_pause(listener: &str, e: &io::Error) -> Option<Duration> {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            tracing::warn!(listener, error = %e, "accept: out of resources; backing off");
            Some(EXHAUSTED_BACKOFF)
        }
        // One connection died in the queue; the next one is fine.
        Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EINTR | libc::EPROTO | libc::EPERM) => {
            tracing::debug!(listener, error = %e, "accept failed for one connection");
            None
        }
        _ => {
            tracing::warn!(listener, error = %e, "accept failed");
            Some(UNKNOWN_ERROR_BACKOFF)
        }
    }
}

/// Per connection: how many requests are between arrival and the end of their response body, and
/// whether it speaks HTTP/2.
struct ConnState {
    in_flight: watch::Sender<usize>,
    h2: AtomicBool,
}

fn log_conn_end(r: Result<(), BoxError>) {
    // Clients vanishing mid-request and header read timeouts are routine, not the server's fault.
    if let Err(e) = r {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// Counts a request as in flight from its arrival until its response body is dropped.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(conn: Arc<ConnState>) -> Self {
        conn.in_flight.send_modify(|n| *n += 1);
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Wraps the user's service: tracks requests in flight and marks responses produced while
/// draining with `Connection: close`.
struct DrainService<S> {
    inner: S,
    conn: Arc<ConnState>,
    drain: CancellationToken,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for DrainService<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
{
    type Response = Response<GuardedBody<B>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = InFlight::new(self.conn.clone());
        let h1 = req.version() != Version::HTTP_2;
        if !h1 {
            self.conn.h2.store(true, Ordering::Relaxed);
        }
        let connect = req.method() == Method::CONNECT;
        let mut svc = self.inner.clone();
        let drain = self.drain.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| svc.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            let mut res = svc.call(req).await.map_err(Into::into)?;
            // Checked now, not on arrival: a request that was in flight when draining began must
            // close its connection too. Never on an upgrade, whose `Connection: upgrade` must stay.
            let upgrade = res.status() == StatusCode::SWITCHING_PROTOCOLS
                || (connect && res.status().is_success());
            if h1 && !upgrade && drain.is_cancelled() {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(res.map(|body| GuardedBody {
                inner: Box::pin(body),
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its request counted as in flight until hyper has finished with it.
/// Boxed so that it can be polled without unsafe pin projection.
struct GuardedBody<B> {
    inner: Pin<Box<B>>,
    _guard: InFlight,
}

impl<B: Body> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.get_mut().inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::ListenerSocket;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::task::JoinHandle;
    use tokio::time::{sleep, timeout};

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
}
