//! Fleet safety with real masters (`docs/fleet.md`): a staged rollout across two `hello` masters
//! that watch the same path under different host names, and holds and pins on one master.
//!
//! Releases are copies of the `hello` build with a tag appended (a distinct sha256, so a distinct
//! release, without compiling), published the way a deploy script does: side files first, then
//! the build written beside the watched path and renamed onto it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::Digest;
use upshift::rollout::bucket;
use upshift_fetcher_conformance::hello::{hello_binary, new_build, Hello, Scratch};

/// Deferrals are logged at debug level after the first: counting them counts polls.
const RUST_LOG: &str = "info,upshift=debug";
const UPGRADE: Duration = Duration::from_secs(60);

fn identity_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The first `<prefix>-<n>` whose bucket for `identity` satisfies `pred`.
fn host_where(prefix: &str, identity: &str, pred: impl Fn(f64) -> bool) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|h| pred(bucket(h, identity)))
        .expect("a host name in range")
}

fn write_atomically(path: &Path, bytes: &[u8]) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes).expect("write beside the watched path");
    fs::rename(&tmp, path).expect("rename into place");
}

fn start(watch: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Hello {
    let mut args = vec!["--watch".to_string(), watch.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Hello::start(&hello_binary(), &args, &envs, RUST_LOG)
}

fn wait_generation(h: &Hello, generation: u64) {
    if h.wait_greeting(UPGRADE, |g| g.generation >= generation)
        .is_none()
    {
        h.fail(format!(
            "generation {generation} not serving within {UPGRADE:?}"
        ));
    }
}

/// Waits for `needle` in the log, then for `polls` more lines with it: the master kept deciding
/// the same way, poll after poll.
fn wait_decisions(h: &Hello, needle: &str, polls: usize) {
    if h.wait_log(needle, UPGRADE).is_none() {
        h.fail(format!("no log line with {needle:?}"));
    }
    let seen = h.log_lines(needle).len();
    if !h.wait_log_count(needle, seen + polls - 1, Duration::from_secs(30)) {
        h.fail(format!("{needle:?} was not logged at {polls} more polls"));
    }
}

fn assert_not_upgraded(h: &Hello, original: &[u8], generation: u64) {
    let g = h.greeting();
    if g.generation != generation || h.installed() != original {
        h.fail(format!(
            "upgraded although it should not have been: {g:?}, installed binary changed: {}",
            h.installed() != original
        ));
    }
}

fn wait_installed(h: &Hello, bytes: &[u8]) {
    let deadline = std::time::Instant::now() + UPGRADE;
    while h.installed() != bytes {
        if std::time::Instant::now() >= deadline {
            h.fail("the release is serving but not installed at the program's path");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_staged_rollout_upgrades_the_host_in_its_bucket_then_the_rest() {
    let _heavy = common::heavy_lock();
    let original = fs::read(hello_binary()).expect("read hello");
    let build = new_build(&original, "fleet-rollout");
    let identity = identity_of(&build);
    // Names chosen for this release: one under 50, one at or above it.
    let inside = host_where("canary", &identity, |b| b < 50.0);
    let outside = host_where("steady", &identity, |b| b >= 50.0);
    let feed = Scratch::new("fleet-feed");
    let watch = feed.path().join("next");
    let a = start(&watch, &["--host-name", &inside], &[]);
    let b = start(&watch, &["--host-name", &outside], &[]);

    let mut rollout = watch.as_os_str().to_owned();
    rollout.push(".rollout");
    let rollout = PathBuf::from(rollout);
    write_atomically(&rollout, b"rollout: 50\n");
    write_atomically(&watch, &build);

    wait_generation(&a, 2);
    wait_installed(&a, &build);
    let out = format!("host \"{outside}\" is outside the 50 % rollout");
    wait_decisions(&b, &out, 5);
    assert_not_upgraded(&b, &original, 1);
    if !a.log_lines("outside the").is_empty() {
        a.fail("the host in the bucket logged a deferral");
    }

    // The percentage rises: the other host follows, without a new release.
    write_atomically(&rollout, b"rollout: 100\n");
    wait_generation(&b, 2);
    wait_installed(&b, &build);
    // The first host stays where it was.
    assert_eq!(a.greeting().generation, 2);
    eprintln!("rollout: {inside} took {identity} at 50 %, {outside} at 100 %");
}

#[test]
fn a_hold_file_holds_then_pins_and_sigusr2_still_restarts() {
    let _heavy = common::heavy_lock();
    let original = fs::read(hello_binary()).expect("read hello");
    let feed = Scratch::new("fleet-hold");
    let watch = feed.path().join("next");
    // Configured for no rollout at all: only a pin can get a release in.
    let h = start(&watch, &["--rollout", "0"], &[]);
    let mut hold = h.exe().into_os_string();
    hold.push(".hold");
    let hold = PathBuf::from(hold);

    fs::write(&hold, "").expect("create the hold file");
    wait_decisions(&h, "held by the hold file", 1);
    let one = new_build(&original, "fleet-hold-1");
    write_atomically(&watch, &one);
    wait_decisions(&h, "held by the hold file", 5);
    assert_not_upgraded(&h, &original, 1);

    // A hold stops fetchers, not the restart signal.
    kill(Pid::from_raw(h.pid() as i32), Signal::SIGUSR2).expect("SIGUSR2 to the master");
    wait_generation(&h, 2);
    assert_not_upgraded(&h, &original, 2);

    // Pinned to a release not yet published: the published one is still refused, then the pinned
    // one is taken although the configured rollout is 0 %.
    let two = new_build(&original, "fleet-hold-2");
    let pin = identity_of(&two);
    fs::write(&hold, format!("# INC-42: only the fix\n{pin}\n")).expect("pin");
    wait_decisions(&h, &format!("to {pin}"), 3);
    assert_not_upgraded(&h, &original, 2);
    write_atomically(&watch, &two);
    wait_generation(&h, 3);
    wait_installed(&h, &two);

    // Without the file, the configured 0 % rollout keeps every release out.
    fs::remove_file(&hold).expect("remove the hold file");
    let three = new_build(&original, "fleet-hold-3");
    write_atomically(&watch, &three);
    wait_decisions(&h, "outside the 0 % rollout", 3);
    assert_not_upgraded(&h, &two, 3);
}

#[test]
fn upshift_hold_in_the_environment_holds_every_fetcher() {
    let _heavy = common::heavy_lock();
    let original = fs::read(hello_binary()).expect("read hello");
    let feed = Scratch::new("fleet-env");
    let watch = feed.path().join("next");
    let h = start(&watch, &[], &[("UPSHIFT_HOLD", "1")]);
    write_atomically(&watch, &new_build(&original, "fleet-env"));
    wait_decisions(&h, "held by UPSHIFT_HOLD", 5);
    assert_not_upgraded(&h, &original, 1);
    if !h.log_lines("checking file:").is_empty() {
        h.fail("a held master asked its fetcher");
    }
    kill(Pid::from_raw(h.pid() as i32), Signal::SIGUSR2).expect("SIGUSR2 to the master");
    wait_generation(&h, 2);
    assert_not_upgraded(&h, &original, 2);
}
