//! `faults`: fault injection against real processes. Each case starts its own server, injects
//! one fault and checks that nothing was lost: the binary on disk is whole (its sha256 is the
//! old or the new build's, never anything else), the service kept answering while the master
//! lived (a prober on fresh connections), no temporary file is left after the next start, no
//! process is orphaned. Cases: SIGKILL of the master mid-download and mid-install (two points),
//! SIGKILL of the new worker before and after ready, SIGSTOP of the old worker during its drain,
//! a full disk (File and HTTP fetchers), and the release server dying mid-body.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::Scenario;
use crate::builds::{build_fixture, build_hello, TempDir};
use crate::nginx::Nginx;
use crate::opts::{OptSpec, Opts};
use crate::report::{Report, Status, Table};
use crate::{procs, release};

#[path = "faults_cases.rs"]
mod cases;

pub static SPEC: Scenario = Scenario {
    name: "faults",
    summary: "fault injection: SIGKILL master/worker at each step, SIGSTOP during drain, full \
              disk, release server dying mid-body; nothing may be lost",
    options: &OPTIONS,
    run,
};

static OPTIONS: [OptSpec; 3] = [
    OptSpec {
        name: "--cases",
        value: Some("LIST"),
        default: Some("all"),
        help: "comma-separated subset: kill-download, kill-staged, kill-testrun, kill-prev, \
               worker-early, worker-late, sigstop, full-file, full-http, server-dies",
    },
    OptSpec {
        name: "--probe-ms",
        value: Some("N"),
        default: Some("5"),
        help: "milliseconds between the prober's requests",
    },
    OptSpec {
        name: "--slow-rate",
        value: Some("RATE"),
        default: Some("4m"),
        help: "nginx limit_rate of the slow release location (4m = 4 MB/s)",
    },
];

const CASES: [&str; 10] = [
    "kill-download",
    "kill-staged",
    "kill-testrun",
    "kill-prev",
    "worker-early",
    "worker-late",
    "sigstop",
    "full-file",
    "full-http",
    "server-dies",
];

/// What the cases share.
pub(super) struct Ctx<'a> {
    pub tmp: &'a TempDir,
    pub run: u64,
    /// hello builds ft-1 (installed first) and ft-2 (the release), and their sha256.
    pub hello: [PathBuf; 2],
    pub sha: [String; 2],
    pub fixture: PathBuf,
    pub fixture_sha: String,
    pub nginx: &'a mut Nginx,
    pub slow_rate: String,
    pub probe: Duration,
}

