//! Every process the harness starts is owned by a [`Guard`] that stops it by pid when dropped
//! (on success, error or panic), and is listed in a registry that the harness's own SIGINT/SIGTERM
//! handler uses to stop them when the harness is interrupted.

use std::io;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

const SLOTS: usize = 64;
static RUNNING: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn register(pid: i32) {
    for slot in &RUNNING {
        if slot
            .compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
    eprintln!("upshift-bench: more than {SLOTS} processes at once; pid {pid} is not registered for interrupt cleanup");
}

fn unregister(pid: i32) {
    for slot in &RUNNING {
        if slot
            .compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
}

/// First SIGINT/SIGTERM/SIGHUP: SIGTERM to every registered process and a flag that makes the
/// scenario stop at its next step, so that the guards and the temporary directory are cleaned
/// up as on any error. A second one: SIGKILL to them all and exit at once.
extern "C" fn on_interrupt(_sig: libc::c_int) {
    // Only async-signal-safe calls here: kill, write, _exit, atomics. The pids are our own
    // unreaped children, so none can have been reused.
    let again = INTERRUPTED.swap(true, Ordering::SeqCst);
    let (msg, sig): (&[u8], _) = if again {
        (
            b"\nupshift-bench: interrupted again; killing what it started\n",
            libc::SIGKILL,
        )
    } else {
        (
            b"\nupshift-bench: interrupted; stopping what it started (again to kill at once)\n",
            libc::SIGTERM,
        )
    };
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        for slot in &RUNNING {
            let pid = slot.load(Ordering::SeqCst);
            if pid > 0 {
                libc::kill(pid, sig);
            }
        }
        if again {
            libc::_exit(130);
        }
    }
}

/// `Err` once the harness has been interrupted.
pub fn check() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Sleeps until `t`, returning early with `Err` if the harness is interrupted.
pub fn sleep_until(t: Instant) -> Result<(), String> {
    loop {
        check()?;
        let now = Instant::now();
        if now >= t {
            return Ok(());
        }
        std::thread::sleep((t - now).min(Duration::from_millis(50)));
    }
}

pub fn install_interrupt_handler() {
    let handler = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGHUP, handler);
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL after a grace period) when dropped.
pub struct Guard {
    child: Option<Child>,
    name: String,
    grace: Duration,
    status: Option<ExitStatus>,
}

impl Guard {
    pub fn spawn(cmd: &mut Command, name: &str, grace: Duration) -> io::Result<Guard> {
        if interrupted() {
            return Err(io::Error::other(format!(
                "not starting {name}: interrupted"
            )));
        }
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {name}: {e}")))?;
        register(child.id() as i32);
        if interrupted() {
            // The handler may have run between spawn and register.
            let _ = signal(child.id(), libc::SIGTERM);
        }
        Ok(Guard {
            child: Some(child),
            name: name.to_string(),
            grace,
            status: None,
        })
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("a guard always holds its child")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The exit status, if it has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    self.status = Some(st);
                    unregister(child.id() as i32);
                }
            }
        }
        self.status
    }

    /// Waits up to `limit` for it to exit on its own.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, up to the grace period for it to exit, then SIGKILL. Returns its status and
    /// whether it had to be killed.
    pub fn stop(&mut self) -> (Option<ExitStatus>, bool) {
        if let Some(st) = self.try_wait() {
            return (Some(st), false);
        }
        let pid = self.pid();
        let _ = signal(pid, libc::SIGTERM);
        if let Some(st) = self.wait_for(self.grace) {
            return (Some(st), false);
        }
        eprintln!(
            "upshift-bench: {} (pid {pid}) did not exit {:?} after SIGTERM; SIGKILL",
            self.name, self.grace
        );
        let _ = signal(pid, libc::SIGKILL);
        (self.wait_for(Duration::from_secs(10)), true)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `(state, ppid)` from /proc/<pid>/stat, if the process exists.
pub fn state_and_ppid(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Pids of live processes whose executable lies under `dir`: what is left of a server's workers
/// (or a test-run) after its master is gone.
pub fn processes_running_from(dir: &Path) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(exe) = std::fs::read_link(entry.path().join("exe")) {
            if exe.starts_with(dir) && !matches!(state_and_ppid(pid), Some(('Z', _)) | None) {
                found.push(pid);
            }
        }
    }
    found
}

/// Kills (SIGKILL, by pid) whatever still runs from `dir`; returns the pids it found.
pub fn kill_leftovers(dir: &Path) -> Vec<u32> {
    let left = processes_running_from(dir);
    for pid in &left {
        let _ = signal(*pid, libc::SIGKILL);
    }
    left
}

/// Calls `f` every 10 ms until it returns something or `limit` passes (or the harness is
/// interrupted).
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= until || interrupted() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Processes still running from `dir` once `limit` has passed (or none earlier).
pub fn still_running_from(dir: &Path, limit: Duration) -> Vec<u32> {
    wait_for(limit, || {
        processes_running_from(dir).is_empty().then_some(())
    });
    processes_running_from(dir)
}

/// Processes running from `dir` other than `master` and its children.
pub fn strays(dir: &Path, master: u32) -> Vec<u32> {
    processes_running_from(dir)
        .into_iter()
        .filter(|&p| p != master && state_and_ppid(p).map(|(_, pp)| pp) != Some(master))
        .collect()
}
