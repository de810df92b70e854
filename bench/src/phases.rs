//! Splitting one upgrade, from its trigger to the first response from the new build, into the
//! library's phases by the server log's timestamps (see [`crate::logtime`]). The master must log
//! the updater at debug (`RUST_LOG=info,upshift::master::updater=debug`) for the start of each
//! poll (`event=checking`) to appear.

use std::time::{Duration, SystemTime};

use crate::logtime::{self, Line};

/// The updater's line at the start of every poll.
pub const CHECKING: &str = "event=checking";
/// The updater's line once a check has found a release it has not installed.
pub const FOUND: &str = "new release found";
/// The master's re-exec in place (issue 15): the old image's line just before `fexecve`, and the
/// new image's once it has adopted the listeners and the workers.
pub const REEXECUTING: &str = "master re-executing in place";
pub const TOOK_OVER: &str = "re-executed in place: took over the workers and listeners";

/// What starts an upgrade.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The restart signal: no release pipeline, only the handover.
    Signal,
    /// A release that the fetcher is told about at once (the File fetcher's inotify).
    Watched,
    /// A release that a polling fetcher (HTTP, S3, GitHub) finds on its next poll.
    Polled,
}

const PIPELINE: [(&str, &str); 4] = [
    (
        "staged a release",
        "→ `staged a release` (copy or download; sha256)",
    ),
    ("event=installing", "→ `event=installing` (test-run)"),
    ("worker starting", "→ `worker starting` (install, spawn)"),
    ("worker ready", "→ `worker ready` (new worker's startup)"),
];
// A restart signal with a new binary on disk re-executes the master first (issue 15): the new
// image starts the worker. With the same binary there is no re-exec, and these phases are `–`.
const SIGNAL: [(&str, &str); 4] = [
    (
        REEXECUTING,
        "signal → `master re-executing in place` (the binary on disk hashed and test-run)",
    ),
    (
        TOOK_OVER,
        "→ `re-executed in place: took over` (the master's exec and adoption)",
    ),
    (
        "worker starting",
        "→ `worker starting` (the new image starts the worker: fork+exec)",
    ),
    ("worker ready", "→ `worker ready` (new worker's startup)"),
];
const WATCHED: [(&str, &str); 5] = [
    (FOUND, "publish → `new release found` (notification, hash)"),
    PIPELINE[0],
    PIPELINE[1],
    PIPELINE[2],
    PIPELINE[3],
];
const POLLED: [(&str, &str); 6] = [
    (
        CHECKING,
        "publish → start of the poll that found it (the poll wait)",
    ),
    (FOUND, "→ `new release found` (the check request)"),
    PIPELINE[0],
    PIPELINE[1],
    PIPELINE[2],
    PIPELINE[3],
];

impl Trigger {
    /// The log lines that end each phase but the last, with the phases' names.
    pub fn steps(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Trigger::Signal => &SIGNAL,
            Trigger::Watched => &WATCHED,
            Trigger::Polled => &POLLED,
        }
    }

    /// Every phase's name, the last one ending at the first response.
    pub fn names(self) -> Vec<&'static str> {
        let mut v: Vec<&str> = self.steps().iter().map(|(_, n)| *n).collect();
        v.push("→ first response seen by the prober");
        v
    }

    /// The index of the phase that ends with `new release found`, if there is one.
    pub fn found_at(self) -> Option<usize> {
        self.steps().iter().position(|(n, _)| *n == FOUND)
    }
}

/// Each phase of the upgrade triggered at `wall` in ms (one per [`Trigger::names`]), from log
/// lines between `earliest` (when publishing began: nothing of this release can be logged
/// before) and `until` (the next trigger); `None` where a line is missing. The first phase is
/// measured from `wall` and is negative when the server logged its line before the harness read
/// its clock after publishing (its thread can be preempted in between on a busy machine).
pub fn split(
    lines: &[Line],
    trigger: Trigger,
    (earliest, wall): (SystemTime, SystemTime),
    until: Option<SystemTime>,
    latency_ms: Option<f64>,
) -> Vec<Option<f64>> {
    let mut marks: Vec<Option<SystemTime>> = vec![Some(wall)];
    let mut from = earliest;
    for (needle, _) in trigger.steps() {
        let hit = if *needle == CHECKING {
            // The poll that found it began before `new release found`, possibly before the
            // publish completed (the wait is then negative): the last `checking` line before it.
            logtime::first_after(lines, earliest, until, FOUND).and_then(|found| {
                lines
                    .iter()
                    .rev()
                    .find(|l| l.at <= found.at && l.text.contains(CHECKING))
                    .map(|l| l.at)
            })
        } else {
            logtime::first_after(lines, from, until, needle).map(|l| l.at)
        };
        if let Some(t) = hit {
            from = from.max(t);
        }
        marks.push(hit);
    }
    marks.push(latency_ms.map(|v| wall + Duration::from_secs_f64(v / 1e3)));
    marks
        .windows(2)
        .map(|w| match (w[0], w[1]) {
            (Some(a), Some(b)) => Some(logtime::ms_between(a, b)),
            _ => None,
        })
        .collect()
}
