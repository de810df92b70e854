//! `master-reexec`: the master re-executes itself in place after every proven release (issue 15),
//! under wrk load.
//!
//! For each load — 100 keep-alive connections, and the same with `Connection: close` — two cells,
//! each a fresh `hello` server (`--watch <dir>/next --probation P`) under the same wrk run and the
//! same prober:
//! - baseline: no release is published;
//! - re-exec: every `--every` s (from half an interval in) the next release is renamed onto
//!   `next`. Releases alternate between two builds (distinct BUILD_IDs) with a trailer naming
//!   each, so every release is a binary the master has not run. Each one serves, passes its short
//!   probation, and the master re-executes into it before the next arrives.
//!
//! Per upgrade: publish → first response from the new build (a prober on fresh connections);
//! the re-exec itself, from the old image's `master re-executing in place` line to the new image's
//! `re-executed in place: took over` line (log timestamps), and until `GET /master` first names
//! the new build; then, at a fixed point before the next publish, the master's PID (still the one
//! the harness started, named by the new image's log line), the sha256 of `/proc/<master>/exe`,
//! `GET /master`, and its descriptors, VmRSS, PSS/USS, threads and children. The baseline takes
//! the same readings at the same moments, so the harness does the same work in both cells and its
//! series show how much those figures move with no upgrade at all. The tail latency of wrk is
//! compared between the two cells of each load. Targets (issue 15): 0 failed requests; PID
//! unchanged, exe the new build and `/master` naming it after every re-exec; the master's
//! descriptors and RSS do not grow.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::Scenario;
use crate::builds::{build_hello, TempDir};
use crate::firstanswer::FirstAnswers;
use crate::hello::{log_lines, log_problems, Server};
use crate::logtime::{self, Line};
use crate::opts::{OptSpec, Opts};
use crate::phases::{REEXECUTING, TOOK_OVER};
use crate::procfs::{self, Vitals};
use crate::report::Report;
use crate::wrk::Load;
use crate::{httpget, machine, procs, release, wrk};

#[path = "master_reexec_report.rs"]
mod render;

pub static SPEC: Scenario = Scenario {
    name: "master-reexec",
    summary: "the master re-executes in place after every proven release: N File-fetcher upgrades \
              at one per --every s under wrk (keep-alive and Connection: close) against a \
              baseline without upgrades; PID, exe, GET /master, fds and RSS after each",
    options: &OPTIONS,
    run,
};

static OPTIONS: [OptSpec; 7] = [
    OptSpec {
        name: "--runs",
        value: Some("N"),
        default: Some("1"),
        help: "repetitions (a fresh server per cell); one is minutes long",
    },
    OptSpec {
        name: "--duration",
        value: Some("SECS"),
        default: None,
        help: "not used: wrk runs as long as the upgrades (--upgrades × --every, plus one)",
    },
    OptSpec {
        name: "--upgrades",
        value: Some("N"),
        default: Some("100"),
        help: "releases published per re-exec cell (and readings per baseline cell)",
    },
    OptSpec {
        name: "--every",
        value: Some("SECS"),
        default: Some("1"),
        help: "seconds between publishes, from half an interval in",
    },
    OptSpec {
        name: "--probation",
        value: Some("SECS"),
        default: Some("0.3"),
        help: "hello --probation: short, so that each release is proven and the master \
               re-executes before the next one",
    },
    OptSpec {
        name: "--load",
        value: Some("both|keep-alive|close"),
        default: Some("both"),
        help: "keep-alive connections, Connection: close, or both",
    },
    OptSpec {
        name: "--probe-ms",
        value: Some("N"),
        default: Some("1"),
        help: "milliseconds between the prober's requests (and the GET /master polls)",
    },
];

