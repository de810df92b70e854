//! Where the master runs: a thread of its own with a single-threaded runtime, started from
//! [`Upgrader::run`](crate::Upgrader::run) or `run_async` on the caller's thread.

use crate::config::MasterConfig;
use crate::error::Error;
use crate::systemd;

use super::adopt::wait_only;
use super::handover::{self, Handover};
use super::Master;

/// Runs a master re-executed in place: the previous image left a handover document at the
/// descriptor `fd` names. Whatever fails here (this build's configuration, the document, taking
/// over) ends in [`wait_only`], never in workers left without a parent. Returns the exit code.
pub(crate) fn run_adopting(cfg: Result<MasterConfig, Error>, fd: &str) -> i32 {
    let doc = match fd.parse() {
        Ok(fd) => handover::read_fd(fd).map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "{}={fd:?} is not a descriptor number",
            handover::FD_ENV
        )),
    };
    let doc = match doc {
        Ok(doc) => doc,
        Err(why) => return wait_only(None, &why),
    };
    let cfg = match cfg {
        Ok(cfg) => cfg,
        Err(e) => return wait_only(Some(&doc), &format!("this build's configuration: {e}")),
    };
    let sd = match systemd::Environment::take() {
        Ok(sd) => sd,
        Err(e) => return wait_only(Some(&doc), &e.to_string()),
    };
    let run = |cfg, sd, doc: Handover| {
        let kept = doc.clone();
        master_thread(cfg, sd, Some(doc))
            .unwrap_or_else(|e| wait_only(Some(&kept), &format!("taking over: {e}")))
    };
    if tokio::runtime::Handle::try_current().is_err() {
        super::memory::lean_allocator();
        return run(cfg, sd, doc);
    }
    // Inside the application's runtime (`run_async`): a thread of its own, as for a first start.
    let kept = doc.clone();
    std::thread::Builder::new()
        .name("upshift-master".into())
        .spawn(move || run(cfg, sd, doc))
        .map_or_else(
            |e| wait_only(Some(&kept), &format!("cannot start the master thread: {e}")),
            |t| t.join().unwrap_or(1),
        )
}

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
        return master_thread(cfg, sd, None);
    }
    let thread = std::thread::Builder::new()
        .name("upshift-master".into())
        .spawn(move || master_thread(cfg, sd, None))
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
            let _ = tx.send(master_thread(cfg, sd, None));
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
fn master_thread(
    cfg: MasterConfig,
    sd: systemd::Environment,
    handover: Option<Handover>,
) -> Result<i32, Error> {
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
        let (master, events, adopted) = match handover {
            Some(doc) => {
                let (master, events, adopted) = Master::adopt(cfg, doc)?;
                (master, events, Some(adopted))
            }
            None => {
                let (master, events) = Master::start(cfg, sd)?;
                (master, events, None)
            }
        };
        Ok(master.run(events, updates, adopted).await)
    })
}
