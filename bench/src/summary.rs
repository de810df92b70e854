//! BENCHMARKS.md, written by `upshift-bench all` from the reports of one run: provenance, the
//! verdict table, the anchors (other libraries' figures, kept apart from ours), one line per
//! scenario (its command and where its full report and raw data are: `bench/results/`), and the
//! hash of every binary it ran. Short on purpose: the per-scenario tables live in the reports.

use std::fmt::Write as _;

use crate::provenance::{Built, Source};
use crate::report::{Report, Status};

/// One scenario's outcome in a run of `all`.
pub struct Ran {
    pub name: &'static str,
    pub seconds: f64,
    /// Others' CPU over the whole scenario (see [`crate::machine::CpuWindow`]).
    pub others_cpus: f64,
    pub outcome: Result<Report, String>,
}

/// The whole run.
pub struct Run<'a> {
    pub command: String,
    pub started: String,
    pub finished: String,
    pub source_before: &'a Source,
    pub source_after: &'a Source,
    pub machine: String,
    pub ran: &'a [Ran],
}

/// Other libraries' figures the targets were set against: quoted, never measured by this run,
/// so they stay out of the verdict table.
const ANCHORS: &[(&str, &str, &str)] = &[
    (
        "requests lost per 20 s, wrk 100 connections, one upgrade per second",
        "tableflip, grace, overseer: 700–1,000",
        "the project brief (measured side by side on this machine before issue 6)",
    ),
    (
        "socket errors per upgrade run (zero-downtime's load)",
        "tableflip 228–348; grace 384–491; overseer 128–385; naive kill+start 6,000–17,600",
        "issue 5",
    ),
    (
        "trigger → new build serving, median",
        "tableflip 18 ms; grace 17 ms; overseer 1,080 ms",
        "issue 5",
    ),
    (
        "idle CPU of master + worker",
        "overseer 20 ms per 30 s",
        "issue 5",
    ),
    (
        "master's idle memory",
        "overseer VmRSS 4,236–4,316 KiB, PSS 2,530–2,578 KiB",
        "issue 14 (same machine, no load)",
    ),
];

/// The Markdown of BENCHMARKS.md.
pub fn render(run: &Run) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Benchmarks\n\n\
         This file is written by the harness in [`bench/`](bench/) (crate `upshift-bench`); do \
         not edit it by hand. Every figure below comes from the one run described under \
         {LATER_RUNS_NOTE} `hello` itself (release profile, one build per \
         `BUILD_ID`), starts real processes on 127.0.0.1 only, drives them with \
         [wrk](https://github.com/wg/wrk), and stops every process it started by pid. Each \
         scenario's full report is in `bench/results/<scenario>.md`, its raw per-run data in \
         `bench/results/<scenario>.json`.\n"
    );
    body(&mut s, run, true);
    s
}

/// What the introduction says of sections appended by later runs (up to "The harness builds").
pub const LATER_RUNS_NOTE: &str = "*Provenance*, except in a section titled *Later run*, which \
    the harness appended with the figures, provenance and command of a run of its own (`all \
    --only ... --append`). The harness builds";

/// The heading of a section [`render_later_run`] writes: a later run of `names`.
pub fn later_run_heading(names: &[&str]) -> String {
    format!("## Later run: {}", names.join(", "))
}

/// The summary of a run of some scenarios, as a section to append to an existing BENCHMARKS.md:
/// the same parts as [`render`], one heading level down, under [`later_run_heading`].
pub fn render_later_run(run: &Run) -> String {
    let names: Vec<&str> = run.ran.iter().map(|r| r.name).collect();
    let mut inner = String::new();
    body(&mut inner, run, false);
    let mut s = format!(
        "{}\n\nThese scenarios ran after the run above, in a run of their own; every figure in \
         this section comes from that run.\n\n",
        later_run_heading(&names)
    );
    for line in inner.lines() {
        match line.strip_prefix("## ") {
            Some(title) => s.push_str(&format!("### {title}")),
            None => s.push_str(line),
        }
        s.push('\n');
    }
    s
}

