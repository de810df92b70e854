//! `file-upgrades`: File fetcher publish → traffic.
//!
//! Build b00 runs as `<dir>/app --listen ... --watch <dir>/next` under wrk load. Every `--every`
//! seconds (from half an interval in) the next build is published to `<dir>/next`: by default as
//! a deploy does it (copy to `next.tmp`, then rename over `next`), with `--publish cp` as a plain
//! copy onto `next` (open, truncate, write in place, close). A prober thread, separate from wrk,
//! sends `GET /` on a fresh connection every millisecond and notes when each BUILD_ID is first
//! answered. Measured per publish: from the rename (or from the end of the in-place copy) to the
//! first response from the new build. Target (issue 3): median under 150 ms.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::Scenario;
use crate::builds::{build_hello, TempDir};
use crate::hello::{log_problems, Server};
use crate::httpget;
use crate::opts::{OptSpec, Opts};
use crate::report::{yes, Report, Status, Table};
use crate::stats::{self, int, ms, summary};
use crate::{logtime, procs, wrk};

pub static SPEC: Scenario = Scenario {
    name: "file-upgrades",
    summary: "File fetcher publish → traffic: under wrk load, publish a new build to the watched \
              path every --every seconds and time each one to its first response",
    options: &OPTIONS,
    run,
};

static OPTIONS: [OptSpec; 4] = [
    OptSpec {
        name: "--every",
        value: Some("SECS"),
        default: Some("2"),
        help: "seconds between publishes",
    },
    OptSpec {
        name: "--publish",
        value: Some("rename|cp"),
        default: Some("rename"),
        help: "rename: copy to next.tmp then rename over next; cp: copy onto next in place",
    },
    OptSpec {
        name: "--builds",
        value: Some("N"),
        default: None,
        help: "builds to publish (default: as many as fit in --duration)",
    },
    OptSpec {
        name: "--probe-ms",
        value: Some("N"),
        default: Some("1"),
        help: "milliseconds between the prober's requests",
    },
];

/// How long after the last publish the harness waits for it to reach traffic.
const SETTLE_LIMIT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Publish {
    Rename,
    Cp,
}

struct Published {
    build: String,
    /// The rename, or the close that ended the in-place copy.
    at: Instant,
    /// The same moment on the system clock, to line up with the server's log.
    wall: SystemTime,
    /// How long writing the file took (the copy to next.tmp, or the in-place copy).
    copy: Duration,
}

/// What the prober saw.
#[derive(Default)]
struct ProbeLog {
    probes: u64,
    errors: u64,
    non200: u64,
    error_samples: Vec<String>,
    /// Each build's first answer.
    first_seen: HashMap<String, Instant>,
    /// When the first and the latest probe were answered or failed.
    span: Option<(Instant, Instant)>,
}

impl ProbeLog {
    fn per_second(&self) -> f64 {
        match self.span {
            Some((a, b)) if b > a => self.probes as f64 / (b - a).as_secs_f64(),
            _ => 0.0,
        }
    }
}

