//! The master: binds the listeners once, keeps its pid for life, and runs the workers.
//!
//! One event loop owns all state; signals, readiness messages, timers and child exits arrive as
//! [`Event`]s. A restart is overlapping and readiness-gated: the new worker starts while the old
//! one keeps accepting, and the old one is told to drain only once the new one says it is ready.
//!
//! The policy's effects on workers (spawn, signal, drain line, reap) go through [`env::Env`] and
//! its clock is tokio's, so `policy_tests` runs it on a fake with time paused.

mod adopt;
mod backoff;
mod books;
mod env;
mod event;
mod exits;
#[cfg(test)]
mod fake;
mod handing;
pub(crate) mod handover;
mod installing;
mod memory;
#[cfg(test)]
mod policy_tests;
mod probation;
mod progress;
mod reaper;
mod reexec;
#[cfg(test)]
mod reexec_policy_tests;
mod runtime;
mod signals;
mod spawn;
mod updater;

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;
// The policy's clock: paused and advanced by hand in the policy tests.
use tokio::time::Instant;

use crate::config::MasterConfig;
use crate::control::ToWorker;
use crate::error::Error;
use crate::fetch::Fetcher;
use crate::listener::BoundSocket;
use crate::systemd::notify::{Notifier, Timeouts};
use env::{Env, Heard, Processes};
pub(crate) use event::{Event, Reply, RestartOutcome, ServingWorker};
pub(crate) use runtime::{run_adopting, run_blocking, run_on_own_thread};
use signals::Action;
use spawn::Launch;
pub(crate) use updater::{EventHook, PipelineConfig, VetoHook};

/// Where releases come from and how they are checked: present when fetchers are configured.
pub(crate) struct UpdateSettings {
    pub(crate) fetchers: Vec<Box<dyn Fetcher>>,
    pub(crate) pipeline: PipelineConfig,
}

impl std::fmt::Debug for UpdateSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.fetchers.iter().map(|f| f.name()).collect();
        f.debug_struct("UpdateSettings")
            .field("fetchers", &names)
            .finish_non_exhaustive()
    }
}

/// A worker that has served this long has proven itself: the crash backoff starts over.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// After a new worker failed its probation, the pipeline rolls back and restarts within
/// milliseconds; the master starts a worker itself only if that has not happened by then.
const PROBATION_FALLBACK: Duration = Duration::from_secs(3);

struct Worker<C> {
    generation: u64,
    pid: Pid,
    control: C,
    started: Instant,
    ready_at: Option<Instant>,
    /// The thread that forked it: only that thread may exec without the worker's parent-death
    /// signal firing (0: unknown, adopted from an image that ran the master on another thread).
    forked_by: i32,
    /// Draining: when it is killed.
    drain_deadline: Option<Instant>,
    /// Why the master killed it, for the log line when its exit is reaped.
    killed_because: Option<String>,
    /// Who waits to hear whether this worker made it through readiness and probation.
    reply: Option<Reply>,
}

impl<C> Worker<C> {
    /// Sends `outcome` to whoever asked for this worker; after a final outcome nobody is left.
    fn report(&mut self, outcome: RestartOutcome) {
        let last = !matches!(outcome, RestartOutcome::Ready { .. });
        let reply = if last {
            self.reply.take()
        } else {
            self.reply.clone()
        };
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    }
}

struct Stopping {
    /// The generation that was serving when the stop began; its status becomes the master's.
    serving_generation: Option<u64>,
    exit_code: i32,
}

struct Master<E: Env = Processes> {
    cfg: MasterConfig,
    env: E,
    sockets: Vec<BoundSocket>,
    events: UnboundedSender<Event>,
    next_generation: u64,
    serving: Option<Worker<E::Control>>,
    starting: Option<Worker<E::Control>>,
    draining: Vec<Worker<E::Control>>,
    /// A restart was asked for while another was under way or too many workers drained.
    restart_queued: bool,
    /// The reply of a queued restart, handed to the worker the queued restart starts.
    queued_reply: Option<Reply>,
    crash_streak: u32,
    stopping: Option<Stopping>,
    /// Wakes every fetcher's poll loop: a worker asked for a check.
    check_now: Arc<Notify>,
    /// Tells systemd how things go (`NOTIFY_SOCKET`); off without it.
    sd: Notifier,
    /// Who serves now, for the updater's release state.
    serving_tx: tokio::sync::watch::Sender<Option<ServingWorker>>,
    /// The master's own upgrade by re-exec.
    reexec: ReexecState,
}

