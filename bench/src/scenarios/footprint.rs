//! `footprint`: what the master costs. Its RSS idle and after `--upgrades` File-fetcher upgrades
//! (target ≤ 4 MB, no growth), the idle CPU of master + worker over `--idle` seconds (overseer:
//! 20 ms per 30 s), and while a 200 MB release is installed: the master's peak RSS (VmHWM, reset
//! through clear_refs before the publish; target under 16 MB) and the install throughput
//! (download + hash + write) against `sha256sum` of the same file, by the File fetcher and over
//! HTTP from nginx (raw, and as a `.tar.gz`). The 200 MB release is the `hello` build with 180 MiB
//! of random bytes appended: nothing past an ELF file's segments is loaded, so it test-runs and
//! serves like the build itself, and the report shows that it did.
//!
//! The master re-executes into a release once it has passed its probation (issue 15), which
//! would put a fresh image where the one that did the upgrades is measured. The upgrades come
//! faster than hello's 10 s probation, so it can only happen after the last one, during the
//! settle; with an even `--upgrades` (the default) the last release is fp-a, byte for byte the
//! master's own binary, and the master finds nothing to become. With an odd count it re-executes
//! into fp-b: the "after upgrades" reading is then of a fresh image and says nothing about growth,
//! so the log is checked for a re-exec before that reading and the report says so. (A longer
//! probation would prevent it, but a release on probation keeps its file open in the master: one
//! more descriptor in that reading.) `master-reexec` measures the master across re-execs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::Scenario;
use crate::builds::{build_hello, TempDir};
use crate::hello::{log_lines, Server};
use crate::nginx::Nginx;
use crate::opts::{OptSpec, Opts};
use crate::phases::REEXECUTING;
use crate::procfs::{self, Rollup, Share};
use crate::report::Report;
use crate::{logtime, procs, release};

#[path = "footprint_report.rs"]
mod render;

pub static SPEC: Scenario = Scenario {
    name: "footprint",
    summary: "master RSS idle and after N upgrades, idle CPU, peak RSS and throughput while \
              installing a 200 MB release (File fetcher, HTTP, .tar.gz)",
    options: &OPTIONS,
    run,
};

static OPTIONS: [OptSpec; 5] = [
    OptSpec {
        name: "--upgrades",
        value: Some("N"),
        default: Some("100"),
        help: "File-fetcher upgrades between the idle and the after-upgrades RSS",
    },
    OptSpec {
        name: "--idle",
        value: Some("SECS"),
        default: Some("60"),
        help: "idle window for the CPU measurement",
    },
    OptSpec {
        name: "--settle",
        value: Some("SECS"),
        default: Some("12"),
        help: "quiet time before an RSS reading (tokio's idle blocking threads exit after 10 s)",
    },
    OptSpec {
        name: "--pad-mib",
        value: Some("N"),
        default: Some("180"),
        help: "random MiB appended to the build to make the large release",
    },
    OptSpec {
        name: "--no-archive",
        value: None,
        default: None,
        help: "skip the .tar.gz install over HTTP",
    },
];

/// The master's memory at one moment.
pub(super) struct Snapshot {
    pub rss: u64,
    pub rollup: Rollup,
    pub threads: u64,
    pub fds: usize,
    pub names: Vec<(String, usize)>,
    pub breakdown: Vec<Share>,
}

fn snapshot(pid: u32, exe: &Path) -> Result<Snapshot, String> {
    let gone = || format!("the master {pid} is gone");
    Ok(Snapshot {
        rss: procfs::rss_kib(pid).ok_or_else(gone)?,
        rollup: procfs::rollup(pid).ok_or_else(gone)?,
        threads: procfs::threads(pid).unwrap_or(0),
        fds: procfs::fd_count(pid).unwrap_or(0),
        names: procfs::thread_names(pid),
        breakdown: procfs::breakdown(pid, exe).unwrap_or_default(),
    })
}

