//! A fake [`Env`] and a harness around a master that runs on it: no processes, no sockets, and
//! the tokio clock paused, so the policy tests decide when workers speak, exit, and time passes.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use std::os::fd::{OwnedFd, RawFd};

use super::env::{Env, Heard};
use super::handover::Handover;
use super::reaper::Exit;
use super::reexec::{Image, Prepared};
use super::signals::Action;
use super::{Event, Master, RestartOutcome, ServingWorker};
use crate::config::{CrashPolicy, MasterConfig};
use crate::control::{ToMaster, ToWorker};
use crate::error::Error;
use crate::listener::BoundSocket;
use crate::systemd::notify::Notifier;

/// What the master did to a worker, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Call {
    Spawn {
        generation: u64,
    },
    Tell {
        generation: u64,
        msg: ToWorker,
    },
    Kill {
        generation: u64,
        sig: Signal,
    },
    /// The binary on disk is to be checked for the master's re-exec (and must have this sha256).
    PrepareReexec {
        expected: Option<String>,
    },
}

#[derive(Default)]
struct World {
    workers: Vec<(Pid, Heard)>,
    calls: Vec<Call>,
    /// Exits the test announced, collected by the master's next reap.
    exited: Vec<(Pid, Exit)>,
    /// The drain line cannot be written (a full or broken socket).
    refuse_tell: bool,
    /// The documents the master tried to exec with (the fake exec always fails).
    execs: Vec<Handover>,
    /// Workers that run another build than the master.
    other_image: Vec<Pid>,
    /// Checks of the binary on disk are answered by the test (else at once: the same image).
    hold_reexec_checks: bool,
}

/// Records what the master does; each worker's pid is 1000 + its generation.
#[derive(Clone, Default)]
pub(super) struct FakeEnv {
    world: Arc<Mutex<World>>,
}

fn pid_of(generation: u64) -> Pid {
    Pid::from_raw(1000 + generation as i32)
}

fn generation_of(pid: Pid) -> u64 {
    (pid.as_raw() - 1000) as u64
}

impl FakeEnv {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }
}

impl Env for FakeEnv {
    type Control = Pid;

    fn spawn(
        &mut self,
        generation: u64,
        _sockets: &[BoundSocket],
        heard: Heard,
    ) -> Result<(Pid, Pid), Error> {
        let pid = pid_of(generation);
        let mut world = self.world();
        world.calls.push(Call::Spawn { generation });
        world.workers.push((pid, heard));
        Ok((pid, pid))
    }

    fn tell(&mut self, control: &mut Pid, msg: ToWorker) -> bool {
        let mut world = self.world();
        let generation = generation_of(*control);
        world.calls.push(Call::Tell { generation, msg });
        !world.refuse_tell
    }

    fn kill(&mut self, pid: Pid, sig: Signal) {
        let generation = generation_of(pid);
        self.world().calls.push(Call::Kill { generation, sig });
    }

    fn reap(&mut self, known: &[Pid]) -> Vec<(Pid, Exit)> {
        let mut world = self.world();
        let (out, rest) = std::mem::take(&mut world.exited)
            .into_iter()
            .partition(|(pid, _)| known.contains(pid));
        world.exited = rest;
        out
    }

    fn adopt(&mut self, generation: u64, _control: OwnedFd, heard: Heard) -> Result<Pid, Error> {
        let pid = pid_of(generation);
        self.world().workers.push((pid, heard));
        Ok(pid)
    }

    fn control_fd(&self, control: &Pid) -> RawFd {
        100 + generation_of(*control) as RawFd
    }

    fn prepare_reexec(&mut self, events: &UnboundedSender<Event>, expected: Option<String>) {
        let mut world = self.world();
        world.calls.push(Call::PrepareReexec { expected });
        if !world.hold_reexec_checks {
            let _ = events.send(Event::ReexecPrepared(Prepared::SameImage));
        }
    }

    fn exec(&mut self, _image: &Image, doc: &Handover) -> std::io::Error {
        self.world().execs.push(doc.clone());
        std::io::Error::other("a fake cannot exec")
    }

    fn runs_own_image(&self, pid: Pid) -> bool {
        !self.world().other_image.contains(&pid)
    }

    fn own_sha256(&self) -> Option<String> {
        None
    }
}

/// The timeouts are distinct from each other, so that a test cannot pass on the wrong one.
pub(super) fn config() -> MasterConfig {
    MasterConfig {
        addrs: Vec::new(),
        unix_socket: Default::default(),
        restart_signal: Signal::SIGUSR2,
        ready_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(7),
        max_draining: 4,
        crash_policy: CrashPolicy::Restart,
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(1600),
        probation: Duration::from_secs(2),
        updates: None,
        build_id: None,
        master_reexec: true,
        test_run_timeout: Duration::from_secs(3),
    }
}

/// A master on a [`FakeEnv`], its event loop running as a task, its first worker started.
pub(super) struct Harness {
    pub(super) env: FakeEnv,
    events: UnboundedSender<Event>,
    serving: watch::Receiver<Option<ServingWorker>>,
    master: JoinHandle<i32>,
}

