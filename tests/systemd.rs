//! Running under systemd, for real but without systemd: the test plays the service manager.
//!
//! - Notifications: the test binds the notification socket (a path, or an abstract `@name`), starts
//!   the fixture's master with `NOTIFY_SOCKET`, and reads what it says, with the sender's pid from
//!   `SCM_CREDENTIALS` (systemd's `NotifyAccess=main` drops anything the main pid did not send),
//!   across start, a SIGUSR2 restart, a failed restart, a release and SIGTERM.
//! - Socket activation: listening sockets the master did not bind, passed at fds 3.. with
//!   `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` by `systemd-socket-activate` or by the test itself
//!   (`sh -c 'LISTEN_PID=$$ exec ...'`, the descriptors placed before exec), served across restarts.

mod common;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const START: Duration = Duration::from_secs(15);
const STEP: Duration = Duration::from_secs(20);

fn fds_of(pid: u32) -> Vec<String> {
    fd_listing(pid).into_values().collect()
}

/// What the worker serving on `addr` has at descriptor `fd` (from its `/fds`). That the worker
/// has the passed socket at fd 3 at all shows the handoff did not `dup2(3, 3)`, which would have
/// left it close-on-exec and closed across exec. (The worker then sets close-on-exec itself.)
fn worker_fd(master: &Master, addr: &Addr, fd: u32) -> String {
    let r = get(addr, "/fds").unwrap_or_else(|e| master.fail(format!("GET /fds: {e}")));
    let line = r
        .body
        .lines()
        .find(|l| l.split_whitespace().next() == Some(fd.to_string().as_str()))
        .unwrap_or_else(|| master.fail(format!("the worker has no fd {fd}: {}", r.body)));
    line.split_whitespace().nth(2).unwrap_or("").to_string()
}

fn assert_env_clean(master: &Master, pid: u32, who: &str) {
    let names = environ_names(pid);
    let leaked: Vec<&String> = names
        .iter()
        .filter(|n| n.as_str() == "NOTIFY_SOCKET" || n.starts_with("LISTEN_"))
        .collect();
    if !leaked.is_empty() {
        master.fail(format!("{who} {pid} was started with {leaked:?}"));
    }
}

#[test]
fn notify_socket_hears_start_restart_failed_restart_and_stop() {
    let dir = TestDir::new("sd-notify");
    let socket = dir.join("notify");
    let sd = NotifyListener::bind(&socket);
    let behavior = dir.join("behavior");
    let (listen, addr) = free_tcp_addr();
    let behavior_arg = behavior.display().to_string();
    let args = ["--listen", &listen, "--behavior-file", &behavior_arg];
    let socket_env = socket.display().to_string();
    let mut master = Master::spawn(
        &fixture_path(),
        &args,
        &[("NOTIFY_SOCKET", socket_env.as_str())],
    );
    let main_pid = master.pid() as i32;
    let first = master.wait_serving(&addr, START).pid().unwrap();

    let (i, ready) = sd
        .wait(0, STEP, |n| n.has("READY"))
        .unwrap_or_else(|| master.fail(format!("no READY=1; got {:?}", sd.all())));
    assert_eq!(ready.get("MAINPID"), Some(main_pid.to_string().as_str()));
    assert_eq!(
        ready.status(),
        format!("serving: generation 1 (pid {first})")
    );
    assert_env_clean(&master, first, "the first worker");

    // A restart is a reload: RELOADING=1 stamped with the monotonic clock, then READY=1.
    let before = monotonic_usec();
    master.signal(Signal::SIGUSR2);
    let second = master.wait_new_pid(&addr, first, STEP);
    let (j, reloading) = sd
        .wait(i + 1, STEP, |n| n.has("RELOADING"))
        .unwrap_or_else(|| master.fail(format!("no RELOADING=1; got {:?}", sd.all())));
    let stamp: u128 = reloading.get("MONOTONIC_USEC").unwrap().parse().unwrap();
    assert!(
        before <= stamp && stamp <= monotonic_usec(),
        "MONOTONIC_USEC={stamp}"
    );
    assert!(reloading.has("EXTEND_TIMEOUT_USEC"), "{reloading:?}");
    let (k, ready) = sd
        .wait(j + 1, STEP, |n| n.has("READY"))
        .unwrap_or_else(|| master.fail(format!("no READY=1 after the restart: {:?}", sd.all())));
    assert!(!ready.has("MAINPID"), "{ready:?}");
    assert_eq!(
        ready.status(),
        format!("serving: generation 2 (pid {second})")
    );
    assert_env_clean(&master, second, "the second worker");

    // A restart whose worker dies before ready: the reload ends, the old worker keeps serving.
    std::fs::write(&behavior, "exit").unwrap();
    master.signal(Signal::SIGUSR2);
    let (l, _) = sd
        .wait(k + 1, STEP, |n| n.has("RELOADING"))
        .unwrap_or_else(|| master.fail("no RELOADING=1 for the failed restart"));
    let (m, failed) = sd
        .wait(l + 1, STEP, |n| n.has("READY"))
        .unwrap_or_else(|| master.fail(format!("no READY=1 after the failure: {:?}", sd.all())));
    assert!(
        failed
            .status()
            .starts_with("restart failed: exited before it was ready")
            && failed.status().ends_with("generation 2 keeps serving"),
        "{failed:?}"
    );
    assert_eq!(master.serving_pid(&addr), second);

    master.signal(Signal::SIGTERM);
    let status = master
        .wait_exit(STEP)
        .unwrap_or_else(|| master.fail("the master did not exit after SIGTERM"));
    assert!(status.success(), "exit status {status}");
    let (_, stopping) = sd
        .wait(m + 1, STEP, |n| n.has("STOPPING"))
        .unwrap_or_else(|| master.fail(format!("no STOPPING=1: {:?}", sd.all())));
    assert!(stopping.has("EXTEND_TIMEOUT_USEC"), "{stopping:?}");

    let all = sd.all();
    let states: Vec<&str> = all
        .iter()
        .filter_map(|n| {
            ["READY", "RELOADING", "STOPPING"]
                .into_iter()
                .find(|k| n.has(k))
        })
        .collect();
    assert_eq!(
        states,
        [
            "READY",
            "RELOADING",
            "READY",
            "RELOADING",
            "READY",
            "STOPPING"
        ],
        "{all:#?}"
    );
    let strangers: Vec<&Notification> = all.iter().filter(|n| n.sender != Some(main_pid)).collect();
    assert!(
        strangers.is_empty(),
        "sent by another pid than the master's: {strangers:#?}"
    );
}

