//! The master's side effects on worker processes, behind one seam: starting a worker, signalling
//! it, telling it to drain, collecting its exit. [`Processes`] does it for real; the policy tests
//! put a fake behind the same trait and drive the worker's side themselves, with paused time.

use std::sync::Arc;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::BufReader;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::reaper::{self, Exit};
use super::spawn::Launch;
use super::Event;
use crate::control::{Lines, ToMaster, ToWorker};
use crate::error::Error;
use crate::listener::BoundSocket;

/// What the master does to worker processes.
pub(crate) trait Env {
    /// The master's end of a worker's control socket. Dropping it stops listening to the worker.
    type Control;

    /// Starts worker `generation` on `sockets`; what it says on its control socket goes to
    /// `heard`.
    fn spawn(
        &mut self,
        generation: u64,
        sockets: &[BoundSocket],
        heard: Heard,
    ) -> Result<(Pid, Self::Control), Error>;

    /// Writes `msg` on the control socket without waiting; false if it was not written whole.
    fn tell(&mut self, control: &mut Self::Control, msg: ToWorker) -> bool;

    /// Sends `sig` to `pid`; a worker that is already gone is no error (its exit is on its way).
    fn kill(&mut self, pid: Pid, sig: Signal);

    /// Which of `known` have exited, and how.
    fn reap(&mut self, known: &[Pid]) -> Vec<(Pid, Exit)>;
}

/// Where one worker's messages go: readiness to the master's event loop, a check request to the
/// fetchers.
#[derive(Debug, Clone)]
pub(crate) struct Heard {
    pub(crate) generation: u64,
    pub(crate) events: UnboundedSender<Event>,
    pub(crate) check_now: Arc<Notify>,
}

impl Heard {
    pub(crate) fn deliver(&self, msg: ToMaster) {
        match msg {
            ToMaster::Ready => {
                let _ = self.events.send(Event::Ready {
                    generation: self.generation,
                });
            }
            ToMaster::CheckNow => self.check_now.notify_waiters(),
        }
    }
}

/// Real worker processes, started by re-executing the program.
#[derive(Debug)]
pub(crate) struct Processes {
    pub(crate) launch: Launch,
}

/// The master's half of a real control socket, and the task that reads the worker's messages.
#[derive(Debug)]
pub(crate) struct Socket {
    write: OwnedWriteHalf,
    reader: JoinHandle<()>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Env for Processes {
    type Control = Socket;

    fn spawn(
        &mut self,
        generation: u64,
        sockets: &[BoundSocket],
        heard: Heard,
    ) -> Result<(Pid, Socket), Error> {
        let spawned = self.launch.spawn(generation, sockets)?;
        let (read, write) = spawned.control.into_split();
        let reader = tokio::spawn(async move {
            let mut lines = Lines::new(BufReader::new(read));
            while let Ok(Some(line)) = lines.next_line().await {
                match ToMaster::decode(&line) {
                    Some(msg) => heard.deliver(msg),
                    None => tracing::debug!(
                        generation,
                        message = %String::from_utf8_lossy(&line),
                        "ignoring unknown control message from a worker"
                    ),
                }
            }
        });
        Ok((spawned.pid, Socket { write, reader }))
    }

    fn tell(&mut self, control: &mut Socket, msg: ToWorker) -> bool {
        // A fresh socket's buffer always takes a whole line: no partial write to finish later.
        let line = msg.line();
        control.write.try_write(&line).ok() == Some(line.len())
    }

    fn kill(&mut self, pid: Pid, sig: Signal) {
        if let Err(e) = kill(pid, sig) {
            tracing::debug!(%pid, %sig, error = %e, "cannot signal a worker");
        }
    }

    fn reap(&mut self, known: &[Pid]) -> Vec<(Pid, Exit)> {
        reaper::reap(known)
    }
}
