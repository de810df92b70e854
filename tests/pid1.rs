//! The master as PID 1, as in a container: `unshare --pid --fork --mount-proc` makes it the init
//! of a new PID namespace (the loopback network stays the host's). There it must reap orphans
//! re-parented to it without stealing the exit status of its workers or of a release's test run,
//! restart, upgrade, and drain on SIGTERM, which PID 1 only receives because the master handles it.
//!
//! Creating a PID namespace needs root (CI runs as root). Where it cannot be created the test says
//! so loudly on stderr and passes, unless `UPSHIFT_REQUIRE_PID1_TEST=1` is set: then it fails.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const REQUIRE: &str = "UPSHIFT_REQUIRE_PID1_TEST";
const UNSHARE: &str = "/usr/bin/unshare";
const STEP: Duration = Duration::from_secs(20);

/// Whether this machine lets us create a PID namespace; explains loudly when it does not.
fn pid_namespaces_work() -> bool {
    let why = if !Path::new(UNSHARE).is_file() {
        format!("{UNSHARE} is not installed (util-linux)")
    } else {
        let child = Command::new(UNSHARE)
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "sh",
                "-c",
                "test $$ -eq 1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        match child {
            Err(e) => format!("cannot run {UNSHARE}: {e}"),
            Ok(mut child) => {
                let deadline = Instant::now() + Duration::from_secs(10);
                let status = loop {
                    match child.try_wait() {
                        Ok(Some(st)) => break Some(st),
                        _ if Instant::now() >= deadline => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break None;
                        }
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                };
                match status {
                    Some(st) if st.success() => return true,
                    Some(st) => {
                        let mut err = String::new();
                        if let Some(mut e) = child.stderr.take() {
                            let _ = std::io::Read::read_to_string(&mut e, &mut err);
                        }
                        format!(
                            "`unshare --pid --fork --mount-proc` failed ({st}): {}",
                            err.trim()
                        )
                    }
                    None => "`unshare --pid --fork --mount-proc` hung".into(),
                }
            }
        }
    };
    let msg = format!(
        "\n\n*** pid1: cannot create a PID namespace: {why}.\n*** The PID-1 test did NOT run. \
         Run it as root (CI does), or set {REQUIRE}=1 to make this a failure. ***\n"
    );
    if std::env::var(REQUIRE).as_deref() == Ok("1") {
        panic!("{msg}");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), msg.as_bytes());
    false
}

