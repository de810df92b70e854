//! `overhead`: what upshift costs a server in steady state.
//!
//! A: the `hello` example under upshift (master + worker; the worker accepts from the inherited
//! socket and serves through `upshift::http`). B: `plain_hello`, the same axum router, handlers,
//! answer and tokio runtime served by `axum::serve` on a socket it binds itself, no master.
//! Optionally C (`--disabled`): `hello` with `UPSHIFT_DISABLE=1`, in-process, which tells the
//! master's share from the HTTP helper's. Every server is started once and stays up for the
//! whole scenario, so none warms up (page cache, allocator, CPU frequency) while the other is
//! off; the pairs are interleaved A B, B A, A B … (each run warmed up, then measured with wrk),
//! so a drift of the machine lands on both sides. Reported: req/s and their ratio A/B per pair,
//! the server's CPU time per request, latency. Targets (issue 14): keep-alive A/B ≥ 0.98,
//! `Connection: close` A/B ≥ 1.0.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::Scenario;
use crate::builds::{build_hello, build_plain, TempDir};
use crate::hello::{Launch, Server};
use crate::opts::{OptSpec, Opts};
use crate::report::{Report, Status, Table, OTHERS_NOTE};
use crate::stats::{self, int, summary, us};
use crate::wrk::Load;
use crate::{machine, procfs, procs, profile, wrk};

pub static SPEC: Scenario = Scenario {
    name: "overhead",
    summary: "req/s of hello under upshift vs the same axum app without upshift (plain_hello), \
              A/B interleaved, with the ratio's spread",
    options: &OPTIONS,
    run,
};

static OPTIONS: [OptSpec; 6] = [
    OptSpec {
        name: "--runs",
        value: Some("N"),
        default: Some("10"),
        help: "A/B pairs per load; the summary gives the median ratio and its range",
    },
    OptSpec {
        name: "--duration",
        value: Some("SECS"),
        default: Some("8"),
        help: "length of each measured wrk run",
    },
    OptSpec {
        name: "--warmup",
        value: Some("SECS"),
        default: Some("2"),
        help: "an unmeasured wrk run before each measured one",
    },
    OptSpec {
        name: "--load",
        value: Some("keep-alive|close|both"),
        default: Some("both"),
        help: "keep-alive connections, Connection: close (a connection per request), or both",
    },
    OptSpec {
        name: "--profile",
        value: Some("SECS|0"),
        default: Some("8"),
        help: "after the pairs, profile each server with perf for SECS under keep-alive load \
               (0: no profile)",
    },
    OptSpec {
        name: "--disabled",
        value: None,
        default: None,
        help: "also measure hello with UPSHIFT_DISABLE=1 (in-process, no master)",
    },
];

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

struct Cell {
    run: u64,
    load: Load,
    variant: Variant,
    wrk: wrk::Report,
    /// Server CPU (master + worker, or the one process) per request, in µs.
    cpu_us_per_req: f64,
    pids: Vec<u32>,
    load1: (f64, f64),
    others_cpus: f64,
}

