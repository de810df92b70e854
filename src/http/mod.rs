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
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::listener::{Listener, TokioListener};
use crate::state::State;

mod conn;

use conn::{BeginOnDrop, Drain, DrainService};

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
        let drain = Drain::new();
        // Whoever drops this future mid-serve still gets the accept loops stopped.
        let _drain_on_drop = BeginOnDrop(drain.clone());
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
        drain.begin();
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
                _ = ctx.drain.stopped_accepting() => break,
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
                        _ = ctx.drain.stopped_accepting() => break,
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
        let state = conn::new_state(&ctx.drain);
        let svc = DrainService::new(service, state.clone());
        let conn = ctx
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        conn::drive(conn, state, ctx.idle_grace, |c| c.graceful_shutdown()).await;
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
    drain: Arc<Drain>,
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

#[cfg(test)]
mod tests;