/// One large-release install.
pub(super) struct Big {
    pub via: &'static str,
    pub bytes: u64,
    pub rss_before: u64,
    /// VmHWM after the install; it was reset to the RSS just before the publish.
    pub hwm: u64,
    /// The highest VmRSS a 5 ms sampler saw, as a cross-check.
    pub sampled: u64,
    pub served: bool,
    /// publish → found, found → staged, staged → installing (test-run), installing → worker
    /// starting (install), worker starting → ready; ms from the server log.
    pub phases: [Option<f64>; 5],
    /// The seconds that count for throughput: publish → staged for the File fetcher (its hash is
    /// taken while detecting), found → staged over HTTP (download + hash + write).
    pub secs: Option<f64>,
}

pub(super) struct RunResult {
    pub run: u64,
    pub idle: Snapshot,
    pub cpu_master: f64,
    pub cpu_worker: f64,
    /// Master + worker over the same window from schedstat (live threads, ns resolution).
    pub cpu_sched: f64,
    pub idle_secs: f64,
    /// (upgrades done, VmRSS KiB) right after each upgrade reached traffic.
    pub trend: Vec<(u64, u64)>,
    pub upgrades_done: u64,
    /// `master re-executing in place` lines logged before the "after upgrades" reading: 0, or
    /// that reading is of a re-executed image and says nothing about growth over the upgrades.
    pub reexecs: usize,
    pub after: Snapshot,
    pub file_big: Big,
    pub http_idle: Snapshot,
    pub http_big: Big,
    pub archive_big: Option<Big>,
    pub others_cpus: f64,
}

/// Everything the runs share.
pub(super) struct Setup {
    pub builds: Vec<PathBuf>,
    pub big: PathBuf,
    pub big_sha: String,
    pub big_bytes: u64,
    pub archive: Option<(PathBuf, String, u64)>,
    /// sha256sum of the large release, page cache warm: seconds.
    pub sha256sum_secs: f64,
}

fn run(opts: &Opts) -> Result<Report, String> {
    let runs = opts.count("--runs")?;
    let upgrades = opts.count("--upgrades")?;
    let idle = opts.secs("--idle")?;
    let settle = opts.secs("--settle")?;
    let pad = opts.count("--pad-mib")? << 20;
    let tmp = TempDir::new(opts.flag("--keep"))?;
    let ids = ["fp-a".to_string(), "fp-b".to_string()];
    let builds = build_hello(&ids, &tmp.sub("builds")?)?;

    let big = tmp.path().join("builds/big");
    release::padded_copy(&builds[1], &big, pad, b"\nUPSHIFT-BENCH-PADDING\n")?;
    let big_bytes = file_len(&big)?;
    let _ = release::sha256(&big)?; // warms the page cache: both sides read it from memory
    let (big_sha, took) = release::sha256(&big)?;
    let archive = match opts.flag("--no-archive") {
        true => None,
        false => Some(make_archive(&big, &tmp)?),
    };
    let setup = Setup {
        builds,
        big,
        big_sha,
        big_bytes,
        archive,
        sha256sum_secs: took.as_secs_f64(),
    };
    let mut nginx = Nginx::start(&tmp.sub("nginx")?, "100m")?;

    let mut results = Vec::new();
    for run in 1..=runs {
        eprintln!("upshift-bench: footprint: run {run}/{runs}");
        let r = one_run(run, upgrades, idle, settle, &setup, &mut nginx, &tmp)?;
        results.push(r);
    }
    nginx.kill();
    Ok(render::render(opts, &setup, upgrades, &results))
}