/// The pid of `pid` inside its own PID namespace (the last field of `NSpid:`).
fn pid_in_namespace(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// The host pid of the process that is `ns_pid` among the descendants of `root`: workers report
/// their pid as the namespace sees it.
fn host_pid(root: u32, ns_pid: u32) -> Option<u32> {
    descendants_of(root)
        .into_iter()
        .map(|p| p.pid)
        .find(|&p| pid_in_namespace(p) == Some(ns_pid))
}

/// Children of `pid` named `name` (live or zombie).
fn children_named(pid: u32, name: &str) -> Vec<ProcStat> {
    all_procs()
        .into_iter()
        .filter(|p| p.ppid == pid && comm(p.pid) == name)
        .collect()
}

#[test]
fn master_as_pid1_reaps_orphans_restarts_upgrades_and_drains() {
    if !pid_namespaces_work() {
        return;
    }
    let mut rig = Rig::new("pid1");
    let app = rig.app.display().to_string();
    let mut args: Vec<String> = ["--pid", "--fork", "--mount-proc", app.as_str()]
        .map(String::from)
        .to_vec();
    args.extend(rig.args(&[]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    rig.master = Some(Master::spawn(Path::new(UNSHARE), &args, &[]));
    let addr = rig.addr.clone();
    let first = rig.m_mut().wait_serving(&addr, START);
    rig.base_pid = first.pid().unwrap();

    // unshare forks the namespace's init, which execs the app: that is the master.
    let unshare_pid = rig.m().pid();
    let master = wait_for(STEP, || live_children_of(unshare_pid).first().copied())
        .unwrap_or_else(|| rig.fail("unshare has no child"));
    rig.expect(
        pid_in_namespace(master) == Some(1),
        format!("the master {master} is not PID 1 of its namespace"),
    );
    let first_worker = host_pid(master, rig.base_pid)
        .unwrap_or_else(|| rig.fail("the worker is not among the master's descendants"));
    rig.expect(
        live_children_of(master).contains(&first_worker),
        "the worker is the master's child",
    );

    // A worker that leaves orphans behind (a double fork): they are re-parented to the master,
    // which must reap them when they exit, or zombies would pile up for the container's life.
    let r = get(&addr, "/orphan?n=5&ms=1500").unwrap_or_else(|e| rig.fail(format!("{e}")));
    rig.expect(
        r.body.trim() == "orphaned 5",
        format!("/orphan: {:?}", r.body),
    );
    let adopted = wait_for(STEP, || {
        let n = children_named(master, "sleep").len();
        (n == 5).then_some(n)
    });
    rig.expect(
        adopted.is_some(),
        format!(
            "the 5 orphans were not re-parented to the master: {:?}",
            children_named(master, "sleep")
        ),
    );
    let reaped = wait_until(STEP, || {
        children_named(master, "sleep").is_empty() && zombie_children_of(master).is_empty()
    });
    rig.expect(
        reaped,
        format!(
            "orphans left as zombies of PID 1: {:?}",
            zombie_children_of(master)
                .iter()
                .map(|&p| (p, comm(p)))
                .collect::<Vec<_>>()
        ),
    );

    // A restart: the old worker's exit reaches the master (it drains and is reaped, no zombie).
    signal(master, Signal::SIGUSR2);
    let second = rig.m().wait_new_pid(&addr, rig.base_pid, STEP);
    rig.expect(
        wait_until(STEP, || {
            proc_stat(first_worker).is_none() && zombie_children_of(master).is_empty()
        }),
        format!("the drained worker {first_worker} was not reaped"),
    );
    rig.expect(
        rig.m().log_contents().contains("drained worker exited"),
        "the master saw its old worker exit",
    );

    // A release whose test run exits 4 at once: its status must reach the test-run code, not
    // the orphan reaper, or the verdict would be a vaguer "did not answer the handshake".
    let (bad, _) = rig.publish_build("bad:exit-at-start");
    let reason = rig.wait_rejected(&bad);
    rig.expect(
        reason.contains("failed its test run (exit status: 4)"),
        format!("the test run's exit status was lost: {reason}"),
    );
    rig.expect(
        rig.m().serving_pid(&addr) == second,
        "the second worker keeps serving",
    );

    // A good release: test run, install and handoff, all as PID 1.
    let (good, _) = rig.publish_build("v2");
    rig.wait_log(&format!("release {good} is serving"), VERDICT);
    let served = get(&addr, "/").unwrap_or_else(|e| rig.fail(format!("{e}")));
    rig.expect(
        served.body.contains("build v2"),
        format!("v2 does not serve: {:?}", served.body),
    );
    rig.expect(
        log_lines_with(rig.m(), "collected elsewhere").is_empty(),
        "a test run's exit status was collected by someone else",
    );

    // SIGTERM to PID 1: a request in flight completes, the workers drain, the master exits 0
    // (and unshare with it).
    let slow = {
        let addr = addr.clone();
        std::thread::spawn(move || get_timeout(&addr, "/sleep?ms=1500", Duration::from_secs(20)))
    };
    std::thread::sleep(Duration::from_millis(300));
    signal(master, Signal::SIGTERM);
    let status = rig
        .m_mut()
        .wait_exit(STEP)
        .unwrap_or_else(|| rig.fail("the PID-1 master did not exit after SIGTERM"));
    rig.expect(status.success(), format!("exit status {status}"));
    match slow.join().unwrap() {
        Ok(r) if r.status == 200 => {}
        other => rig.fail(format!("the request in flight at SIGTERM: {other:?}")),
    }
    rig.expect(proc_stat(master).is_none(), "the master is gone");
}
