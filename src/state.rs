//! [`State`]: what `prog` receives — its listeners, and the [`Lifecycle`] through which it says
//! it is ready and learns that it must drain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::control::ToMaster;
use crate::forwarded::{SignalHub, Signals};
use crate::listener::{Listener, ListenerSocket, TokioListener};

/// What `prog` gets from [`Upgrader::run`](crate::Upgrader::run).
///
/// ```no_run
/// # async fn serve(mut state: upshift::State) -> std::io::Result<()> {
/// let listeners = state.tokio_tcp_listeners()?;     // non-blocking, registered with tokio
/// state.ready();                                    // the master may now retire the old worker
/// state.shutdown().await;                           // resolves when this worker must drain
/// # drop(listeners); Ok(()) }
/// ```
#[derive(Debug)]
pub struct State {
    listeners: Vec<Listener>,
    lifecycle: Lifecycle,
    mode: Mode,
}

/// How `prog` is being run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// As a worker of a master, which can upgrade it.
    Worker {
        /// 1 for the first worker a master starts, +1 for each later one.
        generation: u64,
        /// The master's pid, stable across upgrades.
        master_pid: u32,
    },
    /// In-process, without a master: no upgrades. The string says why.
    Disabled(String),
}

impl State {
    pub(crate) fn new(listeners: Vec<Listener>, lifecycle: Lifecycle, mode: Mode) -> Self {
        State {
            listeners,
            lifecycle,
            mode,
        }
    }

    /// How `prog` is being run.
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Whether a master is present and upgrades are possible.
    pub fn is_enabled(&self) -> bool {
        matches!(self.mode, Mode::Worker { .. })
    }

    /// This worker's generation (0 when disabled).
    pub fn generation(&self) -> u64 {
        match self.mode {
            Mode::Worker { generation, .. } => generation,
            Mode::Disabled(_) => 0,
        }
    }

    /// The names of the listeners not yet taken, in configuration order.
    pub fn listener_names(&self) -> Vec<&str> {
        self.listeners.iter().map(|l| l.name()).collect()
    }

    /// Takes all listeners not yet taken, in configuration order.
    pub fn take_listeners(&mut self) -> Vec<Listener> {
        std::mem::take(&mut self.listeners)
    }

    /// Takes the listener with this name (its address as configured, or the name given to
    /// [`Upgrader::listen_named`](crate::Upgrader::listen_named)).
    pub fn take_listener(&mut self, name: &str) -> Option<Listener> {
        let i = self.listeners.iter().position(|l| l.name() == name)?;
        Some(self.listeners.remove(i))
    }

    /// Takes every TCP listener and registers it with the current tokio runtime.
    ///
    /// # Errors
    /// Fails outside a tokio runtime.
    pub fn tokio_tcp_listeners(&mut self) -> std::io::Result<Vec<tokio::net::TcpListener>> {
        let (tcp, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.listeners)
            .into_iter()
            .partition(|l| matches!(l.socket(), ListenerSocket::Tcp(_)));
        self.listeners = rest;
        let mut out = Vec::with_capacity(tcp.len());
        for l in tcp {
            if let TokioListener::Tcp(t) = l.into_tokio()? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Tells the master this worker is serving. See [`Lifecycle::ready`].
    pub fn ready(&self) {
        self.lifecycle.ready()
    }

    /// Resolves when this worker must drain. See [`Lifecycle::shutdown`].
    pub fn shutdown(&self) -> WaitForCancellationFutureOwned {
        self.lifecycle.shutdown()
    }

    /// The signals forwarded to this worker (SIGHUP, SIGUSR1, SIGWINCH, and SIGUSR2 unless it is
    /// the restart signal). See [`Lifecycle::signals`].
    pub fn signals(&self) -> Signals {
        self.lifecycle.signals()
    }

    /// The build the master runs, as the master last said. See [`Lifecycle::master_build`].
    ///
    /// ```
    /// # fn demo(state: &upshift::State) {
    /// let master = state.master_build().unwrap_or_else(|| "unknown".into());
    /// println!("supervised by a master of build {master}");
    /// # }
    /// ```
    pub fn master_build(&self) -> Option<String> {
        self.lifecycle.master_build()
    }

    /// A cloneable handle on readiness and shutdown, for tasks that outlive the borrow of `State`.
    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle.clone()
    }
}

/// Readiness up, drain down: the worker's side of the conversation with its master. Cheap to clone.
///
/// ```
/// # fn demo(lifecycle: upshift::Lifecycle) {
/// let token = lifecycle.shutdown_token();
/// std::thread::spawn(move || {
///     while !token.is_cancelled() { /* serve */ break; }
/// });
/// lifecycle.ready();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Lifecycle {
    inner: Arc<LifecycleInner>,
}

