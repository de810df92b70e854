//! `startup`: from exec to the first served request, with upshift and without.
//!
//! Each repetition starts a fresh server on a free port and sends `GET /` in a tight loop (a
//! refused connection is retried after 100 µs) until one is answered `200`; the figure is from
//! just before `spawn` (fork + exec) to that answer. Under upshift the master binds the socket
//! first and the kernel queues the request until the worker accepts, so the first answer is the
//! worker's first request. Servers alternate (upshift, plain, …) so that drift on a shared
//! machine falls on both. For upshift the server log splits the time: exec → the master's
//! `worker starting` → `worker ready` → the answer.

use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use super::Scenario;
use crate::builds::{build_hello, build_plain, TempDir};
use crate::opts::{OptSpec, Opts};
use crate::procs::{self, Guard};
use crate::report::{Report, Status, Table};
use crate::stats::{self, ms};
use crate::{hello, httpget, logtime, machine};

pub static SPEC: Scenario = Scenario {
    name: "startup",
    summary: "time from exec to the first served request, hello under upshift vs plain_hello, \
              many repetitions (wrk is not used)",
    options: &OPTIONS,
    run,
};

static OPTIONS: [OptSpec; 2] = [
    OptSpec {
        name: "--runs",
        value: Some("N"),
        default: Some("30"),
        help: "repetitions of each server",
    },
    OptSpec {
        name: "--disabled",
        value: None,
        default: None,
        help: "also time hello with UPSHIFT_DISABLE=1 (in-process, no master)",
    },
];

/// How long a server may take to answer its first request.
const START_LIMIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Upshift,
    Plain,
    Disabled,
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Variant::Upshift => "upshift",
            Variant::Plain => "plain",
            Variant::Disabled => "disabled",
        })
    }
}

struct Sample {
    rep: u64,
    variant: Variant,
    /// exec → first 200.
    total_ms: f64,
    /// Upshift: exec → `upshift master started` → `worker starting` → `worker ready` → the
    /// answer (from the log).
    phases: Option<[f64; 4]>,
    attempts: u64,
    others_cpus: f64,
    leftovers: Vec<u32>,
}

fn run(opts: &Opts) -> Result<Report, String> {
    let runs = opts.count("--runs")?;
    let variants: &[Variant] = if opts.flag("--disabled") {
        &[Variant::Upshift, Variant::Plain, Variant::Disabled]
    } else {
        &[Variant::Upshift, Variant::Plain]
    };
    let tmp = TempDir::new(opts.flag("--keep"))?;
    let builds_dir = tmp.sub("builds")?;
    let hello_build = build_hello(&["bench".to_string()], &builds_dir)?.remove(0);
    let plain = build_plain(&builds_dir)?;
    let sizes = (
        crate::builds::sizes(std::slice::from_ref(&hello_build)),
        crate::builds::sizes(std::slice::from_ref(&plain)),
    );
    // One directory and binary per server, reused: the page cache holds them after the first
    // start, as it does for a server restarted on a real host.
    let mut exes = Vec::new();
    for &v in variants {
        let dir = tmp.sub(&v.to_string())?;
        let exe = dir.join("app");
        let src = if v == Variant::Plain {
            &plain
        } else {
            &hello_build
        };
        std::fs::copy(src, &exe).map_err(|e| format!("copying {}: {e}", src.display()))?;
        exes.push((v, exe));
    }
    let mut samples = Vec::new();
    for rep in 1..=runs {
        for (v, exe) in &exes {
            procs::check()?;
            samples.push(one_start(rep, *v, exe)?);
        }
        if rep % 10 == 0 || rep == runs {
            eprintln!("upshift-bench: startup: {rep}/{runs} repetitions");
        }
    }
    Ok(render(opts, runs, variants, &sizes, &samples))
}

