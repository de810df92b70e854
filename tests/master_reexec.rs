//! The master's own upgrade (issue 15): after a release proves itself, and on the restart signal
//! when the binary on disk is not its own image, the master re-executes itself in place. Real
//! processes, real signals: the fixture, stamped into distinct builds, reports its master's build
//! on `GET /master`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// From a proven release (or SIGUSR2) to the master running the new image.
const REEXEC: Duration = Duration::from_secs(30);

/// The master's build as its serving worker reports it.
fn master_build(rig: &Rig) -> Option<String> {
    let r = get_timeout(&rig.addr, "/master", Duration::from_secs(5)).ok()?;
    (r.status == 200).then(|| r.body.trim().to_string())
}

fn wait_master_build(rig: &Rig, build: &str, timeout: Duration) {
    let mut last = None;
    let ok = wait_until(timeout, || {
        last = master_build(rig);
        last.as_deref() == Some(build)
    });
    rig.expect(
        ok,
        format!(
            "the master did not become build {build} within {timeout:?}; /master said {last:?}"
        ),
    );
}

fn assert_none_failed(rig: &Rig, seen: &[Obs]) {
    let failed: Vec<&Obs> = seen
        .iter()
        .filter(|o| matches!(o, Obs::Failed(_)))
        .collect();
    rig.expect(failed.is_empty(), format!("failed requests: {failed:?}"));
}

fn exe_sha(pid: u32) -> String {
    file_sha(std::path::Path::new(&format!("/proc/{pid}/exe")))
}

#[test]
fn a_proven_release_becomes_the_master_too_with_the_same_pid_and_worker() {
    let mut rig = Rig::new("reexec-release");
    rig.start(&[]);
    let master = rig.m().pid();
    wait_master_build(&rig, "base", Duration::from_secs(5));
    let fds_before = fd_count(master);

    let traffic = rig.watch();
    let (identity, sha) = rig.publish_build("v2");
    let worker = rig.wait_build("v2", VERDICT);
    rig.wait_log(&format!("release {identity} proved itself"), VERDICT);
    wait_master_build(&rig, "v2", REEXEC);
    std::thread::sleep(HOLD);
    let seen = traffic.stop();

    rig.expect(rig.m().pid() == master, "the master's pid changed");
    rig.assert_master_alive("after the master's re-exec");
    rig.expect(
        exe_sha(master) == sha,
        "the master's /proc/<pid>/exe is not the release",
    );
    // The worker that proved the release serves on: the re-exec killed nothing.
    rig.expect(
        rig.serving().map(|(pid, _)| pid) == Some(worker),
        format!("worker {worker} no longer serves after the re-exec"),
    );
    assert_none_failed(&rig, &seen);
    rig.wait_log("master re-executed in place: base -> v2", REEXEC);
    let fds_after = fd_count(master);
    rig.expect(
        fds_after <= fds_before + 1,
        format!("the master's descriptors grew from {fds_before} to {fds_after}"),
    );
}

#[test]
fn the_restart_signal_reexecs_into_a_new_binary_on_disk_then_restarts_workers() {
    let mut rig = Rig::new("reexec-signal");
    rig.start(&[]);
    let (master, base_worker) = (rig.m().pid(), rig.base_pid);
    let sha = rig.deploy_build("v3");

    let traffic = rig.watch();
    rig.m().signal(Signal::SIGUSR2);
    let worker = rig.wait_build("v3", REEXEC);
    wait_master_build(&rig, "v3", REEXEC);
    std::thread::sleep(HOLD);
    let seen = traffic.stop();

    rig.expect(worker != base_worker, "no new worker");
    rig.expect(rig.m().pid() == master, "the master's pid changed");
    rig.expect(exe_sha(master) == sha, "the master does not run v3");
    rig.expect(
        wait_until(Duration::from_secs(10), || !is_alive(base_worker)),
        "the old worker did not drain away",
    );
    assert_none_failed(&rig, &seen);

    // Once more with the same binary: nothing to become, a plain restart.
    rig.m().signal(Signal::SIGUSR2);
    let again = rig.m().wait_new_pid(&rig.addr, worker, REEXEC);
    rig.expect(again != worker, "no restart");
    rig.expect(
        log_lines_with(rig.m(), "master re-executing in place").len() == 1,
        "the master re-executed for the same image",
    );
}

