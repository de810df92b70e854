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

pub struct Prober {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<ProbeLog>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    pub fn start(addr: SocketAddr, interval: Duration) -> Result<Prober, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(ProbeLog::default()));
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::Builder::new()
            .name("prober".into())
            .spawn(move || probe_loop(addr, interval, &s, &l))
            .map_err(|e| format!("cannot start the prober thread: {e}"))?;
        Ok(Prober {
            stop,
            log,
            thread: Some(thread),
        })
    }

    /// A copy of what it has seen so far.
    pub fn snapshot(&self) -> ProbeLog {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn finish(mut self) -> ProbeLog {
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

impl Drop for Prober {
    fn drop(&mut self) {
        self.halt();
    }
}

fn probe_loop(addr: SocketAddr, interval: Duration, stop: &AtomicBool, log: &Mutex<ProbeLog>) {
    let started = Instant::now();
    let mut last_ok: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        let reply = httpget::get(addr, "/", Duration::from_secs(5));
        let now = Instant::now();
        let Ok(mut l) = log.lock() else { return };
        l.probes += 1;
        l.ended_at.push(now);
        let greeting = match &reply {
            Ok(r) if r.status == 200 => httpget::parse_greeting(&r.body),
            _ => None,
        };
        match greeting {
            Some(g) => {
                if let Some(prev) = last_ok {
                    l.longest_gap = l.longest_gap.max(now - prev);
                }
                last_ok = Some(now);
                match l.seen.iter_mut().find(|s| s.pid == g.pid) {
                    Some(s) => {
                        s.last = now;
                        s.count += 1;
                    }
                    None => l.seen.push(Seen {
                        build: g.build,
                        pid: g.pid,
                        last: now,
                        count: 1,
                    }),
                }
            }
            None => {
                l.failures += 1;
                l.failed_at.push(now);
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
