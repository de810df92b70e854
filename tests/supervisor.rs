//! The `hello` example under Debian's supervisor, as `docs/supervisor.md` configures it: the test
//! starts its own `supervisord` (its own config, Unix socket, log and pid file in a temp dir,
//! `nodaemon`), which starts `hello`. Upgraded twice, once by `supervisorctl signal USR2` and
//! once by publishing a new build to its `--watch` path, the program keeps the PID supervisor
//! knows and a prober sees no failed request; `supervisorctl stop` drains it (a slow request in
//! flight completes) and it exits with status 0.
//!
//! Skipped, loudly, when `supervisord` is not installed, unless `UPSHIFT_REQUIRE_SUPERVISOR=1` or
//! `UPSHIFT_REQUIRE_ALL=1` (`scripts/test` sets it): then a missing supervisor fails the test.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{descendants_of, get_timeout, heavy_lock, proc_stat, Addr, ProcStat};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use upshift_fetcher_conformance::hello::{greet, hello_binary, new_build, Poller, Scratch};

const PROGRAM: &str = "hello";
/// The program's drain timeout; `stopwaitsecs` must exceed it (see docs/supervisor.md).
const DRAIN_TIMEOUT_SECS: u64 = 10;
const STOPWAITSECS: u64 = 20;
const START: Duration = Duration::from_secs(60);
const UPGRADE: Duration = Duration::from_secs(60);

/// `supervisord` and `supervisorctl` on `PATH` (or where Debian puts them).
fn supervisor_tools() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    Some((find("supervisord")?, find("supervisorctl")?))
}

/// Runs `cmd` to completion, killed (by PID) after `timeout`: (exit code, stdout + stderr).
fn run_bounded(cmd: &mut Command, timeout: Duration) -> (Option<i32>, String) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status.code(), text)
        }
        Ok(Err(e)) => panic!("waiting for {cmd:?}: {e}"),
        Err(_) => {
            // Not reaped yet (the waiting thread has not returned), so the PID is still ours.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("{cmd:?} took more than {timeout:?}");
        }
    }
}

/// A private `supervisord`, stopped and killed by PID on drop with everything it started.
struct Supervisord {
    child: Child,
    ctl: PathBuf,
    conf: PathBuf,
    dir: PathBuf,
    seen: BTreeMap<u32, ProcStat>,
}

