//! `soak`: `--restarts` SIGUSR2 restarts at `--rate` per second under wrk keep-alive load, with
//! the master's open descriptors (/proc/PID/fd), RSS (VmRSS) and children (/proc/PID/task/*/
//! children) sampled throughout. Verdict: no growth in descriptors, RSS or children, and zero
//! failed requests. Long by design (1,000 restarts at 4/s is about 4 minutes); not part of
//! `cargo test`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Scenario;
use crate::builds::{build_hello, TempDir};
use crate::hello::{log_lines, log_problems, Server};
use crate::opts::{OptSpec, Opts};
use crate::procfs::{self, slope};
use crate::report::{yes, Report, Status, Table, OTHERS_NOTE};
use crate::stats::{int, median, summary, us};
use crate::{procs, wrk};

pub static SPEC: Scenario = Scenario {
    name: "soak",
    summary: "1,000 SIGUSR2 restarts under wrk keep-alive load, sampling the master's fds, RSS \
              and children: no growth, zero failed requests",
    options: &OPTIONS,
    run,
};

static OPTIONS: [OptSpec; 4] = [
    OptSpec {
        name: "--runs",
        value: Some("N"),
        default: Some("1"),
        help: "repetitions (each a fresh server); one is minutes long",
    },
    OptSpec {
        name: "--restarts",
        value: Some("N"),
        default: Some("1000"),
        help: "SIGUSR2s to send (--duration does not apply: the load lasts as long as they do)",
    },
    OptSpec {
        name: "--rate",
        value: Some("PER_SEC"),
        default: Some("4"),
        help: "SIGUSR2s per second",
    },
    OptSpec {
        name: "--sample-ms",
        value: Some("N"),
        default: Some("100"),
        help: "milliseconds between samples of the master",
    },
];

/// Quiet time before the first reading and after the last restart: the last old workers drain
/// (hello's idle keep-alive grace is 1 s) and tokio's idle blocking threads are not counted.
const SETTLE: Duration = Duration::from_secs(3);
/// Growth tolerated in the RSS over the second half of the restarts: allocator pages come and
/// go by 4 KiB, a leak of a few bytes per restart would not show in 500 restarts otherwise.
const RSS_SLOPE_LIMIT_KIB: f64 = 0.25;

#[derive(Clone, Copy, Debug)]
struct Sample {
    secs: f64,
    fds: usize,
    rss: u64,
    children: usize,
    threads: u64,
}

struct Quiet {
    fds: usize,
    rss: u64,
    children: usize,
    threads: u64,
}

fn quiet(pid: u32) -> Result<Quiet, String> {
    let gone = || format!("the master {pid} is gone");
    Ok(Quiet {
        fds: procfs::fd_count(pid).ok_or_else(gone)?,
        rss: procfs::rss_kib(pid).ok_or_else(gone)?,
        children: procfs::children(pid).ok_or_else(gone)?.len(),
        threads: procfs::threads(pid).unwrap_or(0),
    })
}

struct RunResult {
    run: u64,
    wrk: wrk::Report,
    sent: u64,
    gen_end: u64,
    queued_lines: usize,
    start: Quiet,
    end: Quiet,
    samples: Vec<Sample>,
    /// The load period: from wrk's start to the last SIGUSR2.
    load_secs: f64,
    master_alive: bool,
    leftovers: Vec<u32>,
    problems: Vec<String>,
    others_cpus: f64,
}

impl RunResult {
    /// RSS slope over the second half of the samples taken while restarting, KiB per restart.
    fn late_slope(&self, rate: f64) -> Option<f64> {
        let during: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.secs <= self.load_secs)
            .collect();
        let half = &during[during.len() / 2..];
        let xs: Vec<f64> = half.iter().map(|s| s.secs * rate).collect();
        let ys: Vec<f64> = half.iter().map(|s| s.rss as f64).collect();
        slope(&xs, &ys)
    }

    fn max_of(&self, f: fn(&Sample) -> f64) -> f64 {
        self.samples.iter().map(f).fold(0.0, f64::max)
    }

    fn no_growth(&self, rate: f64) -> bool {
        self.end.fds <= self.start.fds
            && self.end.children <= self.start.children
            && self
                .late_slope(rate)
                .is_some_and(|s| s <= RSS_SLOPE_LIMIT_KIB)
    }
}