fn run(opts: &Opts) -> Result<Report, String> {
    let runs = opts.count("--runs")?;
    let cfg = wrk::Config::from_opts(opts)?;
    let warmup = wrk::Config {
        duration: Duration::from_secs(opts.secs("--warmup")?.as_secs_f64().ceil() as u64),
        ..wrk::Config::from_opts(opts)?
    };
    let loads = Load::choose(opts.str("--load"));
    let variants: &[Variant] = if opts.flag("--disabled") {
        &[Variant::Upshift, Variant::Plain, Variant::Disabled]
    } else {
        &[Variant::Upshift, Variant::Plain]
    };
    let tmp = TempDir::new(opts.flag("--keep"))?;
    let builds_dir = tmp.sub("builds")?;
    let hello = build_hello(&["bench".to_string()], &builds_dir)?.remove(0);
    let plain = build_plain(&builds_dir)?;
    let sizes = (
        crate::builds::sizes(std::slice::from_ref(&hello)),
        crate::builds::sizes(std::slice::from_ref(&plain)),
    );
    let mut servers = Vec::new();
    for &variant in variants {
        let exe = match variant {
            Variant::Plain => &plain,
            _ => &hello,
        };
        servers.push(Running::start(variant, exe, &tmp)?);
    }
    let mut cells = Vec::new();
    let measured = (|| {
        for run in 1..=runs {
            for &load in loads {
                // A B, then B A: a machine that drifts during a pair favours neither side.
                let mut order: Vec<usize> = (0..servers.len()).collect();
                if run % 2 == 0 {
                    order.reverse();
                }
                for i in order {
                    let server = &servers[i];
                    eprintln!(
                        "upshift-bench: overhead: pair {run}/{runs}, {load}, {}",
                        server.variant
                    );
                    cells.push(one_cell(run, load, server, &cfg, &warmup)?);
                }
            }
        }
        Ok::<(), String>(())
    })();
    let profile_secs = opts.secs_or_zero("--profile")?;
    let profiles: Vec<(Variant, Result<Vec<profile::Frame>, String>)> = match measured {
        Ok(()) if !profile_secs.is_zero() => servers
            .iter()
            .map(|s| (s.variant, profile_one(s, &cfg, profile_secs, &tmp)))
            .collect(),
        _ => Vec::new(),
    };
    let mut leftovers = Vec::new();
    for mut server in servers {
        leftovers.extend(server.server.stop().leftovers);
    }
    measured?;
    if !leftovers.is_empty() {
        return Err(format!(
            "processes left after the servers stopped: {leftovers:?}"
        ));
    }
    let mut report = render(opts, &cfg, &warmup, runs, loads, variants, &sizes, &cells);
    render_profiles(&mut report, &profiles, profile_secs, &cfg);
    Ok(report)
}

/// How many functions a profile lists.
const PROFILE_TOP: usize = 12;

/// `perf record` on one server's processes while keep-alive wrk runs for most of `secs`.
fn profile_one(
    running: &Running,
    cfg: &wrk::Config,
    secs: Duration,
    tmp: &TempDir,
) -> Result<Vec<profile::Frame>, String> {
    eprintln!("upshift-bench: overhead: profiling {}", running.variant);
    let dir = tmp.sub(&format!("profile-{}", running.variant))?;
    let load = wrk::Config {
        duration: Duration::from_secs((secs.as_secs_f64() - 1.0).max(1.0) as u64),
        ..*cfg
    };
    let extra = wrk::Extra {
        headers: Load::KeepAlive.headers(),
        count_builds: false,
    };
    let addr = running.server.addr;
    let (frames, _) = profile::record(
        &running.pids,
        secs,
        &dir.join("perf.data"),
        PROFILE_TOP,
        || wrk::start_with(&load, addr, &dir, "load", &extra)?.finish(),
    )?;
    Ok(frames)
}

fn render_profiles(
    r: &mut Report,
    profiles: &[(Variant, Result<Vec<profile::Frame>, String>)],
    secs: Duration,
    cfg: &wrk::Config,
) {
    if profiles.is_empty() {
        return;
    }
    r.heading("Profile: where each server spends its CPU under keep-alive load");
    r.para(&format!(
        "`perf record -F 999` (no call graphs) on the server's processes (master and worker for \
         upshift) for {:.0} s while `wrk -t{} -c{}` runs, after the pairs above; then `perf \
         report --no-children --sort dso,sym`: the {PROFILE_TOP} functions with the most samples \
         of their own, in percent of that server's samples.",
        secs.as_secs_f64(),
        cfg.threads,
        cfg.connections
    ));
    let mut t = Table::new(&["server", "self %", "in", "function"]);
    for (variant, frames) in profiles {
        match frames {
            Ok(frames) => {
                for f in frames {
                    t.row(vec![
                        variant.to_string(),
                        format!("{:.2}", f.percent),
                        f.dso.clone(),
                        format!("`{}`", profile::short_symbol(&f.symbol)),
                    ]);
                }
            }
            Err(why) => t.row(vec![
                variant.to_string(),
                "–".into(),
                "–".into(),
                format!("not profiled: {}", why.replace('|', "/")),
            ]),
        }
    }
    r.highlight("Overhead: top functions by self time, keep-alive", &t);
}