/// Where the master's own upgrade stands.
struct ReexecState {
    /// A re-exec asked for and not yet done.
    wanted: Option<reexec::Wanted>,
    /// The binary on disk is being checked (`reexec::prepare`), for this expected sha256.
    preparing: Option<Option<String>>,
    /// The binary on disk can take over, but something blocked the exec: it is checked again
    /// once nothing does.
    awaiting_clear: bool,
}

impl Master<Processes> {
    fn start(
        cfg: MasterConfig,
        sd: crate::systemd::Environment,
    ) -> Result<(Self, UnboundedReceiver<Event>), Error> {
        let launch = Launch::capture(
            cfg.drain_timeout,
            cfg.restart_signal as i32,
            cfg.build_id.clone(),
        )?;
        let sockets =
            crate::systemd::activation::listeners(&cfg.addrs, sd.passed, &cfg.unix_socket)?;
        let timeouts = Timeouts {
            ready: cfg.ready_timeout,
            drain: cfg.drain_timeout,
        };
        let sd = Notifier::new(sd.notify, timeouts);
        let env = Processes::new(launch, cfg.test_run_timeout)?;
        let (master, rx) = Master::new(cfg, env, sockets, sd);
        signals::install(master.cfg.restart_signal, &master.events)?;
        // A full disk or a file-size limit must fail the release's write with EFBIG, not kill
        // the master; children get the default back before exec.
        // SAFETY: setting a signal's disposition to ignore has no memory-safety requirements.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        let launch = &master.env.launch;
        tracing::info!(
            pid = launch.master_pid,
            program = %launch.program.display(),
            listeners = ?master.sockets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            "upshift master started"
        );
        Ok((master, rx))
    }

    async fn run(
        mut self,
        events: UnboundedReceiver<Event>,
        updates: Option<UpdateSettings>,
        adopted: Option<adopt::Adopted>,
    ) -> i32 {
        let reexecuted_from = adopted.as_ref().map(|a| a.from.clone());
        let mut refusals = Vec::new();
        match adopted {
            Some(mut adopted) => {
                refusals = std::mem::take(&mut adopted.refusals);
                self.carry_on(adopted)
            }
            None => self.start_worker("first start", None),
        }
        let mut hook = None;
        // After the first worker is on its way: checking for releases never delays serving.
        if let Some(mut updates) = updates {
            let (user_hook, test_run) = (
                updates.pipeline.on_event.take(),
                updates.pipeline.test_run_timeout,
            );
            updates.pipeline.on_event = self.sd.wrap_hook(user_hook, test_run);
            hook = updates.pipeline.on_event.clone();
            let updater = updater::Updater::new(
                updates.pipeline,
                self.env.launch.program.clone(),
                self.env.launch.args.clone(),
                self.events.clone(),
                self.serving_tx.subscribe(),
            );
            updater.hand_refusals(refusals);
            self.env.preparer.pipeline = Some(updater.books.clone());
            for fetcher in updates.fetchers {
                tracing::info!(fetcher = fetcher.name(), interval = ?fetcher.interval(), "watching for releases");
                tokio::spawn(updater.clone().poll(fetcher, self.check_now.clone()));
            }
        }
        if let Some(from) = reexecuted_from {
            let to = self.build_label();
            updater::emit(&hook, crate::UpgradeEvent::MasterReexecuted { from, to });
        }
        self.serve(events).await
    }
}

impl<E: Env> Master<E> {
    fn new(
        cfg: MasterConfig,
        env: E,
        sockets: Vec<BoundSocket>,
        sd: Notifier,
    ) -> (Self, UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let master = Master {
            env,
            sockets,
            events,
            next_generation: 1,
            serving: None,
            starting: None,
            draining: Vec::new(),
            restart_queued: false,
            queued_reply: None,
            crash_streak: 0,
            stopping: None,
            check_now: Arc::new(Notify::new()),
            reexec: ReexecState {
                wanted: None,
                preparing: None,
                awaiting_clear: false,
            },
            cfg,
            sd,
            serving_tx: tokio::sync::watch::Sender::new(None),
        };
        (master, rx)
    }

    /// The event loop, once the first worker is on its way; returns the master's exit code.
    async fn serve(mut self, mut events: UnboundedReceiver<Event>) -> i32 {
        loop {
            if let Some(code) = self.finished() {
                tracing::info!(exit_code = code, "upshift master exiting");
                return code;
            }
            // The master holds a sender itself, so the channel never closes.
            let Some(event) = events.recv().await else {
                return 1;
            };
            self.handle(event);
            self.try_reexec();
            self.publish_serving();
        }
    }

