//! `upshift-bench`: the benchmark harness behind BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p upshift-bench -- <scenario> [options]
//! ```
//!
//! Each scenario builds what it needs (the `hello` example, with distinct `BUILD_ID`s), starts
//! real processes on 127.0.0.1, drives them with `wrk`, and prints a Markdown report: the command
//! that produced it, the machine, the source (commit, and a hash of any uncommitted change), a
//! table per run, medians with ranges, the raw per-run numbers and a verdict against the issue's
//! targets. Progress goes to stderr, the report to stdout. `all` runs every scenario and writes
//! BENCHMARKS.md and `bench/results/` itself. A lock file (`lock.rs`) keeps two runs apart.
//!
//! Exit status: 0 when every run was performed (whether or not targets were met), 1 when a run
//! could not be performed (a build failed, the server did not come up, wrk failed), 2 on a usage
//! error. Every process the harness starts is stopped by pid when it finishes, fails, panics or is
//! interrupted.
//!
//! Adding a scenario: write `scenarios/<name>.rs` with a `SPEC: Scenario` and list it in
//! [`scenarios::ALL`].

mod all;
mod builds;
mod firstanswer;
mod hello;
mod httpget;
mod lock;
mod logtime;
mod machine;
mod nginx;
mod opts;
mod originlog;
mod origins;
mod phases;
mod prober;
mod procfs;
mod procs;
mod profile;
mod provenance;
mod release;
mod report;
mod s3;
mod scenarios;
mod stats;
mod summary;
mod sysfault;
mod wrk;

use std::process::ExitCode;

fn main() -> ExitCode {
    procs::install_interrupt_handler();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    };
    // The deltas scenario's child, which measures its own memory: no lock (the harness holds it).
    if name == scenarios::DELTAS_CHILD {
        return match scenarios::deltas_child(&args[1..]) {
            Ok(line) => {
                print!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("upshift-bench {name}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if name == "-h" || name == "--help" || name == "help" {
        println!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let wants_help = args.iter().any(|a| a == "-h" || a == "--help");
    let _lock = match wants_help {
        true => None,
        false => match lock::acquire() {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("upshift-bench: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    if name == "all" {
        return match all::run(&args[1..]) {
            Ok(doc) => {
                print!("{doc}");
                ExitCode::SUCCESS
            }
            Err((doc, e)) if doc.is_empty() && e.is_empty() => {
                println!("{}", all::usage());
                ExitCode::SUCCESS
            }
            Err((doc, e)) if doc.is_empty() && all::is_usage_error(&e) => {
                eprintln!("upshift-bench all: {e}\n\n{}", all::usage());
                ExitCode::from(2)
            }
            Err((doc, e)) if doc.is_empty() => {
                eprintln!("upshift-bench all: {e}");
                ExitCode::FAILURE
            }
            Err((doc, e)) => {
                print!("{doc}");
                eprintln!("upshift-bench all: not every scenario could be performed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(scenario) = scenarios::ALL.iter().find(|s| s.name == name.as_str()) else {
        eprintln!("upshift-bench: unknown scenario {name:?}\n\n{}", usage());
        return ExitCode::from(2);
    };
    let opts = match opts::Opts::parse(&args[1..], scenarios::specs(scenario)) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{}", scenarios::help(scenario));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!(
                "upshift-bench {}: {e}\n\n{}",
                scenario.name,
                scenarios::help(scenario)
            );
            return ExitCode::from(2);
        }
    };
    provenance::begin_scenario();
    match (scenario.run)(&opts) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(_) if procs::interrupted() => {
            eprintln!("upshift-bench {}: interrupted", scenario.name);
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!(
                "upshift-bench {}: a run could not be performed: {e}",
                scenario.name
            );
            ExitCode::FAILURE
        }
    }
}

fn usage() -> String {
    let mut s = String::from(
        "usage: cargo run --release -p upshift-bench -- <scenario> [options]\n\nscenarios:\n",
    );
    for sc in scenarios::ALL {
        s.push_str(&format!("  {:<16} {}\n", sc.name, sc.summary));
    }
    s.push_str(&format!(
        "  {:<16} every scenario above with its defaults (soak with --soak)\n",
        "all"
    ));
    s.push_str("\n`<scenario> --help` lists its options.");
    s
}
