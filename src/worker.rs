//! The worker side: adopting the inherited descriptors, and the agent thread that carries
//! readiness to the master and turns drain messages, master death and signals into
//! [`State::shutdown`](crate::State::shutdown).
//!
//! Also the disabled mode, where `prog` runs in-process on sockets bound locally.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::control::{Lines, ToMaster, ToWorker};
use crate::env::WorkerEnv;
use crate::error::Error;
use crate::fds::{self, FIRST_INHERITED_FD};
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
    let agent_token = shutdown.clone();
    let drain_timeout = env.drain_timeout;
    let (restart_signal, master_pid) = (env.restart_signal, env.master_pid);
    std::thread::Builder::new()
        .name("upshift-agent".into())
        .spawn(move || {
            agent(
                Some(AgentControl {
                    control,
                    to_master,
                    drain_timeout,
                    restart_signal,
                    master_pid,
                }),
                agent_token,
            )
        })
        .map_err(|e| Error::io("cannot start the worker's agent thread", e))?;
    tracing::debug!(
        generation = env.generation,
        listeners = listeners.len(),
        "worker adopted its sockets"
    );
    Ok(State::new(
        listeners,
        Lifecycle::new(Some(to_master_tx), shutdown),
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
    let agent_token = shutdown.clone();
    std::thread::Builder::new()
        .name("upshift-agent".into())
        .spawn(move || agent(None, agent_token))
        .map_err(|e| Error::io("cannot start the signal agent thread", e))?;
    tracing::info!(%reason, "upshift disabled: serving in-process, upgrades are off");
    Ok(State::new(
        listeners,
        Lifecycle::new(None, shutdown),
        Mode::Disabled(reason),
    ))
}

struct AgentControl {
    control: OwnedFd,
    to_master: tokio::sync::mpsc::UnboundedReceiver<ToMaster>,
    drain_timeout: Duration,
    restart_signal: i32,
    master_pid: u32,
}

/// The agent runs on its own thread with its own small runtime, so it works whatever `prog` does
/// with threads and runtimes (plain `fn main`, `#[tokio::main]`, or no tokio at all).
fn agent(control: Option<AgentControl>, shutdown: CancellationToken) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "upshift agent cannot start a runtime; signals will not drain this worker");
            return;
        }
    };
    rt.block_on(async move {
        let signals = watch_signals(shutdown.clone());
        match control {
            Some(c) => {
                tokio::select! {
                    () = talk_to_master(c, shutdown.clone()) => {}
                    () = signals => {}
                }
            }
            None => signals.await,
        }
        // Keep the runtime (and with it the signal handlers) alive: a second SIGTERM must not
        // fall back to the default action while `prog` drains.
        std::future::pending::<()>().await;
    });
}

async fn watch_signals(shutdown: CancellationToken) {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM/SIGINT in the worker");
            return std::future::pending().await;
        }
    };
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
        restart_signal,
        master_pid,
    } = c;
    // Only a signal nobody else in the runtime handles, and never one that means "stop".
    let mut stray_restart = match restart_signal {
        sig if sig > 0 && sig != libc::SIGTERM && sig != libc::SIGINT => {
            signal(SignalKind::from_raw(sig)).ok()
        }
        _ => None,
    };
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
            Some(()) = async { match stray_restart.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                tracing::warn!(
                    signal = restart_signal,
                    master_pid,
                    "this worker got the master's restart signal and ignores it; send it to the master (kill -s <signal> {master_pid})"
                );
            }
            line = lines.next_line() => match line {
                Ok(Some(l)) if ToWorker::decode(&l) == Some(ToWorker::Drain) => {
                    tracing::info!("master asked this worker to drain");
                    shutdown.cancel();
                }
                Ok(Some(other)) => tracing::debug!(message = %String::from_utf8_lossy(&other), "ignoring unknown control message"),
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