#[derive(Debug)]
struct LifecycleInner {
    ready_sent: AtomicBool,
    /// To the worker's agent, which writes on the control socket; `None` when disabled
    /// (nobody to tell).
    to_master: Option<tokio::sync::mpsc::UnboundedSender<ToMaster>>,
    shutdown: CancellationToken,
    signals: SignalHub,
    /// The master's build id, kept current by the worker's agent; always `None` when disabled.
    master_build: watch::Receiver<Option<String>>,
}

impl Lifecycle {
    pub(crate) fn new(
        to_master: Option<tokio::sync::mpsc::UnboundedSender<ToMaster>>,
        shutdown: CancellationToken,
        signals: SignalHub,
        master_build: watch::Receiver<Option<String>>,
    ) -> Self {
        Lifecycle {
            inner: Arc::new(LifecycleInner {
                ready_sent: AtomicBool::new(false),
                to_master,
                shutdown,
                signals,
                master_build,
            }),
        }
    }

    /// Tells the master that this worker accepts and serves; only then does the master tell the
    /// previous worker to drain. Call it once the listeners are being accepted on (the
    /// [`http`](crate::http) helpers do it for you). Idempotent.
    ///
    /// A worker that never calls it is killed after the master's ready timeout and the previous
    /// worker keeps serving; the master's log then says that `ready()` was never called.
    pub fn ready(&self) {
        if self.inner.ready_sent.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(tx) = &self.inner.to_master else {
            return;
        };
        if tx.send(ToMaster::Ready).is_err() {
            tracing::warn!(
                "could not tell the master this worker is ready: the worker's agent has stopped"
            );
        }
    }

    /// Asks the master to check its fetchers for a new release now, besides their interval (for
    /// an admin endpoint, say). Does nothing when disabled or when no fetcher is configured.
    pub fn check_for_update(&self) {
        if let Some(tx) = &self.inner.to_master {
            let _ = tx.send(ToMaster::CheckNow);
        }
    }

    /// Whether [`ready`](Self::ready) has been called.
    pub fn is_ready(&self) -> bool {
        self.inner.ready_sent.load(Ordering::SeqCst)
    }

    /// Resolves when this worker must drain: the master is handing over to a newer worker, the
    /// master is stopping, the master died, or this process got SIGTERM or SIGINT. Stop accepting,
    /// finish what is in flight, then return from `prog`.
    pub fn shutdown(&self) -> WaitForCancellationFutureOwned {
        self.inner.shutdown.clone().cancelled_owned()
    }

    /// The cancellation token behind [`shutdown`](Self::shutdown), for `select!` loops and threads.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// The signals the master forwards to this worker: SIGHUP, SIGUSR1, SIGWINCH, and SIGUSR2
    /// unless it is the restart signal ([`FORWARDED_SIGNALS`](crate::FORWARDED_SIGNALS)). Sent to
    /// this process directly, as when upshift is disabled, they arrive here too.
    ///
    /// The worker catches them before `prog` runs, so none of them kills it (the default action
    /// of SIGHUP, SIGUSR1 and SIGUSR2 would). Each receiver gets every signal that arrives while
    /// it exists; a signal that arrives while there is none is logged at INFO and ignored.
    ///
    /// ```no_run
    /// # fn demo(lifecycle: upshift::Lifecycle) {
    /// let mut signals = lifecycle.signals();
    /// std::thread::spawn(move || loop {
    ///     if let Some(upshift::Signal::SIGHUP) = signals.try_recv() {
    ///         // reopen log files
    ///     }
    ///     std::thread::sleep(std::time::Duration::from_millis(100));
    /// });
    /// # }
    /// ```
    pub fn signals(&self) -> Signals {
        self.inner.signals.subscribe()
    }

    /// Whether draining has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// The build the master runs ([`Upgrader::build_id`](crate::Upgrader::build_id)), as the
    /// master last said: the one it had when it started this worker, then each build it has
    /// re-executed itself into since, while this worker kept serving. `None` when disabled, or
    /// when the master named no build (or is of a version that does not tell).
    ///
    /// ```
    /// # fn demo(lifecycle: upshift::Lifecycle) {
    /// // For a status endpoint: which build supervises this worker right now.
    /// let body = format!("{}\n", lifecycle.master_build().as_deref().unwrap_or("unknown"));
    /// # drop(body);
    /// # }
    /// ```
    pub fn master_build(&self) -> Option<String> {
        self.inner.master_build.borrow().clone()
    }
}
