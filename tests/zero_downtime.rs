//! Zero downtime under load: restarts while many clients hammer the fixture must lose no request,
//! and traffic must move to the new worker. Heavy tests take a cross-process lock so that they never
//! run at the same time (nextest runs each test in its own process).

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Starts the fixture on the given listen addresses (plus `extra` arguments) and waits until
/// `probe` serves.
fn start(listen: &[&str], extra: &[&str], probe: &Addr) -> (Master, u32) {
    let mut args = Vec::new();
    for l in listen {
        args.push("--listen");
        args.push(l);
    }
    args.extend_from_slice(extra);
    let mut master = Master::fixture(&args);
    let r = master.wait_serving(probe, Duration::from_secs(15));
    let pid = r
        .pid()
        .unwrap_or_else(|| master.fail(format!("no pid in {:?}", r.body)));
    (master, pid)
}

/// Runs `cfg` load, sends `restarts` SIGUSR2s `gap` apart, waits for the last restart to finish, and
/// lets the load run on a while. Asserts: no error of any kind, no non-200, several workers served,
/// and at the end only the final worker serves and the old ones have exited.
fn restarts_under_load(cfg: LoadConfig, restarts: usize, gap: Duration) {
    let _lock = heavy_lock();
    let (listen, addr) = free_tcp_addr();
    let cfg = LoadConfig {
        addr: addr.clone(),
        ..cfg
    };
    let (master, first) = start(&[&listen], &[], &addr);

    let load = start_load(cfg.clone());
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..restarts {
        master.signal(Signal::SIGUSR2);
        std::thread::sleep(gap);
    }
    // The last restart has finished when a fresh connection is answered by a worker that did not
    // exist before the restarts and is the master's newest child.
    let last = wait_for(Duration::from_secs(15), || {
        let pid = get(&addr, "/").ok()?.pid()?;
        let newest = *master.descendants_seen().last()?;
        (pid == newest && pid != first).then_some(pid)
    })
    .unwrap_or_else(|| master.fail("the last restart did not finish within 15 s"));
    std::thread::sleep(Duration::from_millis(300));
    let mark = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    let report = load.stop();
    eprintln!("load report: {}", report.summary());

    let workers: Vec<u32> = master.descendants_seen();
    let mode = if cfg.keep_alive {
        "keep-alive"
    } else {
        "Connection: close"
    };
    if report.errors() > 0 || report.non_200 > 0 {
        master.fail(format!(
            "{mode} load across {restarts} restarts lost requests:\n{}",
            report.summary()
        ));
    }
    if report.ok < 1000 {
        master.fail(format!("implausibly little traffic: {}", report.summary()));
    }
    let served: Vec<u32> = report.per_pid.keys().copied().collect();
    if served.len() < 3 || !served.contains(&first) || !served.contains(&last) {
        master.fail(format!(
            "traffic did not move across workers: served by {served:?}, first {first}, last {last}, all workers {workers:?}\n{}",
            report.summary()
        ));
    }
    let tail = report.pids_serving_since(mark);
    if tail != vec![last] {
        master.fail(format!(
            "in the last second only the newest worker {last} should serve, but {tail:?} did\n{}",
            report.summary()
        ));
    }
    // Old workers finish draining (their clients were told to close) and exit.
    if !wait_until(Duration::from_secs(10), || {
        master.live_children() == vec![last]
    }) {
        master.fail(format!(
            "old workers still alive 10 s after the load stopped: children {:?}, newest {last}",
            master.live_children()
        ));
    }
}

#[test]
fn keep_alive_load_across_five_restarts_loses_nothing() {
    restarts_under_load(
        LoadConfig::new(&Addr::Tcp("127.0.0.1:1".parse().unwrap()), 64, true),
        5,
        Duration::from_millis(400),
    );
}

#[test]
fn connection_close_load_across_five_restarts_loses_nothing() {
    // A new connection per request; a short pause per client keeps the rate (and the TIME_WAIT
    // sockets) within the loopback's ephemeral ports.
    let mut cfg = LoadConfig::new(&Addr::Tcp("127.0.0.1:1".parse().unwrap()), 64, false);
    cfg.pause = Duration::from_millis(10);
    restarts_under_load(cfg, 5, Duration::from_millis(400));
}

