//! Where the master runs: a thread of its own with a single-threaded runtime, started from
//! [`Upgrader::run`](crate::Upgrader::run) or `run_async` on the caller's thread.

use crate::config::MasterConfig;
use crate::error::Error;
use crate::systemd;

use super::Master;

/// See [`master_thread`]. Staging alone holds two at once (the unpacker and a file body's
/// reads), so this leaves room for a poll meanwhile.
const MAX_BLOCKING_THREADS: usize = 4;

/// Runs the master and waits for its exit code: on the caller's thread (a plain `main`), or on
/// a thread of its own when the caller is inside a runtime, where another could not start.
pub(crate) fn run_blocking(cfg: MasterConfig) -> Result<i32, Error> {
    // On the caller's thread, before any thread of ours exists: this edits the environment.
    let sd = systemd::Environment::take()?;
    if tokio::runtime::Handle::try_current().is_err() {
        // The process is the master's alone from here on (it exits when the master does): a
        // second thread and its malloc arena would only add to its footprint.
        super::memory::lean_allocator();
        return master_thread(cfg, sd);
    }
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
///
/// A handful of blocking threads at most: the master's blocking work is a few `stat`s per poll,
/// one staging at a time (its unpacker and the body it reads) and the ledger's saves; each
/// thread kept idle costs its stack pages.
fn master_thread(cfg: MasterConfig, sd: systemd::Environment) -> Result<i32, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
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