#[test]
fn abstract_notify_socket() {
    let name = format!("upshift-test-notify-{}", std::process::id());
    let sd = NotifyListener::bind_abstract(&name);
    let (listen, addr) = free_tcp_addr();
    let target = format!("@{name}");
    let mut master = Master::spawn(
        &fixture_path(),
        &["--listen", &listen],
        &[("NOTIFY_SOCKET", target.as_str())],
    );
    master.wait_serving(&addr, START);
    let (i, _) = sd
        .wait(0, STEP, |n| n.has("READY"))
        .unwrap_or_else(|| master.fail("no READY=1 on the abstract socket"));
    master.signal(Signal::SIGTERM);
    sd.wait(i + 1, STEP, |n| n.has("STOPPING"))
        .unwrap_or_else(|| master.fail("no STOPPING=1 on the abstract socket"));
    assert!(master.wait_exit(STEP).is_some_and(|s| s.success()));
}

/// A release rig whose master notifies a socket of the test's; returns the rig, the socket's
/// directory (keep it), the listener and the index of the first `READY=1`.
/// Which of `READY=1` and `RELOADING=1` each notification carried, in order.
fn reload_states(notes: &[Notification]) -> Vec<&'static str> {
    notes
        .iter()
        .filter_map(|n| ["READY", "RELOADING"].into_iter().find(|k| n.has(k)))
        .collect()
}

fn rig_notified(tag: &str) -> (Rig, TestDir, NotifyListener, usize) {
    let mut rig = Rig::new(tag);
    let dir = TestDir::new(&format!("{tag}-sock"));
    let socket = dir.join("notify");
    let sd = NotifyListener::bind(&socket);
    let socket_env = socket.display().to_string();
    rig.start_with(&[], &[("NOTIFY_SOCKET", socket_env.as_str())], None);
    let (i, _) = sd
        .wait(0, STEP, |n| n.has("READY"))
        .unwrap_or_else(|| rig.fail("no READY=1"));
    (rig, dir, sd, i)
}

