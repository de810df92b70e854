//! The worker side: adopting the inherited descriptors, and the agent thread that carries
//! readiness to the master and turns drain messages, master death and signals into
//! [`State::shutdown`](crate::State::shutdown).
//!
//! Also the disabled mode, where `prog` runs in-process on sockets bound locally.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::control::{Lines, ToMaster, ToWorker};
use crate::env::WorkerEnv;
use crate::error::Error;
use crate::fds::{self, FIRST_INHERITED_FD};
use crate::forwarded::{CaughtSignals, SignalHub};
use crate::listener::{self, ListenAddr};
use crate::state::{Lifecycle, Mode, State};
use crate::unix_socket::UnixSocketOptions;

/// Takes over the descriptors the master handed down and starts the agent.
pub(crate) fn adopt(env: WorkerEnv) -> Result<State, Error> {
    let mut listeners = Vec::with_capacity(env.listeners.len());
    for (i, (kind, name)) in env.listeners.iter().enumerate() {
        let fd = FIRST_INHERITED_FD + i as i32;
        if !fds::is_open(fd) {
            return Err(Error::Protocol(format!(
                "listener {name:?} was announced at fd {fd} but fd {fd} is not open"
            )));
        }
        // SAFETY: the master placed this listener at `fd` for us and nothing else in this process
        // knows the number; we take sole ownership here, once.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let l = listener::listener_from_fd(name.clone(), *kind, owned).map_err(|e| {
            Error::io(
                format!("cannot adopt inherited listener {name:?} at fd {fd}"),
                e,
            )
        })?;
        listeners.push(l);
    }
    if !fds::is_open(env.control_fd) {
        return Err(Error::Protocol(format!(
            "the control socket fd {} is not open",
            env.control_fd
        )));
    }
    // SAFETY: as above, the control socket is ours alone.
    let control = unsafe { OwnedFd::from_raw_fd(env.control_fd) };
    fds::set_cloexec(std::os::fd::AsRawFd::as_raw_fd(&control))
        .and_then(|()| fds::set_nonblocking(std::os::fd::AsRawFd::as_raw_fd(&control)))
        .map_err(|e| Error::io("cannot prepare the control socket", e))?;
    crate::env::scrub();

    let shutdown = CancellationToken::new();
    let (to_master_tx, to_master) = tokio::sync::mpsc::unbounded_channel();
    let (master_build_tx, master_build) = watch::channel(env.master_build.clone());
    let restart = Signal::try_from(env.restart_signal)
        .ok()
        .map(|sig| (sig, env.master_pid));
    let hub = SignalHub::new();
    start_agent(
        Some(AgentControl {
            control,
            to_master,
            drain_timeout: env.drain_timeout,
            master_build: master_build_tx,
        }),
        restart,
        hub.clone(),
        shutdown.clone(),
    )?;
    tracing::debug!(
        generation = env.generation,
        listeners = listeners.len(),
        "worker adopted its sockets"
    );
    Ok(State::new(
        listeners,
        Lifecycle::new(Some(to_master_tx), shutdown, hub, master_build),
        Mode::Worker {
            generation: env.generation,
            master_pid: env.master_pid,
        },
    ))
}

/// Binds the listeners in this process for the disabled mode; SIGTERM/SIGINT still drain.
/// Sockets passed by systemd are adopted here too, as the master would.
pub(crate) fn local(
    addrs: &[(String, ListenAddr)],
    unix: &UnixSocketOptions,
    reason: String,
) -> Result<State, Error> {
    let passed = crate::systemd::activation::take_passed()?;
    let mut listeners = Vec::with_capacity(addrs.len());
    for bound in crate::systemd::activation::listeners(addrs, passed, unix)? {
        let name = bound.name.clone();
        let l = bound
            .into_listener()
            .map_err(|e| Error::io(format!("cannot prepare listener {name:?}"), e))?;
        listeners.push(l);
    }
    let shutdown = CancellationToken::new();
    let hub = SignalHub::new();
    start_agent(None, None, hub.clone(), shutdown.clone())?;
    tracing::info!(%reason, "upshift disabled: serving in-process, upgrades are off");
    Ok(State::new(
        listeners,
        // No master, so no build to name; the sender goes at once and the value stays `None`.
        Lifecycle::new(None, shutdown, hub, watch::channel(None).1),
        Mode::Disabled(reason),
    ))
}

struct AgentControl {
    control: OwnedFd,
    to_master: tokio::sync::mpsc::UnboundedReceiver<ToMaster>,
    drain_timeout: Duration,
    /// Where a `master <build>` line goes, for [`Lifecycle::master_build`].
    master_build: watch::Sender<Option<String>>,
}

