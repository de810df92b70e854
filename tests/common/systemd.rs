//! Playing the service manager: a notification socket that records what the master says and who
//! sent it, and reading what the kernel knows about sockets and environments.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::wait_for;

/// One datagram: its `KEY=VALUE` fields and the sender's pid (`SCM_CREDENTIALS`, which systemd
/// checks for `NotifyAccess=main`).
#[derive(Debug, Clone)]
pub struct Notification {
    pub fields: BTreeMap<String, String>,
    pub sender: Option<i32>,
}

impl Notification {
    pub fn has(&self, key: &str) -> bool {
        self.fields.contains_key(key)
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
    pub fn status(&self) -> &str {
        self.get("STATUS").unwrap_or("")
    }
}

/// A bound notification socket read on a thread until dropped.
pub struct NotifyListener {
    seen: Arc<Mutex<Vec<Notification>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NotifyListener {
    /// Listens on a socket file at `path`.
    pub fn bind(path: &Path) -> NotifyListener {
        let socket = UnixDatagram::bind(path).expect("bind the notification socket");
        NotifyListener::start(socket)
    }

    /// Listens on `@name` in the abstract namespace.
    pub fn bind_abstract(name: &str) -> NotifyListener {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).expect("bind the abstract notification socket");
        NotifyListener::start(socket)
    }

    fn start(socket: UnixDatagram) -> NotifyListener {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one int from the pointer we pass.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_PASSCRED: {}", io::Error::last_os_error());
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match recv_with_sender(socket.as_raw_fd()) {
                        Ok((text, sender)) => {
                            let fields = text
                                .lines()
                                .filter_map(|l| l.split_once('='))
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect();
                            seen.lock().unwrap().push(Notification { fields, sender });
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => panic!("reading notifications: {e}"),
                    }
                }
            })
        };
        NotifyListener {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Everything received so far.
    pub fn all(&self) -> Vec<Notification> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits for a notification after the first `skip` that satisfies `f`; returns its index.
    pub fn wait(
        &self,
        skip: usize,
        timeout: Duration,
        f: impl Fn(&Notification) -> bool,
    ) -> Option<(usize, Notification)> {
        wait_for(timeout, || {
            self.all()
                .into_iter()
                .enumerate()
                .skip(skip)
                .find(|(_, n)| f(n))
        })
    }
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `recvmsg` with the sender's credentials.
fn recv_with_sender(fd: RawFd) -> io::Result<(String, Option<i32>)> {
    let mut buf = [0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: recvmsg writes into the buffers msg points to, within their stated lengths.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut sender = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let cred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                sender = Some(cred.pid);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((
        String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
        sender,
    ))
}

/// `CLOCK_MONOTONIC` in µs, the clock of `MONOTONIC_USEC=`.
pub fn monotonic_usec() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000 + ts.tv_nsec as u128 / 1_000
}

/// The names of the variables `pid` was started with (`/proc/<pid>/environ`).
pub fn environ_names(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|&b| b == 0)
        .filter_map(|kv| kv.split(|&b| b == b'=').next())
        .filter(|k| !k.is_empty())
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// `socket:[<inode>]`, as `/proc/<pid>/fd` shows a socket descriptor of ours.
pub fn socket_link(fd: &impl AsRawFd) -> String {
    // SAFETY: fstat writes the struct we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above, on a descriptor we own.
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
    format!("socket:[{}]", st.st_ino)
}

/// The inodes of the TCP sockets listening on `port` (IPv4 and IPv6), from `/proc/net/tcp{,6}`.
pub fn listening_inodes(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN; column 9 is the inode.
            let Some(local) = cols.get(1) else { continue };
            let port_hex = local.rsplit(':').next().unwrap_or("");
            if cols.get(3) == Some(&"0A") && u16::from_str_radix(port_hex, 16).ok() == Some(port) {
                if let Some(inode) = cols.get(9) {
                    out.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    out.sort();
    out
}

/// `/proc/<pid>/comm`, trimmed.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
