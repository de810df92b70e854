//! `bombs`: the crafted archives of the security review (issue 11) installed through the real
//! master, `hello --watch` on a File fetcher with its defaults (1 GiB size limit): a huge PAX
//! header, a huge GNU long name, many skipped entries, gzip data after the tar end, a zip bomb.
//! Each is published once per run; the report gives the master's peak RSS (VmHWM, reset through
//! clear_refs just before the publish) against the 32 MiB target, the verdict, and whether the
//! old worker kept serving.

use std::path::Path;
use std::time::{Duration, Instant};

use super::Scenario;
use crate::builds::{build_hello, TempDir};
use crate::hello::{log_first, log_lines, Server};
use crate::opts::{OptSpec, Opts};
use crate::procfs;
use crate::report::{yes, Report, Status, Table};
use crate::{procs, release};
use upshift_testkit::crafted::Bomb;

pub static SPEC: Scenario = Scenario {
    name: "bombs",
    summary: "the master's peak RSS while it refuses crafted archives (huge PAX header, huge GNU \
              long name, skipped entries, gzip trailing data, zip bomb); target under 32 MiB",
    options: &OPTIONS,
    run,
};

static OPTIONS: [OptSpec; 2] = [
    OptSpec {
        name: "--inflate-mib",
        value: Some("N"),
        default: Some("1088"),
        help: "what each bomb inflates to (beyond hello's 1 GiB limit, so that counting is seen)",
    },
    OptSpec {
        name: "--settle",
        value: Some("SECS"),
        default: Some("3"),
        help: "quiet time after the server starts, before the RSS reading",
    },
];

const TARGET_KIB: u64 = 32 << 10;
const VERDICT_LIMIT: Duration = Duration::from_secs(300);

struct Case {
    bomb: Bomb,
    run: u64,
    archive_bytes: u64,
    rss_before: u64,
    hwm: u64,
    verdict: String,
    secs: f64,
    served: bool,
}

fn run(opts: &Opts) -> Result<Report, String> {
    let runs = opts.count("--runs")?;
    let inflated = opts.count("--inflate-mib")? << 20;
    let settle = opts.secs("--settle")?;
    let tmp = TempDir::new(opts.flag("--keep"))?;
    let builds = build_hello(&["bomb-a".to_string()], &tmp.sub("builds")?)?;
    let mut cases = Vec::new();
    for bomb in Bomb::ALL {
        let path = tmp
            .path()
            .join(format!("{}.{}", bomb.name(), bomb.extension()));
        let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let t = Instant::now();
        bomb.write(
            inflated,
            b"#!/bin/sh\necho crafted\n",
            std::io::BufWriter::new(file),
        )
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!(
            "upshift-bench: wrote {} ({} bytes) in {:.1}s",
            path.display(),
            file_len(&path)?,
            t.elapsed().as_secs_f64()
        );
        for r in 1..=runs {
            let dir = tmp.sub(&format!("{}-{r}", bomb.name()))?;
            cases.push(one(bomb, r, &path, &builds[0], &dir, settle)?);
        }
    }
    Ok(render(&cases, inflated, opts))
}

