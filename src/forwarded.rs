//! Signals the master passes on to the serving worker, and how the worker hands them to `prog`.
//!
//! The master forwards SIGHUP, SIGUSR1, SIGWINCH and SIGUSR2 (the restart signal excepted) so that
//! `kill -HUP <master pid>` reaches the program, as it would without upshift. Most programs have
//! no handler for them, and the default action of each but SIGWINCH is to terminate: a logrotate
//! `kill -HUP` would drop every connection of the serving worker. So the worker catches all of
//! them before `prog` runs, and passes them to whoever listens on [`Signals`]; when nobody does,
//! they are logged and ignored.

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast;

/// The signals a master forwards to its serving worker (the restart signal excepted, which the
/// master acts on itself). A worker catches every one of them, whether `prog` listens or not: see
/// [`State::signals`](crate::State::signals).
///
/// ```
/// assert!(upshift::FORWARDED_SIGNALS.contains(&upshift::Signal::SIGHUP));
/// ```
pub const FORWARDED_SIGNALS: [Signal; 4] = [
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Up to this many signals wait for a slow listener; beyond, the oldest are dropped (signals
/// coalesce in the kernel anyway).
const BACKLOG: usize = 32;

/// The forwarded signals this worker received, from [`State::signals`](crate::State::signals) or
/// [`Lifecycle::signals`](crate::Lifecycle::signals). Each receiver sees every signal that arrives
/// while it exists; signals that arrive while no receiver exists are logged and ignored.
///
/// ```no_run
/// # async fn reopen_logs() {}
/// # async fn demo(state: &upshift::State) {
/// let mut signals = state.signals();
/// tokio::spawn(async move {
///     while let Some(sig) = signals.recv().await {
///         if sig == upshift::Signal::SIGHUP {
///             reopen_logs().await;
///         }
///     }
/// });
/// # }
/// ```
#[derive(Debug)]
pub struct Signals {
    rx: broadcast::Receiver<Signal>,
}

impl Signals {
    /// The next signal. `None` once the worker's signal agent has stopped (it does not while the
    /// worker runs).
    pub async fn recv(&mut self) -> Option<Signal> {
        loop {
            match self.rx.recv().await {
                Ok(sig) => return Some(sig),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "signals arrived faster than the program read them; the oldest were dropped");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// A signal already received, without waiting: for programs that poll.
    pub fn try_recv(&mut self) -> Option<Signal> {
        loop {
            match self.rx.try_recv() {
                Ok(sig) => return Some(sig),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// Where the worker's agent publishes the signals it caught; held by the [`Lifecycle`](crate::Lifecycle).
#[derive(Debug, Clone)]
pub(crate) struct SignalHub {
    tx: broadcast::Sender<Signal>,
}

impl SignalHub {
    pub(crate) fn new() -> Self {
        SignalHub {
            tx: broadcast::channel(BACKLOG).0,
        }
    }

    pub(crate) fn subscribe(&self) -> Signals {
        Signals {
            rx: self.tx.subscribe(),
        }
    }

    /// Hands `sig` to every receiver; with none, says so and drops it.
    fn publish(&self, sig: Signal) {
        match self.tx.send(sig) {
            Ok(receivers) => {
                tracing::debug!(%sig, receivers, "signal passed to the program")
            }
            Err(_) => tracing::info!(
                %sig,
                "signal received; the program does not listen for it (State::signals), so it is ignored"
            ),
        }
    }
}

/// The handlers a worker needs before `prog` runs. Created inside the agent's runtime context
/// (`Runtime::enter`) on the thread that starts the worker, so they are installed before the
/// master can learn that the worker is ready and forward anything to it.
pub(crate) struct CaughtSignals {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
    /// The master's restart signal and pid, when there is a master.
    restart: Option<(Signal, u32)>,
}

impl CaughtSignals {
    /// Catches the forwarded signals and the master's restart signal (which only the master acts
    /// on), given with the master's pid. Must be called within a tokio runtime context.
    pub(crate) fn install(restart: Option<(Signal, u32)>) -> Self {
        let mut wanted: Vec<Signal> = FORWARDED_SIGNALS.to_vec();
        if let Some((r, _)) = restart {
            if !wanted.contains(&r) && r != Signal::SIGTERM && r != Signal::SIGINT {
                wanted.push(r);
            }
        }
        let mut streams = Vec::with_capacity(wanted.len());
        for sig in wanted {
            match signal(SignalKind::from_raw(sig as i32)) {
                Ok(s) => streams.push((sig, s)),
                Err(e) => {
                    tracing::warn!(%sig, error = %e, "cannot catch this signal in the worker; it keeps its default action")
                }
            }
        }
        CaughtSignals { streams, restart }
    }

    /// Waits for the caught signals forever: the restart signal sent to a worker is a mistake
    /// (the master acts on it), the others go to the program.
    pub(crate) async fn relay(self, hub: SignalHub) {
        let CaughtSignals { streams, restart } = self;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (sig, mut stream) in streams {
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(sig).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        while let Some(sig) = rx.recv().await {
            if let Some((restart, master_pid)) = restart.filter(|(r, _)| *r == sig) {
                tracing::warn!(
                    signal = %restart,
                    master_pid,
                    "this worker got the master's restart signal and ignores it; send it to the master (kill -s {} {master_pid})",
                    restart.as_str().trim_start_matches("SIG")
                );
                continue;
            }
            hub.publish(sig);
        }
        std::future::pending::<()>().await
    }
}