/// Everything after the title; the anchors' table only in a full summary (`with_anchors`).
fn body(s: &mut String, run: &Run, with_anchors: bool) {
    provenance(s, run);
    verdicts(s, run);
    if with_anchors {
        anchors(s);
    }
    scenarios(s, run);
    highlights(s, run);
    binaries(s, run);
    let _ = writeln!(
        s,
        "## Reproduce\n\n```sh\n{}\n```\n\nEach scenario also runs alone and prints its full \
         report: `cargo run --release -p upshift-bench -- <scenario> [--help]`.",
        run.command
    );
}

fn provenance(s: &mut String, run: &Run) {
    let commit = run.source_before.commit.as_deref().unwrap_or("none");
    let tree = |src: &Source| match src.dirty {
        false => "clean: no change against the commit, no untracked file".to_string(),
        true => format!(
            "**uncommitted changes** (diff sha256 `{}`; {})",
            src.diff_sha256.as_deref().unwrap_or("?"),
            src.changed.join(", ")
        ),
    };
    let same = run.source_before == run.source_after;
    let _ = writeln!(
        s,
        "## Provenance\n\n\
         | | |\n|---|---|\n\
         | commit | `{commit}` |\n\
         | work tree at the start | {} |\n\
         | work tree at the end | {} |\n\
         | run | {} → {} |\n\
         | machine | {} |\n\
         | alone | the harness held `{}` (an exclusive `flock`) for the whole run, so no other \
         harness run overlapped; other processes' CPU use is in the verdict table |\n",
        tree(run.source_before),
        if same {
            "the same".to_string()
        } else {
            format!("**changed during the run**: {}", tree(run.source_after))
        },
        run.started,
        run.finished,
        run.machine,
        crate::lock::path().display(),
    );
}

fn verdicts(s: &mut String, run: &Run) {
    let _ = writeln!(
        s,
        "## Verdict\n\n\
         \"Others' CPU\": how many of the machine's CPUs processes outside the harness used, on \
         average over the scenario (`/proc/stat` minus the harness's own rusage and its \
         children's); near 0 means the scenario had the machine to itself.\n\n\
         | scenario | target | measured | result | others' CPU |\n|---|---|---|---|---|"
    );
    for r in run.ran {
        let cpu = format!("{:.2}", r.others_cpus);
        match &r.outcome {
            Ok(rep) if rep.verdicts().is_empty() => {
                let _ = writeln!(s, "| {} | – | see below | no target | {cpu} |", r.name);
            }
            Ok(rep) => {
                for v in rep.verdicts() {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {cpu} |",
                        r.name,
                        cell(&v.target),
                        cell(&v.measured),
                        v.status.label()
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(
                    s,
                    "| {} | – | could not be performed: {} | **not run** | {cpu} |",
                    r.name,
                    cell(&clip(e, 160))
                );
            }
        }
    }
    let met = count(run, Status::Met);
    let missed = count(run, Status::Missed);
    let _ = writeln!(s, "\n{met} target(s) met, {missed} missed.\n");
}

fn count(run: &Run, status: Status) -> usize {
    run.ran
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok())
        .flat_map(|r| r.verdicts())
        .filter(|v| v.status == status)
        .count()
}

fn anchors(s: &mut String) {
    let _ = writeln!(
        s,
        "## Anchors: other libraries' figures (quoted, not measured by this run)\n\n\
         | figure | value | where it comes from |\n|---|---|---|"
    );
    for (what, value, source) in ANCHORS {
        let _ = writeln!(s, "| {what} | {value} | {source} |");
    }
    s.push('\n');
}