#[test]
fn a_release_is_a_reload_with_its_phases_in_the_status() {
    let (rig, _dir, sd, i) = rig_notified("sd-release");

    let (identity, _) = rig.publish_build("v2");
    rig.wait_log(&format!("release {identity} is serving"), VERDICT);
    let (_, serving) = sd
        .wait(i + 1, STEP, |n| n.status().contains("(on probation)"))
        .unwrap_or_else(|| rig.fail(format!("no probation status: {:#?}", sd.all())));
    let all = sd.all();
    let statuses: Vec<&str> = all[i + 1..].iter().map(Notification::status).collect();
    let position = |needle: &str| {
        statuses
            .iter()
            .position(|s| s.contains(needle))
            .unwrap_or_else(|| rig.fail(format!("no status with {needle:?}: {statuses:#?}")))
    };
    let phases = [
        position("downloading release"),
        position("test-running release"),
        position("installing release"),
        position("handing off to release"),
        position("serving: generation 2"),
    ];
    assert!(phases.windows(2).all(|w| w[0] < w[1]), "{statuses:#?}");
    let states = reload_states(&all[i + 1..]);
    assert_eq!(states, ["RELOADING", "READY"], "{all:#?}");
    assert!(
        all[i + 1..]
            .iter()
            .any(|n| n.status().starts_with("test-running") && n.has("EXTEND_TIMEOUT_USEC")),
        "{all:#?}"
    );
    assert!(serving.status().contains(&identity), "{serving:?}");
}

#[test]
fn a_failed_test_run_is_a_short_status_line_without_its_stderr() {
    let (rig, _dir, sd, i) = rig_notified("sd-testrun");

    // The build writes a line to stderr and exits 4 before answering the handshake.
    let mut bytes = std::fs::read(fixture_path()).unwrap();
    bytes.extend_from_slice(b"UPSHIFT-TEST-BUILD:quits:exit-at-start\n");
    let identity = rig.publish(&bytes, None);
    rig.wait_rejected(&identity);
    let (_, rejected) = sd
        .wait(i + 1, STEP, |n| n.status().contains("rejected"))
        .unwrap_or_else(|| rig.fail(format!("no rejected status: {:#?}", sd.all())));
    let status = rejected.status();
    assert!(
        status.contains("failed its test run (exit status: 4)"),
        "{status}"
    );
    // The status is world-readable (`systemctl status`): no word of what the binary wrote.
    assert!(!status.contains("exit-at-start"), "{status}");
    assert!(status.chars().count() <= 300, "{status}");
    rig.wait_log("fixture: stamped exit-at-start", STEP);
}

#[test]
fn systemd_socket_activate_passes_the_socket_and_the_master_binds_none() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let Some(tool) = std::env::split_paths(&path)
        .map(|dir| dir.join("systemd-socket-activate"))
        .find(|candidate| candidate.is_file())
    else {
        upshift_fetcher_conformance::skip::skip_without(
            "systemd-socket-activate",
            "apt-get install systemd",
            None,
        );
        return;
    };
    let tool = tool.as_path();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let addr = Addr::Tcp(listen.parse().unwrap());
    let fixture = fixture_path().display().to_string();
    let mut master = Master::spawn(
        tool,
        &["-l", &listen, "--fdname=web", &fixture, "--listen", &listen],
        &[],
    );
    let pid = master.pid();
    // Until the first connection it is systemd-socket-activate holding the socket at fd 3.
    let passed = wait_for(START, || {
        fd_listing(pid)
            .get(&3)
            .filter(|t| t.starts_with("socket:["))
            .cloned()
    })
    .unwrap_or_else(|| master.fail("systemd-socket-activate opened no socket at fd 3"));

    let first = master.wait_serving(&addr, START).pid().unwrap();
    assert!(
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.ends_with("fixture")),
        "the master is the exec'd fixture, same pid"
    );
    assert_eq!(
        fd_listing(pid).get(&3),
        Some(&passed),
        "the master keeps the passed socket"
    );
    assert_eq!(
        listening_inodes(port),
        vec![passed.clone()],
        "one listening socket: systemd's"
    );
    assert_eq!(worker_fd(&master, &addr, 3), passed);
    assert_env_clean(&master, first, "the worker");
    assert!(master
        .log_contents()
        .contains("adopting a socket passed by the service manager"));

    let second = master.restart(&addr, first, STEP);
    assert_eq!(worker_fd(&master, &addr, 3), passed);
    assert_eq!(listening_inodes(port), [passed]);
    assert_env_clean(&master, second, "the restarted worker");

    master.signal(Signal::SIGTERM);
    assert!(master.wait_exit(STEP).is_some_and(|s| s.success()));
}

