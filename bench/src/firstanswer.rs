//! A prober thread for publish → traffic timing: `GET /` on a fresh connection every few
//! milliseconds, separate from wrk, noting when each worker (pid) first answered and with which
//! build. A new worker has a new pid, so "the first answer from the new build after the publish"
//! is well defined even when releases reuse a BUILD_ID.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::httpget;

/// One worker's first answer.
#[derive(Clone, Debug)]
pub struct First {
    pub build: String,
    pub pid: u32,
    pub at: Instant,
}

#[derive(Clone, Debug, Default)]
pub struct Log {
    pub probes: u64,
    pub failures: u64,
    /// The first few failures, with the time since the prober started.
    pub samples: Vec<String>,
    /// Each worker's first answer, in order.
    pub firsts: Vec<First>,
}

pub struct FirstAnswers {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FirstAnswers {
    pub fn start(addr: SocketAddr, interval: Duration) -> Result<FirstAnswers, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Log::default()));
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::Builder::new()
            .name("first-answers".into())
            .spawn(move || probe_loop(addr, interval, &s, &l))
            .map_err(|e| format!("cannot start the prober thread: {e}"))?;
        Ok(FirstAnswers {
            stop,
            log,
            thread: Some(thread),
        })
    }

    /// When a worker of `build` first answered at or after `since`, if one has.
    pub fn first(&self, build: &str, since: Instant) -> Option<Instant> {
        let log = self.log.lock().ok()?;
        log.firsts
            .iter()
            .filter(|f| f.build == build && f.at >= since)
            .map(|f| f.at)
            .min()
    }

    pub fn finish(mut self) -> Log {
        self.halt();
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FirstAnswers {
    fn drop(&mut self) {
        self.halt();
    }
}

fn probe_loop(addr: SocketAddr, interval: Duration, stop: &AtomicBool, log: &Mutex<Log>) {
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let reply = httpget::get(addr, "/", Duration::from_secs(5));
        let now = Instant::now();
        let Ok(mut l) = log.lock() else { return };
        l.probes += 1;
        let greeting = match &reply {
            Ok(r) if r.status == 200 => httpget::parse_greeting(&r.body),
            _ => None,
        };
        match greeting {
            Some(g) => {
                if !l.firsts.iter().any(|f| f.pid == g.pid) {
                    l.firsts.push(First {
                        build: g.build,
                        pid: g.pid,
                        at: now,
                    });
                }
            }
            None => {
                l.failures += 1;
                if l.samples.len() < 5 {
                    let what = match reply {
                        Ok(r) => format!("status {}: {:?}", r.status, r.body.trim()),
                        Err(e) => e.to_string(),
                    };
                    let at = (now - started).as_secs_f64();
                    l.samples.push(format!("at {at:.3} s: {what}"));
                }
            }
        }
        drop(l);
        std::thread::sleep(interval);
    }
}