fn one(
    bomb: Bomb,
    run: u64,
    archive: &Path,
    hello: &Path,
    dir: &Path,
    settle: Duration,
) -> Result<Case, String> {
    let app = dir.join("app");
    let next = dir.join(format!("next.{}", bomb.extension()));
    let log = dir.join("hello.log");
    std::fs::copy(hello, &app).map_err(|e| format!("copying hello: {e}"))?;
    let watch = ["--watch".to_string(), next.display().to_string()];
    let mut server = Server::start(&app, &watch, &log)?;
    let master = server.master_pid();
    let worker = server.greet()?.pid;
    procs::sleep_until(Instant::now() + settle)?;
    procfs::reset_hwm(master).map_err(|e| format!("clear_refs of the master: {e}"))?;
    let rss_before = procfs::rss_kib(master).unwrap_or(0);
    let at = release::publish_by_rename(archive, &next)?;
    let until = at + VERDICT_LIMIT;
    let verdict = loop {
        if let Some(line) = log_first(&log, "release rejected") {
            break line;
        }
        if !log_lines(&log, "is serving").is_empty() {
            break "installed (not refused!)".to_string();
        }
        if Instant::now() >= until || !server.master_alive() {
            break format!("no verdict within {VERDICT_LIMIT:?}");
        }
        procs::sleep_until(Instant::now() + Duration::from_millis(20))?;
    };
    let secs = at.elapsed().as_secs_f64();
    let hwm = procfs::hwm_kib(master).unwrap_or(0);
    let served = server.master_alive() && server.greet().is_ok_and(|g| g.pid == worker);
    eprintln!(
        "upshift-bench: {} run {run}: peak {} KiB (before {rss_before} KiB), {verdict}",
        bomb.name(),
        hwm
    );
    server.stop();
    Ok(Case {
        bomb,
        run,
        archive_bytes: file_len(archive)?,
        rss_before,
        hwm,
        verdict,
        secs,
        served,
    })
}

fn file_len(path: &Path) -> Result<u64, String> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn render(cases: &[Case], inflated: u64, opts: &Opts) -> Report {
    let mut report = Report::new(
        "Crafted archives: the master's peak RSS while refusing them",
        &super::command(&SPEC, opts),
    );
    report.para(&format!(
        "Each archive inflates to {} MiB; `hello --watch` with its defaults (1 GiB release \
         limit) refuses it. Peak = the master's VmHWM, reset through clear_refs just before the \
         publish. Target: under {} MiB.",
        inflated >> 20,
        TARGET_KIB >> 10
    ));
    let mut t = Table::new(&[
        "Case",
        "Archive",
        "Master RSS before",
        "Peak RSS (max of runs)",
        "Under 32 MiB",
        "Old worker served",
        "Verdict after",
        "Verdict",
    ]);
    for bomb in Bomb::ALL {
        let of: Vec<&Case> = cases.iter().filter(|c| c.bomb == bomb).collect();
        let Some(first) = of.first() else { continue };
        let peak = of.iter().map(|c| c.hwm).max().unwrap_or(0);
        let before = of.iter().map(|c| c.rss_before).max().unwrap_or(0);
        let secs = of.iter().map(|c| c.secs).fold(0.0, f64::max);
        t.row(vec![
            bomb.name().to_string(),
            format!("{} KB", first.archive_bytes / 1000),
            procfs::mib(before),
            procfs::mib(peak),
            yes(peak < TARGET_KIB && of.iter().all(|c| c.hwm > 0)),
            yes(of.iter().all(|c| c.served)),
            format!("{secs:.2} s"),
            first.verdict.replace('|', "/"),
        ]);
    }
    report.summary_table("Per archive", &t);
    let peak = cases.iter().map(|c| c.hwm).max().unwrap_or(0);
    let under = !cases.is_empty() && cases.iter().all(|c| c.hwm > 0 && c.hwm < TARGET_KIB);
    let served = cases.iter().all(|c| c.served);
    report.verdict(
        &format!(
            "crafted archives refused with the master's peak RSS under {} MiB, the old worker \
             serving throughout (issue 11)",
            TARGET_KIB >> 10
        ),
        format!(
            "{} case run(s): highest peak {}; old worker served in all: {}",
            cases.len(),
            procfs::mib(peak),
            yes(served)
        ),
        Status::met_if(under && served),
    );
    report.heading("Raw");
    report.raw(
        &cases
            .iter()
            .map(|c| {
                format!(
                    "case={} run={} archive_bytes={} rss_before_kib={} hwm_kib={} verdict_secs={:.3} served={}",
                    c.bomb.name(),
                    c.run,
                    c.archive_bytes,
                    c.rss_before,
                    c.hwm,
                    c.secs,
                    c.served
                )
            })
            .collect::<Vec<_>>(),
    );
    report
}
