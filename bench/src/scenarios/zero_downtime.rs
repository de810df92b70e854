//! `zero-downtime`: wrk load while upgrades arrive, against a control and a naive baseline.
//!
//! For each load — 100 keep-alive connections, and the same with `Connection: close` (a new
//! connection per request) — four cells, each a fresh server under `wrk -t2 -c100 -d20s`:
//! - control: `hello` build b00, no upgrades;
//! - SIGUSR2: every `--every` s the next build is renamed over the binary and the master gets
//!   SIGUSR2 (a deploy that replaces the file and signals); the binary on disk is then not the
//!   master's own, so the master re-executes into it (issue 15) and its new image starts the
//!   worker;
//! - File fetcher: `hello --watch next`, every `--every` s the next build is renamed onto `next`;
//!   each is replaced within its probation (hello's default, 10 s), so the master does not
//!   re-execute in this cell (`master-reexec` has that under load);
//! - naive kill+start: `plain_hello` (the same router without upshift) is killed (SIGTERM, no
//!   handler, so at once) and started again on the same port every `--every` s.
//!
//! A wrk Lua `response()` counts each body's BUILD_ID, so the report shows which build served
//! how many requests; one more keep-alive control without that script measures its cost.
//! Target (issue 5): 0 socket errors and 0 non-2xx through upgrades, for both loads.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Scenario;
use crate::builds::{build_hello, build_plain, TempDir};
use crate::hello::{log_problems, Launch, Server};
use crate::opts::{OptSpec, Opts};
use crate::report::{yes, Report, Status, Table, OTHERS_NOTE};
use crate::stats::{int, ms, summary, us};
use crate::wrk::Load;
use crate::{machine, procs, wrk};

pub static SPEC: Scenario = Scenario {
    name: "zero-downtime",
    summary: "wrk keep-alive and Connection: close load through SIGUSR2 and File-fetcher \
              upgrades every --every seconds, against a control and a naive kill+start baseline",
    options: &OPTIONS,
    run,
};

static OPTIONS: [OptSpec; 5] = [
    OptSpec {
        name: "--duration",
        value: Some("SECS"),
        default: Some("20"),
        help: "length of each wrk run",
    },
    OptSpec {
        name: "--every",
        value: Some("SECS"),
        default: Some("2"),
        help: "seconds between upgrades (and between naive restarts), from half an interval in",
    },
    OptSpec {
        name: "--upgrades",
        value: Some("N"),
        default: Some("9"),
        help:
            "upgrades (naive restarts) per wrk run; those that do not fit in --duration are dropped",
    },
    OptSpec {
        name: "--load",
        value: Some("both|keep-alive|close"),
        default: Some("both"),
        help: "keep-alive connections, Connection: close, or both",
    },
    OptSpec {
        name: "--no-lua-check",
        value: None,
        default: None,
        help: "skip the keep-alive control without the per-build counting script",
    },
];

/// How long after wrk stops the last upgrade may take to answer.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Control,
    Sigusr2,
    File,
    Naive,
}

const MODES: [Mode; 4] = [Mode::Control, Mode::Sigusr2, Mode::File, Mode::Naive];

impl Mode {
    fn title(self) -> &'static str {
        match self {
            Mode::Control => "control (no upgrades)",
            Mode::Sigusr2 => "SIGUSR2 restart",
            Mode::File => "File fetcher publish",
            Mode::Naive => "naive kill+start",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Control => "control",
            Mode::Sigusr2 => "sigusr2",
            Mode::File => "file",
            Mode::Naive => "naive",
        })
    }
}

struct Cell {
    run: u64,
    load: Load,
    mode: Mode,
    /// Whether wrk counted responses per build (all cells but the Lua-overhead check).
    counted: bool,
    wrk: wrk::Report,
    builds: BTreeMap<String, u64>,
    unmatched: u64,
    upgrades: u64,
    /// The build that should answer at the end, and the one that did.
    expected_final: String,
    final_build: String,
    /// Upshift modes: master alive and parent of the serving worker at the end.
    master_stable: Option<bool>,
    /// Naive mode: kill → the restarted server answering, per restart (harness polls every 20 ms).
    outages_ms: Vec<f64>,
    load1: (f64, f64),
    others_cpus: f64,
    leftovers: Vec<u32>,
    problems: Vec<String>,
}

struct Ctx<'a> {
    cfg: wrk::Config,
    every: Duration,
    upgrades: u64,
    builds: &'a [PathBuf],
    plain: &'a Path,
    tmp: &'a TempDir,
}

