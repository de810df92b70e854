//! One connection's life: served until the drain begins, then drained politely; and the
//! per-request bookkeeping the drain needs (requests in flight, `Connection: close`).
//!
//! The serving path costs what `axum::serve` costs and no more: while serving, no request and no
//! wake-up of the connection's task takes a lock or allocates on upshift's account. The drain
//! signal reaches a connection through its own waker, registered once per poll in a
//! per-connection slot, instead of through a future on a token every connection shares (polling
//! one locks its mutex, and every connection would contend for it); a request is counted in
//! flight with one atomic add and one atomic subtract, and its response future and body are
//! concrete types, not boxes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};
use tokio_util::sync::CancellationToken;

use super::BoxError;

/// The drain signal shared by every connection of one server.
pub(super) struct Drain {
    draining: AtomicBool,
    /// Stops the accept loops (they wait on it once per accepted connection, not per request).
    stop_accepting: CancellationToken,
    next_id: AtomicU64,
    /// The connections to wake when draining begins; each registers once, for its whole life.
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Drain {
    pub(super) fn new() -> Arc<Drain> {
        Arc::new(Drain {
            draining: AtomicBool::new(false),
            stop_accepting: CancellationToken::new(),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        })
    }

    /// Starts draining: the accept loops stop, and every connection is woken to drain.
    pub(super) fn begin(&self) {
        self.draining.store(true, SeqCst);
        self.stop_accepting.cancel();
        // A connection registered after this loop sees the flag on its first poll.
        for conn in self.conns().values() {
            conn.waker.wake();
        }
    }

    pub(super) fn is_draining(&self) -> bool {
        self.draining.load(SeqCst)
    }

    /// Resolves once draining has begun (for the accept loops).
    pub(super) async fn stopped_accepting(&self) {
        self.stop_accepting.cancelled().await
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        // A panic while holding it cannot leave the map half-updated: insert and remove only.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(self: &Arc<Self>, conn: Arc<ConnState>) -> Registration {
        let id = self.next_id.fetch_add(1, SeqCst);
        self.conns().insert(id, conn);
        Registration {
            drain: self.clone(),
            id,
        }
    }
}

/// Begins the drain when dropped: a server future dropped mid-serve still stops accepting and
/// lets its connections drain in the background.
pub(super) struct BeginOnDrop(pub(super) Arc<Drain>);

impl Drop for BeginOnDrop {
    fn drop(&mut self) {
        self.0.begin();
    }
}

/// A connection's place in [`Drain::conns`], given up when the connection ends.
struct Registration {
    drain: Arc<Drain>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.drain.conns().remove(&self.id);
    }
}

/// Per connection: how many requests are between arrival and the end of their response body,
/// whether it speaks HTTP/2, and how to wake its task.
pub(super) struct ConnState {
    drain: Arc<Drain>,
    in_flight: AtomicUsize,
    /// Bumped on every change of `in_flight` once draining began: the idle wait starts over.
    changes: AtomicU64,
    h2: AtomicBool,
    waker: AtomicWaker,
}

impl ConnState {
    /// While draining, a request arriving or finishing is news for the drain loop.
    fn in_flight_changed(&self) {
        if self.drain.is_draining() {
            self.changes.fetch_add(1, SeqCst);
            self.waker.wake();
        }
    }
}

/// How one round of the drain loop ended.
enum Step {
    Ended(Result<(), BoxError>),
    InFlightChanged,
    IdleLongEnough,
}