/// How long one upgrade may take to reach traffic before the series goes on without it.
const UPGRADE_LIMIT: Duration = Duration::from_secs(30);
/// How long after its first response the master may take to name the new build on `GET /master`
/// (on top of the probation): the check, the exec and the adoption take tens of milliseconds.
const REEXEC_LIMIT: Duration = Duration::from_secs(15);
/// How long after `GET /master` names the new build the reading waits at least: the new image
/// starts its updater (inotify, the pipeline's lock file) and checks the watched path again just
/// after it has told the workers, so a reading in the first few milliseconds would catch it half
/// set up (four descriptors short, in the first smoke run).
const SETTLE: Duration = Duration::from_millis(250);
/// The `UpgradeEvent::MasterReexecuted` line: `event=master re-executed in place: <from> -> <to>`.
const EVENT: &str = "event=master re-executed in place: ";

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Baseline,
    Reexec,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Baseline => "baseline",
            Mode::Reexec => "re-exec",
        })
    }
}

/// The master at one moment, as the harness and its clients see it.
#[derive(Clone, Debug, Default)]
pub(super) struct Reading {
    /// Seconds since wrk started.
    pub at_s: f64,
    /// The process the harness started has not exited.
    pub alive: bool,
    pub vitals: Option<Vitals>,
    /// What `GET /master` answered.
    pub master_get: Option<String>,
    /// The serving worker's parent is the master.
    pub worker_parent_ok: bool,
    pub exe_sha256: Option<String>,
}

/// One published release and what followed it.
pub(super) struct Upgrade {
    pub k: u64,
    pub build: String,
    /// Of the release's bytes: what `/proc/<master>/exe` must hash to after the re-exec.
    pub sha256: String,
    /// When the rename completed (the timed instant), on the system clock.
    pub wall: SystemTime,
    /// When it was published, from wrk's start, and how late against its slot.
    pub at_s: f64,
    pub late_ms: f64,
    pub first_response_ms: Option<f64>,
    /// Publish → `GET /master` first answering the new build.
    pub master_new_ms: Option<f64>,
    /// One per [`PHASES`], from the server log.
    pub phases: [Option<f64>; PHASES.len()],
    /// The re-exec itself: `master re-executing in place` → `took over`.
    pub reexec_ms: Option<f64>,
    /// `master re-executing in place` → `GET /master` first answering the new build.
    pub exec_to_master_ms: Option<f64>,
    /// The pid the new image's `took over` line names.
    pub took_over_pid: Option<u32>,
    /// `<from> -> <to>` of the `MasterReexecuted` event line.
    pub event: Option<String>,
    pub reading: Reading,
}

/// The phases of one upgrade, each from the end of the previous one, as the server logs them.
pub(super) const PHASES: [(&str, &str); 5] = [
    (
        "worker ready",
        "publish → `worker ready` (detection, staging, test run, install, the new worker's start)",
    ),
    ("passed probation", "→ `passed probation` (`--probation`)"),
    (
        REEXECUTING,
        "→ `master re-executing in place` (pipeline idle; the binary opened, hashed, test-run)",
    ),
    (
        TOOK_OVER,
        "→ `re-executed in place: took over` (**the re-exec**: exec, the new image's start, adoption)",
    ),
    ("", "→ `GET /master` names the new build (workers told; poll resolution)"),
];

pub(super) struct Cell {
    pub run: u64,
    pub load: Load,
    pub mode: Mode,
    pub wrk: wrk::Report,
    pub probes: u64,
    pub probe_failures: u64,
    pub probe_samples: Vec<String>,
    /// `GET /master` polls while waiting for the new build's name, and how many failed.
    pub master_polls: u64,
    pub master_poll_failures: u64,
    pub master_pid: u32,
    /// `[0]` before the first publish, then one per slot (after each upgrade's re-exec).
    pub readings: Vec<Reading>,
    pub upgrades: Vec<Upgrade>,
    /// Upgrades whose reading was taken before wrk's run ended (the rest were not under load).
    pub within_load: usize,
    /// `master re-executing in place` lines in the whole log.
    pub reexecs_logged: usize,
    pub master_alive_end: bool,
    pub master_exit: String,
    pub load1: (f64, f64),
    pub others_cpus: f64,
    pub leftovers: Vec<u32>,
    pub problems: Vec<String>,
}

impl Cell {
    pub fn failed_requests(&self) -> u64 {
        self.wrk.socket_errors() + self.wrk.non2xx + self.probe_failures + self.master_poll_failures
    }