fn run(opts: &Opts) -> Result<Report, String> {
    let runs = opts.count("--runs")?;
    let restarts = opts.count("--restarts")?;
    let rate: f64 = opts
        .str("--rate")
        .and_then(|v| v.parse().ok())
        .filter(|r: &f64| r.is_finite() && *r > 0.0)
        .ok_or("--rate must be a positive number of restarts per second")?;
    let sample = Duration::from_millis(opts.count("--sample-ms")?);
    let base = wrk::Config::from_opts(opts)?;
    let secs = (restarts as f64 / rate).ceil() as u64 + 2;
    let cfg = wrk::Config {
        duration: Duration::from_secs(secs),
        ..base
    };
    let tmp = TempDir::new(opts.flag("--keep"))?;
    let build = build_hello(&["soak".to_string()], tmp.path())?.remove(0);
    let mut results = Vec::new();
    for run in 1..=runs {
        eprintln!("upshift-bench: soak: run {run}/{runs}: {restarts} restarts at {rate}/s");
        results.push(one_run(run, restarts, rate, sample, &cfg, &build, &tmp)?);
    }
    Ok(render(opts, &cfg, restarts, rate, &results))
}

fn one_run(
    run: u64,
    restarts: u64,
    rate: f64,
    every: Duration,
    cfg: &wrk::Config,
    build: &std::path::Path,
    tmp: &TempDir,
) -> Result<RunResult, String> {
    let cpu = crate::machine::CpuWindow::start();
    let dir = tmp.sub(&format!("run{run}"))?;
    let app = dir.join("app");
    std::fs::copy(build, &app).map_err(|e| format!("copying the build: {e}"))?;
    let mut server = Server::start(&app, &[], &dir.join("hello.log"))?;
    let master = server.master_pid();
    procs::sleep_until(Instant::now() + SETTLE)?;
    let start = quiet(master)?;

    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let (s, out) = (stop.clone(), samples.clone());
    let t0 = Instant::now();
    let sampler = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            let at = t0.elapsed().as_secs_f64();
            let read = (
                procfs::fd_count(master),
                procfs::rss_kib(master),
                procfs::children(master),
            );
            if let (Some(fds), Some(rss), Some(children)) = read {
                let smp = Sample {
                    secs: at,
                    fds,
                    rss,
                    children: children.len(),
                    threads: procfs::threads(master).unwrap_or(0),
                };
                if let Ok(mut v) = out.lock() {
                    v.push(smp);
                }
            }
            std::thread::sleep(every);
        }
    });

    let load = wrk::start(cfg, server.addr, &dir, "load")?;
    let mut sent = 0u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let result = (|| {
        for k in 0..restarts {
            procs::sleep_until(t0 + period / 2 + period * k as u32)?;
            if !server.master_alive() {
                return Err(format!("the master exited after {sent} restarts"));
            }
            procs::signal(master, libc::SIGUSR2)
                .map_err(|e| format!("SIGUSR2 to the master {master}: {e}"))?;
            sent += 1;
            if sent.is_multiple_of(100) {
                eprintln!("upshift-bench: soak: {sent} restarts sent");
            }
        }
        Ok(())
    })();
    let load_secs = t0.elapsed().as_secs_f64();
    let finished = load.finish();
    let expected = 1 + sent;
    let end_greeting = server.greet_until(Duration::from_secs(30), |g| g.generation >= expected);
    procs::sleep_until(Instant::now() + SETTLE)?;
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    result?;
    let (report, _) = finished?;
    let end = quiet(master)?;
    let master_alive = server.master_alive();
    let stopped = server.stop();
    let samples = samples.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(RunResult {
        run,
        wrk: report,
        sent,
        gen_end: end_greeting.map_or(0, |g| g.generation),
        queued_lines: log_lines(&server.log, "restart queued").len(),
        start,
        end,
        samples,
        load_secs,
        master_alive,
        leftovers: stopped.leftovers,
        problems: log_problems(&server.log),
        others_cpus: cpu.others_cpus(),
    })
}

