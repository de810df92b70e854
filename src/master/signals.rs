//! Which signals the master acts on, and which it passes to the serving worker.

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::UnboundedSender;

use super::Event;
use crate::error::Error;

/// Forwarded to the serving worker (the restart signal excepted), which catches them all
/// (`crate::forwarded`). Signals a runtime uses for its own purposes (SIGCHLD, SIGPIPE, SIGALRM,
/// SIGPROF, SIGURG) are not.
use crate::forwarded::FORWARDED_SIGNALS as FORWARDED;

/// What the master does with a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Restart,
    Stop,
    Reap,
    Forward(Signal),
}

/// Installs the handlers. Must run before the first worker starts, so that a restart signal sent
/// as soon as the service answers does not hit the default action and kill the master.
pub(crate) fn install(restart: Signal, events: &UnboundedSender<Event>) -> Result<(), Error> {
    let mut wanted = vec![
        (restart, Action::Restart),
        (Signal::SIGTERM, Action::Stop),
        (Signal::SIGINT, Action::Stop),
        (Signal::SIGCHLD, Action::Reap),
    ];
    wanted.extend(
        FORWARDED
            .iter()
            .filter(|&&s| s != restart)
            .map(|&s| (s, Action::Forward(s))),
    );
    for (sig, action) in wanted {
        let mut stream = signal(SignalKind::from_raw(sig as i32)).map_err(|e| Error::Master {
            what: "cannot install a signal handler",
            source: e,
        })?;
        let tx = events.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(Event::Signal(sig, action)).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}
