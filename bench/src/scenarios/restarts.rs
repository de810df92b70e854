//! `restarts`: zero downtime under SIGUSR2.
//!
//! hello (release build) serves `wrk -t2 -c100 -d30s --latency` (keep-alive) while the harness
//! sends SIGUSR2 to the master every `--every` seconds, starting half an interval in (so 30 s at
//! 1 s gives 30 restarts, the last at 29.5 s). A control run does the same without signals.
//! Target (issue 2's acceptance criterion): 0 socket errors, 0 non-2xx, the master pid stable.

use std::fmt;
use std::time::{Duration, Instant};

use super::Scenario;
use crate::builds::{build_hello, TempDir};
use crate::hello::{log_lines, log_problems, Server};
use crate::opts::{OptSpec, Opts};
use crate::prober::Prober;
use crate::report::{yes, Report, Status, Table, OTHERS_NOTE};
use crate::stats::{int, summary, us};
use crate::{procs, wrk};

pub static SPEC: Scenario = Scenario {
    name: "restarts",
    summary: "zero downtime under SIGUSR2: wrk keep-alive load while the master restarts every \
              --every seconds, and a control run without restarts",
    options: &OPTIONS,
    run,
};

static OPTIONS: [OptSpec; 2] = [
    OptSpec {
        name: "--every",
        value: Some("SECS"),
        default: Some("1"),
        help: "seconds between SIGUSR2s to the master",
    },
    OptSpec {
        name: "--no-control",
        value: None,
        default: None,
        help: "skip the control runs without restarts",
    },
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Restarts,
    Control,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Restarts => "restarts",
            Mode::Control => "control",
        })
    }
}

struct RunResult {
    run: u64,
    mode: Mode,
    wrk: wrk::Report,
    restarts: u64,
    master_pid: u32,
    /// The 1-minute load average before the run and after it.
    load: (f64, f64),
    /// Average CPUs used by processes other than the harness's during the run.
    others_cpus: f64,
    master_stable: bool,
    stable_note: String,
    gen_start: u64,
    gen_end: u64,
    gen_expected: u64,
    /// Distinct workers (pids) that answered at least one probe: a restart "reached traffic"
    /// only if its worker answered a request.
    workers_answered: u64,
    /// Probes (a fresh connection every few ms, beside wrk) that failed.
    probe_failures: u64,
    worker_ready_lines: usize,
    master_exit: String,
    leftovers: Vec<u32>,
    problems: Vec<String>,
}

fn run(opts: &Opts) -> Result<Report, String> {
    let runs = opts.count("--runs")?;
    let every = opts.secs("--every")?;
    let cfg = wrk::Config::from_opts(opts)?;
    let modes: &[Mode] = if opts.flag("--no-control") {
        &[Mode::Restarts]
    } else {
        &[Mode::Restarts, Mode::Control]
    };
    let tmp = TempDir::new(opts.flag("--keep"))?;
    let build = build_hello(&["bench".to_string()], tmp.path())?.remove(0);
    let size = crate::builds::sizes(std::slice::from_ref(&build));

    let mut results = Vec::new();
    for run in 1..=runs {
        for &mode in modes {
            eprintln!("upshift-bench: restarts: run {run}/{runs}, {mode}");
            results.push(one_run(run, mode, &cfg, every, &build, &tmp)?);
        }
    }
    Ok(render(opts, &cfg, every, runs, modes, &size, &results))
}

fn one_run(
    run: u64,
    mode: Mode,
    cfg: &wrk::Config,
    every: Duration,
    build: &std::path::Path,
    tmp: &TempDir,
) -> Result<RunResult, String> {
    let load_before = crate::machine::load1();
    let cpu = crate::machine::CpuWindow::start();
    procs::check()?;
    let dir = tmp.sub(&format!("run{run}-{mode}"))?;
    let app = dir.join("app");
    std::fs::copy(build, &app).map_err(|e| format!("copying the build: {e}"))?;
    let mut server = Server::start(&app, &[], &dir.join("hello.log"))?;
    let master = server.master_pid();
    let first = server.greet()?;

    let prober = Prober::start(server.addr, Duration::from_millis(5))?;
    let load = wrk::start(cfg, server.addr, &dir, "load")?;
    let t0 = Instant::now();
    let mut restarts = 0u64;
    let mut died_at = None;
    if mode == Mode::Restarts {
        for k in 0u32.. {
            let at = every / 2 + every * k;
            if at >= cfg.duration {
                break;
            }
            procs::sleep_until(t0 + at)?;
            if !server.master_alive() {
                died_at = Some(at);
                break;
            }
            procs::signal(master, libc::SIGUSR2)
                .map_err(|e| format!("SIGUSR2 to the master {master}: {e}"))?;
            restarts += 1;
        }
    }
    let (report, _raw) = load.finish()?;

    // Restarts still in progress when wrk stopped finish now: wait for the last generation.
    let expected = first.generation + restarts;
    let end = server.greet_until(Duration::from_secs(30), |g| g.generation >= expected);
    // The last worker has answered `greet_until`; give the prober a moment to see it too.
    std::thread::sleep(Duration::from_millis(50));
    let probes = prober.finish();
    let alive = server.master_alive();
    let (gen_end, worker_end) = end.as_ref().map_or((0, 0), |g| (g.generation, g.pid));
    let ppid = procs::state_and_ppid(worker_end).map(|(_, p)| p);
    let master_stable = alive && died_at.is_none() && ppid == Some(master);
    let stable_note = if !alive || died_at.is_some() {
        format!("master {master} exited during the run")
    } else if end.is_none() {
        "no answer after the run".to_string()
    } else if ppid != Some(master) {
        format!("serving worker {worker_end} has parent {ppid:?}, not the master {master}")
    } else {
        format!("master {master} alive, parent of the serving worker {worker_end}")
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
        mode,
        wrk: report,
        restarts,
        master_pid: master,
        load: (load_before, load_after),
        others_cpus,
        master_stable,
        stable_note,
        gen_start: first.generation,
        gen_end,
        gen_expected: expected,
        workers_answered: probes.seen.len() as u64,
        probe_failures: probes.failures,
        worker_ready_lines: log_lines(&server.log, "worker ready").len(),
        master_exit,
        leftovers: stopped.leftovers,
        problems: log_problems(&server.log),
    })
}

