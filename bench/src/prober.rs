//! A prober thread: `GET /` on a fresh connection every few milliseconds, separate from wrk,
//! counting failures and noting which build and worker answered, and when. A fault case passes
//! only if every probe sent while the master lived was answered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::httpget;

/// One worker that answered: its build, pid, last answer and how many.
#[derive(Clone, Debug)]
pub struct Seen {
    pub build: String,
    pub pid: u32,
    pub last: Instant,
    pub count: u64,
}

#[derive(Clone, Debug, Default)]
pub struct ProbeLog {
    pub probes: u64,
    pub failures: u64,
    /// When each probe that failed ended (its error or its answer came back).
    pub failed_at: Vec<Instant>,
    /// When each probe ended.
    pub ended_at: Vec<Instant>,
    /// The first few failures, with the time since the prober started.
    pub samples: Vec<String>,
    /// Who answered, in order of first answer.
    pub seen: Vec<Seen>,
    /// The longest time between two consecutive answered probes.
    pub longest_gap: Duration,
    /// When the last answered probe ended.
    last_ok: Option<Instant>,
}

impl ProbeLog {
    /// `(failed, probes)` among the probes that ended before `t`: what happened while the
    /// master lived, when another thread killed it at `t`. A probe still in flight at `t` is
    /// the master's death's, not the live master's.
    pub fn before(&self, t: Instant) -> (u64, u64) {
        let failed = self.failed_at.iter().filter(|&&a| a < t).count() as u64;
        let ended = self.ended_at.iter().filter(|&&a| a < t).count() as u64;
        (failed, ended)
    }

    /// Worker pids in the order they first answered, with their build: `b1@123 → b2@456`.
    pub fn sequence(&self) -> String {
        if self.seen.is_empty() {
            return "nobody answered".into();
        }
        self.seen
            .iter()
            .map(|s| format!("{}@{}×{}", s.build, s.pid, s.count))
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

/// What a probing thread records: one probe's outcome at a time.
pub trait Record: Clone + Default + Send + 'static {
    /// The thread's name.
    const THREAD: &'static str;

    /// Records one probe that ended at `now`, `since` the prober started: the greeting, or what
    /// came back instead.
    fn record(&mut self, now: Instant, since: Duration, outcome: Result<httpget::Greeting, String>);
}

/// A thread sending `GET /` on a fresh connection every `interval` into an `L`, stopped (and
/// joined) by [`Probing::finish`] or on drop.
pub struct Probing<L: Record> {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<L>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Every probe, every failure, who answered and when.
pub type Prober = Probing<ProbeLog>;

impl<L: Record> Probing<L> {
    pub fn start(addr: SocketAddr, interval: Duration) -> Result<Probing<L>, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(L::default()));
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::Builder::new()
            .name(L::THREAD.into())
            .spawn(move || probe_loop(addr, interval, &s, &l))
            .map_err(|e| format!("cannot start the prober thread: {e}"))?;
        Ok(Probing {
            stop,
            log,
            thread: Some(thread),
        })
    }

    /// A copy of what it has seen so far.
    pub fn snapshot(&self) -> L {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn finish(mut self) -> L {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<L: Record> Drop for Probing<L> {
    fn drop(&mut self) {
        self.halt();
    }
}

fn probe_loop<L: Record>(addr: SocketAddr, interval: Duration, stop: &AtomicBool, log: &Mutex<L>) {
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let outcome = match httpget::get(addr, "/", Duration::from_secs(5)) {
            Ok(r) if r.status == 200 => httpget::parse_greeting(&r.body)
                .ok_or_else(|| format!("status 200: {:?}", r.body.trim())),
            Ok(r) => Err(format!("status {}: {:?}", r.status, r.body.trim())),
            Err(e) => Err(e.to_string()),
        };
        let now = Instant::now();
        let Ok(mut l) = log.lock() else { return };
        l.record(now, now - started, outcome);
        drop(l);
        std::thread::sleep(interval);
    }
}

/// Keeps the first few failures, with the time since the prober started.
pub fn sample(samples: &mut Vec<String>, since: Duration, what: String) {
    if samples.len() < 5 {
        samples.push(format!("at {:.3} s: {what}", since.as_secs_f64()));
    }
}

impl Record for ProbeLog {
    const THREAD: &'static str = "prober";

    fn record(
        &mut self,
        now: Instant,
        since: Duration,
        outcome: Result<httpget::Greeting, String>,
    ) {
        self.probes += 1;
        self.ended_at.push(now);
        match outcome {
            Ok(g) => {
                if let Some(prev) = self.last_ok {
                    self.longest_gap = self.longest_gap.max(now - prev);
                }
                self.last_ok = Some(now);
                match self.seen.iter_mut().find(|s| s.pid == g.pid) {
                    Some(s) => {
                        s.last = now;
                        s.count += 1;
                    }
                    None => self.seen.push(Seen {
                        build: g.build,
                        pid: g.pid,
                        last: now,
                        count: 1,
                    }),
                }
            }
            Err(what) => {
                self.failures += 1;
                self.failed_at.push(now);
                sample(&mut self.samples, since, what);
            }
        }
    }
}
