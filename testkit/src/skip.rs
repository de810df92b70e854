//! Tests that need an outside program (nginx, s3s-fs, moto, supervisord, ...) and do not find
//! it: skipped where a plain `cargo test` runs, failed where `scripts/test` runs (it installs every
//! one of them and sets `UPSHIFT_REQUIRE_ALL=1`).

use std::io::Write;

/// The variable `scripts/test` sets: every test must run, a missing program is a failure.
pub const REQUIRE_ALL: &str = "UPSHIFT_REQUIRE_ALL";

/// Reports that the current test cannot run for want of `tool`, which `install` installs. Panics
/// when `require` (the tool's own variable, e.g. `UPSHIFT_REQUIRE_MOTO`) or [`REQUIRE_ALL`] is set;
/// otherwise prints `SKIPPED <test>: ...` straight to stderr, past the test harness's capture of
/// passing tests' output, so that `cargo test` shows what it did not check. The caller then
/// returns without checking anything.
///
/// ```
/// # use upshift_testkit::skip::skip_without;
/// if std::process::Command::new("surely-not-installed").arg("--version").status().is_err() {
///     # std::env::remove_var("UPSHIFT_REQUIRE_ALL");
///     skip_without("surely-not-installed", "apt-get install surely", None);
/// }
/// ```
pub fn skip_without(tool: &str, install: &str, require: Option<&str>) {
    if let Some(var) = [Some(REQUIRE_ALL), require]
        .into_iter()
        .flatten()
        .find(|v| set(v))
    {
        panic!("{tool} is missing, and {var} says every test must run: {install}");
    }
    skipped(&format!(
        "{tool} is not installed ({install}; scripts/test installs it)"
    ));
}

/// Reports that the current test cannot run because the machine lacks `what`, something no
/// package installs (IPv6 on the loopback, say). Only `require` makes that a failure:
/// `scripts/test` sets it when the machine has `what`, so CI checks it wherever it can, and a
/// machine without it is not mistaken for a broken test run.
///
/// ```
/// # use upshift_testkit::skip::skip_unavailable;
/// # std::env::remove_var("UPSHIFT_REQUIRE_SURELY");
/// skip_unavailable("a surely-absent feature", "it is absent", "UPSHIFT_REQUIRE_SURELY");
/// ```
pub fn skip_unavailable(what: &str, why: &str, require: &str) {
    if set(require) {
        panic!("{what} is not available ({why}), and {require} says this machine has it");
    }
    skipped(&format!("{what} is not available here ({why})"));
}

fn set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0")
}

/// `SKIPPED <test>: <reason>` on stderr, past the test harness's capture.
fn skipped(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let line = format!("SKIPPED {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}