    /// The readings after each upgrade (every slot's, for the baseline).
    pub fn after(&self) -> &[Reading] {
        self.readings.get(1..).unwrap_or(&[])
    }
}

pub(super) struct Ctx {
    pub cfg: wrk::Config,
    pub upgrades: u64,
    pub every: Duration,
    pub probation: Duration,
    pub probe: Duration,
    pub images: Vec<Vec<u8>>,
    /// The sha256 of each release, `0..=upgrades`: hashed before any cell, not during the load.
    pub shas: Vec<String>,
    pub ids: Vec<String>,
    pub size: String,
}

impl Ctx {
    fn build(&self, k: u64) -> String {
        self.ids[(k % self.ids.len() as u64) as usize].clone()
    }

    /// When upgrade `k` (1-based) is published, from wrk's start.
    fn slot(&self, k: u64) -> Duration {
        self.every / 2 + self.every * (k as u32).saturating_sub(1)
    }

    /// When the reading after upgrade `k` is taken (`k = 0`: before the first publish): a fifth
    /// of an interval before the next publish, after the re-exec (about half a second after the
    /// publish with the default probation) and the old worker's drain, and before the next
    /// release changes anything. Later if the re-exec was late (see [`SETTLE`]).
    fn reading_at(&self, k: u64) -> Duration {
        (self.every / 2 + self.every * k as u32).saturating_sub(self.every / 5)
    }
}

fn run(opts: &Opts) -> Result<Report, String> {
    let runs = opts.count("--runs")?;
    let upgrades = opts.count("--upgrades")?;
    let every = opts.secs("--every")?;
    let probation = opts.secs("--probation")?;
    let loads = Load::choose(opts.str("--load"));
    // wrk covers every publish and the reading after the last one.
    let secs = every.as_secs_f64() * upgrades as f64 + every.as_secs_f64() / 2.0 + 0.5;
    let cfg = wrk::Config {
        threads: opts.count("--threads")?,
        connections: opts.count("--connections")?,
        duration: Duration::from_secs(secs.ceil() as u64),
    };
    let tmp = TempDir::new(opts.flag("--keep"))?;
    let ids = vec!["mx0".to_string(), "mx1".to_string()];
    let builds = build_hello(&ids, &tmp.sub("builds")?)?;
    let read =
        |p: &std::path::PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let images = vec![read(&builds[0])?, read(&builds[1])?];
    let shas = (0..=upgrades)
        .map(|k| hex::encode(Sha256::digest(release::numbered(&images, k))))
        .collect();
    let ctx = Ctx {
        cfg,
        upgrades,
        every,
        probation,
        probe: Duration::from_millis(opts.count("--probe-ms")?),
        images,
        shas,
        ids,
        size: crate::builds::sizes(&builds),
    };
    let mut cells = Vec::new();
    for run in 1..=runs {
        for &load in loads {
            for mode in [Mode::Baseline, Mode::Reexec] {
                eprintln!("upshift-bench: master-reexec: run {run}/{runs}, {load}, {mode}");
                cells.push(one_cell(run, load, mode, &ctx, &tmp)?);
            }
        }
    }
    Ok(render::render(opts, &ctx, runs, loads, &cells))
}