fn errors_cell(w: &wrk::Report) -> String {
    format!("{} / {} / {} / {}", w.connect, w.read, w.write, w.timeout)
}

fn render(
    opts: &Opts,
    cfg: &wrk::Config,
    every: Duration,
    runs: u64,
    modes: &[Mode],
    size: &str,
    results: &[RunResult],
) -> Report {
    let mut r = Report::new(
        "restarts: zero downtime under SIGUSR2",
        &super::command(&SPEC, opts),
    );
    r.para(&format!(
        "Load: `wrk {} http://127.0.0.1:PORT/` (keep-alive) against the `hello` example \
         (release build, {size}). With restarts: SIGUSR2 to the master every {} s from {} s on; \
         control: no signals. {runs} run(s) of each; a run is a fresh server.",
        cfg.args().join(" "),
        every.as_secs_f64(),
        every.as_secs_f64() / 2.0,
    ));

    r.para(OTHERS_NOTE);
    r.heading("Per run");
    let mut t = Table::new(&[
        "run",
        "mode",
        "requests",
        "req/s",
        "socket errors (connect / read / write / timeout)",
        "non-2xx",
        "p50",
        "p99",
        "p99.9",
        "restarts",
        "master pid stable",
        "gen at end",
        "others' CPU",
    ]);
    for x in results {
        t.row(vec![
            x.run.to_string(),
            x.mode.to_string(),
            int(x.wrk.requests as f64),
            int(x.wrk.rps),
            errors_cell(&x.wrk),
            x.wrk.non2xx.to_string(),
            us(x.wrk.p50_us),
            us(x.wrk.p99_us),
            x.wrk.p999_us.map_or("–".into(), us),
            x.restarts.to_string(),
            yes(x.master_stable),
            format!("{} (expected {})", x.gen_end, x.gen_expected),
            format!("{:.2}", x.others_cpus),
        ]);
    }
    r.table(&t);

    let summary_heading = format!("Summary: median (min–max) over {runs} run(s)");
    let mut header = vec!["figure"];
    for m in modes {
        header.push(match m {
            Mode::Restarts => "with restarts",
            Mode::Control => "control (no restarts)",
        });
    }
    let mut s = Table::new(&header);
    type Fig = (&'static str, fn(&RunResult) -> f64, fn(f64) -> String);
    let figures: [Fig; 12] = [
        ("requests", |x| x.wrk.requests as f64, int),
        ("req/s", |x| x.wrk.rps, int),
        (
            "socket errors (all kinds)",
            |x| x.wrk.socket_errors() as f64,
            int,
        ),
        ("non-2xx", |x| x.wrk.non2xx as f64, int),
        ("p50 latency", |x| x.wrk.p50_us, us),
        ("p99 latency", |x| x.wrk.p99_us, us),
        ("p99.9 latency", |x| x.wrk.p999_us.unwrap_or(f64::NAN), us),
        ("max latency", |x| x.wrk.max_us.unwrap_or(f64::NAN), us),
        ("restarts sent", |x| x.restarts as f64, int),
        ("worker generation at end", |x| x.gen_end as f64, int),
        (
            "workers that answered a probe",
            |x| x.workers_answered as f64,
            int,
        ),
        ("failed probes", |x| x.probe_failures as f64, int),
    ];
    for (name, get, fmt) in figures {
        let mut row = vec![name.to_string()];
        for m in modes {
            let v: Vec<f64> = results
                .iter()
                .filter(|x| x.mode == *m)
                .map(get)
                .filter(|v| !v.is_nan())
                .collect();
            row.push(summary(&v, fmt));
        }
        s.row(row);
    }
    let mut row = vec!["master pid stable".to_string()];
    for m in modes {
        let of: Vec<&RunResult> = results.iter().filter(|x| x.mode == *m).collect();
        let n = of.iter().filter(|x| x.master_stable).count();
        row.push(format!("{n} of {} runs", of.len()));
    }
    s.row(row);
    r.summary_table(&summary_heading, &s);

    r.heading("Verdict");
    let with: Vec<&RunResult> = results
        .iter()
        .filter(|x| x.mode == Mode::Restarts)
        .collect();
    let sock: u64 = with.iter().map(|x| x.wrk.socket_errors()).sum();
    let non2xx: u64 = with.iter().map(|x| x.wrk.non2xx).sum();
    let stable = with.iter().all(|x| x.master_stable);
    let all_gens = with.iter().all(|x| x.gen_end == x.gen_expected);
    let reached = with.iter().all(|x| x.workers_answered == x.restarts + 1);
    let probe_failures: u64 = with.iter().map(|x| x.probe_failures).sum();
    let met = sock == 0 && non2xx == 0 && stable && reached && probe_failures == 0;
    let at_target = every <= Duration::from_secs(1) && cfg.duration >= Duration::from_secs(30);
    r.para(&format!(
        "Target (issue 2): 0 socket errors, 0 non-2xx, master pid stable, at 1 restart/s for \
         30 s. Measured over {} run(s) with restarts every {} s for {} s: {} socket errors, \
         {} non-2xx, {} failed probes, master pid stable in {} of {} runs; final generation = \
         1 + restarts: {}; every restart reached traffic (its worker answered a probe): {}. \
         **{}**{}",
        with.len(),
        every.as_secs_f64(),
        cfg.duration.as_secs_f64(),
        sock,
        non2xx,
        probe_failures,
        with.iter().filter(|x| x.master_stable).count(),
        with.len(),
        yes(all_gens),
        yes(reached),
        if met { "Target met." } else { "Target missed." },
        if at_target {
            ""
        } else {
            " (These parameters are milder than the target's; the verdict is for them only.)"
        },
    ));

    let answered: u64 = with.iter().map(|x| x.workers_answered).sum();
    let workers: u64 = with.iter().map(|x| x.restarts + 1).sum();
    r.verdict(
        &format!(
            "0 socket errors, 0 non-2xx, master pid stable, every restart's worker answers, at \
             1 restart/s for 30 s (issue 2){}",
            if at_target {
                ""
            } else {
                "; run with milder parameters"
            }
        ),
        format!(
            "{} run(s): {sock} socket errors, {non2xx} non-2xx, {probe_failures} failed probes, \
             master pid stable in {} of {}; {answered} of {workers} workers answered a request",
            with.len(),
            with.iter().filter(|x| x.master_stable).count(),
            with.len(),
        ),
        Status::met_if(met && at_target),
    );

    r.heading("Raw per-run numbers");
    let mut raw = Vec::new();
    for x in results {
        raw.push(format!(
            "run={} mode={} requests={} seconds={:.2} rps={:.2} connect={} read={} write={} timeout={} \
             non2xx={} p50_us={:.0} p75_us={:.0} p90_us={:.0} p99_us={:.0} p999_us={} max_us={} \
             restarts={} master_pid={} master_stable={} gen_start={} gen_end={} gen_expected={} \
             workers_answered={} probe_failures={} worker_ready_log_lines={} master_exit=\"{}\" leftover_pids={:?} log_warnings={} load1_before={:.2} load1_after={:.2} others_cpus={:.2}",
            x.run,
            x.mode,
            x.wrk.requests,
            x.wrk.seconds,
            x.wrk.rps,
            x.wrk.connect,
            x.wrk.read,
            x.wrk.write,
            x.wrk.timeout,
            x.wrk.non2xx,
            x.wrk.p50_us,
            x.wrk.p75_us,
            x.wrk.p90_us,
            x.wrk.p99_us,
            x.wrk.p999_us.map_or("-".into(), |v| format!("{v:.0}")),
            x.wrk.max_us.map_or("-".into(), |v| format!("{v:.0}")),
            x.restarts,
            x.master_pid,
            x.master_stable,
            x.gen_start,
            x.gen_end,
            x.gen_expected,
            x.workers_answered,
            x.probe_failures,
            x.worker_ready_lines,
            x.master_exit,
            x.leftovers,
            x.problems.len(),
            x.load.0,
            x.load.1,
            x.others_cpus,
        ));
        if !x.master_stable {
            raw.push(format!("  master pid: {}", x.stable_note));
        }
    }
    r.raw(&raw);

    let logs: Vec<(String, &[String])> = results
        .iter()
        .map(|x| (format!("run {} {}", x.run, x.mode), x.problems.as_slice()))
        .collect();
    crate::report::log_problems(&mut r, &logs);
    r
}