#[test]
fn in_flight_request_is_finished_by_the_old_worker() {
    let _lock = heavy_lock();
    let (listen, addr) = free_tcp_addr();
    let (master, old) = start(&[&listen], &[], &addr);

    let inflight = get_in_thread(&addr, "/sleep?ms=1500", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(300));
    let new = master.restart(&addr, old, Duration::from_secs(15));
    assert!(
        is_alive(old),
        "the old worker exited while its request was in flight"
    );

    match inflight.join().unwrap() {
        Ok(r) if r.status == 200 && r.pid() == Some(old) => {}
        Ok(r) => master.fail(format!(
            "in-flight request across a restart: status {} body {:?} (old worker {old}, new {new})",
            r.status, r.body
        )),
        Err(e) => master.fail(format!("in-flight request across a restart failed: {e}")),
    }
    // Its last request done, the old worker exits.
    if !wait_until(Duration::from_secs(10), || !is_alive(old)) {
        master.fail(format!(
            "old worker {old} still alive after its last request finished"
        ));
    }
    assert_eq!(master.serving_pid(&addr), new);
}

#[test]
fn unix_and_tcp_listeners_carry_traffic_across_a_restart() {
    let _lock = heavy_lock();
    let dir = TestDir::new("unix");
    let sock = dir.join("s.sock");
    let sock_arg = sock.display().to_string();
    let (listen, tcp) = free_tcp_addr();
    let unix = Addr::Unix(sock.clone());
    let (master, first) = start(&[&sock_arg, &listen], &[], &tcp);
    let r = get(&unix, "/").unwrap_or_else(|e| master.fail(format!("GET / over {unix}: {e}")));
    assert_eq!(
        r.pid(),
        Some(first),
        "the Unix socket is served by another process: {:?}",
        r.body
    );

    let tcp_load = start_load(LoadConfig::new(&tcp, 16, true));
    let unix_load = start_load(LoadConfig::new(&unix, 16, true));
    std::thread::sleep(Duration::from_millis(400));
    let new = master.restart(&tcp, first, Duration::from_secs(15));
    let on_unix = master.wait_new_pid(&unix, first, Duration::from_secs(5));
    assert_eq!(
        on_unix, new,
        "after the restart TCP and Unix are served by different workers"
    );
    std::thread::sleep(Duration::from_millis(300));
    let mark = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let tcp_report = tcp_load.stop();
    let unix_report = unix_load.stop();
    eprintln!(
        "tcp: {}\nunix: {}",
        tcp_report.summary(),
        unix_report.summary()
    );

    for (name, report) in [("tcp", &tcp_report), ("unix", &unix_report)] {
        if report.errors() > 0 || report.non_200 > 0 || report.ok < 100 {
            master.fail(format!(
                "{name} load across a restart: {}",
                report.summary()
            ));
        }
        if report.pids_serving_since(mark) != vec![new] {
            master.fail(format!(
                "{name}: after the restart only {new} should serve: {}",
                report.summary()
            ));
        }
        if !report.per_pid.contains_key(&first) {
            master.fail(format!(
                "{name}: the first worker never served: {}",
                report.summary()
            ));
        }
    }
    assert!(
        sock.exists(),
        "the socket file disappeared during the restart"
    );
}

#[test]
fn keep_alive_load_with_idle_gaps_across_five_restarts_loses_nothing() {
    // Clients pause between requests, so a drain often finds their connections idle: the server must
    // not close an idle keep-alive connection under a client that is about to send on it.
    let mut cfg = LoadConfig::new(&Addr::Tcp("127.0.0.1:1".parse().unwrap()), 64, true);
    cfg.pause = Duration::from_millis(20);
    restarts_under_load(cfg, 5, Duration::from_millis(400));
}

/// The harness itself: a worker SIGKILLed under load must show up as errors, or the zero-error
/// assertions above prove nothing.
#[test]
fn load_generator_reports_the_errors_of_a_killed_worker() {
    let _lock = heavy_lock();
    let (listen, addr) = free_tcp_addr();
    let (master, first) = start(&[&listen], &["--backoff-ms", "100"], &addr);
    let load = start_load(LoadConfig::new(&addr, 64, true));
    std::thread::sleep(Duration::from_millis(500));
    signal(first, Signal::SIGKILL);
    let second = master.wait_new_pid(&addr, first, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    eprintln!("load report: {}", report.summary());
    if report.errors() == 0 {
        master.fail(format!(
            "SIGKILL of the serving worker under load went unnoticed: {}",
            report.summary()
        ));
    }
    assert!(
        report.per_pid.contains_key(&first) && report.per_pid.contains_key(&second),
        "{}",
        report.summary()
    );
}