/// One server, up for the whole scenario.
struct Running {
    variant: Variant,
    server: Server,
    /// The server's processes: master and worker, or the one process.
    pids: Vec<u32>,
}

impl Running {
    fn start(variant: Variant, exe: &PathBuf, tmp: &TempDir) -> Result<Running, String> {
        procs::check()?;
        let dir = tmp.sub(&format!("{variant}"))?;
        let app = dir.join("app");
        std::fs::copy(exe, &app).map_err(|e| format!("copying {}: {e}", exe.display()))?;
        let launch = Launch {
            env: match variant {
                Variant::Disabled => vec![("UPSHIFT_DISABLE".into(), "1".into())],
                _ => Vec::new(),
            },
            addr: None,
        };
        let server = Server::start_with(&app, &[], &dir.join("server.log"), &launch)?;
        let worker = server.greet()?.pid;
        let mut pids = vec![server.master_pid()];
        if worker != server.master_pid() {
            pids.push(worker);
        }
        Ok(Running {
            variant,
            server,
            pids,
        })
    }
}

fn one_cell(
    run: u64,
    load: Load,
    running: &Running,
    cfg: &wrk::Config,
    warmup: &wrk::Config,
) -> Result<Cell, String> {
    let load_before = machine::load1();
    let cpu = machine::CpuWindow::start();
    let server = &running.server;
    let dir = server
        .log
        .parent()
        .map(|d| d.join(format!("pair{run}-{load}")))
        .ok_or("the server's log has no directory")?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let extra = wrk::Extra {
        headers: load.headers(),
        count_builds: false,
    };
    wrk::start_with(warmup, server.addr, &dir, "warmup", &extra)?.finish()?;
    let pids = &running.pids;
    let cpu_of = |pids: &[u32]| -> Option<f64> { pids.iter().map(|p| procfs::cpu_secs(*p)).sum() };
    let before = cpu_of(pids);
    let (report, _) = wrk::start_with(cfg, server.addr, &dir, "load", &extra)?.finish()?;
    let after = cpu_of(pids);
    let cpu_us_per_req = match (before, after) {
        (Some(b), Some(a)) if report.requests > 0 => (a - b) * 1e6 / report.requests as f64,
        _ => f64::NAN,
    };
    let load_after = machine::load1();
    Ok(Cell {
        run,
        load,
        variant: running.variant,
        wrk: report,
        cpu_us_per_req,
        pids: pids.clone(),
        load1: (load_before, load_after),
        others_cpus: cpu.others_cpus(),
    })
}

/// The lowest upshift / plain req/s ratio that meets the target under `load`.
fn target_ratio(load: Load) -> f64 {
    match load {
        Load::KeepAlive => 0.98,
        Load::Close => 1.0,
    }
}

fn find(cells: &[Cell], run: u64, load: Load, v: Variant) -> Option<&Cell> {
    cells
        .iter()
        .find(|c| c.run == run && c.load == load && c.variant == v)
}

