//! The `hello` example (`examples/hello.rs`) is the README's demo, so its interface is a public
//! contract: `--listen ADDR` (repeatable), the answer `hello from <BUILD_ID> pid <worker pid> gen
//! <n>\n`, `GET /sleep?ms=N`, `GET /master` (the master's BUILD_ID and a newline), SIGUSR2
//! restarts, SIGTERM drains and exits 0, a bad flag exits 2 with the usage on stderr. These tests
//! run the dev build of it as a user would.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const START: Duration = Duration::from_secs(15);
const RESTART: Duration = Duration::from_secs(15);

/// One answer of the example, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Greeting {
    /// `BUILD_ID` at compile time: `dev` unless the build set it, so any one token is accepted.
    build_id: String,
    pid: u32,
    generation: u64,
}

/// Parses exactly `hello from <BUILD_ID> pid <pid> gen <n>\n`: single spaces, one trailing newline,
/// decimal digits only (no sign, no padding words).
fn parse_greeting(body: &str) -> Option<Greeting> {
    let line = body.strip_suffix('\n')?;
    let number = |w: &str| -> Option<u64> {
        (!w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))
            .then(|| w.parse().ok())
            .flatten()
    };
    match line.split(' ').collect::<Vec<_>>().as_slice() {
        ["hello", "from", id, "pid", pid, "gen", generation]
            if !id.is_empty() && !id.contains(char::is_whitespace) =>
        {
            Some(Greeting {
                build_id: id.to_string(),
                pid: u32::try_from(number(pid)?).ok()?,
                generation: number(generation)?,
            })
        }
        _ => None,
    }
}

/// `GET path` on a fresh connection, which must answer 200 with a well-formed greeting.
fn greeting(master: &Master, addr: &Addr, path: &str) -> Greeting {
    match get_timeout(addr, path, Duration::from_secs(10)) {
        Ok(r) if r.status == 200 => parse_greeting(&r.body).unwrap_or_else(|| {
            master.fail(format!(
                "GET {path} on {addr}: malformed greeting {:?}",
                r.body
            ))
        }),
        Ok(r) => master.fail(format!(
            "GET {path} on {addr}: status {} body {:?}",
            r.status, r.body
        )),
        Err(e) => master.fail(format!("GET {path} on {addr}: {e}")),
    }
}

