//! `upshift-bench all`: every scenario with its defaults, one after the other, in one run; it
//! writes BENCHMARKS.md (the summary) and `bench/results/<scenario>.{md,json}` (each full report
//! and its raw data) itself, so that every figure in them comes from that run.
//!
//! `soak` (1,000 restarts, several minutes) runs only with `--soak`. A scenario that cannot be
//! performed is reported in place and the others still run; the exit status says whether all ran.
//! A work tree with uncommitted changes is refused unless `--allow-dirty`: figures must be tied
//! to a commit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::provenance::Source;
use crate::scenarios::{self, Scenario};
use crate::summary::{Ran, Run};

/// Scenarios left out unless asked for, with the flag that asks.
const LONG: &[(&str, &str)] = &[("soak", "--soak")];

pub fn usage() -> String {
    "usage: cargo run --release -p upshift-bench -- all [--soak] [--only a,b,... [--append]]\n\n\
     Runs every scenario with its defaults, then writes <out>/BENCHMARKS.md (the summary) and\n\
     <out>/bench/results/<scenario>.md and .json (full reports, raw data). Progress on stderr.\n\
     --soak            also run `soak` (1,000 restarts under load; several minutes)\n\
     --only a,b,...    run only these scenarios, in the listed order\n\
     --append          with --only: keep BENCHMARKS.md and append (or replace) a section\n\
                       \"Later run: a, b\" with this run's summary and provenance\n\
     --out DIR         where to write (default: the workspace root)\n\
     --allow-dirty     run even if the work tree differs from its commit (the summary says so)"
        .to_string()
}

/// Whether an error from [`run`] is about the command line (the usage is then worth printing).
pub fn is_usage_error(e: &str) -> bool {
    e.starts_with("unknown ") || e.contains(" needs ")
}

/// Runs the scenarios and writes the files; `Ok` names what was written, `Err` carries it too
/// when at least one scenario could not be performed.
pub fn run(args: &[String]) -> Result<String, (String, String)> {
    let mut with_long: Vec<&str> = Vec::new();
    let mut only: Option<Vec<String>> = None;
    let mut out: PathBuf = crate::builds::workspace_root();
    let mut allow_dirty = false;
    let mut append = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--soak" => with_long.push("soak"),
            "--only" => match it.next() {
                Some(v) => only = Some(v.split(',').map(|s| s.trim().to_string()).collect()),
                None => return Err((String::new(), "--only needs a list of scenarios".into())),
            },
            "--out" => match it.next() {
                Some(v) => out = PathBuf::from(v),
                None => return Err((String::new(), "--out needs a directory".into())),
            },
            "--allow-dirty" => allow_dirty = true,
            "--append" => append = true,
            "-h" | "--help" => return Err((String::new(), String::new())),
            other => return Err((String::new(), format!("unknown option {other:?}"))),
        }
    }
    if append && only.is_none() {
        return Err((String::new(), "--append needs --only".into()));
    }
    let chosen: Vec<&Scenario> = match &only {
        Some(names) => {
            let mut v = Vec::new();
            for n in names {
                match scenarios::ALL.iter().find(|s| s.name == n) {
                    Some(s) => v.push(*s),
                    None => return Err((String::new(), format!("unknown scenario {n:?}"))),
                }
            }
            v
        }
        None => scenarios::ALL
            .iter()
            .copied()
            .filter(|s| {
                LONG.iter()
                    .all(|(n, _)| *n != s.name || with_long.contains(n))
            })
            .collect(),
    };

    let source_before = Source::capture();
    if source_before.dirty && !allow_dirty {
        return Err((
            String::new(),
            format!(
                "the work tree is not its commit ({}; {}): BENCHMARKS.md must come from a \
                 commit. Commit or stash the changes, or pass --allow-dirty",
                source_before.line(),
                source_before.changed.join(", ")
            ),
        ));
    }
    let started = crate::report::chrono_free_now();
    let mut ran = Vec::new();
    for sc in chosen {
        let t0 = Instant::now();
        eprintln!("upshift-bench all: {} ...", sc.name);
        crate::provenance::begin_scenario();
        let cpu = crate::machine::CpuWindow::start();
        let outcome =
            crate::opts::Opts::parse(&[], scenarios::specs(sc)).and_then(|opts| (sc.run)(&opts));
        if outcome.is_err() && crate::procs::interrupted() {
            return Err((String::new(), "interrupted".into()));
        }
        let seconds = t0.elapsed().as_secs_f64();
        eprintln!("upshift-bench all: {} done in {seconds:.0} s", sc.name);
        ran.push(Ran {
            name: sc.name,
            seconds,
            others_cpus: cpu.others_cpus_unrecorded(),
            outcome,
        });
    }
    let source_after = Source::capture();
    let mut command = String::from("cargo run --release -p upshift-bench -- all");
    for a in args {
        command.push(' ');
        command.push_str(a);
    }
    let run = Run {
        command,
        started,
        finished: crate::report::chrono_free_now(),
        source_before: &source_before,
        source_after: &source_after,
        machine: crate::machine::one_line(),
        ran: &ran,
    };
    let summary = match append {
        false => crate::summary::render(&run),
        true => {
            let path = out.join("BENCHMARKS.md");
            let existing = std::fs::read_to_string(&path).map_err(|e| {
                (
                    String::new(),
                    format!("--append: cannot read {}: {e}", path.display()),
                )
            })?;
            let names: Vec<&str> = ran.iter().map(|r| r.name).collect();
            // A file written before later runs existed says every figure is from one run.
            let existing = existing.replace(
                "*Provenance*. The harness builds",
                crate::summary::LATER_RUNS_NOTE,
            );
            with_later_run(
                &existing,
                &crate::summary::later_run_heading(&names),
                &crate::summary::render_later_run(&run),
            )
        }
    };
    let written = write(&out, &summary, &ran).map_err(|e| (String::new(), e))?;
    let failed: Vec<String> = ran
        .iter()
        .filter_map(|r| r.outcome.as_ref().err().map(|e| format!("{}: {e}", r.name)))
        .collect();
    match failed.is_empty() {
        true => Ok(written),
        false => Err((written, failed.join("; "))),
    }
}

