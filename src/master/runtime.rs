//! Where the master runs: a thread of its own with a single-threaded runtime, started from
//! [`Upgrader::run`](crate::Upgrader::run) or `run_async` on the caller's thread.

use crate::config::MasterConfig;
use crate::error::Error;
use crate::systemd;

use super::Master;

/// Runs the master on a thread of its own and waits for its exit code.
pub(crate) fn run_blocking(cfg: MasterConfig) -> Result<i32, Error> {
    // On the caller's thread, before any thread of ours exists: this edits the environment.
    let sd = systemd::Environment::take()?;
    let thread = std::thread::Builder::new()
        .name("upshift-master".into())
        .spawn(move || master_thread(cfg, sd))
        .map_err(|e| Error::Master {
            what: "cannot start the master thread",
            source: e,
        })?;
    thread.join().unwrap_or_else(|_| {
        Err(Error::Master {
            what: "the master thread panicked",
            source: std::io::Error::other("panic"),
        })
    })
}

/// As [`run_blocking`], awaited from inside the caller's runtime without blocking it.
pub(crate) async fn run_on_own_thread(cfg: MasterConfig) -> Result<i32, Error> {
    let sd = systemd::Environment::take()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("upshift-master".into())
        .spawn(move || {
            let _ = tx.send(master_thread(cfg, sd));
        })
        .map_err(|e| Error::Master {
            what: "cannot start the master thread",
            source: e,
        })?;
    rx.await.unwrap_or_else(|_| {
        Err(Error::Master {
            what: "the master thread panicked",
            source: std::io::Error::other("panic"),
        })
    })
}

/// The master's own single-threaded runtime, on the thread that forks every worker. That thread
/// lives as long as the master, which matters: Linux's parent-death signal fires when the forking
/// *thread* exits.
fn master_thread(cfg: MasterConfig, sd: systemd::Environment) -> Result<i32, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Master {
            what: "cannot start the master's runtime",
            source: e,
        })?;
    rt.block_on(async move {
        let mut cfg = cfg;
        let updates = cfg.updates.take();
        let (master, events) = Master::start(cfg, sd)?;
        Ok(master.run(events, updates).await)
    })
}