fn run(opts: &Opts) -> Result<Report, String> {
    let runs = opts.count("--runs")?;
    let cfg = wrk::Config::from_opts(opts)?;
    let every = opts.secs("--every")?;
    let upgrades = opts.count("--upgrades")?;
    let loads = Load::choose(opts.str("--load"));
    let lua_check = !opts.flag("--no-lua-check") && loads.contains(&Load::KeepAlive);
    let tmp = TempDir::new(opts.flag("--keep"))?;
    let builds_dir = tmp.sub("builds")?;
    let ids: Vec<String> = (0..=upgrades).map(|i| format!("b{i:02}")).collect();
    let builds = build_hello(&ids, &builds_dir)?;
    let plain = build_plain(&builds_dir)?;
    let size = crate::builds::sizes(&builds);
    let ctx = Ctx {
        cfg,
        every,
        upgrades,
        builds: &builds,
        plain: &plain,
        tmp: &tmp,
    };
    let mut cells = Vec::new();
    for run in 1..=runs {
        for &load in loads {
            if lua_check && load == Load::KeepAlive {
                eprintln!("upshift-bench: zero-downtime: run {run}/{runs}, keep-alive control without counting");
                cells.push(one_cell(run, load, Mode::Control, false, &ctx)?);
            }
            for mode in MODES {
                eprintln!("upshift-bench: zero-downtime: run {run}/{runs}, {load}, {mode}");
                cells.push(one_cell(run, load, mode, true, &ctx)?);
            }
        }
    }
    Ok(render(opts, &ctx, runs, loads, &size, &cells))
}

/// Copies `src` to `dest` ahead of its slot, so that the slot itself is only a rename (+ signal).
fn stage(src: &Path, dest: &Path) -> Result<(), String> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    std::fs::copy(src, dest)
        .map(|_| ())
        .map_err(|e| format!("copying {} to {}: {e}", src.display(), dest.display()))
}

fn one_cell(run: u64, load: Load, mode: Mode, counted: bool, ctx: &Ctx) -> Result<Cell, String> {
    procs::check()?;
    let load_before = machine::load1();
    let cpu = machine::CpuWindow::start();
    let tag = if counted { "" } else { "-uncounted" };
    let dir = ctx.tmp.sub(&format!("run{run}-{load}-{mode}{tag}"))?;
    let app = dir.join("app");
    let next = dir.join("next");
    let staged = dir.join("stage.tmp");
    let naive_id = |k: u64| format!("n{k:02}");
    let naive_args = |k: u64| {
        vec![
            "--build-id".to_string(),
            naive_id(k),
            "--gen".to_string(),
            (k + 1).to_string(),
        ]
    };
    // Each naive start runs from a directory of its own: stopping a `Server` also kills whatever
    // still runs from its directory, which must not be its successor.
    let naive_exe = |k: u64| dir.join(naive_id(k)).join("plain_hello");
    let mut server = match mode {
        Mode::Naive => {
            stage(ctx.plain, &naive_exe(0))?;
            Server::start(&naive_exe(0), &naive_args(0), &dir.join("plain-00.log"))?
        }
        _ => {
            std::fs::copy(&ctx.builds[0], &app).map_err(|e| format!("copying b00: {e}"))?;
            let extra = match mode {
                Mode::File => vec!["--watch".to_string(), next.display().to_string()],
                _ => Vec::new(),
            };
            Server::start(&app, &extra, &dir.join("hello.log"))?
        }
    };
    let master = server.master_pid();
    let addr = server.addr;
    let extra = wrk::Extra {
        headers: load.headers(),
        count_builds: counted,
    };
    let wrk_run = wrk::start_with(&ctx.cfg, addr, &dir, "load", &extra)?;
    let t0 = Instant::now();
    let mut done = 0u64;
    let mut outages_ms = Vec::new();
    if mode != Mode::Control {
        for k in 1..=ctx.upgrades {
            let at = ctx.every / 2 + ctx.every * (k - 1) as u32;
            if at >= ctx.cfg.duration {
                break;
            }
            match mode {
                Mode::Naive => stage(ctx.plain, &naive_exe(k))?,
                _ => stage(&ctx.builds[k as usize], &staged)?,
            }
            procs::sleep_until(t0 + at)?;
            match mode {
                Mode::Sigusr2 => {
                    std::fs::rename(&staged, &app).map_err(|e| format!("installing: {e}"))?;
                    procs::signal(master, libc::SIGUSR2)
                        .map_err(|e| format!("SIGUSR2 to the master {master}: {e}"))?;
                }
                Mode::File => {
                    std::fs::rename(&staged, &next).map_err(|e| format!("publishing: {e}"))?;
                }
                Mode::Naive => {
                    let killed = Instant::now();
                    server.stop();
                    let log = dir.join(format!("plain-{k:02}.log"));
                    let launch = Launch {
                        addr: Some(addr),
                        ..Launch::default()
                    };
                    server = Server::start_with(&naive_exe(k), &naive_args(k), &log, &launch)?;
                    outages_ms.push(killed.elapsed().as_secs_f64() * 1e3);
                }
                Mode::Control => {}
            }
            done += 1;
        }
    }
    let (report, raw) = wrk_run.finish()?;
    let (builds, unmatched) = wrk::builds(&raw).unwrap_or_default();
    if counted && builds.is_empty() {
        return Err(format!(
            "wrk's counting script printed no per-build line; wrk printed:\n{raw}"
        ));
    }

    let expected_final = match mode {
        Mode::Naive => naive_id(done),
        _ => format!("b{done:02}"),
    };
    let end = server.greet_until(SETTLE_LIMIT, |g| g.build == expected_final);
    let master_stable = (mode != Mode::Naive).then(|| {
        let ppid = end
            .as_ref()
            .and_then(|g| procs::state_and_ppid(g.pid))
            .map(|(_, p)| p);
        server.master_alive() && ppid == Some(master)
    });
    let load_after = machine::load1();
    let log = server.log.clone();
    let stopped = server.stop();
    Ok(Cell {
        run,
        load,
        mode,
        counted,
        wrk: report,
        builds,
        unmatched,
        upgrades: done,
        expected_final,
        final_build: end.map_or_else(|| "-".to_string(), |g| g.build),
        master_stable,
        outages_ms,
        load1: (load_before, load_after),
        others_cpus: cpu.others_cpus(),
        leftovers: stopped.leftovers,
        problems: if mode == Mode::Naive {
            Vec::new()
        } else {
            log_problems(&log)
        },
    })
}