#[test]
fn a_release_that_adds_a_listener_serves_on_it_without_a_restart() {
    let mut rig = Rig::new("reexec-listener");
    rig.start(&[]);
    let master = rig.m().pid();
    let (second, second_addr) = free_tcp_addr();
    rig.expect(
        connect_refused(&second_addr),
        "the second address is already served",
    );

    let traffic = rig.watch();
    let (_identity, _sha) = rig.publish_build(&format!("v2:also-listen={second}"));
    rig.wait_build("v2", VERDICT);
    wait_master_build(&rig, "v2", REEXEC);
    // The new master binds it and starts a worker that has it.
    let answered = wait_for(REEXEC, || {
        get_timeout(&second_addr, "/", Duration::from_secs(2))
            .ok()
            .and_then(|r| served(&r))
    });
    let seen = traffic.stop();
    rig.expect(
        matches!(&answered, Some((_, b)) if b == "v2"),
        format!("the added listener {second} did not answer with v2: {answered:?}"),
    );
    rig.expect(rig.m().pid() == master, "the master's pid changed");
    assert_none_failed(&rig, &seen);
}

#[test]
fn a_release_that_cannot_read_the_handover_is_refused_at_its_test_run() {
    let mut rig = Rig::new("reexec-incompatible");
    rig.start(&[]);
    let traffic = rig.watch();
    let (identity, _) = rig.publish_build("old:old-upshift");
    let reason = rig.wait_rejected(&identity);
    rig.expect(
        reason.contains("handover"),
        format!("the refusal does not say why: {reason}"),
    );
    rig.assert_untouched(
        traffic,
        "after refusing a release that cannot take over the master",
    );
}

#[test]
fn killing_the_master_at_any_point_of_a_reexec_leaves_no_worker_behind() {
    // The fixture's drain timeout bounds how long an orphaned worker may live: it is told by
    // its parent-death signal (SIGTERM) and drains.
    let drain = Duration::from_millis(1500);
    for (round, delay_ms) in [0u64, 2, 5, 10, 20, 40, 80].into_iter().enumerate() {
        let mut rig = Rig::new(&format!("reexec-kill-{round}"));
        rig.start(&["--drain-timeout-ms", "1500"]);
        let master = rig.m().pid();
        rig.deploy_build(&format!("k{round}"));
        rig.m().signal(Signal::SIGUSR2);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let workers = rig.m().live_descendants_seen();
        signal(master, Signal::SIGKILL);
        let started = Instant::now();
        let gone = wait_until(drain + Duration::from_secs(5), || {
            rig.m().live_descendants_seen().is_empty()
        });
        rig.expect(
            gone,
            format!(
                "round {round} (kill after {delay_ms} ms): workers {:?} outlived the master by {:?}",
                rig.m().live_descendants_seen(),
                started.elapsed()
            ),
        );
        let _ = workers;
    }
}

#[test]
fn a_release_whose_configuration_does_not_load_is_refused_at_its_test_run() {
    let mut rig = Rig::new("reexec-bad-config");
    rig.start(&[]);
    let traffic = rig.watch();
    let (identity, _) = rig.publish_build("v2:also-listen=nonsense");
    let reason = rig.wait_rejected(&identity);
    rig.expect(
        reason.contains("failed its test run"),
        format!("unexpected reason: {reason}"),
    );
    rig.wait_log("its configuration does not load", VERDICT);
    rig.assert_untouched(
        traffic,
        "after refusing a release whose configuration does not load",
    );
}