fn one_start(rep: u64, variant: Variant, exe: &Path) -> Result<Sample, String> {
    let dir = exe.parent().ok_or("the binary has no directory")?;
    let cpu = machine::CpuWindow::start();
    let port = hello::free_port()?;
    let addr = ([127, 0, 0, 1], port).into();
    let log = dir.join(format!("start-{rep:03}.log"));
    let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .env_remove("UPSHIFT_DISABLE")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    if variant == Variant::Disabled {
        cmd.env("UPSHIFT_DISABLE", "1");
    }
    let wall = SystemTime::now();
    let started = Instant::now();
    let mut guard = Guard::spawn(
        &mut cmd,
        &format!("{variant} server"),
        Duration::from_secs(40),
    )
    .map_err(|e| e.to_string())?;
    let mut attempts = 0u64;
    let total = loop {
        attempts += 1;
        match httpget::get(addr, "/", Duration::from_secs(5)) {
            Ok(r) if r.status == 200 => break started.elapsed(),
            // Refused until the socket is bound; anything else is retried the same way.
            _ => {}
        }
        if let Some(st) = guard.try_wait() {
            return Err(format!(
                "{} exited with {st} before answering; log:\n{}",
                exe.display(),
                hello::tail(&log, 20)
            ));
        }
        if started.elapsed() > START_LIMIT || procs::interrupted() {
            return Err(format!(
                "{} did not answer on {addr} within {START_LIMIT:?}; log:\n{}",
                exe.display(),
                hello::tail(&log, 20)
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    let total_ms = total.as_secs_f64() * 1e3;
    if variant == Variant::Upshift {
        // The worker answers as soon as it accepts; the master may log its readiness a moment
        // later, and a SIGTERM before that would leave the phase without its line.
        let until = Instant::now() + Duration::from_secs(2);
        while hello::log_lines(&log, "worker ready").is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    guard.stop();
    // The worker drains and exits with the master; whatever remains is killed by pid.
    let until = Instant::now() + Duration::from_secs(5);
    while !procs::processes_running_from(dir).is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let leftovers = procs::kill_leftovers(dir);
    let phases = (variant == Variant::Upshift)
        .then(|| phases(&log, wall, total_ms))
        .flatten();
    Ok(Sample {
        rep,
        variant,
        total_ms,
        phases,
        attempts,
        others_cpus: cpu.others_cpus(),
        leftovers,
    })
}

/// exec → `upshift master started` → `worker starting` → `worker ready` → the answer, in ms,
/// from the master's log.
fn phases(log: &Path, exec: SystemTime, total_ms: f64) -> Option<[f64; 4]> {
    let lines = logtime::read(log);
    let master = logtime::first_after(&lines, exec, None, "upshift master started")?.at;
    let starting = logtime::first_after(&lines, master, None, "worker starting")?.at;
    let ready = logtime::first_after(&lines, starting, None, "worker ready")?.at;
    let a = logtime::ms_between(exec, master);
    let b = logtime::ms_between(master, starting);
    let c = logtime::ms_between(starting, ready);
    Some([a, b, c, total_ms - a - b - c])
}

fn render(
    opts: &Opts,
    runs: u64,
    variants: &[Variant],
    sizes: &(String, String),
    samples: &[Sample],
) -> Report {
    let mut r = Report::new(
        "startup: exec to the first served request",
        &super::command(&SPEC, opts),
    );
    r.para(&format!(
        "**upshift**: the `hello` example (release build, {}) as `app --listen \
         127.0.0.1:PORT`: a master that binds, then forks and execs the worker, which serves. \
         **plain**: `plain_hello` ({}), the same router and runtime binding its own socket.{} \
         Each of {runs} repetition(s) per server: spawn, then `GET /` on a fresh connection in a \
         tight loop (100 µs after a refused connection) until the first `200`; timed from just \
         before `spawn` to that answer; then SIGTERM and wait until every process of it has \
         exited. Servers alternate. The common --duration/--connections/--threads options are \
         not used. \"Others' CPU\" is as in the other reports, per start.",
        sizes.0,
        sizes.1,
        if variants.contains(&Variant::Disabled) {
            " **disabled**: `hello` with `UPSHIFT_DISABLE=1`, in-process without a master."
        } else {
            ""
        },
    ));

    let mut t = Table::new(&[
        "server",
        "starts",
        "min",
        "median",
        "p90",
        "max",
        "others' CPU, median",
    ]);
    let of = |v: Variant| -> Vec<&Sample> { samples.iter().filter(|s| s.variant == v).collect() };
    for &v in variants {
        let s = of(v);
        let ms_v: Vec<f64> = s.iter().map(|x| x.total_ms).collect();
        let f = |o: Option<f64>| o.map_or("–".into(), ms);
        t.row(vec![
            format!("**{v}**"),
            s.len().to_string(),
            f(stats::min(&ms_v)),
            format!("**{}**", f(stats::median(&ms_v))),
            f(stats::percentile(&ms_v, 90.0)),
            f(stats::max(&ms_v)),
            stats::median(&s.iter().map(|x| x.others_cpus).collect::<Vec<_>>())
                .map_or("–".into(), |c| format!("{c:.2}")),
        ]);
    }
    r.summary_table("Exec → first served request", &t);
    let med = |v: Variant| stats::median(&of(v).iter().map(|x| x.total_ms).collect::<Vec<_>>());
    if let (Some(a), Some(b)) = (med(Variant::Upshift), med(Variant::Plain)) {
        let disabled = match med(Variant::Disabled) {
            Some(d) => format!(
                " Of that, the binary itself (`hello` links the HTTP, S3 and GitHub fetchers and \
                 initialises logging) accounts for disabled − plain = {}; the master and the \
                 worker's fork+exec for upshift − disabled = {}.",
                ms(d - b),
                ms(a - d)
            ),
            None => String::new(),
        };
        r.para(&format!(
            "Median difference, upshift − plain: {} ({:.1}×).{disabled}",
            ms(a - b),
            a / b
        ));
        r.verdict(
            "exec → first served request (issue 5: reported, no target)",
            format!("median {} under upshift, {} plain", ms(a), ms(b)),
            Status::NoTarget,
        );
    }

    let ph: Vec<[f64; 4]> = samples.iter().filter_map(|s| s.phases).collect();
    if !ph.is_empty() {
        r.heading(&format!(
            "Where upshift's time goes (server log, {} of {} starts pooled)",
            ph.len(),
            of(Variant::Upshift).len()
        ));
        let mut p = Table::new(&["phase", "min", "median", "max"]);
        for (i, name) in [
            "exec → `upshift master started` (exec, runtime, logging, bind)",
            "→ `worker starting` (fork+exec of the worker; logged once it is spawned)",
            "→ `worker ready` (the worker's runtime, listeners, accept loop)",
            "→ first answer seen by the harness",
        ]
        .iter()
        .enumerate()
        {
            let v: Vec<f64> = ph.iter().map(|x| x[i]).collect();
            let f = |o: Option<f64>| o.map_or("–".into(), ms);
            p.row(vec![
                name.to_string(),
                f(stats::min(&v)),
                f(stats::median(&v)),
                f(stats::max(&v)),
            ]);
        }
        r.table(&p);
        r.para(
            "Log timestamps and the harness's clock are the same system clock; the last phase \
             includes the harness's polling (a request already queued is answered at once) and \
             can be slightly negative when the log line is written after the answer.",
        );
    }

    r.heading("Raw numbers (ms, in start order)");
    let mut raw = Vec::new();
    for &v in variants {
        let s = of(v);
        raw.push(format!(
            "{v}: {}",
            s.iter()
                .map(|x| format!("{:.1}", x.total_ms))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        raw.push(format!(
            "{v} attempts: {}",
            s.iter()
                .map(|x| x.attempts.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ));
        let left: Vec<String> = s
            .iter()
            .filter(|x| !x.leftovers.is_empty())
            .map(|x| format!("rep {}: {:?}", x.rep, x.leftovers))
            .collect();
        if !left.is_empty() {
            raw.push(format!("{v} leftover pids killed: {}", left.join(", ")));
        }
    }
    if !ph.is_empty() {
        for (i, name) in [
            "to_master_started",
            "to_worker_starting",
            "to_worker_ready",
            "to_answer",
        ]
        .iter()
        .enumerate()
        {
            raw.push(format!(
                "upshift {name}: {}",
                ph.iter()
                    .map(|x| format!("{:.1}", x[i]))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
    }
    r.raw(&raw);
    r
}
