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
    let required = [Some(REQUIRE_ALL), require]
        .into_iter()
        .flatten()
        .find(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0"));
    if let Some(var) = required {
        panic!("{tool} is missing, and {var} says every test must run: {install}");
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let line =
        format!("SKIPPED {test}: {tool} is not installed ({install}; scripts/test installs it)\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}