/// One case's result: how the fault was injected, what was seen, and the checks.
pub(super) struct Outcome {
    pub title: &'static str,
    pub how: String,
    pub checks: Vec<(String, bool)>,
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn new(title: &'static str) -> Outcome {
        Outcome {
            title,
            how: String::new(),
            checks: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn check(&mut self, what: impl Into<String>, ok: bool) {
        self.checks.push((what.into(), ok));
    }

    pub fn note(&mut self, what: impl Into<String>) {
        self.notes.push(what.into());
    }

    /// The prober's verdict over the probes sent before `until` (the master's death), or all.
    pub fn probes(&mut self, p: &crate::prober::ProbeLog, while_: &str, until: Option<Instant>) {
        let (failed, sent) = until.map_or((p.failures, p.probes), |t| p.before(t));
        self.check(
            format!(
                "{while_}: {failed} of {sent} probes failed (longest gap between answers {} ms)",
                p.longest_gap.as_millis()
            ),
            failed == 0 && sent > 0,
        );
        if failed > 0 && !p.samples.is_empty() {
            self.note(format!("prober failures: {}", p.samples.join("; ")));
        }
        // Probes that ended after `until` met the master's death: the service stops with it.
        if until.is_some() && p.failures > failed {
            self.note(format!(
                "{} probe(s) in flight at the kill or sent after it failed, as the service stops \
                 with its master: {}",
                p.failures - failed,
                p.samples.join("; ")
            ));
        }
    }

    pub fn pass(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|(_, ok)| *ok)
    }
}

fn run(opts: &Opts) -> Result<Report, String> {
    let runs = opts.count("--runs")?;
    let probe = Duration::from_millis(opts.count("--probe-ms")?);
    let chosen: Vec<&str> = match opts.str("--cases").unwrap_or("all") {
        "all" => CASES.to_vec(),
        list => {
            let v: Vec<&str> = list.split(',').map(str::trim).collect();
            if let Some(bad) = v.iter().find(|c| !CASES.contains(c)) {
                return Err(format!("unknown case {bad:?}; cases: {}", CASES.join(", ")));
            }
            v
        }
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 && chosen.iter().any(|c| c.starts_with("full")) {
        return Err("the disk-full cases mount a tmpfs: run as root, or leave them out".into());
    }
    let tmp = TempDir::new(opts.flag("--keep"))?;
    let builds = tmp.sub("builds")?;
    let hello = build_hello(&["ft-1".to_string(), "ft-2".to_string()], &builds)?;
    let fixture = build_fixture(&builds)?;
    let sha = [release::sha256(&hello[0])?.0, release::sha256(&hello[1])?.0];
    let fixture_sha = release::sha256(&fixture)?.0;
    let slow_rate = opts.str("--slow-rate").unwrap_or("4m").to_string();
    let mut nginx = Nginx::start(&tmp.sub("nginx")?, &slow_rate)?;

    let mut outcomes: Vec<(u64, Outcome)> = Vec::new();
    for run in 1..=runs {
        for case in &chosen {
            procs::check()?;
            eprintln!("upshift-bench: faults: run {run}/{runs}: {case}");
            let mut ctx = Ctx {
                tmp: &tmp,
                run,
                hello: [hello[0].clone(), hello[1].clone()],
                sha: sha.clone(),
                fixture: fixture.clone(),
                fixture_sha: fixture_sha.clone(),
                nginx: &mut nginx,
                slow_rate: slow_rate.clone(),
                probe,
            };
            let o = match *case {
                "kill-download" => cases::kill_master_mid_download(&mut ctx)?,
                "kill-staged" => cases::kill_master_mid_install(&mut ctx, cases::At::Staged)?,
                "kill-testrun" => cases::kill_master_mid_install(&mut ctx, cases::At::TestRun)?,
                "kill-prev" => cases::kill_master_mid_install(&mut ctx, cases::At::PrevLink)?,
                "worker-early" => cases::kill_worker_before_ready(&mut ctx)?,
                "worker-late" => cases::kill_worker_after_ready(&mut ctx)?,
                "sigstop" => cases::sigstop_during_drain(&mut ctx)?,
                "full-file" => cases::disk_full(&mut ctx, false)?,
                "full-http" => cases::disk_full(&mut ctx, true)?,
                _ => cases::release_server_dies(&mut ctx)?,
            };
            eprintln!(
                "upshift-bench: faults: {case}: {}",
                if o.pass() { "pass" } else { "FAIL" }
            );
            outcomes.push((run, o));
            // The nginx case restarts it; a failed restart would fail the next HTTP case.
            nginx.restart()?;
        }
    }
    nginx.kill();
    Ok(render(opts, &slow_rate, &outcomes))
}

fn render(opts: &Opts, slow_rate: &str, outcomes: &[(u64, Outcome)]) -> Report {
    let mut r = Report::new(
        "faults: fault injection against real processes",
        &super::command(&SPEC, opts),
    );
    r.para(&format!(
        "Servers: the `hello` example (release builds ft-1, installed, and ft-2, the release) for \
         the master, drain, disk and HTTP cases; the `fixture` example with appended build \
         stamps for the worker cases (`slow-ready 8000`: 8 s before it serves). Releases come \
         from the File fetcher (`--watch`) or from nginx on 127.0.0.1 (`--url`, polled every \
         second; `/slow/` throttled to {slow_rate}/s). A prober sends `GET /` on a fresh \
         connection every {} ms while the master lives. \"Whole\" means the sha256 of the \
         binary on disk equals the old or the new build's. Every process is stopped by pid; the \
         tmpfs mounts are unmounted.",
        opts.str("--probe-ms").unwrap_or("5"),
    ));
    r.heading("Cases");
    let mut t = Table::new(&[
        "run",
        "case",
        "fault injected (how the window was hit)",
        "observed",
        "result",
    ]);
    for (run, o) in outcomes {
        let observed: Vec<String> = o
            .checks
            .iter()
            .map(|(what, ok)| {
                let what = what.replace('|', "\\|");
                if *ok {
                    what
                } else {
                    format!("**✗ {what}**")
                }
            })
            .collect();
        t.row(vec![
            run.to_string(),
            o.title.to_string(),
            o.how.replace('|', "\\|"),
            observed.join("; "),
            if o.pass() { "pass" } else { "**FAIL**" }.to_string(),
        ]);
    }
    r.table(&t);
    let passed = outcomes.iter().filter(|(_, o)| o.pass()).count();
    let mut per_case = Table::new(&["case", "runs passed"]);
    let mut titles: Vec<&str> = Vec::new();
    for (_, o) in outcomes {
        if !titles.contains(&o.title) {
            titles.push(o.title);
        }
    }
    for title in titles {
        let of: Vec<&Outcome> = outcomes
            .iter()
            .filter(|(_, o)| o.title == title)
            .map(|(_, o)| o)
            .collect();
        let ok = of.iter().filter(|o| o.pass()).count();
        per_case.row(vec![
            title.replace('|', "/"),
            format!("{ok} of {}", of.len()),
        ]);
    }
    r.summary_table("Per case", &per_case);
    r.heading("Verdict");
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| !o.pass())
        .map(|(run, o)| format!("run {run}: {}", o.title))
        .collect();
    r.para(&format!(
        "{passed} of {} case runs passed: nothing lost (binary whole, service answering while the \
         master lived, no temp file after the next start, no orphan).{}",
        outcomes.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" Failed: {}.", failed.join("; "))
        }
    ));
    r.verdict(
        "fault injection: nothing lost — binary whole, service answering while the master \
         lived, no temp file left, no orphan (issue 5)",
        format!("{passed} of {} case runs passed", outcomes.len()),
        Status::met_if(passed == outcomes.len() && !outcomes.is_empty()),
    );
    r.heading("Checks and notes, per case");
    let mut raw = Vec::new();
    for (run, o) in outcomes {
        raw.push(format!(
            "run {run}: {} — {}",
            o.title,
            if o.pass() { "pass" } else { "FAIL" }
        ));
        raw.push(format!("  how: {}", o.how));
        for (what, ok) in &o.checks {
            raw.push(format!("  [{}] {what}", if *ok { "ok" } else { "FAIL" }));
        }
        for n in &o.notes {
            raw.push(format!("  note: {n}"));
        }
    }
    r.raw(&raw);
    r
}