fn one_cell(run: u64, load: Load, mode: Mode, ctx: &Ctx, tmp: &TempDir) -> Result<Cell, String> {
    procs::check()?;
    let load_before = machine::load1();
    let cpu = machine::CpuWindow::start();
    let dir = tmp.sub(&format!("run{run}-{load}-{mode}"))?;
    let app = dir.join("app");
    let next = dir.join("next");
    let staged = dir.join("next.tmp");
    release::write_exe(&app, &release::numbered(&ctx.images, 0))?;
    let args = [
        "--watch".to_string(),
        next.display().to_string(),
        "--probation".to_string(),
        ctx.probation.as_secs_f64().to_string(),
    ];
    // Each release is written to `next.tmp` ahead of its slot (the slot itself is the rename):
    // the first before the load, the next ones once the previous re-exec is done.
    let stage = |k: u64| release::write_exe(&staged, &release::numbered(&ctx.images, k));
    if mode == Mode::Reexec {
        stage(1)?;
    }
    let mut server = Server::start(&app, &args, &dir.join("hello.log"))?;
    let master = server.master_pid();
    let first = server.greet()?;
    if first.build != ctx.build(0) {
        return Err(format!("release 0 answers as {:?}", first.build));
    }
    let prober = FirstAnswers::start(server.addr, ctx.probe)?;
    let extra = wrk::Extra {
        headers: load.headers(),
        count_builds: false,
    };
    let wrk_run = wrk::start_with(&ctx.cfg, server.addr, &dir, "load", &extra)?;
    let t0 = Instant::now();
    let mut polls = Polls::default();

    procs::sleep_until(t0 + ctx.reading_at(0))?;
    let mut readings = vec![read_master(&mut server, master, t0)];
    let mut published = Vec::new();
    for k in 1..=ctx.upgrades {
        let build = ctx.build(k);
        let mut settled = None;
        if mode == Mode::Reexec {
            let slot = t0 + ctx.slot(k);
            procs::sleep_until(slot)?;
            let started = SystemTime::now();
            let at = Instant::now();
            std::fs::rename(&staged, &next).map_err(|e| format!("publishing release {k}: {e}"))?;
            let wall = SystemTime::now() - at.elapsed();
            let first_response_ms = wait_first(&prober, &mut server, &build, at)?;
            let limit = ctx.probation + REEXEC_LIMIT;
            let master_new = polls.until_named(&mut server, &build, ctx.probe, limit)?;
            settled = master_new.map(|t| t + SETTLE);
            if k < ctx.upgrades {
                stage(k + 1)?;
            }
            published.push(Published {
                k,
                build,
                sha256: ctx.shas[k as usize].clone(),
                started,
                wall,
                at_s: (at - t0).as_secs_f64(),
                late_ms: at.saturating_duration_since(slot).as_secs_f64() * 1e3,
                at,
                first_response_ms,
                master_new,
            });
        }
        let nominal = t0 + ctx.reading_at(k);
        procs::sleep_until(settled.map_or(nominal, |s| s.max(nominal)))?;
        readings.push(read_master(&mut server, master, t0));
    }
    let probe = prober.finish();
    let (report, _) = wrk_run.finish()?;
    let within_load = readings
        .iter()
        .skip(1)
        .filter(|r| r.at_s <= ctx.cfg.duration.as_secs_f64())
        .count();

    let master_alive_end = server.master_alive();
    let load_after = machine::load1();
    let stopped = server.stop();
    let master_exit = match (stopped.status, stopped.killed) {
        (_, true) => "SIGKILLed after the grace period".to_string(),
        (Some(st), false) => st.to_string(),
        (None, false) => "unknown".to_string(),
    };
    let lines = logtime::read(&server.log);
    let upgrades = from_log(&lines, published, &readings);
    Ok(Cell {
        run,
        load,
        mode,
        wrk: report,
        probes: probe.probes,
        probe_failures: probe.failures,
        probe_samples: probe.samples,
        master_polls: polls.sent,
        master_poll_failures: polls.failed,
        master_pid: master,
        readings,
        upgrades,
        within_load,
        reexecs_logged: log_lines(&server.log, REEXECUTING).len(),
        master_alive_end,
        master_exit,
        load1: (load_before, load_after),
        others_cpus: cpu.others_cpus(),
        leftovers: stopped.leftovers,
        problems: log_problems(&server.log),
    })
}

/// What the harness knows of an upgrade before reading the log.
struct Published {
    k: u64,
    build: String,
    sha256: String,
    started: SystemTime,
    wall: SystemTime,
    at_s: f64,
    late_ms: f64,
    at: Instant,
    first_response_ms: Option<f64>,
    master_new: Option<Instant>,
}