/// Serves `conn` (a hyper connection serving a [`DrainService`] over `state`) until it ends;
/// once draining begins: HTTP/1 responses carry `Connection: close`, which ends busy
/// connections, and an idle one is closed once it has stayed idle for the whole `idle_grace`.
/// HTTP/2 has GOAWAY, which is free of the keep-alive race, so it is sent at once.
/// `graceful_shutdown` asks the connection to finish what it is doing and close.
pub(super) async fn drive<C>(
    mut conn: Pin<&mut C>,
    state: Arc<ConnState>,
    idle_grace: Duration,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
) where
    C: Future<Output = Result<(), BoxError>>,
{
    let _registered = state.drain.register(state.clone());
    let served = std::future::poll_fn(|cx| {
        // Before the flag: a `begin` after this check wakes the waker just registered.
        state.waker.register(cx.waker());
        if state.drain.is_draining() {
            return Poll::Ready(None);
        }
        conn.as_mut().poll(cx).map(Some)
    })
    .await;
    if let Some(r) = served {
        return log_conn_end(r);
    }
    loop {
        if state.h2.load(SeqCst) {
            break;
        }
        let seen = state.changes.load(SeqCst);
        let idle = state.in_flight.load(SeqCst) == 0;
        let mut grace = idle.then(|| Box::pin(tokio::time::sleep(idle_grace)));
        let step = std::future::poll_fn(|cx| {
            state.waker.register(cx.waker());
            // The connection first: a request already in its socket buffer is activity.
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Step::Ended(r));
            }
            if state.changes.load(SeqCst) != seen {
                return Poll::Ready(Step::InFlightChanged);
            }
            match grace.as_mut().map(|g| g.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Step::IdleLongEnough),
                _ => Poll::Pending,
            }
        })
        .await;
        match step {
            Step::Ended(r) => return log_conn_end(r),
            Step::InFlightChanged => continue,
            Step::IdleLongEnough => break,
        }
    }
    graceful_shutdown(conn.as_mut());
    log_conn_end(conn.await);
}

fn log_conn_end(r: Result<(), BoxError>) {
    // Clients vanishing mid-request and header read timeouts are routine, not the server's fault.
    if let Err(e) = r {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// A new connection's state, to be given to its [`DrainService`] and to [`drive`].
pub(super) fn new_state(drain: &Arc<Drain>) -> Arc<ConnState> {
    Arc::new(ConnState {
        drain: drain.clone(),
        in_flight: AtomicUsize::new(0),
        changes: AtomicU64::new(0),
        h2: AtomicBool::new(false),
        waker: AtomicWaker::new(),
    })
}

/// Counts a request as in flight from its arrival until its response body is dropped.
pub(super) struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(conn: Arc<ConnState>) -> Self {
        conn.in_flight.fetch_add(1, SeqCst);
        conn.in_flight_changed();
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, SeqCst);
        self.0.in_flight_changed();
    }
}

/// Wraps the user's service: counts requests in flight and marks responses produced while
/// draining with `Connection: close`.
pub(super) struct DrainService<S> {
    inner: TowerToHyperService<S>,
    conn: Arc<ConnState>,
}

impl<S> DrainService<S> {
    pub(super) fn new(service: S, conn: Arc<ConnState>) -> Self {
        DrainService {
            inner: TowerToHyperService::new(service),
            conn,
        }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for DrainService<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<GuardedBody<B>>;
    type Error = BoxError;
    type Future = DrainFuture<S>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = InFlight::new(self.conn.clone());
        let h1 = req.version() != Version::HTTP_2;
        if !h1 {
            self.conn.h2.store(true, SeqCst);
        }
        let connect = req.method() == Method::CONNECT;
        DrainFuture {
            inner: hyper::service::Service::call(&self.inner, req),
            guard: Some(guard),
            h1,
            connect,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`DrainService`].
    pub(super) struct DrainFuture<S>
    where
        S: tower_service::Service<Request<Incoming>>,
    {
        #[pin]
        inner: TowerToHyperServiceFuture<S, Request<Incoming>>,
        guard: Option<InFlight>,
        h1: bool,
        connect: bool,
    }
}

impl<S, B> Future for DrainFuture<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<GuardedBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx)).map_err(Into::into)?;
        let guard = this.guard.take();
        // Checked now, not on arrival: a request that was in flight when draining began must
        // close its connection too. Never on an upgrade, whose `Connection: upgrade` must stay.
        let upgrade = res.status() == StatusCode::SWITCHING_PROTOCOLS
            || (*this.connect && res.status().is_success());
        let draining = guard.as_ref().is_some_and(|g| g.0.drain.is_draining());
        if *this.h1 && !upgrade && draining {
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(res.map(|inner| GuardedBody {
            inner,
            _guard: guard,
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until hyper has finished
    /// with it.
    pub(super) struct GuardedBody<B> {
        #[pin]
        inner: B,
        _guard: Option<InFlight>,
    }
}

impl<B: Body> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