/// A blocking listener moved to a high descriptor, as a supervisor holds it before placing it.
fn listener_at_high_fd() -> (std::net::TcpListener, OwnedFd, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we then own.
    let high = unsafe { libc::fcntl(l.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
    assert!(high >= 100);
    // SAFETY: `high` is a fresh descriptor nobody else owns.
    (l, unsafe { OwnedFd::from_raw_fd(high) }, port)
}

#[test]
fn inherited_sockets_are_matched_by_address_adopted_by_name_and_the_rest_bound() {
    // "web" is configured and passed (matched by address), "extra" is passed but not configured,
    // "admin" is configured but not passed: the master binds only that one.
    let (web, web_fd, web_port) = listener_at_high_fd();
    let (extra, extra_fd, extra_port) = listener_at_high_fd();
    let (admin_listen, admin_addr) = free_tcp_addr();
    let web_listen = format!("127.0.0.1:{web_port}");
    let web_addr = Addr::Tcp(web_listen.parse().unwrap());
    let extra_addr = Addr::Tcp(format!("127.0.0.1:{extra_port}").parse().unwrap());
    let fixture = fixture_path().display().to_string();
    let script = r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#;
    let mut master = Master::spawn_with_extra_fds(
        std::path::Path::new("/bin/sh"),
        &[
            "-c",
            script,
            &fixture,
            "--listen",
            &web_listen,
            "--listen",
            &admin_listen,
        ],
        &[("LISTEN_FDS", "2"), ("LISTEN_FDNAMES", "app.socket:extra")],
        &[
            ExtraFd {
                source: web_fd.as_fd(),
                target: 3,
            },
            ExtraFd {
                source: extra_fd.as_fd(),
                target: 4,
            },
        ],
    );
    let first = master.wait_serving(&web_addr, START).pid().unwrap();
    for a in [&extra_addr, &admin_addr] {
        assert_eq!(master.wait_serving(a, START).pid(), Some(first), "{a}");
    }
    let (web_link, extra_link) = (socket_link(&web), socket_link(&extra));
    let held = fds_of(master.pid());
    assert!(
        held.contains(&web_link) && held.contains(&extra_link),
        "{held:?}"
    );
    let only_web = vec![web_link.clone()];
    assert_eq!(
        listening_inodes(web_port),
        only_web,
        "the master bound no web socket"
    );
    // Configured ones first (web, admin), then the adopted extra.
    assert_eq!(worker_fd(&master, &web_addr, 3), web_link);
    assert_eq!(worker_fd(&master, &web_addr, 5), extra_link);
    assert!(worker_fd(&master, &web_addr, 4).starts_with("socket:["));
    assert_env_clean(&master, first, "the worker");
    let log = master.log_contents();
    assert!(log.contains("bound by the master") && log.contains("no listener was configured for"));

    let second = master.restart(&web_addr, first, STEP);
    for a in [&extra_addr, &admin_addr] {
        assert_eq!(master.serving_pid(a), second, "{a} after the restart");
    }
    assert_eq!(listening_inodes(web_port), [web_link]);
    master.signal(Signal::SIGTERM);
    assert!(master.wait_exit(STEP).is_some_and(|s| s.success()));
}

#[test]
fn after_the_masters_reexec_the_same_pid_goes_on_notifying_and_a_signalled_reload_is_answered() {
    let (rig, _dir, sd, i) = rig_notified("sd-reexec");
    let master = rig.m().pid() as i32;
    // The restart signal, with a new binary on disk: the new image does the restart, and must
    // send the RELOADING=1 that `Type=notify-reload` waits for, then READY=1.
    rig.deploy_build("v2");
    rig.m().signal(Signal::SIGUSR2);
    let (j, reexec) = sd
        .wait(i + 1, STEP, |n| n.status().contains("master re-executed"))
        .unwrap_or_else(|| rig.fail(format!("no re-exec status: {:#?}", sd.all())));
    assert!(
        reexec.status().contains("base -> v2"),
        "{:?}",
        reexec.status()
    );
    assert_eq!(reexec.sender, Some(master), "another process notified");
    sd.wait(j, STEP, |n| n.status().starts_with("serving: generation 2"))
        .unwrap_or_else(|| rig.fail(format!("no serving status after it: {:#?}", sd.all())));
    let all = sd.all();
    let states = reload_states(&all[i + 1..]);
    assert_eq!(states, ["RELOADING", "READY"], "{all:#?}");
    assert!(
        all[i + 1..].iter().all(|n| n.sender == Some(master)),
        "{all:#?}"
    );
}