/// Publish → the first answer from `build` by a worker first seen after the publish; `None` if
/// none within [`UPGRADE_LIMIT`] (or once the master has exited).
fn wait_first(
    prober: &FirstAnswers,
    server: &mut Server,
    build: &str,
    at: Instant,
) -> Result<Option<f64>, String> {
    let until = at + UPGRADE_LIMIT;
    loop {
        if let Some(first) = prober.first(build, at) {
            return Ok(Some((first - at).as_secs_f64() * 1e3));
        }
        if Instant::now() >= until || !server.master_alive() {
            return Ok(None);
        }
        procs::check()?;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The `GET /master` polls a cell sent.
#[derive(Default)]
struct Polls {
    sent: u64,
    failed: u64,
}

impl Polls {
    /// Polls `GET /master` every `interval` until it names `build`; when it first did, or `None`
    /// after `limit` (or once the master has exited).
    fn until_named(
        &mut self,
        server: &mut Server,
        build: &str,
        interval: Duration,
        limit: Duration,
    ) -> Result<Option<Instant>, String> {
        let until = Instant::now() + limit;
        loop {
            let reply = httpget::get(server.addr, "/master", Duration::from_secs(2));
            let now = Instant::now();
            self.sent += 1;
            match reply {
                Ok(r) if r.status == 200 && r.body.trim() == build => return Ok(Some(now)),
                Ok(r) if r.status == 200 => {}
                _ => self.failed += 1,
            }
            if now >= until || !server.master_alive() {
                return Ok(None);
            }
            procs::check()?;
            std::thread::sleep(interval);
        }
    }
}

/// Reads the master: /proc first (the figures a request could disturb), then `GET /master`, the
/// serving worker's parent, and the hash of the executable.
fn read_master(server: &mut Server, master: u32, t0: Instant) -> Reading {
    let at_s = t0.elapsed().as_secs_f64();
    let alive = server.master_alive();
    let vitals = procfs::vitals(master);
    let master_get = httpget::get(server.addr, "/master", Duration::from_secs(2))
        .ok()
        .filter(|r| r.status == 200)
        .map(|r| r.body.trim().to_string());
    let worker_parent_ok = server
        .greet()
        .ok()
        .and_then(|g| procs::state_and_ppid(g.pid))
        .is_some_and(|(_, ppid)| ppid == master);
    Reading {
        at_s,
        alive,
        vitals,
        master_get,
        worker_parent_ok,
        exe_sha256: procfs::exe_sha256(master),
    }
}

/// Each upgrade's phases and re-exec from the log lines between its publish and the next one.
fn from_log(lines: &[Line], published: Vec<Published>, readings: &[Reading]) -> Vec<Upgrade> {
    let starts: Vec<SystemTime> = published.iter().map(|p| p.started).collect();
    let mut out = Vec::new();
    for (i, p) in published.into_iter().enumerate() {
        let until = starts.get(i + 1).copied();
        let master_wall = p.master_new.map(|t| p.wall + (t - p.at));
        let mut marks = vec![Some(p.wall)];
        let mut from = p.started;
        let mut hits: Vec<Option<&Line>> = Vec::new();
        for (needle, _) in PHASES.iter().filter(|(n, _)| !n.is_empty()) {
            let hit = logtime::first_after(lines, from, until, needle);
            if let Some(l) = hit {
                from = from.max(l.at);
            }
            marks.push(hit.map(|l| l.at));
            hits.push(hit);
        }
        marks.push(master_wall);
        let mut phases = [None; PHASES.len()];
        for (j, w) in marks.windows(2).enumerate() {
            if let (Some(a), Some(b)) = (w[0], w[1]) {
                phases[j] = Some(logtime::ms_between(a, b));
            }
        }
        let executing = hits.get(2).copied().flatten();
        let took = hits.get(3).copied().flatten();
        let reexec_ms = executing
            .zip(took)
            .map(|(a, b)| logtime::ms_between(a.at, b.at));
        let exec_to_master_ms = executing
            .zip(master_wall)
            .map(|(a, b)| logtime::ms_between(a.at, b));
        let event = took
            .and_then(|t| logtime::first_after(lines, t.at, until, EVENT))
            .and_then(|l| l.text.split_once(EVENT).map(|(_, r)| r.trim().to_string()));
        out.push(Upgrade {
            k: p.k,
            build: p.build,
            sha256: p.sha256,
            wall: p.wall,
            at_s: p.at_s,
            late_ms: p.late_ms,
            first_response_ms: p.first_response_ms,
            master_new_ms: p.master_new.map(|t| (t - p.at).as_secs_f64() * 1e3),
            phases,
            reexec_ms,
            exec_to_master_ms,
            took_over_pid: took.and_then(|l| field(&l.text, "pid")?.parse().ok()),
            event,
            reading: readings.get(p.k as usize).cloned().unwrap_or_default(),
        });
    }
    out
}

/// The value of `name=value` in a tracing line.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=");
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key.as_str()))
}