struct Prober {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<ProbeLog>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(addr: SocketAddr, interval: Duration) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(ProbeLog::default()));
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::Builder::new()
            .name("prober".into())
            .spawn(move || probe_loop(addr, interval, &s, &l))
            .expect("cannot start the prober thread");
        Prober {
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn seen(&self, build: &str) -> bool {
        self.log
            .lock()
            .map(|l| l.first_seen.contains_key(build))
            .unwrap_or(false)
    }

    fn finish(mut self) -> Result<ProbeLog, String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| "the prober thread panicked")?;
        }
        let mut guard = self.log.lock().map_err(|_| "prober log poisoned")?;
        Ok(std::mem::take(&mut *guard))
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn probe_loop(addr: SocketAddr, interval: Duration, stop: &AtomicBool, log: &Mutex<ProbeLog>) {
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let reply = httpget::get(addr, "/", Duration::from_secs(2));
        let now = Instant::now();
        {
            let Ok(mut l) = log.lock() else { return };
            l.probes += 1;
            l.span = Some((l.span.map_or(now, |(first, _)| first), now));
            match reply {
                Ok(r) if r.status == 200 => {
                    if let Some(g) = httpget::parse_greeting(&r.body) {
                        l.first_seen.entry(g.build).or_insert(now);
                    } else {
                        l.non200 += 1;
                    }
                }
                Ok(r) => {
                    l.non200 += 1;
                    if l.error_samples.len() < 5 {
                        l.error_samples.push(format!("status {}", r.status));
                    }
                }
                Err(e) => {
                    l.errors += 1;
                    if l.error_samples.len() < 5 {
                        l.error_samples.push(e.to_string());
                    }
                }
            }
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

struct RunResult {
    run: u64,
    wrk: wrk::Report,
    probe: ProbeLog,
    published: Vec<Published>,
    /// Per publish: publish → first response, or `None` if that build never answered.
    latency_ms: Vec<Option<f64>>,
    /// Per publish, the phases from the server's log (see [`PHASES`]).
    phases: Vec<[Option<f64>; PHASES.len()]>,
    final_build: String,
    master_pid: u32,
    /// The 1-minute load average before the run and after it.
    load: (f64, f64),
    /// Average CPUs used by processes other than the harness's during the run.
    others_cpus: f64,
    master_stable: bool,
    stable_note: String,
    master_exit: String,
    leftovers: Vec<u32>,
    problems: Vec<String>,
}

impl RunResult {
    fn reached(&self) -> Vec<f64> {
        self.latency_ms.iter().flatten().copied().collect()
    }

    fn missed(&self) -> Vec<&str> {
        self.published
            .iter()
            .zip(&self.latency_ms)
            .filter(|(_, l)| l.is_none())
            .map(|(p, _)| p.build.as_str())
            .collect()
    }
}

fn run(opts: &Opts) -> Result<Report, String> {
    let runs = opts.count("--runs")?;
    let every = opts.secs("--every")?;
    let probe = Duration::from_millis(opts.count("--probe-ms")?);
    let publish = match opts.str("--publish") {
        Some("rename") => Publish::Rename,
        Some("cp") => Publish::Cp,
        other => return Err(format!("--publish must be rename or cp, not {other:?}")),
    };
    let cfg = wrk::Config::from_opts(opts)?;
    let n = match opts.str("--builds") {
        Some(_) => opts.count("--builds")?,
        None => {
            let fit =
                (cfg.duration.as_secs_f64() - every.as_secs_f64() / 2.0) / every.as_secs_f64();
            (fit.max(0.0).floor() as u64 + 1).max(1)
        }
    };
    let ids: Vec<String> = (0..=n).map(|i| format!("b{i:02}")).collect();
    let tmp = TempDir::new(opts.flag("--keep"))?;
    let builds_dir = tmp.sub("builds")?;
    let builds = build_hello(&ids, &builds_dir)?;
    let size = crate::builds::sizes(&builds);

    let mut results = Vec::new();
    for run in 1..=runs {
        eprintln!("upshift-bench: file-upgrades: run {run}/{runs}");
        results.push(one_run(
            run, publish, &cfg, every, probe, &ids, &builds, &tmp,
        )?);
    }
    Ok(render(opts, &cfg, every, publish, runs, &size, &results))
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    run: u64,
    publish: Publish,
    cfg: &wrk::Config,
    every: Duration,
    probe_interval: Duration,
    ids: &[String],
    builds: &[PathBuf],
    tmp: &TempDir,
) -> Result<RunResult, String> {
    let load_before = crate::machine::load1();
    let cpu = crate::machine::CpuWindow::start();
    procs::check()?;
    let dir = tmp.sub(&format!("run{run}"))?;
    let app = dir.join("app");
    let next = dir.join("next");
    std::fs::copy(&builds[0], &app).map_err(|e| format!("copying b00: {e}"))?;
    let watch = vec!["--watch".to_string(), next.display().to_string()];
    let mut server = Server::start(&app, &watch, &dir.join("hello.log"))?;
    let master = server.master_pid();
    let first = server.greet()?;
    if first.build != ids[0] {
        return Err(format!("b00 answers as {:?}", first.build));
    }
    // Preloaded, so that reading the source is not part of a publish.
    let images: Vec<Vec<u8>> = builds[1..]
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())))
        .collect::<Result<_, _>>()?;

    let prober = Prober::start(server.addr, probe_interval);
    let load = wrk::start(cfg, server.addr, &dir, "load")?;
    let t0 = Instant::now();
    let mut published = Vec::new();
    for (k, image) in images.iter().enumerate() {
        let at = every / 2 + every * k as u32;
        procs::sleep_until(t0 + at)?;
        let (at, copy) = publish_one(publish, image, &dir, &next)
            .map_err(|e| format!("publishing {}: {e}", ids[k + 1]))?;
        let wall = SystemTime::now() - at.elapsed();
        published.push(Published {
            build: ids[k + 1].clone(),
            at,
            wall,
            copy,
        });
    }
    let (report, _raw) = load.finish()?;

    // The last publish may still be on its way: give it a bounded while.
    let last = ids.last().cloned().unwrap_or_default();
    let until = Instant::now() + SETTLE_LIMIT;
    while !prober.seen(&last)
        && Instant::now() < until
        && server.master_alive()
        && !procs::interrupted()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let probe = prober.finish()?;
    procs::check()?;
    let latency_ms: Vec<Option<f64>> = published
        .iter()
        .map(|p| {
            probe
                .first_seen
                .get(&p.build)
                .map(|seen| seen.saturating_duration_since(p.at).as_secs_f64() * 1e3)
        })
        .collect();
    let phases = phases(&server.log, &published, &latency_ms);

    let alive = server.master_alive();
    let end = server.greet().ok();
    let ppid = end
        .as_ref()
        .and_then(|g| procs::state_and_ppid(g.pid))
        .map(|(_, p)| p);
    let master_stable = alive && ppid == Some(master);
    let stable_note = match (&end, alive) {
        (_, false) => format!("master {master} exited during the run"),
        (None, true) => "no answer after the run".into(),
        (Some(g), true) if ppid != Some(master) => format!(
            "serving worker {} has parent {ppid:?}, not the master {master}",
            g.pid
        ),
        (Some(g), true) => format!(
            "master {master} alive, parent of the serving worker {}",
            g.pid
        ),
    };
    let load_after = crate::machine::load1();
    let stopped = server.stop();
    let others_cpus = cpu.others_cpus();
    let master_exit = match (stopped.status, stopped.killed) {
        (_, true) => "SIGKILLed after the grace period".to_string(),
        (Some(st), false) => st.to_string(),
        (None, false) => "unknown".to_string(),
    };
    Ok(RunResult {
        run,
        wrk: report,
        probe,
        published,
        latency_ms,
        phases,
        final_build: end.map(|g| g.build).unwrap_or_else(|| "-".into()),
        master_pid: master,
        load: (load_before, load_after),
        others_cpus,
        master_stable,
        stable_note,
        master_exit,
        leftovers: stopped.leftovers,
        problems: log_problems(&server.log),
    })
}

