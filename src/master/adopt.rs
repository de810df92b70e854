//! The new image's side of the master's re-exec: taking over what the old image handed over,
//! then applying this build's own configuration; and the wait-only mode when that fails.
//!
//! Order matters. Signals stay blocked (the old image blocked them for the exec) until the
//! handlers are installed, so a restart or stop signal sent meanwhile is handled, not fatal. The
//! workers are still this process's children: they are adopted as they were (serving, or
//! draining with what was left of their drain timeout), and collected at once if they exited
//! during the exec. Only then does the configuration apply: listeners it adds are bound,
//! listeners it no longer names are closed (workers hold their own copies until they drain), and
//! a new worker starts when the serving one runs another build or lacks a listener.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use super::env::{Env, Heard, Processes};
use super::handover::{Handover, Role};
use super::spawn::Launch;
use super::{reexec, signals, Event, Master, Worker};
use crate::config::MasterConfig;
use crate::control::ToWorker;
use crate::error::Error;
use crate::listener::BoundSocket;
use crate::systemd::notify::{Notifier, Timeouts};

/// What the new image does once it runs: the configuration's changes, and the event to report.
pub(super) struct Adopted {
    /// The build the master ran before.
    pub(super) from: String,
    /// Why a new worker is needed, if it is.
    pub(super) restart: Option<String>,
    /// Handed over but no longer configured: closed once the new image runs.
    pub(super) retired: Vec<BoundSocket>,
    /// Releases the previous image had refused, for the pipeline.
    pub(super) refusals: Vec<super::handover::HandedRefusal>,
}

impl Master<Processes> {
    /// Takes over from the previous image of this master.
    pub(super) fn adopt(
        cfg: MasterConfig,
        doc: Handover,
    ) -> Result<(Self, UnboundedReceiver<Event>, Adopted), Error> {
        // Everything the document names is checked before anything is taken: a failure after
        // this point would close a worker's control socket, which the worker takes for the
        // master's death.
        for fd in doc.descriptors() {
            if !crate::fds::is_open(fd) {
                return Err(Error::Protocol(format!(
                    "the handover document names fd {fd}, which is not open"
                )));
            }
        }
        let launch = Launch::capture(
            cfg.drain_timeout,
            cfg.restart_signal as i32,
            cfg.build_id.clone(),
        )?;
        let env = Processes::new(launch, cfg.test_run_timeout)?;
        (env.preparer.own.lock().unwrap_or_else(|p| p.into_inner()))
            .set_known_sha256(doc.image_sha256.clone());
        let listeners = crate::systemd::activation::after_reexec(
            &cfg.addrs,
            doc.listeners.clone(),
            &cfg.unix_socket,
        )?;
        let timeouts = Timeouts {
            ready: cfg.ready_timeout,
            drain: cfg.drain_timeout,
        };
        let sd = Notifier::resume(
            doc.notify.as_deref(),
            timeouts,
            doc.notify_ready,
            doc.notify_signalled,
        );
        let (mut master, rx) = Master::new(cfg, env, listeners.sockets, sd);
        master.next_generation = doc.next_generation.max(1);
        master.crash_streak = doc.crash_streak;
        signals::install(master.cfg.restart_signal, &master.events)?;
        // SAFETY: as in `Master::start`.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        // Handlers are in place: what was sent during the exec is delivered now.
        reexec::unblock_signals();

        let now = Instant::now();
        // The exec'ing thread is now the process's main thread: its forks are the pid's.
        let exec_thread = std::process::id() as i32;
        for w in &doc.workers {
            let heard = Heard {
                generation: w.generation,
                events: master.events.clone(),
                check_now: master.check_now.clone(),
            };
            // SAFETY: checked open above; the document, read once, is the only thing naming it.
            let control = unsafe { OwnedFd::from_raw_fd(w.control_fd) };
            let control = master.env.adopt(w.generation, control, heard)?;
            let ago = |d: Duration| now.checked_sub(d).unwrap_or(now);
            let mut worker = Worker {
                generation: w.generation,
                pid: Pid::from_raw(w.pid),
                control,
                started: w.ready_for.map_or(now, ago),
                ready_at: w.ready_for.map(ago),
                forked_by: if w.forked_here { exec_thread } else { 0 },
                drain_deadline: None,
                killed_because: None,
                reply: None,
            };
            match w.role {
                Role::Serving if master.serving.is_none() => master.serving = Some(worker),
                _ => {
                    let left = w.drain_left.unwrap_or(Duration::ZERO);
                    worker.drain_deadline = Some(now + left);
                    master.after(
                        left,
                        Event::DrainTimeout {
                            generation: w.generation,
                        },
                    );
                    master.draining.push(worker);
                }
            }
        }
        // Exits during the exec raised a SIGCHLD nobody heard as an event.
        master.reap();

        let mut why = Vec::new();
        if let Some(reason) = &doc.restart {
            why.push(reason.clone());
        }
        if !listeners.added.is_empty() {
            why.push(format!("listeners added: {}", listeners.added.join(", ")));
        }
        if !listeners.retired.is_empty() {
            let names: Vec<&str> = listeners.retired.iter().map(|s| s.name.as_str()).collect();
            why.push(format!("listeners removed: {}", names.join(", ")));
        }
        if let Some(w) = &master.serving {
            if !master.env.runs_own_image(w.pid) {
                why.push(format!(
                    "worker {} runs another build than the master",
                    w.generation
                ));
            }
        }
        let adopted = Adopted {
            from: doc.build.clone(),
            restart: (!why.is_empty()).then(|| why.join("; ")),
            retired: listeners.retired,
            refusals: doc.refusals.clone(),
        };
        tracing::info!(
            pid = std::process::id(),
            from = %doc.build,
            to = %master.build_label(),
            workers = doc.workers.len(),
            listeners = ?master.sockets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            "upshift master re-executed in place: took over the workers and listeners"
        );
        Ok((master, rx, adopted))
    }
}

