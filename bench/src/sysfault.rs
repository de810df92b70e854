//! Real faults for the `faults` scenario: a small tmpfs as the binary's directory (a full disk
//! the kernel enforces), and SIGKILL at the exact moment a file event shows an install step
//! (inotify, read on a thread that does nothing else, so the signal lands within microseconds).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use libc::{IN_CLOSE_WRITE, IN_CREATE, IN_OPEN};

fn cstr(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{} has a NUL", p.display()))
}

/// A tmpfs mounted at a directory, unmounted when dropped. Needs root (CAP_SYS_ADMIN).
pub struct Tmpfs {
    path: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` (rounded up to pages) at `path`, which must exist.
    pub fn mount(path: &Path, bytes: u64) -> Result<Tmpfs, String> {
        let target = cstr(path)?;
        let data = CString::new(format!("size={bytes},mode=0755")).map_err(|e| e.to_string())?;
        let (src, fstype) = (c"upshift-bench", c"tmpfs");
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(format!(
                "cannot mount a tmpfs at {} (the faults scenario runs as root): {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
            mounted: true,
        })
    }

    /// Grows (or shrinks) it in place: "making room" without touching its files.
    pub fn resize(&self, bytes: u64) -> Result<(), String> {
        let target = cstr(&self.path)?;
        let data = CString::new(format!("size={bytes}")).map_err(|e| e.to_string())?;
        // SAFETY: as in `mount`; a remount ignores the source and type.
        let r = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(format!(
                "cannot resize the tmpfs at {}: {}",
                self.path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Free bytes, from statvfs.
    pub fn free_bytes(&self) -> Option<u64> {
        let target = cstr(&self.path).ok()?;
        // SAFETY: statvfs is plain old data; all zeroes is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: statvfs writes only into `st`.
        (unsafe { libc::statvfs(target.as_ptr(), &mut st) } == 0)
            .then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }

    pub fn unmount(&mut self) -> Result<(), String> {
        if !self.mounted {
            return Ok(());
        }
        let target = cstr(&self.path)?;
        // Whatever ran from it has been stopped by then; a straggler being reaped may hold it
        // for a moment, so retry before detaching lazily.
        for _ in 0..50 {
            // SAFETY: a NUL-terminated path.
            if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
                self.mounted = false;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
            self.mounted = false;
            return Err(format!("{} was busy; detached lazily", self.path.display()));
        }
        Err(format!(
            "cannot unmount {}: {}",
            self.path.display(),
            std::io::Error::last_os_error()
        ))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("upshift-bench: {e}");
        }
    }
}

/// What [`KillOnEvent`] saw when it fired.
#[derive(Clone, Debug)]
pub struct Fired {
    pub at: Instant,
    pub name: String,
    pub mask: u32,
}

/// Watches a directory and SIGKILLs `pid` at the first event whose file name and mask satisfy
/// a predicate. `pid` must be a child of the harness that it has not reaped, so that it cannot
/// have been reused.
pub struct KillOnEvent {
    stop: Arc<AtomicBool>,
    fired: Arc<Mutex<Option<Fired>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Predicate = Box<dyn Fn(&str, u32) -> bool + Send>;

impl KillOnEvent {
    pub fn start(dir: &Path, pid: u32, mask: u32, hit: Predicate) -> Result<KillOnEvent, String> {
        // SAFETY: plain syscalls on a descriptor this function owns.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(format!(
                "inotify_init1: {}",
                std::io::Error::last_os_error()
            ));
        }
        let path = cstr(dir)?;
        // SAFETY: `path` is NUL-terminated.
        if unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) } < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: our descriptor, closed once, on this early return only.
            unsafe { libc::close(fd) };
            return Err(format!("inotify_add_watch {}: {e}", dir.display()));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(Mutex::new(None));
        let (s, f) = (stop.clone(), fired.clone());
        let thread = std::thread::Builder::new()
            .name("kill-on-event".into())
            .spawn(move || {
                watch_loop(fd, pid, &hit, &s, &f);
                // SAFETY: our descriptor, closed once.
                unsafe { libc::close(fd) };
            })
            .map_err(|e| format!("cannot start the inotify thread: {e}"))?;
        Ok(KillOnEvent {
            stop,
            fired,
            thread: Some(thread),
        })
    }

    pub fn fired(&self) -> Option<Fired> {
        self.fired.lock().ok().and_then(|f| f.clone())
    }
}

impl Drop for KillOnEvent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch_loop(fd: i32, pid: u32, hit: &Predicate, stop: &AtomicBool, fired: &Mutex<Option<Fired>>) {
    let mut buf = vec![0u8; 64 * 1024];
    let header = std::mem::size_of::<libc::inotify_event>();
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
            continue;
        }
        // SAFETY: reading into our own buffer of the length given.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        let mut off = 0usize;
        while off + header <= n as usize {
            // SAFETY: the kernel wrote whole events; read_unaligned copes with the byte buffer.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            let name_bytes = &buf[off + header..off + header + ev.len as usize];
            let end = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            let name = String::from_utf8_lossy(&name_bytes[..end]).to_string();
            off += header + ev.len as usize;
            if hit(&name, ev.mask) {
                let _ = crate::procs::signal(pid, libc::SIGKILL);
                if let Ok(mut f) = fired.lock() {
                    *f = Some(Fired {
                        at: Instant::now(),
                        name,
                        mask: ev.mask,
                    });
                }
                return;
            }
        }
    }
}
