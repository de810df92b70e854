//! The process model, with real processes: a master with a stable pid supervising fixture workers
//! (`examples/fixture.rs`), restarts, failed upgrades, crashes, signals, and the worker's inherited
//! environment. The load tests are in `tests/zero_downtime.rs`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const START: Duration = Duration::from_secs(15);
const RESTART: Duration = Duration::from_secs(15);

/// Starts the fixture listening on a free loopback port and waits until it serves.
fn start(extra: &[&str]) -> (Master, Addr, u32) {
    let (listen, addr) = free_tcp_addr();
    let mut args = vec!["--listen", listen.as_str()];
    args.extend_from_slice(extra);
    let mut master = Master::fixture(&args);
    let first = master.wait_serving(&addr, START);
    let pid = first
        .pid()
        .unwrap_or_else(|| master.fail(format!("no pid in {:?}", first.body)));
    (master, addr, pid)
}

fn write_behavior(path: &std::path::Path, behavior: &str) {
    // Write then rename, so a worker starting at that moment never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, behavior).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// For `period`, every `GET /` must be answered 200 by `pid`, and the master must stay up.
fn assert_keeps_serving(master: &mut Master, addr: &Addr, pid: u32, period: Duration, why: &str) {
    let deadline = Instant::now() + period;
    let mut n = 0;
    while Instant::now() < deadline {
        if let Some(st) = master.try_exit() {
            master.fail(format!("{why}: the master exited ({st}) after {n} checks"));
        }
        match get(addr, "/") {
            Ok(r) if r.status == 200 && r.pid() == Some(pid) => {}
            Ok(r) => master.fail(format!(
                "{why}: expected worker {pid} to keep serving, got status {} body {:?} after {n} checks",
                r.status, r.body
            )),
            Err(e) => master.fail(format!("{why}: GET / failed after {n} checks: {e}")),
        }
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn master_supervises_a_worker_child() {
    let (mut master, addr, pid) = start(&[]);
    assert_ne!(
        pid,
        master.pid(),
        "the master itself is serving: no worker was started"
    );
    let stat = proc_stat(pid).unwrap_or_else(|| master.fail(format!("worker {pid} not in /proc")));
    assert_eq!(
        stat.ppid,
        master.pid(),
        "the serving process is not a child of the master"
    );
    let r = get(&addr, "/").unwrap();
    assert_eq!(
        r.generation(),
        Some(1),
        "first worker's generation: {:?}",
        r.body
    );
    let enabled = get(&addr, "/enabled").unwrap();
    assert_eq!((enabled.status, enabled.body.as_str()), (200, "true"));
    assert!(master.is_running());
}

#[test]
fn fifty_restarts_keep_the_master_pid_and_leak_nothing() {
    let (mut master, addr, first) = start(&[]);
    let master_pid = master.pid();
    // Let the master settle after starting its first worker, then take its descriptor count.
    std::thread::sleep(Duration::from_millis(300));
    let baseline_fds = fd_count(master_pid);
    let baseline_listing = fd_listing(master_pid);

    let mut pids = vec![first];
    let mut current = first;
    for i in 0..50 {
        master.signal(Signal::SIGUSR2);
        let next = master.wait_pid_not_in(&addr, &pids, RESTART);
        let stat = proc_stat(next);
        if stat.map(|s| s.ppid) != Some(master_pid) {
            master.fail(format!(
                "restart {i}: worker {next} is not a child of master {master_pid}: {stat:?}"
            ));
        }
        if !master.is_running() {
            master.fail(format!("restart {i}: the master exited"));
        }
        pids.push(next);
        current = next;
    }
    // Drains finish (idle workers drain at once): exactly one live worker child, the current one.
    if !wait_until(Duration::from_secs(15), || {
        master.live_children() == vec![current]
    }) {
        master.fail(format!(
            "after 50 restarts the master's live children are {:?}, expected only {current}",
            master.live_children()
        ));
    }
    let last = get(&addr, "/").unwrap();
    assert_eq!(last.pid(), Some(current));
    assert_eq!(
        last.generation(),
        Some(51),
        "generation after 50 restarts: {:?}",
        last.body
    );

    if !wait_until(Duration::from_secs(5), || {
        zombie_children_of(master_pid).is_empty()
    }) {
        master.fail(format!(
            "zombie children of the master: {:?}",
            zombie_children_of(master_pid)
        ));
    }
    if !wait_until(Duration::from_secs(5), || {
        fd_count(master_pid) == baseline_fds
    }) {
        master.fail(format!(
            "master fd count {} after 50 restarts, {} after the first worker\nbefore: {:?}\nafter: {:?}",
            fd_count(master_pid),
            baseline_fds,
            baseline_listing,
            fd_listing(master_pid)
        ));
    }
    assert!(master.is_running());
    assert_eq!(master.pid(), master_pid);
}

#[test]
fn worker_exiting_before_ready_leaves_the_old_worker_serving() {
    let dir = TestDir::new("exit");
    let behavior = dir.join("behavior");
    let starts = dir.join("starts");
    let (behavior_arg, starts_arg) = (behavior.display().to_string(), starts.display().to_string());
    let (mut master, addr, old) = start(&[
        "--behavior-file",
        &behavior_arg,
        "--starts-file",
        &starts_arg,
    ]);

    write_behavior(&behavior, "exit");
    master.signal(Signal::SIGUSR2);
    let failed = wait_for(Duration::from_secs(5), || {
        read_starts(&starts)
            .into_iter()
            .find(|(_, _, b)| b == "Exit")
            .map(|(pid, _, _)| pid)
    })
    .unwrap_or_else(|| {
        master.fail(format!(
            "SIGUSR2 did not start a new worker: starts {:?}",
            read_starts(&starts)
        ))
    });
    assert_keeps_serving(
        &mut master,
        &addr,
        old,
        Duration::from_secs(2),
        "after a worker exited before ready",
    );
    assert!(!is_alive(failed), "the worker that exited is still alive");
    assert!(is_alive(old), "the old worker died");

    write_behavior(&behavior, "ok");
    let new = master.restart(&addr, old, RESTART);
    assert_ne!(new, old);
    assert_eq!(proc_stat(new).map(|s| s.ppid), Some(master.pid()));
    assert!(master.is_running());
}

#[test]
fn never_ready_worker_is_killed_after_the_ready_timeout() {
    let dir = TestDir::new("never");
    let behavior = dir.join("behavior");
    let starts = dir.join("starts");
    let (behavior_arg, starts_arg) = (behavior.display().to_string(), starts.display().to_string());
    let (mut master, addr, old) = start(&[
        "--behavior-file",
        &behavior_arg,
        "--starts-file",
        &starts_arg,
        "--ready-timeout-ms",
        "1000",
    ]);

    write_behavior(&behavior, "never-ready");
    master.signal(Signal::SIGUSR2);
    let laggard = wait_for(Duration::from_secs(5), || {
        read_starts(&starts)
            .into_iter()
            .find(|(_, _, b)| b == "NeverReady")
            .map(|(pid, _, _)| pid)
    })
    .unwrap_or_else(|| master.fail("SIGUSR2 did not start a new worker"));

    // The ready timeout is 1 s: the old worker serves throughout, and after.
    assert_keeps_serving(
        &mut master,
        &addr,
        old,
        Duration::from_millis(2500),
        "while a worker never got ready",
    );
    if !wait_until(Duration::from_secs(5), || !is_alive(laggard)) {
        master.fail(format!("the never-ready worker {laggard} is still alive 7.5 s after SIGUSR2 (ready timeout 1 s)"));
    }
    assert_keeps_serving(
        &mut master,
        &addr,
        old,
        Duration::from_millis(300),
        "after the never-ready worker was killed",
    );

    write_behavior(&behavior, "ok");
    let new = master.restart(&addr, old, RESTART);
    assert_ne!(new, laggard);
    assert!(master.is_running());
}

#[test]
fn crashed_worker_is_replaced_without_a_restart_signal() {
    let (mut master, addr, old) = start(&["--backoff-ms", "100"]);
    signal(old, Signal::SIGKILL);
    let new = master.wait_new_pid(&addr, old, Duration::from_secs(10));
    assert_eq!(
        proc_stat(new).map(|s| s.ppid),
        Some(master.pid()),
        "replacement is not the master's child"
    );
    assert!(
        master.is_running(),
        "the master exited after its worker crashed"
    );
    assert!(!is_alive(old));
}

#[test]
fn crash_looping_worker_is_restarted_with_exponential_backoff() {
    let dir = TestDir::new("loop");
    let behavior = dir.join("behavior");
    let starts = dir.join("starts");
    let (behavior_arg, starts_arg) = (behavior.display().to_string(), starts.display().to_string());
    let (mut master, addr, old) = start(&[
        "--behavior-file",
        &behavior_arg,
        "--starts-file",
        &starts_arg,
        "--backoff-ms",
        "300",
    ]);

    // Every new worker aborts as soon as it is ready.
    write_behavior(&behavior, "crash-after-ready 0");
    signal(old, Signal::SIGKILL);
    let window = Duration::from_secs(4);
    std::thread::sleep(window);
    let crashing: Vec<u32> = read_starts(&starts)
        .into_iter()
        .filter(|(_, _, b)| b.starts_with("CrashAfterReady"))
        .map(|(pid, _, _)| pid)
        .collect();
    eprintln!("crash-looping workers started in {window:?}: {crashing:?}");
    if !master.is_running() {
        master.fail("the master exited while its workers crash-looped");
    }
    // Backoff 300, 600, 1200, 2400 ms: about 4 starts in 4 s. A fixed 300 ms delay would give ~12,
    // no delay at all hundreds.
    if crashing.len() < 2 || crashing.len() > 7 {
        master.fail(format!(
            "{} workers started in {window:?} of crash-looping with min backoff 300 ms (expected 2..=7): {crashing:?}",
            crashing.len()
        ));
    }

    write_behavior(&behavior, "ok");
    // The next start may be a few seconds away (backoff up to 6 s by now).
    let healthy = master.wait_serving(&addr, Duration::from_secs(20));
    let pid = healthy.pid().unwrap();
    assert!(!crashing.contains(&pid));
    assert_keeps_serving(
        &mut master,
        &addr,
        pid,
        Duration::from_millis(500),
        "after the crash loop ended",
    );
}

#[test]
fn sigterm_drains_the_in_flight_request_and_the_master_exits_zero() {
    let (mut master, addr, worker) = start(&[]);
    let inflight = get_in_thread(&addr, "/sleep?ms=1000", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(300));
    master.signal(Signal::SIGTERM);

    let resp = inflight.join().unwrap();
    match resp {
        Ok(r) if r.status == 200 && r.pid() == Some(worker) => {}
        Ok(r) => master.fail(format!(
            "in-flight request during SIGTERM: status {} body {:?}",
            r.status, r.body
        )),
        Err(e) => master.fail(format!("in-flight request during SIGTERM failed: {e}")),
    }
    let status = master
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| master.fail("the master did not exit within 10 s of SIGTERM"));
    if status.code() != Some(0) {
        master.fail(format!(
            "the master exited with {status} after a clean drain, expected 0"
        ));
    }
    if !wait_until(Duration::from_secs(5), || {
        master.live_descendants_seen().is_empty()
    }) {
        master.fail(format!(
            "workers still alive after the master exited: {:?}",
            master.live_descendants_seen()
        ));
    }
    assert!(
        connect_refused(&addr),
        "the port still accepts after the master exited"
    );
}

#[test]
fn sigkill_of_the_master_stops_its_workers() {
    let (mut master, addr, worker) = start(&[]);
    master.signal(Signal::SIGKILL);
    master
        .wait_exit(Duration::from_secs(5))
        .expect("SIGKILLed master did not exit");
    if !wait_until(Duration::from_secs(5), || !is_alive(worker)) {
        master.fail(format!(
            "worker {worker} still alive 5 s after its master was SIGKILLed"
        ));
    }
    if !wait_until(Duration::from_secs(5), || {
        master.live_descendants_seen().is_empty()
    }) {
        master.fail(format!(
            "processes left after the master was SIGKILLed: {:?}",
            master.live_descendants_seen()
        ));
    }
    if !wait_until(Duration::from_secs(5), || connect_refused(&addr)) {
        master.fail(format!(
            "{addr} still accepts connections after the master and its workers died"
        ));
    }
}

fn check_worker_environment(master: &Master, addr: &Addr, label: &str) {
    let env = get(addr, "/env").unwrap();
    assert_eq!(env.status, 200);
    if !env.body.trim().is_empty() {
        master.fail(format!(
            "{label}: UPSHIFT_ variables visible in the worker:\n{}",
            env.body
        ));
    }
    let fds = get(addr, "/fds").unwrap();
    assert_eq!(fds.status, 200);
    let mut checked = 0;
    for line in fds.body.lines() {
        let (fd, flag) = line
            .split_once(" cloexec=")
            .unwrap_or_else(|| master.fail(format!("{label}: bad /fds line {line:?}")));
        let fd: i32 = fd.parse().unwrap();
        if fd >= 3 {
            checked += 1;
            if !flag.starts_with('1') {
                master.fail(format!(
                    "{label}: fd {fd} in the worker is not close-on-exec:\n{}",
                    fds.body
                ));
            }
        }
    }
    // At least the listener and the socket serving this very request.
    assert!(
        checked >= 2,
        "{label}: implausibly few descriptors: {:?}",
        fds.body
    );
}

#[test]
fn worker_environment_is_scrubbed_and_inherited_fds_are_cloexec() {
    let (master, addr, old) = start(&[]);
    check_worker_environment(&master, &addr, "first worker");
    master.restart(&addr, old, RESTART);
    check_worker_environment(&master, &addr, "second worker");
}

/// The link target of each descriptor in a worker's `/fds` listing (`<fd> cloexec=<0|1> <target>`).
fn worker_fd_targets(master: &Master, addr: &Addr, label: &str) -> Vec<(i32, String)> {
    let fds = get(addr, "/fds").unwrap();
    assert_eq!(fds.status, 200, "{label}: /fds: {:?}", fds.body);
    fds.body
        .lines()
        .map(|line| {
            let mut words = line.splitn(3, ' ');
            let fd = words.next().and_then(|w| w.parse().ok());
            let flag = words.next().filter(|w| w.starts_with("cloexec="));
            match (fd, flag, words.next()) {
                (Some(fd), Some(_), Some(target)) => (fd, target.to_string()),
                _ => master.fail(format!("{label}: bad /fds line {line:?}")),
            }
        })
        .collect()
}

#[test]
fn descriptors_the_master_inherited_without_cloexec_do_not_reach_workers() {
    const STRAY_FD: i32 = 42;
    let dir = TestDir::new("stray");
    let stray_path = dir.join("stray");
    let stray = std::fs::File::create(&stray_path).unwrap();
    // What /proc shows as the link target of a descriptor open on that file.
    let stray_target = stray_path.canonicalize().unwrap().display().to_string();

    let (listen, addr) = free_tcp_addr();
    let mut master = Master::spawn_with_extra_fds(
        &fixture_path(),
        &["--listen", &listen],
        &[],
        &[ExtraFd {
            source: std::os::fd::AsFd::as_fd(&stray),
            target: STRAY_FD,
        }],
    );
    let first = master.wait_serving(&addr, START);
    let old = first
        .pid()
        .unwrap_or_else(|| master.fail(format!("no pid in {:?}", first.body)));

    // The master got the stray descriptor across its own exec, so it was not close-on-exec there:
    // only upshift's own handoff can keep it from the workers.
    let in_master = std::fs::read_link(format!("/proc/{}/fd/{STRAY_FD}", master.pid()));
    match in_master {
        Ok(t) if t.display().to_string() == stray_target => {}
        other => master.fail(format!(
            "the master should hold fd {STRAY_FD} -> {stray_target}, found {other:?}; its fds: {:?}",
            fd_listing(master.pid())
        )),
    }

    let check = |label: &str, expected_gen: u32| {
        let r = get(&addr, "/").unwrap();
        assert_eq!(r.generation(), Some(expected_gen), "{label}: {:?}", r.body);
        let targets = worker_fd_targets(&master, &addr, label);
        // The listing is not vacuous: the listener and this request's socket are in it.
        assert!(
            targets.iter().filter(|(fd, _)| *fd >= 3).count() >= 2,
            "{label}: implausibly few descriptors: {targets:?}"
        );
        if let Some((fd, _)) = targets.iter().find(|(_, t)| *t == stray_target) {
            master.fail(format!(
                "{label}: the master's stray fd {STRAY_FD} reached the worker as fd {fd}: {targets:?}"
            ));
        }
    };
    check("first worker", 1);
    master.restart(&addr, old, RESTART);
    check("second worker", 2);
    assert!(master.is_running());
}

#[test]
fn upshift_disable_serves_in_process() {
    let (listen, addr) = free_tcp_addr();
    let mut server = Master::spawn(
        &fixture_path(),
        &["--listen", &listen],
        &[("UPSHIFT_DISABLE", "1")],
    );
    let r = server.wait_serving(&addr, START);
    assert_eq!(
        r.pid(),
        Some(server.pid()),
        "with UPSHIFT_DISABLE=1 the spawned process itself must serve: {:?}",
        r.body
    );
    assert_eq!(r.generation(), Some(0));
    let enabled = get(&addr, "/enabled").unwrap();
    assert_eq!(enabled.body, "false");
    assert!(
        server.live_children().is_empty(),
        "disabled mode started children: {:?}",
        server.live_children()
    );
}

#[test]
fn restart_reexecutes_through_a_flipped_release_symlink() {
    let dir = TestDir::new("sym");
    for v in ["v1", "v2"] {
        let d = dir.join(&format!("releases/{v}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(fixture_path(), d.join("fixture")).unwrap();
    }
    let current = dir.join("current");
    std::os::unix::fs::symlink("releases/v1", &current).unwrap();
    let program = current.join("fixture");

    let (listen, addr) = free_tcp_addr();
    let mut master = Master::spawn(&program, &["--listen", &listen], &[]);
    let r = master.wait_serving(&addr, START);
    let v1 = dir.join("releases/v1/fixture").canonicalize().unwrap();
    let v2 = dir.join("releases/v2/fixture").canonicalize().unwrap();
    assert_eq!(
        r.exe(),
        Some(v1.to_str().unwrap()),
        "first worker should run v1: {:?}",
        r.body
    );
    let old = r.pid().unwrap();

    // Flip atomically: a new link renamed over the old one.
    let next = dir.join("current.next");
    std::os::unix::fs::symlink("releases/v2", &next).unwrap();
    std::fs::rename(&next, &current).unwrap();

    let new = master.restart(&addr, old, RESTART);
    // The old worker accepts until the new one is ready and it is told to drain: under load, the
    // next request may still reach it. Once it has exited, only the new one answers.
    let drained = wait_until(RESTART, || !is_alive(old));
    assert!(drained, "the old worker {old} never exited");
    let r = get(&addr, "/").unwrap();
    assert_eq!(r.pid(), Some(new));
    if r.exe() != Some(v2.to_str().unwrap()) {
        master.fail(format!(
            "after flipping current -> v2 and SIGUSR2 the worker runs {:?}, expected {}",
            r.exe(),
            v2.display()
        ));
    }
    assert_eq!(
        proc_stat(new).map(|s| s.ppid),
        Some(master.pid()),
        "master pid changed"
    );
    assert!(master.is_running());
}

/// Most programs never handle SIGHUP, SIGUSR1 or SIGUSR2, whose default action kills: a logrotate
/// `kill -HUP <master>` must not take the serving worker down with its connections. The fixture
/// here does not listen on `State::signals`; upshift catches the signals for it and says so.
#[test]
fn forwarded_signals_do_not_kill_a_worker_that_does_not_listen_for_them() {
    let (mut master, addr, worker) = start(&["--no-signal-stream"]);
    for sig in [Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGWINCH] {
        let inflight = get_in_thread(&addr, "/sleep?ms=600", Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(150));
        let logged_before = master
            .log_contents()
            .matches("does not listen for it")
            .count();
        master.signal(sig);
        match inflight.join().unwrap() {
            Ok(r) if r.status == 200 && r.pid() == Some(worker) => {}
            Ok(r) => master.fail(format!(
                "the request in flight during {sig}: status {} body {:?}, expected 200 from {worker}",
                r.status, r.body
            )),
            Err(e) => master.fail(format!("the request in flight during {sig} failed: {e}")),
        }
        if !wait_until(Duration::from_secs(5), || {
            master
                .log_contents()
                .matches("does not listen for it")
                .count()
                > logged_before
        }) {
            master.fail(format!("the worker did not log that it ignored {sig}"));
        }
        assert_keeps_serving(
            &mut master,
            &addr,
            worker,
            Duration::from_millis(200),
            &format!("after {sig}"),
        );
    }
    let hups = get(&addr, "/hups").map(|r| r.body.trim().to_string());
    assert_eq!(
        hups.ok().as_deref(),
        Some("0"),
        "the fixture was told not to listen"
    );
}

#[test]
fn sighup_and_sigusr1_are_forwarded_to_the_worker() {
    let (mut master, addr, worker) = start(&[]);
    let count = |path: &str| {
        get(&addr, path)
            .ok()
            .and_then(|r| r.body.trim().parse::<u64>().ok())
    };
    assert_eq!(count("/hups"), Some(0));

    master.signal(Signal::SIGHUP);
    if !wait_until(Duration::from_secs(5), || count("/hups") == Some(1)) {
        master.fail(format!(
            "the worker did not get the SIGHUP sent to the master: /hups = {:?}",
            count("/hups")
        ));
    }
    master.signal(Signal::SIGUSR1);
    if !wait_until(Duration::from_secs(5), || count("/usr1s") == Some(1)) {
        master.fail(format!(
            "the worker did not get the SIGUSR1 sent to the master: /usr1s = {:?}",
            count("/usr1s")
        ));
    }
    // Forwarding is not a restart, and the master handled neither signal by dying.
    assert_keeps_serving(
        &mut master,
        &addr,
        worker,
        Duration::from_millis(300),
        "after SIGHUP and SIGUSR1",
    );
    assert_eq!(count("/hups"), Some(1));
}
