//! The master's side effects on worker processes, behind one seam: starting a worker, signalling
//! it, telling it to drain, collecting its exit. [`Processes`] does it for real; the policy tests
//! put a fake behind the same trait and drive the worker's side themselves, with paused time.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::BufReader;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::handover::Handover;
use super::reaper::{self, Exit};
use super::reexec::{self, Image, OwnImage, Preparer};
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

    /// Takes over worker `generation`'s control socket after a re-exec (the worker kept running).
    fn adopt(
        &mut self,
        generation: u64,
        control: OwnedFd,
        heard: Heard,
    ) -> Result<Self::Control, Error>;

    /// The descriptor of a control socket, to hand it over across exec.
    fn control_fd(&self, control: &Self::Control) -> RawFd;

    /// Starts checking the binary on disk for a re-exec; the result comes back as
    /// [`Event::ReexecPrepared`].
    fn prepare_reexec(&mut self, events: &UnboundedSender<Event>, expected: Option<String>);

    /// Becomes `image`, handing `doc` over. Returns only if that failed.
    fn exec(&mut self, image: &Image, doc: &Handover) -> std::io::Error;

    /// Whether the serving worker `pid` runs the master's own image.
    fn runs_own_image(&self, pid: Pid) -> bool;

    /// The sha256 of the master's own image, if it is known without reading it.
    fn own_sha256(&self) -> Option<String>;
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
pub(crate) struct Processes {
    pub(crate) launch: Launch,
    /// Checks the binary on disk for the master's re-exec; set once the pipeline exists.
    pub(crate) preparer: Preparer,
}

impl std::fmt::Debug for Processes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processes")
            .field("launch", &self.launch)
            .finish_non_exhaustive()
    }
}

impl Processes {
    pub(crate) fn new(
        launch: Launch,
        test_run_timeout: std::time::Duration,
    ) -> Result<Self, Error> {
        let own = OwnImage::read().map_err(|e| Error::Master {
            what: "cannot read the master's own executable (/proc/self/exe)",
            source: e,
        })?;
        let preparer = Preparer {
            invoked: launch.program.clone(),
            args: launch.args.clone(),
            test_run_timeout,
            pipeline: None,
            own: Arc::new(std::sync::Mutex::new(own)),
        };
        Ok(Processes { launch, preparer })
    }
}

/// Reads what a worker says on its control socket, for the worker's whole life.
fn listen_to(generation: u64, read: OwnedReadHalf, heard: Heard) -> JoinHandle<()> {
    tokio::spawn(async move {
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
    })
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
        let reader = listen_to(generation, read, heard);
        Ok((spawned.pid, Socket { write, reader }))
    }

    fn tell(&mut self, control: &mut Socket, msg: ToWorker) -> bool {
        // A socket's buffer always takes a whole short line: no partial write to finish later.
        // Written on the descriptor itself, not through tokio's `try_write`: that refuses until
        // the reactor has seen the socket writable once, which a control socket just adopted
        // after a re-exec has not.
        let line = msg.line();
        let fd = self.control_fd(control);
        let flags =
            nix::sys::socket::MsgFlags::MSG_DONTWAIT | nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
        nix::sys::socket::send(fd, &line, flags).ok() == Some(line.len())
    }

    fn kill(&mut self, pid: Pid, sig: Signal) {
        if let Err(e) = kill(pid, sig) {
            tracing::debug!(%pid, %sig, error = %e, "cannot signal a worker");
        }
    }

    fn reap(&mut self, known: &[Pid]) -> Vec<(Pid, Exit)> {
        reaper::reap(known)
    }

    fn adopt(&mut self, generation: u64, control: OwnedFd, heard: Heard) -> Result<Socket, Error> {
        let fd = control.as_raw_fd();
        let prepare = crate::fds::set_cloexec(fd).and_then(|()| crate::fds::set_nonblocking(fd));
        let stream = prepare
            .and_then(|()| {
                tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(control))
            })
            .map_err(|e| {
                Error::io(
                    format!("cannot take over worker {generation}'s control socket at fd {fd}"),
                    e,
                )
            })?;
        let (read, write) = stream.into_split();
        let reader = listen_to(generation, read, heard);
        Ok(Socket { write, reader })
    }

    fn control_fd(&self, control: &Socket) -> RawFd {
        let stream: &tokio::net::UnixStream = control.write.as_ref();
        stream.as_raw_fd()
    }

    fn prepare_reexec(&mut self, events: &UnboundedSender<Event>, expected: Option<String>) {
        self.preparer.start(events.clone(), expected);
    }

    fn exec(&mut self, image: &Image, doc: &Handover) -> std::io::Error {
        let Some(file) = &image.file else {
            return std::io::Error::other("no binary to execute");
        };
        let mut argv = vec![self.launch.arg0.clone()];
        argv.extend(self.launch.args.iter().cloned());
        reexec::exec(file, &argv, doc)
    }

    fn runs_own_image(&self, pid: Pid) -> bool {
        let own = self.preparer.own.lock().unwrap_or_else(|p| p.into_inner());
        own.runs_in(pid.as_raw())
    }

    fn own_sha256(&self) -> Option<String> {
        let own = self.preparer.own.lock().unwrap_or_else(|p| p.into_inner());
        own.known_sha256()
    }
}
