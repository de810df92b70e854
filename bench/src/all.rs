//! `upshift-bench all`: every scenario with its defaults, one after the other, in one Markdown
//! document: the one command behind BENCHMARKS.md.
//!
//! `soak` (1,000 restarts, several minutes) runs only with `--soak`. A scenario that cannot be
//! performed is reported in place and the others still run; the exit status says whether all ran.

use std::time::Instant;

use crate::scenarios::{self, Scenario};

/// Scenarios left out unless asked for, with the flag that asks.
const LONG: &[(&str, &str)] = &[("soak", "--soak")];

pub fn usage() -> String {
    "usage: cargo run --release -p upshift-bench -- all [--soak] [--only a,b,...]\n\n\
     Runs every scenario with its defaults and prints one Markdown document (progress on stderr).\n\
     --soak            also run `soak` (1,000 restarts under load; several minutes)\n\
     --only a,b,...    run only these scenarios, in the listed order"
        .to_string()
}

/// Runs the scenarios; `Err` carries the document too when at least one could not be performed.
pub fn run(args: &[String]) -> Result<String, (String, String)> {
    let mut with_long: Vec<&str> = Vec::new();
    let mut only: Option<Vec<String>> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--soak" => with_long.push("soak"),
            "--only" => match it.next() {
                Some(v) => only = Some(v.split(',').map(|s| s.trim().to_string()).collect()),
                None => return Err((String::new(), "--only needs a list of scenarios".into())),
            },
            "-h" | "--help" => return Err((String::new(), String::new())),
            other => return Err((String::new(), format!("unknown option {other:?}"))),
        }
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

    let mut doc = String::from("# upshift-bench all\n\n");
    let mut failed = Vec::new();
    for sc in chosen {
        let started = Instant::now();
        eprintln!("upshift-bench all: {} ...", sc.name);
        let opts = match crate::opts::Opts::parse(&[], scenarios::specs(sc)) {
            Ok(o) => o,
            Err(e) => {
                failed.push(format!("{}: {e}", sc.name));
                continue;
            }
        };
        match (sc.run)(&opts) {
            Ok(report) => doc.push_str(&format!("{report}\n")),
            Err(e) => {
                if crate::procs::interrupted() {
                    return Err((doc, "interrupted".into()));
                }
                doc.push_str(&format!(
                    "## {}\n\n**Could not be performed:** {e}\n\n",
                    sc.name
                ));
                failed.push(format!("{}: {e}", sc.name));
            }
        }
        eprintln!(
            "upshift-bench all: {} done in {:.0} s",
            sc.name,
            started.elapsed().as_secs_f64()
        );
    }
    match failed.is_empty() {
        true => Ok(doc),
        false => Err((doc, failed.join("; "))),
    }
}