fn file_len(p: &Path) -> Result<u64, String> {
    std::fs::metadata(p)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// `app.tar.gz` holding the large release as `app` (mode 0755), and its sha256 and size.
fn make_archive(big: &Path, tmp: &TempDir) -> Result<(PathBuf, String, u64), String> {
    let dir = tmp.sub("archive")?;
    std::fs::hard_link(big, dir.join("app"))
        .or_else(|_| std::fs::copy(big, dir.join("app")).map(|_| ()))
        .map_err(|e| format!("staging the archive's content: {e}"))?;
    let out = tmp.path().join("builds/app.tar.gz");
    release::run_capture(
        std::process::Command::new("tar")
            .arg("--use-compress-program=gzip -1")
            .arg("-cf")
            .arg(&out)
            .arg("-C")
            .arg(&dir)
            .arg("app"),
        "tar",
        Duration::from_secs(300),
    )?;
    let (sha, _) = release::sha256(&out)?;
    Ok((out.clone(), sha, file_len(&out)?))
}

fn one_run(
    run: u64,
    upgrades: u64,
    idle: Duration,
    settle: Duration,
    setup: &Setup,
    nginx: &mut Nginx,
    tmp: &TempDir,
) -> Result<RunResult, String> {
    let cpu = crate::machine::CpuWindow::start();
    let dir = tmp.sub(&format!("run{run}"))?;
    let app = dir.join("app");
    let next = dir.join("next");
    std::fs::copy(&setup.builds[0], &app).map_err(|e| format!("copying fp-a: {e}"))?;
    let watch = ["--watch".to_string(), next.display().to_string()];
    let mut server = Server::start(&app, &watch, &dir.join("hello.log"))?;
    let master = server.master_pid();
    procs::sleep_until(Instant::now() + settle)?;
    let idle_snap = snapshot(master, &app)?;

    // Idle CPU: nothing talks to the server during the window.
    let worker = server.greet()?.pid;
    let sched = |pid| procfs::sched_secs(pid).unwrap_or(f64::NAN);
    let (m0, w0) = (cpu_of(master)?, cpu_of(worker)?);
    let s0 = sched(master) + sched(worker);
    let t0 = Instant::now();
    procs::sleep_until(t0 + idle)?;
    let (m1, w1) = (cpu_of(master)?, cpu_of(worker)?);
    let s1 = sched(master) + sched(worker);
    let idle_secs = t0.elapsed().as_secs_f64();

    let mut trend = vec![(0, idle_snap.rss)];
    let mut done = 0;
    for k in 1..=upgrades {
        let build = &setup.builds[(k % 2) as usize];
        let want = if k % 2 == 1 { "fp-b" } else { "fp-a" };
        release::publish_by_rename(build, &next)?;
        let g = server.greet_until(Duration::from_secs(30), |g| {
            g.build == want && g.generation == k + 1
        });
        if g.is_none_or(|g| g.generation != k + 1) {
            eprintln!("upshift-bench: footprint: upgrade {k} did not reach traffic in 30 s");
            break;
        }
        done = k;
        trend.push((k, procfs::rss_kib(master).unwrap_or(0)));
    }
    procs::sleep_until(Instant::now() + settle)?;
    let after = snapshot(master, &app)?;
    let reexecs = log_lines(&server.log, REEXECUTING).len();

    // The large release, after an even number of upgrades fp-a serves; it is a padded fp-b.
    let gen = done + 2;
    let file_big = big_install(&server, "File fetcher (raw)", setup.big_bytes, gen, || {
        release::publish_by_rename(&setup.big, &next).map(|_| ())
    })?;
    server.stop();
    if !tmp.keep() {
        // 400 MB per run (the large release, installed, and its copy at `next`).
        let _ = std::fs::remove_dir_all(&dir);
    }

    let (http_idle, http_big) = http_run(
        run,
        "raw",
        settle,
        setup,
        nginx,
        tmp,
        &setup.big,
        &setup.big_sha,
    )?;
    let archive_big = match &setup.archive {
        Some((file, sha, bytes)) => {
            let mut b = http_run(run, "tar.gz", settle, setup, nginx, tmp, file, sha)?.1;
            b.via = "HTTP from nginx (.tar.gz)";
            b.bytes = *bytes;
            Some(b)
        }
        None => None,
    };
    Ok(RunResult {
        run,
        idle: idle_snap,
        cpu_master: m1 - m0,
        cpu_worker: w1 - w0,
        cpu_sched: s1 - s0,
        idle_secs,
        trend,
        upgrades_done: done,
        reexecs,
        after,
        file_big,
        http_idle,
        http_big,
        archive_big,
        others_cpus: cpu.others_cpus(),
    })
}

fn cpu_of(pid: u32) -> Result<f64, String> {
    procfs::cpu_secs(pid).ok_or_else(|| format!("process {pid} is gone"))
}

/// A fresh server upgrading from nginx (`--url`, polled every second): its idle snapshot, then
/// the large release (raw or archive) published there.
#[allow(clippy::too_many_arguments)]
fn http_run(
    run: u64,
    kind: &str,
    settle: Duration,
    setup: &Setup,
    nginx: &Nginx,
    tmp: &TempDir,
    file: &Path,
    sha: &str,
) -> Result<(Snapshot, Big), String> {
    let dir = tmp.sub(&format!("run{run}-http-{kind}"))?;
    let app = dir.join("app");
    std::fs::copy(&setup.builds[0], &app).map_err(|e| format!("copying fp-a: {e}"))?;
    let rel = match kind {
        "raw" => format!("r{run}/app"),
        _ => format!("r{run}/app.tar.gz"),
    };
    let args = [
        "--url".to_string(),
        nginx.url(&rel),
        "--allow-insecure-transport".to_string(),
        "--interval".to_string(),
        "1".to_string(),
    ];
    let mut server = Server::start(&app, &args, &dir.join("hello.log"))?;
    procs::sleep_until(Instant::now() + settle)?;
    let idle = snapshot(server.master_pid(), &app)?;
    let big = big_install(&server, "HTTP from nginx (raw)", setup.big_bytes, 2, || {
        nginx.publish(&rel, file, sha)
    })?;
    server.stop();
    if !tmp.keep() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok((idle, big))
}

/// Resets the master's VmHWM, publishes, waits for `fp-b` at generation `gen`, and reads the
/// peak and the phases from the log.
fn big_install(
    server: &Server,
    via: &'static str,
    bytes: u64,
    gen: u64,
    publish: impl FnOnce() -> Result<(), String>,
) -> Result<Big, String> {
    let master = server.master_pid();
    let rss_before = procfs::rss_kib(master).unwrap_or(0);
    procfs::reset_hwm(master).map_err(|e| format!("clear_refs of the master: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let (s, p) = (stop.clone(), peak.clone());
    let sampler = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            if let Some(rss) = procfs::rss_kib(master) {
                p.fetch_max(rss, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let published = publish();
    let wall = SystemTime::now();
    let served = published.is_ok()
        && server
            .greet_until(Duration::from_secs(120), |g| {
                g.build == "fp-b" && g.generation >= gen
            })
            .is_some_and(|g| g.build == "fp-b");
    let hwm = procfs::hwm_kib(master).unwrap_or(0);
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    published?;

    let lines = logtime::read(&server.log);
    let mut marks = vec![Some(wall)];
    let mut from = wall;
    for needle in [
        "new release found",
        "staged a release",
        "installing release",
        "worker starting",
        "worker ready",
    ] {
        let hit = logtime::first_after(&lines, from, None, needle).map(|l| l.at);
        if let Some(t) = hit {
            from = t;
        }
        marks.push(hit);
    }
    let mut phases = [None; 5];
    for (i, ph) in phases.iter_mut().enumerate() {
        if let (Some(a), Some(b)) = (marks[i], marks[i + 1]) {
            *ph = Some(logtime::ms_between(a, b));
        }
    }
    let secs = match via {
        "File fetcher (raw)" => phases[0].zip(phases[1]).map(|(a, b)| (a + b) / 1e3),
        _ => phases[1].map(|b| b / 1e3),
    };
    Ok(Big {
        via,
        bytes,
        rss_before,
        hwm,
        sampled: peak.load(Ordering::SeqCst),
        served,
        phases,
        secs,
    })
}