/// Publishes one build; returns the instant the publish completed and how long the copy took.
fn publish_one(
    how: Publish,
    image: &[u8],
    dir: &Path,
    next: &Path,
) -> std::io::Result<(Instant, Duration)> {
    let write = |path: &Path| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .open(path)?;
        for chunk in image.chunks(128 * 1024) {
            f.write_all(chunk)?;
        }
        Ok(())
    };
    let started = Instant::now();
    match how {
        Publish::Rename => {
            let tmp = dir.join("next.tmp");
            write(&tmp)?;
            let copy = started.elapsed();
            let at = Instant::now();
            std::fs::rename(&tmp, next)?;
            Ok((at, copy))
        }
        Publish::Cp => {
            write(next)?; // closed when `write` returns
            let at = Instant::now();
            Ok((at, at - started))
        }
    }
}

/// The phases of one upgrade, each from the end of the previous one, as the server logs them.
const PHASES: [&str; 6] = [
    "publish → `new release found` (detection)",
    "→ `staged a release` (copy; + sha256 unless the fetcher's hash stands)",
    "→ `event=installing` (test-run)",
    "→ `worker starting` (install, spawn)",
    "→ `worker ready` (new worker's startup)",
    "→ first response seen by the prober",
];

/// Splits each publish → first response into [`PHASES`], from the server log's timestamps. A
/// phase whose line is missing (or not between this publish and the next) is `None`.
fn phases(
    log: &Path,
    published: &[Published],
    latency_ms: &[Option<f64>],
) -> Vec<[Option<f64>; PHASES.len()]> {
    let lines = logtime::read(log);
    let mut out = Vec::new();
    for (k, p) in published.iter().enumerate() {
        let until = published.get(k + 1).map(|n| n.wall);
        let mut marks: Vec<Option<SystemTime>> = vec![Some(p.wall)];
        let mut from = p.wall;
        for needle in [
            "new release found",
            "staged a release",
            "event=installing",
            "worker starting",
            "worker ready",
        ] {
            let hit = logtime::first_after(&lines, from, until, needle).map(|l| l.at);
            if let Some(t) = hit {
                from = t;
            }
            marks.push(hit);
        }
        marks.push(latency_ms[k].map(|ms| p.wall + Duration::from_secs_f64(ms / 1e3)));
        let mut row = [None; PHASES.len()];
        for i in 0..PHASES.len() {
            if let (Some(a), Some(b)) = (marks[i], marks[i + 1]) {
                row[i] = Some(logtime::ms_between(a, b));
            }
        }
        out.push(row);
    }
    out
}