/// Per pair, `f(variant) / f(plain)`.
fn ratios(cells: &[Cell], load: Load, v: Variant, f: fn(&Cell) -> f64) -> Vec<f64> {
    cells
        .iter()
        .filter(|c| c.load == load && c.variant == v)
        .filter_map(|c| find(cells, c.run, load, Variant::Plain).map(|p| f(c) / f(p)))
        .filter(|r| r.is_finite())
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn render(
    opts: &Opts,
    cfg: &wrk::Config,
    warmup: &wrk::Config,
    runs: u64,
    loads: &[Load],
    variants: &[Variant],
    sizes: &(String, String),
    cells: &[Cell],
) -> Report {
    let mut r = Report::new(
        "overhead: hello under upshift vs the same axum app without upshift",
        &super::command(&SPEC, opts),
    );
    r.para(&format!(
        "**upshift**: the `hello` example (release build, {}) as master + worker; the worker \
         serves through `upshift::http`. **plain**: `plain_hello` ({}; `bench/src/bin/plain_hello.rs`), \
         the same axum router, handlers, answer and `#[tokio::main]` runtime, served by \
         `axum::serve` on a socket it binds itself (SO_REUSEADDR, backlog 1024, TCP_NODELAY, as \
         upshift does).{} Each server starts once and serves the whole scenario. Order: {} \
         in odd pairs, reversed in even ones, {runs} pair(s) per load; each run is a {} s \
         warm-up `wrk`, then `wrk {}`{} measured. Server CPU per request: utime + stime of \
         the server's processes (master and worker for upshift) over the measured run, from \
         /proc (10 ms ticks), divided by the requests.",
        sizes.0,
        sizes.1,
        if variants.contains(&Variant::Disabled) {
            " **disabled**: `hello` with `UPSHIFT_DISABLE=1`, in-process without a master (still \
             `upshift::http`)."
        } else {
            ""
        },
        variants
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        warmup.duration.as_secs(),
        cfg.args().join(" "),
        if loads.contains(&Load::Close) {
            " (and with `-H 'Connection: close'`)"
        } else {
            ""
        },
    ));
    r.para(OTHERS_NOTE);

    r.heading("Per run");
    let mut t = Table::new(&[
        "pair",
        "load",
        "server",
        "requests",
        "req/s",
        "socket errors",
        "non-2xx",
        "p50",
        "p99",
        "server CPU per request",
        "others' CPU",
    ]);
    for c in cells {
        t.row(vec![
            c.run.to_string(),
            c.load.to_string(),
            c.variant.to_string(),
            int(c.wrk.requests as f64),
            int(c.wrk.rps),
            c.wrk.socket_errors().to_string(),
            c.wrk.non2xx.to_string(),
            us(c.wrk.p50_us),
            us(c.wrk.p99_us),
            format!("{:.1} µs", c.cpu_us_per_req),
            format!("{:.2}", c.others_cpus),
        ]);
    }
    r.table(&t);

    let mut verdicts = Vec::new();
    let mut verdict_rows = Vec::new();
    for &load in loads {
        let summary_heading = format!("Summary, {load}: median (min–max) over {runs} pair(s)");
        let mut s = Table::new(&["figure", "value"]);
        let of = |v: Variant, f: fn(&Cell) -> f64| -> Vec<f64> {
            cells
                .iter()
                .filter(|c| c.load == load && c.variant == v)
                .map(f)
                .filter(|x| x.is_finite())
                .collect()
        };
        for &v in variants {
            s.row(vec![
                format!("{v}: req/s"),
                summary(&of(v, |c| c.wrk.rps), int),
            ]);
        }
        let rps_ratio = ratios(cells, load, Variant::Upshift, |c| c.wrk.rps);
        s.row(vec![
            "**upshift / plain req/s, per pair**".into(),
            format!("**{}**", summary(&rps_ratio, |x| format!("{x:.3}"))),
        ]);
        let medians = (
            stats::median(&of(Variant::Upshift, |c| c.wrk.rps)),
            stats::median(&of(Variant::Plain, |c| c.wrk.rps)),
        );
        if let (Some(a), Some(b)) = medians {
            s.row(vec![
                "upshift / plain, ratio of the medians".into(),
                format!("{:.3}", a / b),
            ]);
        }
        if variants.contains(&Variant::Disabled) {
            let d = ratios(cells, load, Variant::Disabled, |c| c.wrk.rps);
            s.row(vec![
                "disabled / plain req/s, per pair".into(),
                summary(&d, |x| format!("{x:.3}")),
            ]);
        }
        for &v in variants {
            s.row(vec![
                format!("{v}: server CPU per request"),
                summary(&of(v, |c| c.cpu_us_per_req), |x| format!("{x:.1} µs")),
            ]);
        }
        s.row(vec![
            "upshift / plain CPU per request, per pair".into(),
            summary(
                &ratios(cells, load, Variant::Upshift, |c| c.cpu_us_per_req),
                |x| format!("{x:.3}"),
            ),
        ]);
        for &v in variants {
            s.row(vec![
                format!("{v}: p50 latency"),
                summary(&of(v, |c| c.wrk.p50_us), us),
            ]);
            s.row(vec![
                format!("{v}: p99 latency"),
                summary(&of(v, |c| c.wrk.p99_us), us),
            ]);
        }
        s.row(vec![
            "others' CPU during the runs".into(),
            summary(
                &cells
                    .iter()
                    .filter(|c| c.load == load)
                    .map(|c| c.others_cpus)
                    .collect::<Vec<_>>(),
                |x| format!("{x:.2}"),
            ),
        ]);
        r.summary_table(&summary_heading, &s);
        let med = stats::median(&rps_ratio);
        let (lo, hi) = (stats::min(&rps_ratio), stats::max(&rps_ratio));
        let cpu_ratio = stats::median(&ratios(cells, load, Variant::Upshift, |c| c.cpu_us_per_req));
        let busy = stats::median(
            &cells
                .iter()
                .filter(|c| c.load == load)
                .map(|c| c.others_cpus)
                .collect::<Vec<_>>(),
        )
        .unwrap_or(f64::NAN);
        let f3 = |o: Option<f64>| o.map_or("–".into(), |m| format!("{m:.3}"));
        let floor = target_ratio(load);
        let met = med.is_some_and(|m| m >= floor);
        verdict_rows.push((
            format!(
                "{load}: req/s under upshift ≥ {floor:.2} of the same app without it, median of \
                 ≥ 10 interleaved pairs (issue 14)"
            ),
            format!(
                "{} per pair, median over {} pair(s) (range {}–{}); CPU per request {}",
                f3(med),
                rps_ratio.len(),
                f3(lo),
                f3(hi),
                f3(cpu_ratio)
            ),
            Status::met_if(met && rps_ratio.len() >= 10),
        ));
        verdicts.push(format!(
            "- {load}: upshift / plain req/s = **{}** per pair, median (range {}–{}): **{}**. \
             Server CPU per request, upshift / plain: {} (median per pair).{}",
            f3(med),
            f3(lo),
            f3(hi),
            if met { "target met" } else { "target missed" },
            f3(cpu_ratio),
            if busy > 0.25 {
                format!(
                    " Inconclusive on this machine: other processes used a median of {busy:.2} \
                     of the 2 CPUs during these runs, which moves single runs by more than the \
                     2 % the target allows (see the range)."
                )
            } else {
                String::new()
            }
        ));
    }

    r.heading("Verdict");
    r.para(&format!(
        "Targets (issue 14): upshift's req/s at least 0.98 of the same server without upshift \
         with keep-alive, and at least 1.0 with `Connection: close`, each as the median of at \
         least 10 interleaved pairs.\n\n{}\n\n\
         On this shared 2-core machine wrk and the server compete for the same CPUs, so one \
         pair's ratio moves by a few percent with other work (see \"others' CPU\"); the \
         interleaving spreads that drift over both sides, and the CPU per request is the less \
         noisy view of the same question.",
        verdicts.join("\n")
    ));
    for (target, measured, status) in verdict_rows {
        r.verdict(&target, measured, status);
    }

    r.heading("Raw per-run numbers");
    let raw: Vec<String> = cells
        .iter()
        .map(|c| {
            format!(
                "pair={} load={} server={} requests={} seconds={:.2} rps={:.2} connect={} read={} \
                 write={} timeout={} non2xx={} p50_us={:.0} p75_us={:.0} p90_us={:.0} p99_us={:.0} \
                 p999_us={} cpu_us_per_req={:.2} pids={:?} load1_before={:.2} \
                 load1_after={:.2} others_cpus={:.2}",
                c.run,
                c.load,
                c.variant,
                c.wrk.requests,
                c.wrk.seconds,
                c.wrk.rps,
                c.wrk.connect,
                c.wrk.read,
                c.wrk.write,
                c.wrk.timeout,
                c.wrk.non2xx,
                c.wrk.p50_us,
                c.wrk.p75_us,
                c.wrk.p90_us,
                c.wrk.p99_us,
                c.wrk.p999_us.map_or("-".into(), |v| format!("{v:.0}")),
                c.cpu_us_per_req,
                c.pids,
                c.load1.0,
                c.load1.1,
                c.others_cpus,
            )
        })
        .collect();
    r.raw(&raw);
    r
}