fn errors(w: &wrk::Report) -> String {
    format!("{} / {} / {} / {}", w.connect, w.read, w.write, w.timeout)
}

/// `b00 123,456 · b01 98,765`, and the unmatched bodies if any.
fn served(c: &Cell) -> String {
    if !c.counted {
        return "(not counted)".into();
    }
    let mut parts: Vec<String> = c
        .builds
        .iter()
        .map(|(b, n)| format!("{b} {}", int(*n as f64)))
        .collect();
    if c.unmatched > 0 {
        parts.push(format!("other bodies {}", int(c.unmatched as f64)));
    }
    parts.join(" · ")
}

fn render(opts: &Opts, ctx: &Ctx, runs: u64, loads: &[Load], size: &str, cells: &[Cell]) -> Report {
    let mut r = Report::new(
        "zero-downtime: wrk through upgrades, keep-alive and Connection: close, against a naive kill+start",
        &super::command(&SPEC, opts),
    );
    let wrk_args = ctx.cfg.args().join(" ");
    r.para(&format!(
        "Load: `wrk {wrk_args} -s count.lua http://127.0.0.1:PORT/` with 100 keep-alive \
         connections, and the same with `-H 'Connection: close'` (a new connection per request). \
         Each cell is a fresh server. **control**: the `hello` example (release build, {size}), \
         no upgrades. **SIGUSR2**: every {every} s from {half} s on, the next build (b01, b02, …) \
         is renamed over the binary and the master gets SIGUSR2; the master re-executes into the \
         new binary (issue 15) and its new image starts the worker. **File fetcher**: `hello \
         --watch <dir>/next`, the next build renamed onto `next` at the same times; each is \
         replaced within its 10 s probation, so the master does not re-execute in this cell \
         (`master-reexec` measures that under load). **naive kill+start**: \
         `plain_hello`, the same router and runtime without upshift, gets SIGTERM (it has no \
         handler, so it exits at once), and is started again on the same port (builds n00, n01, \
         … by `--build-id`). {} upgrades or restarts per run. {runs} run(s).",
        ctx.upgrades,
        every = ctx.every.as_secs_f64(),
        half = ctx.every.as_secs_f64() / 2.0,
    ));
    r.para(
        "Reference (issue 5; 2 cores, `wrk -t2 -c100 -d20s`, keep-alive, one upgrade every 2 s, \
         9 per run, medians of 3 runs): naive kill+start 6,000–17,600 socket errors per run; \
         tableflip 228–348; grace 384–491; overseer 128–385.",
    );
    r.para(OTHERS_NOTE);

    r.heading("Per run");
    let mut t = Table::new(&[
        "run",
        "load",
        "mode",
        "requests",
        "req/s",
        "socket errors (connect / read / write / timeout)",
        "non-2xx",
        "p50",
        "p99",
        "p99.9",
        "upgrades",
        "final build",
        "master pid stable",
        "others' CPU",
    ]);
    for c in cells {
        t.row(vec![
            c.run.to_string(),
            c.load.to_string(),
            format!("{}{}", c.mode, if c.counted { "" } else { " (no count)" }),
            int(c.wrk.requests as f64),
            int(c.wrk.rps),
            errors(&c.wrk),
            int(c.wrk.non2xx as f64),
            us(c.wrk.p50_us),
            us(c.wrk.p99_us),
            c.wrk.p999_us.map_or("–".into(), us),
            c.upgrades.to_string(),
            format!("{} (expected {})", c.final_build, c.expected_final),
            c.master_stable.map_or("–".into(), yes),
            format!("{:.2}", c.others_cpus),
        ]);
    }
    r.table(&t);

    r.heading("Which build served how many requests (wrk's Lua `response()`, summed over threads)");
    let mut b = Table::new(&[
        "run",
        "load",
        "mode",
        "responses per BUILD_ID",
        "sum = wrk's requests",
    ]);
    for c in cells.iter().filter(|c| c.counted) {
        let sum: u64 = c.builds.values().sum::<u64>() + c.unmatched;
        b.row(vec![
            c.run.to_string(),
            c.load.to_string(),
            c.mode.to_string(),
            served(c),
            yes(sum == c.wrk.requests),
        ]);
    }
    r.table(&b);

    for &load in loads {
        let summary_heading = format!(
            "Summary, {}: median (min–max) over {runs} run(s)",
            match load {
                Load::KeepAlive => "keep-alive",
                Load::Close => "Connection: close",
            }
        );
        let mut header = vec!["figure"];
        header.extend(MODES.iter().map(|m| m.title()));
        let mut s = Table::new(&header);
        let of = |m: Mode| -> Vec<&Cell> {
            cells
                .iter()
                .filter(|c| c.load == load && c.mode == m && c.counted)
                .collect()
        };
        type Fig = (&'static str, fn(&Cell) -> f64, fn(f64) -> String);
        let figures: [Fig; 9] = [
            ("requests", |c| c.wrk.requests as f64, int),
            ("req/s", |c| c.wrk.rps, int),
            (
                "socket errors per run (all kinds)",
                |c| c.wrk.socket_errors() as f64,
                int,
            ),
            ("non-2xx per run", |c| c.wrk.non2xx as f64, int),
            ("p50 latency", |c| c.wrk.p50_us, us),
            ("p99 latency", |c| c.wrk.p99_us, us),
            ("p99.9 latency", |c| c.wrk.p999_us.unwrap_or(f64::NAN), us),
            ("builds that served", |c| c.builds.len() as f64, int),
            (
                "kill → answering again (naive)",
                |c| crate::stats::median(&c.outages_ms).unwrap_or(f64::NAN),
                ms,
            ),
        ];
        for (name, get, fmt) in figures {
            let mut row = vec![name.to_string()];
            for m in MODES {
                let v: Vec<f64> = of(m).into_iter().map(get).filter(|v| !v.is_nan()).collect();
                row.push(summary(&v, fmt));
            }
            s.row(row);
        }
        let mut row =
            vec!["socket errors, all runs (connect / read / write / timeout)".to_string()];
        for m in MODES {
            let c = of(m);
            let sum = |f: fn(&wrk::Report) -> u64| c.iter().map(|x| f(&x.wrk)).sum::<u64>();
            row.push(format!(
                "{} / {} / {} / {}",
                sum(|w| w.connect),
                sum(|w| w.read),
                sum(|w| w.write),
                sum(|w| w.timeout)
            ));
        }
        s.row(row);
        r.summary_table(&summary_heading, &s);
    }

    let pairs: Vec<(&Cell, &Cell)> = cells
        .iter()
        .filter(|c| !c.counted)
        .filter_map(|u| {
            cells
                .iter()
                .find(|c| {
                    c.counted && c.run == u.run && c.load == u.load && c.mode == Mode::Control
                })
                .map(|c| (u, c))
        })
        .collect();
    if !pairs.is_empty() {
        r.heading("Cost of counting per build (keep-alive control, with and without the Lua `response()`)");
        let mut l = Table::new(&[
            "run",
            "req/s without counting",
            "req/s with counting",
            "ratio",
            "p99 without / with",
        ]);
        let mut ratios = Vec::new();
        for (u, c) in &pairs {
            let ratio = c.wrk.rps / u.wrk.rps;
            ratios.push(ratio);
            l.row(vec![
                u.run.to_string(),
                int(u.wrk.rps),
                int(c.wrk.rps),
                format!("{ratio:.3}"),
                format!("{} / {}", us(u.wrk.p99_us), us(c.wrk.p99_us)),
            ]);
        }
        r.table(&l);
        r.para(&format!(
            "With counting, wrk hands every body to Lua and runs `string.match` on it: wrk itself \
             is slower, so absolute req/s of the counted cells are {} of what wrk reaches without \
             the script (median ratio over {} run(s); on this 2-core machine wrk and the server \
             share the CPUs). Errors and non-2xx are unaffected: they are wrk's own counters.",
            summary(&ratios, |v| format!("{:.0}%", v * 100.0)),
            ratios.len()
        ));
    }

    r.heading("Verdict");
    let mut lines = Vec::new();
    let mut measured = Vec::new();
    let mut met = true;
    for &load in loads {
        for m in [Mode::Sigusr2, Mode::File] {
            let c: Vec<&Cell> = cells
                .iter()
                .filter(|c| c.load == load && c.mode == m)
                .collect();
            let sock: u64 = c.iter().map(|x| x.wrk.socket_errors()).sum();
            let non2xx: u64 = c.iter().map(|x| x.wrk.non2xx).sum();
            let finals = c
                .iter()
                .filter(|x| x.final_build == x.expected_final)
                .count();
            let stable = c.iter().filter(|x| x.master_stable == Some(true)).count();
            met &= sock == 0 && non2xx == 0;
            let served: Vec<f64> = c.iter().map(|x| x.builds.len() as f64).collect();
            measured.push(format!(
                "{load}, {}: {sock} socket errors, {non2xx} non-2xx over {} run(s), builds \
                 that answered per run {}",
                m.title(),
                c.len(),
                summary(&served, int)
            ));
            lines.push(format!(
                "- {load}, {}: {sock} socket errors, {non2xx} non-2xx over {} run(s); the last \
                 build answered at the end in {finals} of {} run(s); master pid stable in \
                 {stable} of {}.",
                m.title(),
                c.len(),
                c.len(),
                c.len()
            ));
        }
        let naive: Vec<f64> = cells
            .iter()
            .filter(|c| c.load == load && c.mode == Mode::Naive)
            .map(|c| c.wrk.socket_errors() as f64 + c.wrk.non2xx as f64)
            .collect();
        lines.push(format!(
            "- {load}, naive kill+start baseline: {} socket errors + non-2xx per run, median \
             (min–max).",
            summary(&naive, int)
        ));
    }
    r.para(&format!(
        "Target (issue 5): 0 socket errors and 0 non-2xx through upgrades, with keep-alive \
         connections and with `Connection: close`. **{}**\n\n{}",
        if met { "Target met." } else { "Target missed." },
        lines.join("\n")
    ));
    let at_target = ctx.cfg.duration >= Duration::from_secs(20) && ctx.upgrades >= 9;
    if !at_target {
        r.para("(These parameters are shorter than the issue's; the verdict is for them only.)");
    }
    r.verdict(
        &format!(
            "0 socket errors and 0 non-2xx through upgrades, keep-alive and `Connection: close` \
             (issue 5){}",
            if at_target {
                ""
            } else {
                "; run with shorter parameters"
            }
        ),
        measured.join("; "),
        Status::met_if(met && at_target),
    );

    r.heading("Raw per-cell numbers");
    let mut raw = Vec::new();
    for c in cells {
        raw.push(format!(
            "run={} load={} mode={} counted={} {} upgrades={} final_build={} expected_final={} master_stable={} \
             builds={:?} unmatched={} naive_outages_ms={:?} leftover_pids={:?} log_warnings={} \
             load1_before={:.2} load1_after={:.2} others_cpus={:.2}",
            c.run,
            c.load,
            c.mode,
            c.counted,
            c.wrk.raw_fields(),
            c.upgrades,
            c.final_build,
            c.expected_final,
            c.master_stable.map_or("-".into(), |b| b.to_string()),
            c.builds,
            c.unmatched,
            c.outages_ms
                .iter()
                .map(|v| (v * 10.0).round() / 10.0)
                .collect::<Vec<_>>(),
            c.leftovers,
            c.problems.len(),
            c.load1.0,
            c.load1.1,
            c.others_cpus,
        ));
    }
    r.raw(&raw);

    let logs: Vec<(String, &[String])> = cells
        .iter()
        .map(|x| {
            (
                format!("run {} {} {}", x.run, x.load, x.mode),
                x.problems.as_slice(),
            )
        })
        .collect();
    crate::report::log_problems(&mut r, &logs);
    r
}