    fn publish_serving(&self) {
        let now = self.serving.as_ref().map(|w| ServingWorker {
            generation: w.generation,
            pid: w.pid.as_raw() as u32,
        });
        self.serving_tx.send_if_modified(|seen| {
            let changed = *seen != now;
            *seen = now;
            changed
        });
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Signal(sig, Action::Restart) => {
                self.sd.restart_signalled();
                let reason = format!("{sig} received");
                if self.cfg.master_reexec {
                    // The new image, if the binary on disk is one, starts the workers.
                    self.want_reexec(reexec::Wanted {
                        reason,
                        restart: true,
                        expected: None,
                    });
                } else {
                    self.request_restart(&reason, None)
                }
            }
            Event::Reexec(wanted) => self.want_reexec(wanted),
            Event::ReexecPrepared(prepared) => self.on_prepared(prepared),
            Event::Restart { reason, reply } => self.request_restart(&reason, reply),
            Event::ProbationOver { generation } => {
                if let Some(w) = self.serving.as_mut().filter(|w| w.generation == generation) {
                    let pid = w.pid.as_raw() as u32;
                    w.report(RestartOutcome::Survived { generation, pid });
                }
            }
            Event::Signal(sig, Action::Stop) => self.begin_stop(sig),
            Event::Signal(_, Action::Reap) => self.reap(),
            Event::Signal(sig, Action::Forward(_)) => self.forward(sig),
            Event::Ready { generation } => self.on_ready(generation),
            Event::ReadyTimeout { generation } => self.on_ready_timeout(generation),
            Event::DrainTimeout { generation } => self.on_drain_timeout(generation),
            Event::BackoffElapsed => {
                if self.stopping.is_none() && self.serving.is_none() && self.starting.is_none() {
                    self.start_worker("restart after a crash", None);
                }
            }
        }
    }

    fn finished(&self) -> Option<i32> {
        let stop = self.stopping.as_ref()?;
        let idle = self.serving.is_none() && self.starting.is_none() && self.draining.is_empty();
        idle.then_some(stop.exit_code)
    }

    fn start_worker(&mut self, reason: &str, reply: Option<Reply>) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let heard = Heard {
            generation,
            events: self.events.clone(),
            check_now: self.check_now.clone(),
        };
        let (pid, control) = match self.env.spawn(generation, &self.sockets, heard) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, generation, "cannot start a worker");
                self.sd
                    .restart_failed(&e.to_string(), self.serving.as_ref().map(|w| w.generation));
                if let Some(reply) = reply {
                    let reason = e.to_string();
                    let _ = reply.send(RestartOutcome::Failed {
                        reason,
                        after_ready: false,
                    });
                }
                if self.serving.is_none() {
                    self.schedule_respawn();
                }
                return;
            }
        };
        self.after(self.cfg.ready_timeout, Event::ReadyTimeout { generation });
        tracing::info!(generation, %pid, reason, "worker starting");
        self.sd.worker_starting(generation, reason);
        self.starting = Some(Worker {
            generation,
            pid,
            control,
            started: Instant::now(),
            ready_at: None,
            forked_by: reexec::this_thread(),
            drain_deadline: None,
            killed_because: None,
            reply,
        });
    }

    fn request_restart(&mut self, reason: &str, reply: Option<Reply>) {
        if self.stopping.is_some() {
            tracing::info!(reason, "not restarting: the master is stopping");
            if let Some(reply) = reply {
                let reason = "the master is stopping".to_string();
                let _ = reply.send(RestartOutcome::Failed {
                    reason,
                    after_ready: false,
                });
            }
            return;
        }
        self.sd.restart_requested(reason);
        if reply.is_some() {
            // A later request supersedes an earlier queued one; dropping the earlier sender
            // tells its waiter so.
            self.queued_reply = reply;
        }
        if let Some(w) = &self.starting {
            tracing::info!(
                reason,
                starting = w.generation,
                "restart queued until the starting worker is ready or gone"
            );
            self.restart_queued = true;
        } else if self.draining.len() >= self.cfg.max_draining {
            tracing::warn!(
                reason,
                draining = self.draining.len(),
                "restart queued until a draining worker exits (max_draining reached)"
            );
            self.restart_queued = true;
        } else {
            self.restart_queued = false;
            let reply = self.queued_reply.take();
            self.start_worker(reason, reply);
        }
    }

    fn on_ready(&mut self, generation: u64) {
        let Some(mut new) = self.starting.take_if(|w| w.generation == generation) else {
            return;
        };
        new.ready_at = Some(Instant::now());
        tracing::info!(generation, pid = %new.pid, startup = ?new.started.elapsed(), "worker ready");
        if new.reply.is_some() {
            let pid = new.pid.as_raw() as u32;
            new.report(RestartOutcome::Ready { generation, pid });
            self.after(self.cfg.probation, Event::ProbationOver { generation });
        }
        if let Some(old) = self.serving.replace(new) {
            self.drain(old, "replaced by a ready worker");
        }
        if std::mem::take(&mut self.restart_queued) {
            self.request_restart("queued restart", None);
        }
        if let Some(w) = &self.serving {
            let pid = w.pid.as_raw() as u32;
            self.sd
                .worker_ready(w.generation, pid, self.starting.is_none());
        }
    }

    fn on_ready_timeout(&mut self, generation: u64) {
        let Some(w) = self
            .starting
            .as_mut()
            .filter(|w| w.generation == generation)
        else {
            return;
        };
        let why = format!(
            "not ready within {:?} (did prog call State::ready()? the upshift::http helpers do)",
            self.cfg.ready_timeout
        );
        tracing::warn!(generation, pid = %w.pid, "new worker {why}; killing it, the previous worker keeps serving");
        w.killed_because = Some(why);
        let pid = w.pid;
        self.env.kill(pid, Signal::SIGKILL);
    }

    fn drain(&mut self, mut worker: Worker<E::Control>, why: &str) {
        tracing::info!(generation = worker.generation, pid = %worker.pid, why, "worker draining");
        // Replaced or stopped while on probation, it did not fail; stopped before it was even
        // ready, it did not succeed either.
        let (generation, pid) = (worker.generation, worker.pid.as_raw() as u32);
        if worker.ready_at.is_some() {
            worker.report(RestartOutcome::Survived { generation, pid });
        } else {
            let reason = format!("stopped before it was ready ({why})");
            worker.report(RestartOutcome::Failed {
                reason,
                after_ready: false,
            });
        }
        // If the line cannot be written, SIGTERM says the same thing.
        if !self.env.tell(&mut worker.control, ToWorker::Drain) {
            self.env.kill(worker.pid, Signal::SIGTERM);
        }
        worker.killed_because = None;
        worker.drain_deadline = Some(Instant::now() + self.cfg.drain_timeout);
        self.after(
            self.cfg.drain_timeout,
            Event::DrainTimeout {
                generation: worker.generation,
            },
        );
        self.draining.push(worker);
    }

    fn on_drain_timeout(&mut self, generation: u64) {
        let Some(w) = self
            .draining
            .iter_mut()
            .find(|w| w.generation == generation)
        else {
            return;
        };
        let why = format!("still draining after {:?}", self.cfg.drain_timeout);
        tracing::warn!(generation, pid = %w.pid, "worker {why}; killing it");
        w.killed_because = Some(why);
        let pid = w.pid;
        self.env.kill(pid, Signal::SIGKILL);
    }

    fn forward(&mut self, sig: Signal) {
        match &self.serving {
            Some(w) => {
                tracing::debug!(%sig, pid = %w.pid, "forwarding signal to the serving worker");
                let pid = w.pid;
                self.env.kill(pid, sig);
            }
            None => tracing::debug!(%sig, "no serving worker to forward the signal to"),
        }
    }

    fn begin_stop(&mut self, sig: Signal) {
        if self.stopping.is_some() {
            tracing::warn!(%sig, "second stop signal: killing every worker now");
            let pids: Vec<Pid> = self.all_workers().map(|w| w.pid).collect();
            for pid in pids {
                self.env.kill(pid, Signal::SIGKILL);
            }
            return;
        }
        tracing::info!(%sig, "stopping: draining workers");
        self.stop_with(0);
    }

    fn stop_with(&mut self, exit_code: i32) {
        let running = self.serving.iter().chain(self.starting.iter()).count();
        self.sd.stopping(running + self.draining.len());
        self.stopping = Some(Stopping {
            serving_generation: self.serving.as_ref().map(|w| w.generation),
            exit_code,
        });
        self.restart_queued = false;
        if let Some(w) = self.starting.take() {
            self.drain(w, "the master is stopping");
        }
        if let Some(w) = self.serving.take() {
            self.drain(w, "the master is stopping");
        }
    }

    fn all_workers(&self) -> impl Iterator<Item = &Worker<E::Control>> {
        self.serving
            .iter()
            .chain(self.starting.iter())
            .chain(self.draining.iter())
    }

    fn after(&self, delay: Duration, event: Event) {
        let tx = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(event);
        });
    }
}