impl Harness {
    pub(super) async fn start(cfg: MasterConfig) -> Self {
        let env = FakeEnv::default();
        let (mut master, rx) = Master::new(cfg, env.clone(), Vec::new(), Notifier::default());
        let events = master.events.clone();
        let serving = master.serving_tx.subscribe();
        master.start_worker("first start", None);
        let h = Harness {
            env,
            events,
            serving,
            master: tokio::spawn(master.serve(rx)),
        };
        settle().await;
        h
    }

    /// A started master whose first worker serves.
    pub(super) async fn serving(cfg: MasterConfig) -> Self {
        let h = Self::start(cfg).await;
        h.ready(1).await;
        assert_eq!(h.serving_generation(), Some(1));
        h
    }

    pub(super) async fn send(&self, event: Event) {
        self.events.send(event).unwrap();
        settle().await;
    }

    /// Worker `generation` says it is ready, over the path its control socket would take.
    pub(super) async fn ready(&self, generation: u64) {
        let heard = {
            let world = self.env.world();
            let found = world.workers.iter().find(|(p, _)| *p == pid_of(generation));
            found.expect("no such worker").1.clone()
        };
        heard.deliver(ToMaster::Ready);
        settle().await;
    }

    /// Worker `generation` exits with `exit`, and SIGCHLD reaches the master.
    pub(super) async fn exit(&self, generation: u64, exit: Exit) {
        self.env.world().exited.push((pid_of(generation), exit));
        self.send(Event::Signal(Signal::SIGCHLD, Action::Reap))
            .await;
    }

    /// A restart as the install pipeline asks for it; its outcomes come on the receiver.
    pub(super) async fn restart(&self) -> UnboundedReceiver<RestartOutcome> {
        let (reply, outcomes) = mpsc::unbounded_channel();
        let reason = "test".to_string();
        self.send(Event::Restart {
            reason,
            reply: Some(reply),
        })
        .await;
        outcomes
    }

    pub(super) async fn signal(&self, sig: Signal, action: Action) {
        self.send(Event::Signal(sig, action)).await;
    }

    /// Moves the paused clock on and lets every timer that came due deliver its event.
    pub(super) async fn advance(&self, by: Duration) {
        tokio::time::advance(by).await;
        settle().await;
    }

    pub(super) fn refuse_drain_lines(&self) {
        self.env.world().refuse_tell = true;
    }

    /// From now on the test answers the checks of the binary on disk (`Event::ReexecPrepared`).
    pub(super) fn hold_reexec_checks(&self) {
        self.env.world().hold_reexec_checks = true;
    }

    /// The handover documents of the master's attempted re-execs.
    pub(super) fn execs(&self) -> Vec<Handover> {
        self.env.world().execs.clone()
    }

    /// How often the binary on disk was checked for a re-exec.
    pub(super) fn reexec_checks(&self) -> usize {
        let calls = self.calls();
        calls
            .iter()
            .filter(|c| matches!(c, Call::PrepareReexec { .. }))
            .count()
    }

    /// The sha256 each check of the binary on disk required.
    pub(super) fn reexec_expectations(&self) -> Vec<Option<String>> {
        let calls = self.calls();
        let checks = calls.iter().filter_map(|c| match c {
            Call::PrepareReexec { expected } => Some(expected.clone()),
            _ => None,
        });
        checks.collect()
    }

    pub(super) fn calls(&self) -> Vec<Call> {
        self.env.world().calls.clone()
    }

    pub(super) fn spawned(&self) -> Vec<u64> {
        let calls = self.calls();
        let spawns = calls.iter().filter_map(|c| match c {
            Call::Spawn { generation } => Some(*generation),
            _ => None,
        });
        spawns.collect()
    }

    pub(super) fn kills(&self) -> Vec<(u64, Signal)> {
        let calls = self.calls();
        let kills = calls.iter().filter_map(|c| match c {
            Call::Kill { generation, sig } => Some((*generation, *sig)),
            _ => None,
        });
        kills.collect()
    }

    pub(super) fn drained(&self) -> Vec<u64> {
        let calls = self.calls();
        let tells = calls.iter().filter_map(|c| match c {
            Call::Tell {
                generation,
                msg: ToWorker::Drain,
            } => Some(*generation),
            _ => None,
        });
        tells.collect()
    }

    pub(super) fn serving_generation(&self) -> Option<u64> {
        self.serving.borrow().map(|w| w.generation)
    }

    pub(super) fn is_running(&self) -> bool {
        !self.master.is_finished()
    }

    /// The master's exit code; it must have finished already.
    pub(super) async fn exit_code(self) -> i32 {
        assert!(self.master.is_finished(), "the master is still running");
        self.master.await.unwrap()
    }
}

/// Lets every task that can run, run: the master handling what was sent, timers' senders.
pub(super) async fn settle() {
    for _ in 0..32 {
        tokio::task::yield_now().await;
    }
}

pub(super) fn pid(generation: u64) -> u32 {
    pid_of(generation).as_raw() as u32
}