fn render(
    opts: &Opts,
    cfg: &wrk::Config,
    every: Duration,
    publish: Publish,
    runs: u64,
    size: &str,
    results: &[RunResult],
) -> Report {
    let how = match publish {
        Publish::Rename => "copy to `next.tmp`, then rename over `next`; timed from the rename",
        Publish::Cp => {
            "plain copy onto `next` (open with truncate, write, close); timed from the close"
        }
    };
    let n = results.first().map_or(0, |x| x.published.len());
    let mut r = Report::new(
        &format!(
            "file-upgrades ({}): File fetcher publish → traffic",
            match publish {
                Publish::Rename => "publish by rename",
                Publish::Cp => "publish by cp in place",
            }
        ),
        &super::command(&SPEC, opts),
    );
    r.para(&format!(
        "Server: build b00 of the `hello` example as `<dir>/app --listen 127.0.0.1:PORT --watch \
         <dir>/next`. Load: `wrk {} http://127.0.0.1:PORT/` (keep-alive). Publishes: {n} builds \
         (b01…b{n:02}, {size} each), one every {} s from {} s on: {how}. Prober: `GET /` on a fresh connection \
         every {} ms, separate from wrk; latency = publish → first response from the new \
         BUILD_ID. {runs} run(s); a run is a fresh server.",
        cfg.args().join(" "),
        every.as_secs_f64(),
        every.as_secs_f64() / 2.0,
        opts.str("--probe-ms").unwrap_or("1"),
    ));

    r.para(crate::report::OTHERS_NOTE);
    r.heading("Per run");
    let mut t = Table::new(&[
        "run",
        "requests",
        "req/s",
        "socket errors (connect / read / write / timeout)",
        "non-2xx",
        "prober errors",
        "builds reached traffic",
        "publish→first response min / median / max",
        "master pid stable",
        "others' CPU",
    ]);
    for x in results {
        let reached = x.reached();
        let missed = x.missed();
        t.row(vec![
            x.run.to_string(),
            int(x.wrk.requests as f64),
            int(x.wrk.rps),
            format!(
                "{} / {} / {} / {}",
                x.wrk.connect, x.wrk.read, x.wrk.write, x.wrk.timeout
            ),
            x.wrk.non2xx.to_string(),
            format!("{} of {}", x.probe.errors + x.probe.non200, x.probe.probes),
            if missed.is_empty() {
                format!("all {}", x.published.len())
            } else {
                format!(
                    "{} of {} (missed {})",
                    reached.len(),
                    x.published.len(),
                    missed.join(", ")
                )
            },
            format!(
                "{} / {} / {}",
                stats::min(&reached).map_or("–".into(), ms),
                stats::median(&reached).map_or("–".into(), ms),
                stats::max(&reached).map_or("–".into(), ms)
            ),
            yes(x.master_stable),
            format!("{:.2}", x.others_cpus),
        ]);
    }
    r.table(&t);

    let summary_heading = format!("Summary over {runs} run(s)");
    let all: Vec<f64> = results.iter().flat_map(|x| x.reached()).collect();
    let total: usize = results.iter().map(|x| x.published.len()).sum();
    let per_run = |f: fn(&RunResult) -> f64, fmt: fn(f64) -> String| {
        summary(&results.iter().map(f).collect::<Vec<_>>(), fmt)
    };
    let mut s = Table::new(&["figure", "value"]);
    s.row(vec![
        "publish→first response, all upgrades pooled: min / median / p90 / max".into(),
        format!(
            "{} / **{}** / {} / {} ({} of {} upgrades reached traffic)",
            stats::min(&all).map_or("–".into(), ms),
            stats::median(&all).map_or("–".into(), ms),
            stats::percentile(&all, 90.0).map_or("–".into(), ms),
            stats::max(&all).map_or("–".into(), ms),
            all.len(),
            total
        ),
    ]);
    s.row(vec![
        "per-run median publish→first response: median (min–max)".into(),
        per_run(|x| stats::median(&x.reached()).unwrap_or(f64::NAN), ms),
    ]);
    s.row(vec![
        "requests: median (min–max)".into(),
        per_run(|x| x.wrk.requests as f64, int),
    ]);
    s.row(vec![
        "req/s: median (min–max)".into(),
        per_run(|x| x.wrk.rps, int),
    ]);
    s.row(vec![
        "wrk socket errors, all runs (connect / read / write / timeout)".into(),
        format!(
            "{} / {} / {} / {}",
            results.iter().map(|x| x.wrk.connect).sum::<u64>(),
            results.iter().map(|x| x.wrk.read).sum::<u64>(),
            results.iter().map(|x| x.wrk.write).sum::<u64>(),
            results.iter().map(|x| x.wrk.timeout).sum::<u64>()
        ),
    ]);
    s.row(vec![
        "wrk non-2xx, all runs".into(),
        results
            .iter()
            .map(|x| x.wrk.non2xx)
            .sum::<u64>()
            .to_string(),
    ]);
    s.row(vec![
        "prober failures, all runs".into(),
        format!(
            "{} of {} probes",
            results
                .iter()
                .map(|x| x.probe.errors + x.probe.non200)
                .sum::<u64>(),
            results.iter().map(|x| x.probe.probes).sum::<u64>()
        ),
    ]);
    s.row(vec![
        "p99 latency under load: median (min–max)".into(),
        per_run(|x| x.wrk.p99_us, crate::stats::us),
    ]);
    s.row(vec![
        "master pid stable".into(),
        format!(
            "{} of {} runs",
            results.iter().filter(|x| x.master_stable).count(),
            results.len()
        ),
    ]);
    r.summary_table(&summary_heading, &s);

    r.heading("Where the time goes: each phase from the server log, all upgrades pooled");
    let mut ph = Table::new(&["phase", "median", "min", "max"]);
    for (i, name) in PHASES.iter().enumerate() {
        let v: Vec<f64> = results
            .iter()
            .flat_map(|x| x.phases.iter().filter_map(move |p| p[i]))
            .collect();
        let f = |o: Option<f64>| o.map_or("–".into(), ms);
        ph.row(vec![
            name.to_string(),
            f(stats::median(&v)),
            f(stats::min(&v)),
            f(stats::max(&v)),
        ]);
    }
    r.table(&ph);
    r.para(
        "Log timestamps and the harness's clock are the same system clock; the prober's own \
         resolution is its request interval under load (see probes/s in the raw numbers). A \
         negative figure, or `-` for detection in the raw numbers, means the server logged the \
         step before the harness read its clock: on a loaded 2-core machine the harness's thread \
         can be preempted for milliseconds between finishing the publish and reading the time.",
    );

    r.heading("Verdict");
    let median = stats::median(&all);
    let sock: u64 = results.iter().map(|x| x.wrk.socket_errors()).sum();
    let non2xx: u64 = results.iter().map(|x| x.wrk.non2xx).sum();
    let all_reached = all.len() == total;
    let stable = results.iter().all(|x| x.master_stable);
    let fast = median.is_some_and(|m| m < 150.0);
    r.para(&format!(
        "Target (issue 3): publish→traffic median under 150 ms (overseer's figure for comparison: \
         median 1,080 ms). Measured: median {} over {} upgrades — **{}**. Every build reached \
         traffic: {}. wrk: {sock} socket errors, {non2xx} non-2xx. Master pid stable: {}.",
        median.map_or("–".into(), ms),
        all.len(),
        if fast { "target met" } else { "target missed" },
        if all_reached {
            "yes".to_string()
        } else {
            format!("no ({} of {total})", all.len())
        },
        yes(stable),
    ));
    let failed_probes: u64 = results
        .iter()
        .map(|x| x.probe.errors + x.probe.non200)
        .sum();
    r.verdict(
        "File fetcher publish → first response from the new build, median under 150 ms; every \
         build answers; 0 errors (issue 3)",
        format!(
            "median {} over {} of {total} builds that answered; {sock} socket errors, {non2xx} \
             non-2xx, {failed_probes} failed probes; master pid stable: {}",
            median.map_or("–".into(), ms),
            all.len(),
            yes(stable)
        ),
        Status::met_if(
            fast && all_reached && sock == 0 && non2xx == 0 && failed_probes == 0 && stable,
        ),
    );

    r.heading("Raw per-run numbers");
    let mut raw = Vec::new();
    for x in results {
        let mut line = format!(
            "run={} requests={} seconds={:.2} rps={:.2} connect={} read={} write={} timeout={} \
             non2xx={} p50_us={:.0} p99_us={:.0} p999_us={} probes={} probes_per_s={:.0} probe_errors={} \
             probe_non200={} final_build={} master_pid={} master_stable={} master_exit=\"{}\" \
             leftover_pids={:?} log_warnings={} load1_before={:.2} load1_after={:.2} others_cpus={:.2}",
            x.run,
            x.wrk.requests,
            x.wrk.seconds,
            x.wrk.rps,
            x.wrk.connect,
            x.wrk.read,
            x.wrk.write,
            x.wrk.timeout,
            x.wrk.non2xx,
            x.wrk.p50_us,
            x.wrk.p99_us,
            x.wrk.p999_us.map_or("-".into(), |v| format!("{v:.0}")),
            x.probe.probes,
            x.probe.per_second(),
            x.probe.errors,
            x.probe.non200,
            x.final_build,
            x.master_pid,
            x.master_stable,
            x.master_exit,
            x.leftovers,
            x.problems.len(),
            x.load.0,
            x.load.1,
            x.others_cpus,
        );
        line.push_str("\n  publish→first response (ms):");
        for (p, l) in x.published.iter().zip(&x.latency_ms) {
            let _ = write!(
                line,
                " {}={}",
                p.build,
                l.map_or("missed".into(), |v| format!("{v:.1}"))
            );
        }
        for (i, name) in [
            "detect",
            "stage",
            "test_run",
            "install",
            "startup",
            "to_prober",
        ]
        .iter()
        .enumerate()
        {
            let _ = write!(line, "\n  {name} (ms):");
            for (p, ph) in x.published.iter().zip(&x.phases) {
                let _ = write!(
                    line,
                    " {}={}",
                    p.build,
                    ph[i].map_or("-".into(), |v| format!("{v:.1}"))
                );
            }
        }
        line.push_str("\n  published at (unix s):");
        for p in &x.published {
            let t = p
                .wall
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let _ = write!(line, " {}={:.6}", p.build, t.as_secs_f64());
        }
        line.push_str("\n  copy time (ms):");
        for p in &x.published {
            let _ = write!(line, " {}={:.1}", p.build, p.copy.as_secs_f64() * 1e3);
        }
        if !x.master_stable {
            let _ = write!(line, "\n  master pid: {}", x.stable_note);
        }
        if !x.probe.error_samples.is_empty() {
            let _ = write!(
                line,
                "\n  prober errors, first: {:?}",
                x.probe.error_samples
            );
        }
        raw.push(line);
    }
    r.raw(&raw);

    let logs: Vec<(String, &[String])> = results
        .iter()
        .map(|x| (format!("run {}", x.run), x.problems.as_slice()))
        .collect();
    crate::report::log_problems(&mut r, &logs);
    r
}