/// Starts the agent on its own thread with its own small runtime, so it works whatever `prog` does
/// with threads and runtimes (plain `fn main`, `#[tokio::main]`, or no tokio at all).
///
/// The signal handlers are installed here, on the calling thread, before `prog` runs: a forwarded
/// SIGHUP or a SIGTERM that arrives while the agent thread is still starting must not meet the
/// default action, which kills.
fn start_agent(
    control: Option<AgentControl>,
    restart: Option<(Signal, u32)>,
    hub: SignalHub,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the worker agent's runtime", e))?;
    let (stop_signals, caught) = {
        let _context = rt.enter();
        let stop = signal(SignalKind::terminate())
            .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
            .map_err(|e| Error::io("cannot catch SIGTERM/SIGINT in the worker", e))?;
        (stop, CaughtSignals::install(restart))
    };
    std::thread::Builder::new()
        .name("upshift-agent".into())
        .spawn(move || {
            rt.block_on(async move {
                tokio::spawn(caught.relay(hub));
                let stops = watch_stop_signals(stop_signals, shutdown.clone());
                match control {
                    Some(c) => {
                        tokio::select! {
                            () = talk_to_master(c, shutdown.clone()) => {}
                            () = stops => {}
                        }
                    }
                    None => stops.await,
                }
                // Keep the runtime (and with it the signal handlers) alive: a second SIGTERM must
                // not fall back to the default action while `prog` drains.
                std::future::pending::<()>().await;
            })
        })
        .map_err(|e| Error::io("cannot start the worker's agent thread", e))?;
    Ok(())
}

async fn watch_stop_signals(
    (mut term, mut int): (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
    shutdown: CancellationToken,
) {
    loop {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        if !shutdown.is_cancelled() {
            tracing::info!(signal = which, "worker draining on signal");
        }
        shutdown.cancel();
    }
}

async fn talk_to_master(c: AgentControl, shutdown: CancellationToken) {
    let AgentControl {
        control,
        mut to_master,
        drain_timeout,
        master_build,
    } = c;
    let std_stream = std::os::unix::net::UnixStream::from(control);
    let stream = match tokio::net::UnixStream::from_std(std_stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the control socket; this worker cannot be told to drain");
            return std::future::pending().await;
        }
    };
    let (read, mut write) = stream.into_split();
    let mut lines = Lines::new(BufReader::new(read));
    let mut agent_open = true;
    loop {
        tokio::select! {
            msg = to_master.recv(), if agent_open => match msg {
                Some(msg) => {
                    if let Err(e) = write.write_all(msg.line()).await {
                        tracing::warn!(error = %e, ?msg, "could not write to the master");
                    }
                }
                None => agent_open = false,
            },
            line = lines.next_line() => match line {
                Ok(Some(l)) => match ToWorker::decode(&l) {
                    Some(ToWorker::Drain) => {
                        tracing::info!("master asked this worker to drain");
                        shutdown.cancel();
                    }
                    Some(ToWorker::MasterBuild(build)) => {
                        tracing::info!(%build, "the master runs a new build");
                        master_build.send_replace(Some(build));
                    }
                    // A newer master may say more than this worker knows; draining on it would
                    // turn every message added later into an outage.
                    None => tracing::debug!(message = %String::from_utf8_lossy(&l), "ignoring unknown control message"),
                },
                Ok(None) | Err(_) => {
                    // The master is gone (it only closes our control socket by dying). Drain so
                    // the port is released, and do not outlive the master's drain timeout.
                    tracing::warn!(?drain_timeout, "master went away; draining and exiting");
                    shutdown.cancel();
                    tokio::time::sleep(drain_timeout).await;
                    tracing::error!("still running a drain timeout after the master died; exiting");
                    std::process::exit(1);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// Polls `done` for up to 5 s.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The agent on one end of a socket pair, the test as the master on the other.
    #[tokio::test]
    async fn the_agent_follows_master_lines_ignores_unknown_ones_and_drains_on_drain() {
        let (master_end, worker_end) = UnixStream::pair().unwrap();
        for end in [&master_end, &worker_end] {
            end.set_nonblocking(true).unwrap();
        }
        let (_to_master_tx, to_master) = tokio::sync::mpsc::unbounded_channel();
        let (master_build_tx, master_build) = watch::channel(Some("v1".to_string()));
        let shutdown = CancellationToken::new();
        let lifecycle = Lifecycle::new(None, shutdown.clone(), SignalHub::new(), master_build);
        let agent = tokio::spawn(talk_to_master(
            AgentControl {
                control: OwnedFd::from(worker_end),
                to_master,
                // Long: should the socket close early, the agent must not exit the test process.
                drain_timeout: Duration::from_secs(600),
                master_build: master_build_tx,
            },
            shutdown.clone(),
        ));
        let mut master = tokio::net::UnixStream::from_std(master_end).unwrap();
        assert_eq!(lifecycle.master_build().as_deref(), Some("v1"));

        master.write_all(b"master v2\n").await.unwrap();
        eventually("v2 is seen", || {
            lifecycle.master_build().as_deref() == Some("v2")
        })
        .await;

        // Lines this version does not know, then a known one: once that one has been taken,
        // the unknown ones before it have been read, and they neither drained nor renamed.
        master
            .write_all(b"reload\nmaster bad\tid\nmaster\ndrain now\nmaster v3\n")
            .await
            .unwrap();
        eventually("v3 is seen", || {
            lifecycle.master_build().as_deref() == Some("v3")
        })
        .await;
        assert!(
            !lifecycle.is_shutting_down(),
            "an unknown line drained the worker"
        );

        master.write_all(b"drain\n").await.unwrap();
        eventually("the worker drains", || lifecycle.is_shutting_down()).await;
        assert_eq!(lifecycle.master_build().as_deref(), Some("v3"));

        // Stop the agent before its socket closes: EOF would make it exit the process.
        agent.abort();
        assert!(agent.await.unwrap_err().is_cancelled());
        drop(master);
    }
}