fn scenarios(s: &mut String, run: &Run) {
    let _ = writeln!(
        s,
        "## Scenarios\n\nEach scenario's full report (per-run tables, where the time goes, the \
         verdict's details) is `bench/results/<scenario>.md`, its raw per-run data \
         `bench/results/<scenario>.json`.\n\n\
         | scenario | what it measures | command | time |\n|---|---|---|---|"
    );
    for r in run.ran {
        let name = format!("[`{n}`](bench/results/{n}.md)", n = r.name);
        match &r.outcome {
            Ok(rep) => {
                let what = rep
                    .title
                    .split_once(": ")
                    .map_or(rep.title.as_str(), |x| x.1);
                let _ = writeln!(
                    s,
                    "| {name} | {} | `{}` | {:.0} s |",
                    cell(what),
                    rep.command
                        .trim_start_matches("cargo run --release -p upshift-bench -- "),
                    r.seconds
                );
            }
            Err(e) => {
                let _ = writeln!(
                    s,
                    "| {name} | **could not be performed**: {} | – | {:.0} s |",
                    cell(&clip(e, 300)),
                    r.seconds
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\nA command above is the part after `cargo run --release -p upshift-bench -- `.\n"
    );
}

/// The few tables scenarios mark for BENCHMARKS.md (see [`Report::highlight`]).
fn highlights(s: &mut String, run: &Run) {
    let tables: Vec<&String> = (run.ran.iter())
        .filter_map(|r| r.outcome.as_ref().ok())
        .flat_map(|rep| rep.highlights())
        .collect();
    if tables.is_empty() {
        return;
    }
    s.push_str("## Highlights\n\n");
    for t in tables {
        let _ = writeln!(s, "{t}");
    }
}

fn binaries(s: &mut String, run: &Run) {
    let _ = writeln!(
        s,
        "## Binaries\n\nEach binary the run executed, hashed right after it was built: one line \
         per distinct file, `sha256sum` style, then its size and the scenarios that ran it.\n\n\
         ```text"
    );
    let mut seen: Vec<(Built, Vec<&str>)> = Vec::new();
    for r in run.ran {
        let Ok(rep) = &r.outcome else { continue };
        for b in rep.built() {
            match seen
                .iter_mut()
                .find(|(x, _)| x.sha256 == b.sha256 && x.name == b.name)
            {
                Some((_, names)) if !names.contains(&r.name) => names.push(r.name),
                Some(_) => {}
                None => seen.push((b.clone(), vec![r.name])),
            }
        }
    }
    for (b, names) in seen {
        let _ = writeln!(
            s,
            "{}  {}  {:.1} MiB  {}",
            b.sha256,
            b.name,
            b.bytes as f64 / 1024.0 / 1024.0,
            names.join(", ")
        );
    }
    s.push_str("```\n\n");
}

/// At most `max` bytes of `text` (cut at a character boundary), marked when cut.
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … ({} more bytes)", &text[..end], text.len() - end)
}

/// A table cell: no pipe or newline breaks the row.
fn cell(text: &str) -> String {
    text.replace('|', "/").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmarks_md_lists_each_scenario_once_and_every_binary_by_full_hash() {
        crate::provenance::begin_scenario();
        let file = std::env::temp_dir().join(format!("summary-test-{}", std::process::id()));
        std::fs::write(&file, b"abc").unwrap();
        crate::provenance::record_build("hello BUILD_ID=x", &file).unwrap();
        std::fs::remove_file(&file).unwrap();
        let mut rep = Report::new(
            "restarts: zero downtime under SIGUSR2",
            "cargo run --release -p upshift-bench -- restarts --runs 3",
        );
        rep.verdict("0 errors", "0 errors".into(), Status::Met);
        let source = Source {
            commit: Some("0123".into()),
            dirty: false,
            diff_sha256: None,
            changed: Vec::new(),
        };
        let ran = [
            Ran {
                name: "restarts",
                seconds: 12.0,
                others_cpus: 0.0,
                outcome: Ok(rep),
            },
            Ran {
                name: "faults",
                seconds: 1.0,
                others_cpus: 0.0,
                outcome: Err("nginx | missing\nsecond line".into()),
            },
        ];
        let md = render(&Run {
            command: "cargo run --release -p upshift-bench -- all".into(),
            started: "s".into(),
            finished: "f".into(),
            source_before: &source,
            source_after: &source,
            machine: "m".into(),
            ran: &ran,
        });
        assert!(md.contains(
            "| [`restarts`](bench/results/restarts.md) | zero downtime under SIGUSR2 | \
             `restarts --runs 3` | 12 s |"
        ));
        assert!(md.contains("| [`faults`](bench/results/faults.md) | **could not be performed**: nginx / missing second line | – | 1 s |"));
        // sha256("abc")
        assert!(md.contains(
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  hello BUILD_ID=x  \
             0.0 MiB  restarts"
        ));
        assert!(md.contains("1 target(s) met, 0 missed."));
    }
}
