//! The [`Master`] guard around a spawned server process, and waiting on what it does.
//!
//! Everything here is bounded in time. A [`Master`] kills its master process and every descendant
//! it ever saw when dropped (by PID, checked against the process start time so a recycled PID is
//! never hit), and prints the master's log when the test is failing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{
    descendants_of, fixture_path, get, live_children_of, proc_stat, Addr, ProcStat, Response,
    TestDir,
};

/// Polls `f` every 20 ms until it returns `Some`, or `None` after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` every 20 ms until it is true; false after `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || f().then_some(())).is_some()
}

pub fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap_or_else(|e| panic!("kill({pid}, {sig}): {e}"));
}

/// A descriptor of the test process that a spawned server inherits at `target` without
/// close-on-exec, the way a supervisor's pipe or a shell's stray descriptor reaches a real master.
#[derive(Debug, Clone, Copy)]
pub struct ExtraFd<'a> {
    pub source: BorrowedFd<'a>,
    pub target: RawFd,
}

/// A spawned server process (an upshift master, or an in-process server when disabled).
///
/// A watcher thread records every descendant it sees (every 10 ms); on drop the master and all
/// recorded descendants still alive are SIGKILLed, by PID, after checking their start time.
pub struct Master {
    child: Child,
    pid: u32,
    /// The master's stat at spawn: its start time tells it apart from a later process with its pid.
    root: Option<ProcStat>,
    exit: Option<ExitStatus>,
    _logdir: TestDir,
    log: PathBuf,
    seen: Arc<Mutex<BTreeMap<u32, ProcStat>>>,
    seen_order: Arc<Mutex<Vec<u32>>>,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl Master {
    /// Spawns `program` with `args`; stdout and stderr go to a log file.
    pub fn spawn(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Master {
        Master::spawn_with_extra_fds(program, args, envs, &[])
    }

    /// Like [`Master::spawn`], and the server also inherits `extra_fds`, without close-on-exec.
    pub fn spawn_with_extra_fds(
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        extra_fds: &[ExtraFd<'_>],
    ) -> Master {
        Master::spawn_inner(program, args, envs, extra_fds, None)
    }

    /// Like [`Master::spawn`], with the server's file-size limit (`RLIMIT_FSIZE`, soft) set to
    /// `max_file_bytes`: writing past it fails with `EFBIG` (or raises `SIGXFSZ`), as on a full
    /// or quota-limited disk. Inherited by everything the server starts.
    pub fn spawn_with_fsize_limit(
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        max_file_bytes: u64,
    ) -> Master {
        Master::spawn_inner(program, args, envs, &[], Some(max_file_bytes))
    }

    fn spawn_inner(
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        extra_fds: &[ExtraFd<'_>],
        fsize_limit: Option<u64>,
    ) -> Master {
        for (i, e) in extra_fds.iter().enumerate() {
            let source = e.source.as_raw_fd();
            // One pass of dup2 in the child must not overwrite a source before it is copied.
            let clash = extra_fds
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && (o.source.as_raw_fd() == e.target || o.target == e.target));
            assert!(
                e.target >= 3 && !clash,
                "extra fd {source} -> {}: the target must be above stdio and clash with no other \
                 extra fd",
                e.target
            );
        }
        let extra: Vec<(RawFd, RawFd)> = extra_fds
            .iter()
            .map(|e| (e.source.as_raw_fd(), e.target))
            .collect();
        let logdir = TestDir::new("log");
        let log = logdir.join("server.log");
        let out = File::create(&log).expect("create log");
        let err = out.try_clone().expect("dup log");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("RUST_BACKTRACE", "1")
            .env(
                "RUST_LOG",
                std::env::var("UPSHIFT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("UPSHIFT_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        // The server starts with nothing but stdio: descriptors this test process inherited
        // without close-on-exec (from cargo, a CI runner, a shell) must not show up in its workers
        // and be mistaken for leaks of the library. Only the extra descriptors a test asked for
        // are then inherited, at their target numbers.
        // SAFETY: the closure only makes raw syscalls, which is async-signal-safe, and reads
        // `extra`, allocated before the fork.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                mark_fds_cloexec_from(3);
                for &(source, target) in &extra {
                    inherit_fd_at(source, target)?;
                }
                if let Some(limit) = fsize_limit {
                    limit_file_size(limit)?;
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let pid = child.id();
        let root = proc_stat(pid);
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let seen_order = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (seen, seen_order, stop) = (seen.clone(), seen_order.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    record_descendants(root, &seen, &seen_order);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Master {
            child,
            pid,
            root,
            exit: None,
            _logdir: logdir,
            log,
            seen,
            seen_order,
            stop,
            watcher: Some(watcher),
        }
    }

    /// Spawns the fixture example.
    pub fn fixture(args: &[&str]) -> Master {
        Master::spawn(&fixture_path(), args, &[])
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `sig` to the master. Refused once the master has been reaped: its pid may name
    /// another process by then.
    pub fn signal(&self, sig: Signal) {
        assert!(
            self.exit.is_none(),
            "signal {sig} to master {} after it exited",
            self.pid
        );
        signal(self.pid, sig)
    }

    /// The exit status if the process has exited (reaping it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exit = Some(st);
            }
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every descendant the watcher has seen so far, in the order first seen.
    pub fn descendants_seen(&self) -> Vec<u32> {
        record_descendants(self.root, &self.seen, &self.seen_order);
        self.seen_order.lock().unwrap().clone()
    }

    /// Descendants seen that are still alive (same start time, not a zombie).
    pub fn live_descendants_seen(&self) -> Vec<u32> {
        let seen = self.seen.lock().unwrap().clone();
        seen.values()
            .filter(|s| matches!(proc_stat(s.pid), Some(now) if now.starttime == s.starttime && now.state != 'Z' && now.state != 'X'))
            .map(|s| s.pid)
            .collect()
    }

    /// The master's live (non-zombie) children right now.
    pub fn live_children(&self) -> Vec<u32> {
        live_children_of(self.pid)
    }

    pub fn log_contents(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `max` bytes of the log.
    pub fn log_tail(&self, max: usize) -> String {
        let log = self.log_contents();
        if log.len() <= max {
            return log;
        }
        let mut start = log.len() - max;
        while !log.is_char_boundary(start) {
            start += 1;
        }
        format!("[... {start} bytes cut ...]\n{}", &log[start..])
    }

    /// Panics with `msg` and the log tail.
    pub fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!(
            "{msg}\n----- server log (pid {}) -----\n{}\n----- end of log -----",
            self.pid,
            self.log_tail(24_000)
        )
    }

    /// Waits until `GET /` on `addr` answers 200, failing the test (with the log) after `timeout` or
    /// if the process exits first.
    pub fn wait_serving(&mut self, addr: &Addr, timeout: Duration) -> Response {
        let deadline = Instant::now() + timeout;
        let mut last_err: String;
        loop {
            if let Some(st) = self.try_exit() {
                self.fail(format!("server exited with {st} before serving on {addr}"));
            }
            match get(addr, "/") {
                Ok(r) if r.status == 200 => return r,
                Ok(r) => last_err = format!("status {} body {:?}", r.status, r.body),
                Err(e) => last_err = e.to_string(),
            }
            if Instant::now() >= deadline {
                self.fail(format!(
                    "GET / on {addr} did not answer 200 within {timeout:?}: last: {last_err}"
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The worker pid answering `GET /` on a fresh connection.
    pub fn serving_pid(&self, addr: &Addr) -> u32 {
        match get(addr, "/") {
            Ok(r) if r.status == 200 => r
                .pid()
                .unwrap_or_else(|| self.fail(format!("no pid in {:?}", r.body))),
            Ok(r) => self.fail(format!(
                "GET / on {addr}: status {} body {:?}",
                r.status, r.body
            )),
            Err(e) => self.fail(format!("GET / on {addr}: {e}")),
        }
    }

    /// Polls `GET /` until it is answered by a pid other than `old`; returns the new pid.
    pub fn wait_new_pid(&self, addr: &Addr, old: u32, timeout: Duration) -> u32 {
        self.wait_pid_not_in(addr, &[old], timeout)
    }

    /// Polls `GET /` until it is answered by a pid not in `old`. A worker told to drain may still
    /// accept a connection or two until it has read the order (they are served, nothing is lost),
    /// so after several quick restarts "not the previous pid" is not enough to name the newest.
    pub fn wait_pid_not_in(&self, addr: &Addr, old: &[u32], timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            match get(addr, "/") {
                Ok(r) if r.status == 200 => match r.pid() {
                    Some(p) if !old.contains(&p) => return p,
                    _ => last = r.body.clone(),
                },
                Ok(r) => last = format!("status {} {:?}", r.status, r.body),
                Err(e) => last = format!("error {e}"),
            }
            if Instant::now() >= deadline {
                self.fail(format!(
                    "no worker other than {old:?} answered on {addr} within {timeout:?}; last: {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGUSR2 to the master, then waits for a new pid on `addr`.
    pub fn restart(&self, addr: &Addr, old: u32, timeout: Duration) -> u32 {
        self.signal(Signal::SIGUSR2);
        self.wait_new_pid(addr, old, timeout)
    }
}

/// Makes `source` available as `target` across exec. Runs between fork and exec: raw syscalls only.
fn inherit_fd_at(source: RawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: fcntl and dup2 on descriptor numbers; errors are returned.
    let r = unsafe {
        if source == target {
            // dup2(fd, fd) is a no-op that would leave close-on-exec set: clear it directly.
            let flags = libc::fcntl(source, libc::F_GETFD);
            if flags < 0 {
                -1
            } else {
                libc::fcntl(source, libc::F_SETFD, flags & !libc::FD_CLOEXEC)
            }
        } else {
            // The new descriptor never has close-on-exec set.
            libc::dup2(source, target)
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lowers the soft `RLIMIT_FSIZE` to `bytes` (never above the hard limit). Runs between fork and
/// exec: raw syscalls only.
fn limit_file_size(bytes: u64) -> io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = (bytes as libc::rlim_t).min(lim.rlim_max);
        if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets close-on-exec on every descriptor from `first` up. Runs between fork and exec: raw
/// syscalls only.
fn mark_fds_cloexec_from(first: i32) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    // Older kernels: walk a generous range.
    for fd in first..4096 {
        // SAFETY: fcntl on a descriptor number; EBADF for closed ones is ignored.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// The worker starts recorded by the fixture's `--starts-file`: `(pid, generation, behavior)`.
pub fn read_starts(path: &Path) -> Vec<(u32, u64, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut w = l.splitn(3, ' ');
            Some((
                w.next()?.parse().ok()?,
                w.next()?.parse().ok()?,
                w.next().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// Records the descendants of `root`, if `root` is still that very process (once the master has
/// been reaped its pid may name another process, whose children are none of our business).
fn record_descendants(
    root: Option<ProcStat>,
    seen: &Mutex<BTreeMap<u32, ProcStat>>,
    order: &Mutex<Vec<u32>>,
) {
    let Some(root) = root else { return };
    let same = || matches!(proc_stat(root.pid), Some(s) if s.starttime == root.starttime);
    if !same() {
        return;
    }
    let found = descendants_of(root.pid);
    if !same() {
        return;
    }
    let mut seen = seen.lock().unwrap();
    let mut order = order.lock().unwrap();
    for s in found {
        let fresh = match seen.get(&s.pid) {
            None => true,
            Some(old) => old.starttime != s.starttime,
        };
        if fresh {
            seen.insert(s.pid, s);
            order.retain(|p| *p != s.pid);
            order.push(s.pid);
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        if self.exit.is_none() {
            record_descendants(self.root, &self.seen, &self.seen_order);
        }
        let panicking = std::thread::panicking();
        if self.try_exit().is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        for s in seen.values() {
            if let Some(now) = proc_stat(s.pid) {
                if now.starttime == s.starttime && now.state != 'Z' {
                    let _ = kill(Pid::from_raw(s.pid as i32), Signal::SIGKILL);
                }
            }
        }
        let _ = self.child.wait();
        if panicking {
            eprintln!(
                "----- server log (pid {}) at teardown -----\n{}\n----- end of log -----",
                self.pid,
                self.log_tail(24_000)
            );
        }
    }
}