/// Polls `GET /` on `addr` until it is answered by a worker other than `old`. A worker told to
/// drain may still accept a connection or two before it has read the order, so one answer from
/// `old` after SIGUSR2 is not a failure.
fn wait_greeting_not_from(master: &Master, addr: &Addr, old: u32, timeout: Duration) -> Greeting {
    let deadline = Instant::now() + timeout;
    loop {
        let g = greeting(master, addr, "/");
        if g.pid != old {
            return g;
        }
        if Instant::now() >= deadline {
            master.fail(format!(
                "{addr} still answered from worker {old} {timeout:?} after SIGUSR2"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Loopback addresses that are free and distinct from each other.
fn free_tcp_addrs(n: usize) -> Vec<(String, Addr)> {
    let mut out: Vec<(String, Addr)> = Vec::new();
    while out.len() < n {
        let candidate = free_tcp_addr();
        if !out.iter().any(|(l, _)| *l == candidate.0) {
            out.push(candidate);
        }
    }
    out
}

/// Starts the example with one `--listen` per address and waits until every address serves.
fn start(addrs: &[(String, Addr)]) -> Master {
    let mut args = Vec::new();
    for (listen, _) in addrs {
        args.extend(["--listen", listen.as_str()]);
    }
    let mut master = Master::spawn(&example_path("hello"), &args, &[]);
    for (_, addr) in addrs {
        master.wait_serving(addr, START);
    }
    master
}

#[test]
fn two_listen_addresses_share_a_worker_and_sigusr2_moves_both_to_generation_2() {
    let addrs = free_tcp_addrs(2);
    let (a, b) = (&addrs[0].1, &addrs[1].1);
    let mut master = start(&addrs);
    let master_pid = master.pid();

    let first = greeting(&master, a, "/");
    let first_b = greeting(&master, b, "/");
    if first_b != first {
        master.fail(format!(
            "the two --listen addresses answer differently: {first:?} on {a}, {first_b:?} on {b}"
        ));
    }
    assert_eq!(first.generation, 1, "first worker: {first:?}");
    assert_ne!(
        first.pid, master_pid,
        "the master itself answers: no worker was started"
    );
    assert_eq!(
        proc_stat(first.pid).map(|s| s.ppid),
        Some(master_pid),
        "the worker {} is not the master's child",
        first.pid
    );

    master.signal(Signal::SIGUSR2);
    let second = wait_greeting_not_from(&master, a, first.pid, RESTART);
    let second_b = wait_greeting_not_from(&master, b, first.pid, RESTART);
    if second_b != second {
        master.fail(format!(
            "after SIGUSR2 the two addresses answer differently: {second:?} on {a}, {second_b:?} on {b}"
        ));
    }
    assert_eq!(second.generation, 2, "after SIGUSR2: {second:?}");
    assert_eq!(
        second.build_id, first.build_id,
        "same binary, different BUILD_ID"
    );
    assert_eq!(master.pid(), master_pid);
    assert!(master.is_running(), "the master exited on SIGUSR2");
    assert_eq!(
        proc_stat(second.pid).map(|s| s.ppid),
        Some(master_pid),
        "the new worker {} is not the master's child",
        second.pid
    );
    // The old worker was idle (every request closed its connection), so it drains at once.
    if !wait_until(Duration::from_secs(10), || {
        master.live_children() == vec![second.pid]
    }) {
        master.fail(format!(
            "10 s after the restart the master's live children are {:?}, expected only {}",
            master.live_children(),
            second.pid
        ));
    }
}

/// `GET /master` on a fresh connection: the body of a 200 answer.
fn master_build(master: &Master, addr: &Addr) -> String {
    match get_timeout(addr, "/master", Duration::from_secs(10)) {
        Ok(r) if r.status == 200 => r.body,
        Ok(r) => master.fail(format!(
            "GET /master on {addr}: status {} body {:?}",
            r.status, r.body
        )),
        Err(e) => master.fail(format!("GET /master on {addr}: {e}")),
    }
}

/// The master passes its BUILD_ID to its workers; here master and worker are one binary, so
/// `/master` names the build the greeting names, for the first worker and for its successor.
#[test]
fn master_answers_the_build_id_the_master_runs() {
    let addrs = free_tcp_addrs(1);
    let a = &addrs[0].1;
    let master = start(&addrs);
    let first = greeting(&master, a, "/");
    let want = format!("{}\n", first.build_id);
    let got = master_build(&master, a);
    if got != want {
        master.fail(format!("GET /master answered {got:?}, expected {want:?}"));
    }

    master.signal(Signal::SIGUSR2);
    let second = wait_greeting_not_from(&master, a, first.pid, RESTART);
    let got = master_build(&master, a);
    if got != want {
        master.fail(format!(
            "after SIGUSR2 (worker {second:?}) GET /master answered {got:?}, expected {want:?}"
        ));
    }
}

#[test]
fn sleep_answers_after_at_least_the_requested_time() {
    let addrs = free_tcp_addrs(1);
    let addr = &addrs[0].1;
    let master = start(&addrs);
    let worker = greeting(&master, addr, "/");

    let asked = Instant::now();
    let slept = greeting(&master, addr, "/sleep?ms=300");
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "/sleep?ms=300 answered after {took:?}"
    );
    assert_eq!(slept, worker, "/sleep answers with the same greeting as /");
}

#[test]
fn sigterm_drains_the_in_flight_request_and_exits_zero() {
    let addrs = free_tcp_addrs(1);
    let addr = &addrs[0].1;
    let mut master = start(&addrs);
    let worker = greeting(&master, addr, "/");

    let inflight = get_in_thread(addr, "/sleep?ms=1000", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(300));
    master.signal(Signal::SIGTERM);

    match inflight.join().unwrap() {
        Ok(r) if r.status == 200 && parse_greeting(&r.body) == Some(worker.clone()) => {}
        Ok(r) => master.fail(format!(
            "in-flight request during SIGTERM: status {} body {:?}, expected the greeting of {worker:?}",
            r.status, r.body
        )),
        Err(e) => master.fail(format!("in-flight request during SIGTERM failed: {e}")),
    }
    let status = master
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| master.fail("hello did not exit within 10 s of SIGTERM"));
    if status.code() != Some(0) {
        master.fail(format!(
            "hello exited with {status} after SIGTERM, expected 0"
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
}

/// Runs hello with `args` to its exit (killed by PID after 10 s): (status, stdout, stderr).
fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(example_path("hello"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hello");
    // Both outputs are a few lines, far below a pipe's capacity: reading after the exit is safe.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for hello") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hello {args:?} did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stdout, stderr)
}

#[test]
fn watching_a_path_any_user_can_write_is_refused_at_startup() {
    let (listen, _) = free_tcp_addr();
    let watched = std::env::temp_dir().join(format!("hello-next-{}", std::process::id()));
    let watched = watched.display().to_string();
    let (status, _, stderr) = run_to_exit(&["--listen", &listen, "--watch", &watched]);
    assert!(!status.success(), "hello started; stderr: {stderr:?}");
    for needle in [
        "refusing to watch directory",
        "chmod go-w",
        "allow_untrusted_location",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in {stderr:?}");
    }
}

#[test]
fn an_unknown_flag_exits_2_with_the_usage_on_stderr() {
    let (status, stdout, stderr) = run_to_exit(&["--bogus"]);
    assert_eq!(
        status.code(),
        Some(2),
        "hello --bogus exited with {status}; stderr: {stderr:?}"
    );
    assert!(
        stderr.contains("usage: hello") && stderr.contains("--listen ADDR"),
        "no usage on stderr: {stderr:?}"
    );
    assert!(
        stderr.contains("GET /master"),
        "the usage does not list GET /master: {stderr:?}"
    );
    assert!(
        stderr.contains("--bogus"),
        "stderr does not name the bad flag: {stderr:?}"
    );
    assert!(
        !stdout.contains("usage"),
        "the usage went to stdout: {stdout:?}"
    );
}

#[test]
fn greeting_parser_accepts_only_the_exact_shape() {
    assert_eq!(
        parse_greeting("hello from dev pid 12345 gen 1\n"),
        Some(Greeting {
            build_id: "dev".into(),
            pid: 12345,
            generation: 1,
        })
    );
    assert_eq!(
        parse_greeting("hello from v2.1-rc pid 7 gen 30\n").map(|g| g.build_id),
        Some("v2.1-rc".into())
    );
    for bad in [
        "hello from dev pid 12345 gen 1",
        "hello from dev pid 12345 gen 1\n\n",
        "hello from  pid 12345 gen 1\n",
        "hello from dev pid +12345 gen 1\n",
        "hello from dev pid 12345 gen one\n",
        "hello from dev  pid 12345 gen 1\n",
        "hello from dev pid 12345 gen 1 extra\n",
        "fixture pid 12345 gen 1 exe /x\n",
    ] {
        assert_eq!(parse_greeting(bad), None, "accepted {bad:?}");
    }
}

/// `pkill -USR2 hello` reaches the workers too (same name). SIGUSR2's default action would kill
/// the serving worker; instead it keeps serving and says that the signal belongs to the master.
#[test]
fn sigusr2_sent_to_a_worker_does_not_kill_it() {
    let addrs = free_tcp_addrs(1);
    let a = &addrs[0].1;
    let master = start(&addrs);
    let before = greeting(&master, a, "/");
    signal(before.pid, Signal::SIGUSR2);
    let said = wait_until(Duration::from_secs(5), || {
        master
            .log_contents()
            .contains("got the master's restart signal")
    });
    assert!(
        said,
        "the worker did not say where the restart signal belongs"
    );
    let after = greeting(&master, a, "/");
    assert_eq!(
        (after.pid, after.generation),
        (before.pid, before.generation),
        "the worker that got SIGUSR2 was replaced or died"
    );
    assert!(is_alive(before.pid), "the worker died of SIGUSR2");
}

/// `kill -HUP <master>` (logrotate), SIGUSR1 and SIGWINCH reach hello's signal stream; none of them
/// costs the request in flight or the worker.
#[test]
fn sighup_sigusr1_and_sigwinch_to_the_master_reach_hello_without_a_failed_request() {
    let addrs = free_tcp_addrs(1);
    let a = &addrs[0].1;
    let master = start(&addrs);
    let before = greeting(&master, a, "/");
    for sig in [Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGWINCH] {
        let inflight = get_in_thread(a, "/sleep?ms=600", Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(150));
        master.signal(sig);
        match inflight.join().unwrap() {
            Ok(r) if r.status == 200 && parse_greeting(&r.body) == Some(before.clone()) => {}
            Ok(r) => master.fail(format!(
                "the request in flight during {sig}: status {} body {:?}, expected {before:?}",
                r.status, r.body
            )),
            Err(e) => master.fail(format!("the request in flight during {sig} failed: {e}")),
        }
        let seen = format!("hello got {sig}");
        if !wait_until(Duration::from_secs(5), || {
            master.log_contents().contains(&seen)
        }) {
            master.fail(format!("hello's signal stream did not see {sig}"));
        }
    }
    let after = greeting(&master, a, "/");
    assert_eq!(
        after, before,
        "a forwarded signal replaced or restarted the worker"
    );
    assert!(
        is_alive(before.pid),
        "the worker died of a forwarded signal"
    );
}
