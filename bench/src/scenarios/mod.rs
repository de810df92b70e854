//! The scenarios, one subcommand each.
//!
//! A scenario is a name, a one-line summary, its own options (on top of [`opts::COMMON`]) and a
//! function from options to a Markdown [`Report`](crate::report::Report). It returns `Err` only
//! when a run could not be performed; missed targets are part of the report.
//!
//! Issue 5 still lists: a naive kill+start baseline, `Connection: close` load, HTTP/S3 fetch
//! latency, an overhead A/B (upshift vs the same server without a master), footprint and startup.
//! Each becomes a module here and an entry in [`ALL`].

mod bombs;
mod deltas;
mod faults;
mod file_upgrades;
mod fleet;
mod footprint;
mod master_reexec;
mod overhead;
mod restarts;
mod soak;
mod startup;
mod upgrade_latency;
mod zero_downtime;

use crate::opts::{self, OptSpec, Opts};
use crate::report::Report;

pub struct Scenario {
    pub name: &'static str,
    pub summary: &'static str,
    pub options: &'static [OptSpec],
    pub run: fn(&Opts) -> Result<Report, String>,
}

pub static ALL: &[&Scenario] = &[
    &restarts::SPEC,
    &file_upgrades::SPEC,
    &footprint::SPEC,
    &soak::SPEC,
    &faults::SPEC,
    &zero_downtime::SPEC,
    &overhead::SPEC,
    &startup::SPEC,
    &upgrade_latency::SPEC,
    &master_reexec::SPEC,
    &bombs::SPEC,
    &deltas::SPEC,
    &fleet::SPEC,
];

/// The applying child of the `deltas` scenario (`upshift-bench __deltas-apply …`).
pub use deltas::{child as deltas_child, CHILD as DELTAS_CHILD};

/// Every option a scenario takes: the common ones, then its own. A scenario that lists a common
/// option itself (say `--duration` with another default) replaces the common one.
pub fn specs(sc: &Scenario) -> Vec<&'static OptSpec> {
    let own = |name: &str| sc.options.iter().find(|o| o.name == name);
    opts::COMMON
        .iter()
        .map(|c| own(c.name).unwrap_or(c))
        .chain(
            sc.options
                .iter()
                .filter(|o| !opts::COMMON.iter().any(|c| c.name == o.name)),
        )
        .collect()
}

pub fn help(sc: &Scenario) -> String {
    let mut s = format!(
        "usage: cargo run --release -p upshift-bench -- {} [options]\n\n{}\n\noptions:\n",
        sc.name, sc.summary
    );
    for o in specs(sc) {
        let flag = match o.value {
            Some(v) => format!("{} {v}", o.name),
            None => o.name.to_string(),
        };
        let default = o
            .default
            .map(|d| format!(" (default {d})"))
            .unwrap_or_default();
        s.push_str(&format!("  {flag:<22} {}{default}\n", o.help));
    }
    s
}

/// The command line that reproduces a report, defaults spelled out.
pub fn command(sc: &Scenario, opts: &Opts) -> String {
    format!(
        "cargo run --release -p upshift-bench -- {} {}",
        sc.name,
        opts.resolved()
    )
}