impl Supervisord {
    fn start(daemon: &Path, ctl: &Path, dir: &Path, conf: &Path) -> Supervisord {
        let out = fs::File::create(dir.join("supervisord.out")).expect("create supervisord.out");
        let err = out.try_clone().expect("dup");
        let mut cmd = Command::new(daemon);
        // The program inherits supervisord's environment: no UPSHIFT_HOLD from the test's.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("UPSHIFT_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .args(["--nodaemon", "--configuration"])
            .arg(conf)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", daemon.display()));
        Supervisord {
            child,
            ctl: ctl.to_path_buf(),
            conf: conf.to_path_buf(),
            dir: dir.to_path_buf(),
            seen: BTreeMap::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `supervisorctl -c <conf> args...`.
    fn ctl(&self, args: &[&str]) -> String {
        let (_, out) = run_bounded(
            Command::new(&self.ctl)
                .arg("--configuration")
                .arg(&self.conf)
                .args(args),
            Duration::from_secs(60),
        );
        out
    }

    /// What `supervisorctl pid hello` says, if it is a PID.
    fn program_pid(&self) -> Option<u32> {
        self.ctl(&["pid", PROGRAM])
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
    }

    /// Remembers every process below supervisord now, to kill what is left on drop.
    fn record(&mut self) {
        for s in descendants_of(self.pid()) {
            self.seen.insert(s.pid, s);
        }
    }

    fn log(&self) -> String {
        let mut out = String::new();
        for name in ["supervisord.log", "supervisord.out", "hello.log"] {
            let text = fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let start = text.len().saturating_sub(12_000);
            let start = (start..=text.len())
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            out.push_str(&format!("----- {name} -----\n{}\n", &text[start..]));
        }
        out
    }

    #[track_caller]
    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!("{msg}\n{}", self.log())
    }
}

impl Drop for Supervisord {
    fn drop(&mut self) {
        self.record();
        if matches!(self.child.try_wait(), Ok(None)) {
            // supervisord stops its programs on SIGTERM; SIGKILL if it has not within the bound.
            let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(STOPWAITSECS + 10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        for s in self.seen.values() {
            if matches!(proc_stat(s.pid), Some(now) if now.starttime == s.starttime && now.state != 'Z')
            {
                let _ = kill(Pid::from_raw(s.pid as i32), Signal::SIGKILL);
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
    }
}

fn write_config(dir: &Path, exe: &Path, addr: SocketAddr, watch: &Path) -> PathBuf {
    let d = dir.display();
    let conf = format!(
        "; A private supervisord for one test: nothing here touches the system's service.
[unix_http_server]
file={d}/supervisor.sock
chmod=0700

[supervisord]
nodaemon=true
logfile={d}/supervisord.log
pidfile={d}/supervisord.pid
childlogdir={d}
directory={d}
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{d}/supervisor.sock

[program:{PROGRAM}]
command={exe} --listen {addr} --watch {watch} --interval 0.5 --drain-timeout {DRAIN_TIMEOUT_SECS}
directory={d}
autostart=true
autorestart=unexpected
exitcodes=0
startsecs=1
stopsignal=TERM
stopwaitsecs={STOPWAITSECS}
stopasgroup=false
killasgroup=true
redirect_stderr=true
stdout_logfile={d}/hello.log
environment=RUST_LOG=\"info\",NO_COLOR=\"1\"
",
        exe = exe.display(),
        watch = watch.display(),
    );
    let path = dir.join("supervisord.conf");
    fs::write(&path, conf).expect("write supervisord.conf");
    path
}

/// Publishes a build the way a deploy script does: written beside the path, renamed onto it.
fn publish(watch: &Path, bytes: &[u8]) {
    let tmp = watch.with_extension("tmp");
    fs::write(&tmp, bytes).expect("write the new build");
    fs::rename(&tmp, watch).expect("rename the new build into place");
}

#[test]
fn supervisor_keeps_one_pid_through_two_upgrades_and_stops_it_cleanly() {
    let Some((daemon, ctl)) = supervisor_tools() else {
        upshift_fetcher_conformance::skip::skip_without(
            "supervisord/supervisorctl",
            "apt-get install supervisor",
            Some("UPSHIFT_REQUIRE_SUPERVISOR"),
        );
        return;
    };
    let _heavy = heavy_lock();
    let scratch = Scratch::new("supervisor");
    let dir = scratch.path();
    let original = fs::read(hello_binary()).expect("read the hello example");
    let exe = dir.join("bin").join("hello");
    fs::create_dir_all(exe.parent().expect("bin")).expect("mkdir bin");
    fs::write(&exe, &original).expect("copy hello");
    fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod hello");
    let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let watch = dir.join("next");
    let conf = write_config(dir, &exe, addr, &watch);

    let mut sup = Supervisord::start(&daemon, &ctl, dir, &conf);
    let deadline = Instant::now() + START;
    let first = loop {
        match greet(addr) {
            Ok(g) if g.generation == 1 => break g,
            Ok(g) => sup.fail(format!("the first answer is not generation 1: {g:?}")),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => sup.fail(format!("hello did not serve within {START:?}: {e}")),
        }
    };
    // RUNNING once the program stayed up `startsecs`.
    while !sup.ctl(&["status", PROGRAM]).contains("RUNNING") {
        if Instant::now() >= deadline {
            sup.fail(format!("hello not RUNNING within {START:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let master = sup
        .program_pid()
        .unwrap_or_else(|| sup.fail("supervisorctl pid gave no PID"));
    sup.record();
    let parent = proc_stat(first.pid).map(|s| s.ppid);
    if parent != Some(master) {
        sup.fail(format!(
            "worker {} has parent {parent:?}, not the master {master} that supervisor knows",
            first.pid
        ));
    }
    let same_pid = |sup: &Supervisord, when: &str| {
        let status = sup.ctl(&["status", PROGRAM]);
        let running = status.contains("RUNNING") && status.contains(&format!("pid {master},"));
        if !running || sup.program_pid() != Some(master) {
            sup.fail(format!(
                "{when}: supervisor no longer reports pid {master}: {status:?}"
            ));
        }
    };
    same_pid(&sup, "started");

    let prober = Poller::start(addr, Duration::from_millis(2));
    let wait_generation = |sup: &Supervisord, generation: u64| {
        let deadline = Instant::now() + UPGRADE;
        loop {
            if let Ok(g) = greet(addr) {
                if g.generation >= generation {
                    return g;
                }
            }
            if Instant::now() >= deadline {
                sup.fail(format!(
                    "generation {generation} not serving within {UPGRADE:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // 1. SIGUSR2 through supervisorctl: a restart from the binary on disk.
    let out = sup.ctl(&["signal", "USR2", PROGRAM]);
    if !out.contains("signalled") {
        sup.fail(format!("supervisorctl signal USR2: {out:?}"));
    }
    let second = wait_generation(&sup, 2);
    sup.record();
    same_pid(&sup, "after SIGUSR2");

    // 2. A new build published to the watched path.
    let build = new_build(&original, "supervisor-v2");
    publish(&watch, &build);
    let third = wait_generation(&sup, 3);
    sup.record();
    same_pid(&sup, "after the release");
    let deadline = Instant::now() + UPGRADE;
    while fs::read(&exe).ok().as_deref() != Some(build.as_slice()) {
        if Instant::now() >= deadline {
            sup.fail("the published build was not installed at the program's path");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let report = prober.finish();
    if !report.failures.is_empty() {
        sup.fail(format!(
            "{} failed requests of {} during the upgrades: {:?}",
            report.failures.len(),
            report.failures.len() + report.answers.len(),
            &report.failures[..report.failures.len().min(5)]
        ));
    }
    let generations: Vec<u64> = report.workers().iter().map(|w| w.1).collect();
    assert!(
        generations.contains(&2) && generations.contains(&3),
        "the prober saw generations {generations:?}"
    );
    assert!(second.pid != first.pid && third.pid != second.pid);
    eprintln!(
        "supervisor: master {master}, workers {} -> {} -> {}, {} answers, 0 failures",
        first.pid,
        second.pid,
        third.pid,
        report.answers.len()
    );

    // 3. `supervisorctl stop`: drains (a slow request in flight completes) and exits 0.
    let slow = std::thread::spawn(move || {
        get_timeout(&Addr::Tcp(addr), "/sleep?ms=1500", Duration::from_secs(10))
    });
    std::thread::sleep(Duration::from_millis(300));
    let family: Vec<ProcStat> = descendants_of(master)
        .into_iter()
        .chain(proc_stat(master))
        .collect();
    let started = Instant::now();
    let out = sup.ctl(&["stop", PROGRAM]);
    let took = started.elapsed();
    if !out.contains("stopped") {
        sup.fail(format!("supervisorctl stop: {out:?}"));
    }
    match slow.join().expect("the slow request's thread") {
        Ok(r) if r.status == 200 => {}
        other => sup.fail(format!("the request in flight at stop failed: {other:?}")),
    }
    let log = fs::read_to_string(dir.join("supervisord.log")).unwrap_or_default();
    if !log.contains(&format!("stopped: {PROGRAM} (exit status 0)")) {
        sup.fail(format!(
            "supervisord did not log a clean exit (status 0) after {took:?}"
        ));
    }
    if took >= Duration::from_secs(STOPWAITSECS) {
        sup.fail(format!("stop took {took:?}: supervisor had to kill it"));
    }
    // supervisor spawned the program once and never saw it exit until the stop.
    let spawned = log.matches(&format!("spawned: '{PROGRAM}'")).count();
    let exited = log.matches(&format!("exited: {PROGRAM}")).count();
    if spawned != 1 || exited != 0 {
        sup.fail(format!(
            "supervisord spawned {spawned} and saw {exited} unexpected exits"
        ));
    }
    let lingering: Vec<u32> = family
        .iter()
        .filter(|s| matches!(proc_stat(s.pid), Some(now) if now.starttime == s.starttime && now.state != 'Z'))
        .map(|s| s.pid)
        .collect();
    if !lingering.is_empty() {
        sup.fail(format!("still running after stop: {lingering:?}"));
    }
    let status = sup.ctl(&["status", PROGRAM]);
    assert!(status.contains("STOPPED"), "{status:?}");
    let mut pidfile = String::new();
    fs::File::open(dir.join("supervisord.pid"))
        .and_then(|mut f| f.read_to_string(&mut pidfile))
        .expect("supervisord wrote its pid file in the test's directory");
    assert_eq!(pidfile.trim(), sup.pid().to_string());
    eprintln!("supervisor: stop drained and exited 0 in {took:?}");
}
