//! A prober thread for publish → traffic timing: `GET /` on a fresh connection every few
//! milliseconds, separate from wrk, noting when each worker (pid) first answered and with which
//! build. A new worker has a new pid, so "the first answer from the new build after the publish"
//! is well defined even when releases reuse a BUILD_ID.

use std::time::{Duration, Instant};

use crate::httpget;
use crate::prober::{self, Probing, Record};

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

/// Each worker's first answer, and the failures.
pub type FirstAnswers = Probing<Log>;

impl Probing<Log> {
    /// When a worker of `build` first answered at or after `since`, if one has.
    pub fn first(&self, build: &str, since: Instant) -> Option<Instant> {
        self.snapshot()
            .firsts
            .iter()
            .filter(|f| f.build == build && f.at >= since)
            .map(|f| f.at)
            .min()
    }
}

impl Record for Log {
    const THREAD: &'static str = "first-answers";

    fn record(
        &mut self,
        now: Instant,
        since: Duration,
        outcome: Result<httpget::Greeting, String>,
    ) {
        self.probes += 1;
        match outcome {
            Ok(g) => {
                if !self.firsts.iter().any(|f| f.pid == g.pid) {
                    self.firsts.push(First {
                        build: g.build,
                        pid: g.pid,
                        at: now,
                    });
                }
            }
            Err(what) => {
                self.failures += 1;
                prober::sample(&mut self.samples, since, what);
            }
        }
    }
}