/// `existing` with the section under `heading` (up to the next later run, or the end) replaced
/// by `section`, or with `section` appended when there is none.
fn with_later_run(existing: &str, heading: &str, section: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in existing.lines() {
        if line == heading {
            skipping = true;
            continue;
        }
        if skipping && line.starts_with("## Later run: ") {
            skipping = false;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    let mut out = out.trim_end().to_string();
    out.push_str("\n\n");
    out.push_str(section);
    out
}

/// Writes BENCHMARKS.md and each scenario's report and JSON under `out`; returns what it wrote.
fn write(out: &Path, summary: &str, ran: &[Ran]) -> Result<String, String> {
    let results = out.join("bench/results");
    std::fs::create_dir_all(&results)
        .map_err(|e| format!("cannot create {}: {e}", results.display()))?;
    let put = |path: PathBuf, text: &str| {
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    let mut written = Vec::new();
    for r in ran {
        let Ok(rep) = &r.outcome else { continue };
        let json_name = format!("{}.json", r.name);
        put(
            results.join(format!("{}.md", r.name)),
            &rep.markdown(Some(&json_name)),
        )?;
        let json = serde_json::to_string_pretty(&rep.json(r.name, r.others_cpus))
            .map_err(|e| format!("cannot encode {json_name}: {e}"))?;
        put(results.join(&json_name), &json)?;
        written.push(format!("bench/results/{}.{{md,json}}", r.name));
    }
    put(out.join("BENCHMARKS.md"), summary)?;
    written.insert(0, out.join("BENCHMARKS.md").display().to_string());
    Ok(format!("wrote {}\n", written.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::with_later_run;

    #[test]
    fn a_later_run_replaces_its_own_section_and_keeps_the_rest() {
        let doc = "# Benchmarks\n\nfull run\n\n## Later run: a\n\nold a\n\n## Later run: b\n\nb\n";
        let new = with_later_run(doc, "## Later run: a", "## Later run: a\n\nnew a\n");
        assert_eq!(
            new,
            "# Benchmarks\n\nfull run\n\n## Later run: b\n\nb\n\n## Later run: a\n\nnew a\n"
        );
        let added = with_later_run("# Benchmarks\n", "## Later run: c", "## Later run: c\n");
        assert_eq!(added, "# Benchmarks\n\n## Later run: c\n");
    }
}