fn render(
    opts: &Opts,
    cfg: &wrk::Config,
    restarts: u64,
    rate: f64,
    results: &[RunResult],
) -> Report {
    let mut r = Report::new(
        "soak: restarts under load, nothing grows",
        &super::command(&SPEC, opts),
    );
    r.para(&format!(
        "Load: `wrk {} http://127.0.0.1:PORT/` (keep-alive) against the `hello` example (release \
         build). {restarts} SIGUSR2s to the master, {rate} per second. A sampler reads the \
         master's open descriptors (/proc/PID/fd), VmRSS, children (/proc/PID/task/*/children) \
         and threads every {} ms. \"Quiet\" readings are taken {} s before the load and {} s \
         after the last restart reached traffic. `--duration` does not apply. {} run(s).",
        cfg.args().join(" "),
        opts.str("--sample-ms").unwrap_or("100"),
        SETTLE.as_secs(),
        SETTLE.as_secs(),
        results.len(),
    ));
    r.para(OTHERS_NOTE);
    let mut t = Table::new(&[
        "run",
        "requests",
        "socket errors",
        "non-2xx",
        "restarts sent → generation reached",
        "fds quiet: before → after (max during)",
        "RSS quiet: before → after (max during)",
        "RSS slope, 2nd half",
        "children quiet: before → after (max during)",
        "others' CPU",
    ]);
    for x in results {
        t.row(vec![
            x.run.to_string(),
            int(x.wrk.requests as f64),
            x.wrk.socket_errors().to_string(),
            x.wrk.non2xx.to_string(),
            format!("{} → gen {}", x.sent, x.gen_end),
            format!(
                "{} → {} ({})",
                x.start.fds,
                x.end.fds,
                x.max_of(|s| s.fds as f64)
            ),
            format!(
                "{} → {} ({})",
                procfs::mib(x.start.rss),
                procfs::mib(x.end.rss),
                procfs::mib(x.max_of(|s| s.rss as f64) as u64)
            ),
            x.late_slope(rate)
                .map_or("–".into(), |s| format!("{s:+.3} KiB/restart")),
            format!(
                "{} → {} ({})",
                x.start.children,
                x.end.children,
                x.max_of(|s| s.children as f64)
            ),
            format!("{:.2}", x.others_cpus),
        ]);
    }
    r.summary_table("Per run", &t);

    r.heading("Samples over time (first run)");
    if let Some(x) = results.first() {
        let mut st = Table::new(&[
            "window",
            "restarts by then",
            "fds median / max",
            "RSS median / max",
            "children median / max",
            "threads max",
        ]);
        let windows = 10usize;
        let span = x.load_secs / windows as f64;
        for w in 0..windows {
            let (a, b) = (span * w as f64, span * (w + 1) as f64);
            let inw: Vec<&Sample> = x
                .samples
                .iter()
                .filter(|s| s.secs >= a && s.secs < b)
                .collect();
            if inw.is_empty() {
                continue;
            }
            let col = |f: fn(&Sample) -> f64| inw.iter().map(|s| f(s)).collect::<Vec<_>>();
            let med_max = |v: Vec<f64>, fmt: fn(f64) -> String| {
                format!(
                    "{} / {}",
                    median(&v).map_or("–".into(), fmt),
                    fmt(v.iter().copied().fold(0.0, f64::max))
                )
            };
            st.row(vec![
                format!("{a:.0}–{b:.0} s"),
                format!("{:.0}", (b * rate).min(x.sent as f64)),
                med_max(col(|s| s.fds as f64), int),
                med_max(col(|s| s.rss as f64), |k| procfs::mib(k as u64)),
                med_max(col(|s| s.children as f64), int),
                int(inw.iter().map(|s| s.threads as f64).fold(0.0, f64::max)),
            ]);
        }
        r.table(&st);
        r.para(
            "During a restart the master briefly holds the new worker's control socket and has \
             two or more children (the new worker, and old ones draining): the maximum during \
             the load is expected above the quiet value; what must not happen is a quiet value \
             that climbs.",
        );
    }

    r.heading("Verdict");
    let sock: u64 = results.iter().map(|x| x.wrk.socket_errors()).sum();
    let non2xx: u64 = results.iter().map(|x| x.wrk.non2xx).sum();
    let growth = results.iter().all(|x| x.no_growth(rate));
    let alive = results.iter().all(|x| x.master_alive);
    let clean = results.iter().all(|x| x.leftovers.is_empty());
    let met = sock == 0 && non2xx == 0 && growth && alive && clean;
    r.para(&format!(
        "Target: no growth in the master's descriptors, RSS or children over {restarts} restarts, \
         zero failed requests. Measured: {sock} socket errors, {non2xx} non-2xx; descriptors and \
         children back to their quiet values and RSS slope over the second half ≤ \
         {RSS_SLOPE_LIMIT_KIB} KiB/restart in every run: {}; master alive throughout: {}; no \
         process left after the stop: {}. **{}**",
        yes(growth),
        yes(alive),
        yes(clean),
        if met { "Target met." } else { "Target missed." },
    ));
    r.verdict(
        &format!(
            "{restarts} restarts under load: no growth of the master's fds, RSS or children, \
             0 failed requests (issue 5)"
        ),
        format!(
            "{} run(s): {sock} socket errors, {non2xx} non-2xx; quiet fds and children back, \
             RSS slope ≤ {RSS_SLOPE_LIMIT_KIB} KiB/restart: {}; master alive: {}; nothing left \
             running: {}",
            results.len(),
            yes(growth),
            yes(alive),
            yes(clean)
        ),
        Status::met_if(met),
    );
    let p99: Vec<f64> = results.iter().map(|x| x.wrk.p99_us).collect();
    r.para(&format!(
        "Latency under restarts (not a target): p99 {}, req/s {}.",
        summary(&p99, us),
        summary(&results.iter().map(|x| x.wrk.rps).collect::<Vec<_>>(), int)
    ));

    r.heading("Raw per-run numbers");
    let mut raw = Vec::new();
    for x in results {
        let mut l = format!(
            "run={} requests={} rps={:.0} connect={} read={} write={} timeout={} non2xx={} \
             p50_us={:.0} p99_us={:.0} p999_us={} sent={} gen_end={} restart_queued_lines={} \
             load_secs={:.1} quiet_before: fds={} rss_kib={} children={} threads={} \
             quiet_after: fds={} rss_kib={} children={} threads={} samples={} master_alive={} \
             leftover_pids={:?} log_warnings={} others_cpus={:.2}",
            x.run,
            x.wrk.requests,
            x.wrk.rps,
            x.wrk.connect,
            x.wrk.read,
            x.wrk.write,
            x.wrk.timeout,
            x.wrk.non2xx,
            x.wrk.p50_us,
            x.wrk.p99_us,
            x.wrk.p999_us.map_or("-".into(), |v| format!("{v:.0}")),
            x.sent,
            x.gen_end,
            x.queued_lines,
            x.load_secs,
            x.start.fds,
            x.start.rss,
            x.start.children,
            x.start.threads,
            x.end.fds,
            x.end.rss,
            x.end.children,
            x.end.threads,
            x.samples.len(),
            x.master_alive,
            x.leftovers,
            x.problems.len(),
            x.others_cpus,
        );
        l.push_str("\n  every 10th second (s:fds/rss_kib/children):");
        let mut next = 0.0;
        for s in &x.samples {
            if s.secs >= next {
                let _ = write!(l, " {:.0}:{}/{}/{}", s.secs, s.fds, s.rss, s.children);
                next += 10.0;
            }
        }
        raw.push(l);
    }
    r.raw(&raw);
    let logs: Vec<(String, &[String])> = results
        .iter()
        .map(|x| (format!("run {}", x.run), x.problems.as_slice()))
        .collect();
    crate::report::log_problems(&mut r, &logs);
    r
}