impl Upgrade {
    /// The master kept its PID through this re-exec: the process the harness started is alive,
    /// the new image's `took over` line names that pid, and the serving worker is its child.
    pub fn pid_kept(&self, master: u32) -> bool {
        self.reading.alive && self.took_over_pid == Some(master) && self.reading.worker_parent_ok
    }

    /// `/proc/<master>/exe` is this release.
    pub fn exe_new(&self) -> bool {
        self.reading.exe_sha256.as_deref() == Some(self.sha256.as_str())
    }

    /// `GET /master` names this release's build.
    pub fn master_named(&self) -> bool {
        self.reading.master_get.as_deref() == Some(self.build.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_a_tracing_line() {
        let l = "2026-12-04T15:00:00.000001Z  INFO upshift::master::adopt: upshift master \
                 re-executed in place: took over the workers and listeners pid=4242 from=mx0 \
                 to=mx1 workers=2";
        assert_eq!(field(l, "pid"), Some("4242"));
        assert_eq!(field(l, "to"), Some("mx1"));
        assert_eq!(field(l, "gone"), None);
        assert!(l.contains(TOOK_OVER));
    }

    #[test]
    fn the_log_splits_an_upgrade_into_the_re_exec_phases() {
        let t = |ms: u64| {
            format!(
                "2026-12-04T15:00:{:02}.{:06}Z",
                ms / 1000,
                (ms % 1000) * 1000
            )
        };
        let text = [
            format!("{}  INFO upshift::master: worker ready generation=2", t(1040)),
            format!(
                "{}  INFO upshift::master::updater: upgrade event=release x passed probation (generation 2)",
                t(1345)
            ),
            format!(
                "{}  INFO upshift::master::handing: master re-executing in place from=mx0",
                t(1370)
            ),
            format!(
                "{}  INFO upshift::master::adopt: upshift master {TOOK_OVER} pid=77 from=mx0 to=mx1",
                t(1382)
            ),
            format!(
                "{}  INFO upshift::master::updater: upgrade event=master re-executed in place: mx0 -> mx1",
                t(1390)
            ),
        ]
        .join("\n");
        let dir = std::env::temp_dir().join(format!("mx-log-{}", std::process::id()));
        std::fs::write(&dir, text).unwrap();
        let lines = logtime::read(&dir);
        std::fs::remove_file(&dir).unwrap();
        let at = |ms: u64| logtime::parse_rfc3339_utc(&t(ms)).unwrap();
        let now = Instant::now();
        let p = Published {
            k: 1,
            build: "mx1".into(),
            sha256: "s".into(),
            started: at(1000),
            wall: at(1000),
            at_s: 0.5,
            late_ms: 0.0,
            at: now,
            first_response_ms: Some(45.0),
            master_new: Some(now + Duration::from_millis(400)),
        };
        let u = from_log(&lines, vec![p], &[]).remove(0);
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 0.01);
        assert!(close(u.phases[0], 40.0));
        assert!(close(u.phases[1], 305.0));
        assert!(close(u.phases[2], 25.0));
        assert!(close(u.phases[3], 12.0));
        assert!(close(u.phases[4], 18.0));
        assert!(close(u.reexec_ms, 12.0));
        assert!(close(u.exec_to_master_ms, 30.0));
        assert_eq!(u.took_over_pid, Some(77));
        assert_eq!(u.event.as_deref(), Some("mx0 -> mx1"));
    }
}