impl<E: Env> Master<E> {
    /// After adoption, in the new image's event loop: tells the workers who their master is
    /// now, closes retired listeners and starts a new worker if one is needed.
    pub(super) fn carry_on(&mut self, adopted: Adopted) {
        let label = self.build_label();
        // Workers know a master by its `build_id` only (`State::master_build`).
        if let Some(id) = self.cfg.build_id.clone() {
            let env = &mut self.env;
            for w in self.serving.iter_mut().chain(self.draining.iter_mut()) {
                // A worker that misses it still serves; only its `State::master_build` is stale.
                let _ = env.tell(&mut w.control, ToWorker::MasterBuild(id.clone()));
            }
        }
        for socket in adopted.retired {
            tracing::info!(listener = %socket.name, "listener no longer configured: closed (workers that hold it keep it until they drain)");
            drop(socket);
        }
        match (&self.serving, adopted.restart) {
            (None, restart) => {
                let reason = restart.unwrap_or_else(|| "no worker served at the re-exec".into());
                self.start_worker(&reason, None);
            }
            (Some(_), Some(reason)) => self.request_restart(&reason, None),
            (Some(_), None) => {}
        }
        self.sd
            .status(&format!("master re-executed: {} -> {label}", adopted.from));
    }
}

/// The wait-only mode: the new image could not take over (its configuration fails, the document
/// is unreadable). Rather than exit and leave the workers to their parent-death signal, it keeps
/// them serving, passes stop signals on, and exits once the last one has gone, with status 1 so
/// that a supervisor starts the service afresh. HAProxy's master does the same.
///
/// Runs with signals still blocked from the exec, waiting for them synchronously: nothing here
/// needs a runtime that might be what failed.
pub(crate) fn wait_only(doc: Option<&Handover>, why: &str) -> i32 {
    tracing::error!(
        "the master's new image cannot take over: {why}. Wait-only mode: the workers keep \
         serving, SIGTERM stops them, and the master exits once they have; restart the service \
         to get a master that upgrades again"
    );
    let timeouts = Timeouts {
        ready: Duration::from_secs(30),
        drain: Duration::from_secs(30),
    };
    let sd = Notifier::resume(
        doc.and_then(|d| d.notify.as_deref()),
        timeouts,
        doc.is_some_and(|d| d.notify_ready),
        false,
    );
    sd.status(&format!(
        "master upgrade failed, waiting for workers: {why}"
    ));
    let mut children: Vec<i32> = doc
        .map(|d| d.workers.iter().map(|w| w.pid).collect())
        .unwrap_or_default();
    children.extend(children_of_this_process());
    children.sort_unstable();
    children.dedup();
    let watched = [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGCHLD,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ];
    let mut set = nix::sys::signal::SigSet::empty();
    for sig in watched {
        set.add(sig);
    }
    // Already blocked since the exec; blocked again in case this was reached another way.
    let _ = set.thread_block();
    loop {
        reap_all(&mut children);
        if children.is_empty() {
            tracing::info!("wait-only mode: every worker has exited; the master exits");
            return 1;
        }
        match wait_signal(&set, Duration::from_secs(1)) {
            Some(sig) if sig == libc::SIGTERM || sig == libc::SIGINT => {
                tracing::info!(signal = sig, "wait-only mode: stopping the workers");
                for &pid in &children {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
                }
            }
            Some(sig) if sig != libc::SIGCHLD => {
                tracing::warn!(
                    signal = sig,
                    "wait-only mode: signal ignored; the master cannot restart or upgrade"
                )
            }
            _ => {}
        }
    }
}

/// Reaps exited children, dropping them from `children`.
fn reap_all(children: &mut Vec<i32>) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    children.retain(|&pid| {
        !matches!(
            waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_)
        )
    });
}

fn wait_signal(set: &nix::sys::signal::SigSet, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a valid signal set and timespec; no siginfo is asked for.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// Children of every thread of this process, from `/proc` (Linux 3.5+): the document may be
/// what could not be read.
fn children_of_this_process() -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}