#[test]
fn a_new_image_that_cannot_take_over_keeps_the_workers_serving_in_wait_only_mode() {
    let mut rig = Rig::new("reexec-wait-only");
    rig.start(&[]);
    let master = rig.m().pid();
    // The release asks for an address that is taken: its configuration loads, binding fails.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let traffic = rig.watch();
    rig.publish_build(&format!("v2:also-listen=127.0.0.1:{port}"));
    let worker = rig.wait_build("v2", VERDICT);
    rig.wait_log("Wait-only mode", REEXEC);
    std::thread::sleep(HOLD);
    let seen = traffic.stop();
    assert_none_failed(&rig, &seen);
    rig.expect(
        rig.serving().map(|(pid, _)| pid) == Some(worker),
        "the worker stopped serving when the new image could not take over",
    );
    rig.assert_master_alive("in wait-only mode");
    rig.expect(rig.m().pid() == master, "the master's pid changed");

    rig.m().signal(Signal::SIGTERM);
    let status = rig.m_mut().wait_exit(Duration::from_secs(20));
    rig.expect(
        status.is_some_and(|s| s.code() == Some(1)),
        format!("wait-only mode should exit 1 once its workers are gone, got {status:?}"),
    );
    rig.expect(!is_alive(worker), "the worker outlived the master");
    drop(taken);
}

#[test]
fn a_stop_signal_sent_during_the_reexec_is_handled_by_the_new_image() {
    for (round, delay_ms) in [0u64, 1, 3, 6, 12, 25].into_iter().enumerate() {
        let mut rig = Rig::new(&format!("reexec-stop-{round}"));
        rig.start(&["--drain-timeout-ms", "3000"]);
        rig.deploy_build(&format!("s{round}"));
        rig.m().signal(Signal::SIGUSR2);
        std::thread::sleep(Duration::from_millis(delay_ms));
        rig.m().signal(Signal::SIGTERM);
        let status = rig.m_mut().wait_exit(Duration::from_secs(30));
        rig.expect(
            status.is_some_and(|s| s.code() == Some(0)),
            format!(
                "round {round} (SIGTERM {delay_ms} ms after SIGUSR2): the master should drain \
                 and exit 0, got {status:?}"
            ),
        );
        rig.expect(
            rig.m().live_descendants_seen().is_empty(),
            format!("round {round}: workers outlived the master"),
        );
    }
}

#[test]
fn a_release_refused_before_the_reexec_stays_refused_after_it() {
    let mut rig = Rig::new("reexec-refusals");
    rig.start(&[]);
    let (identity, _) = rig.publish_build("bad:exit-at-start");
    rig.wait_rejected(&identity);
    // The master becomes a new build while the refused release still sits at `next`.
    rig.deploy_build("v2");
    rig.m().signal(Signal::SIGUSR2);
    wait_master_build(&rig, "v2", REEXEC);
    // The new image's File fetcher looks at `next` at once, and again every second.
    std::thread::sleep(Duration::from_secs(3));
    let verdicts = log_lines_with(rig.m(), &format!("release {identity} rejected: "));
    rig.expect(
        verdicts.len() == 1,
        format!("the refused release was refused again after the re-exec: {verdicts:?}"),
    );
    rig.expect(
        log_lines_with(rig.m(), "staged a release").len() == 1,
        "the new image staged the refused release again",
    );
}

#[test]
fn a_listener_the_release_no_longer_names_is_closed_once_its_worker_has_drained() {
    let mut rig = Rig::new("reexec-drop-listener");
    let (second, second_addr) = free_tcp_addr();
    rig.start(&["--listen", &second]);
    rig.expect(
        get_timeout(&second_addr, "/", Duration::from_secs(5)).is_ok(),
        "the second listener does not serve at first",
    );
    let traffic = rig.watch();
    rig.publish_build("v2:only-first-listen");
    let proven_worker = rig.wait_build("v2", VERDICT);
    wait_master_build(&rig, "v2", REEXEC);
    // The new image restarts the worker without the dropped listener; once the worker that
    // held it has drained, nothing accepts there any more.
    let replaced = wait_until(REEXEC, || {
        rig.serving().is_some_and(|(pid, _)| pid != proven_worker) && !is_alive(proven_worker)
    });
    rig.expect(
        replaced,
        "the worker holding the dropped listener was not replaced",
    );
    let closed = wait_until(Duration::from_secs(10), || connect_refused(&second_addr));
    let seen = traffic.stop();
    rig.expect(closed, format!("{second} still accepts connections"));
    assert_none_failed(&rig, &seen);
    rig.wait_log("listeners removed", REEXEC);
}
