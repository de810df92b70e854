//! Socket activation: listening sockets passed by systemd (or `systemd-socket-activate`) at fds
//! 3, 4, … with `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, adopted instead of bound.
//!
//! The policy, in order:
//!
//! 1. A configured listener takes the passed socket whose name (`FileDescriptorName=`) equals its
//!    name (the one given to `listen_named`, or the address as written for `listen`).
//! 2. Otherwise it takes a passed socket bound to its address (`getsockname`): the same TCP address,
//!    `0.0.0.0:P` also matching a dual-stack `[::]:P` (systemd's `ListenStream=P`), or the same
//!    Unix socket path.
//! 3. A configured listener nothing was passed for is bound by the master as usual, so a `.socket`
//!    unit may carry only some of them. If that bind fails (the address is systemd's, or a
//!    privileged port), the error says it was not among the passed sockets.
//! 4. Passed sockets no configured listener took are adopted too, after the configured ones, named
//!    by their `FileDescriptorName=` (else their address): the worker gets every socket systemd
//!    opened, and `State::take_listener` finds them by that name.
//!
//! Only listening stream sockets (TCP or Unix) can be handed to workers; anything else passed is an
//! error naming the descriptor, rather than a socket silently left alone.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use socket2::{Domain, SockRef, Type};

use crate::error::Error;
use crate::fds::{self, FIRST_INHERITED_FD, MAX_INHERITED_FDS};
use crate::listener::{self, BoundSocket, ListenAddr, SocketKind};
use crate::unix_socket::UnixSocketOptions;

/// The pid the passed descriptors are meant for.
pub(crate) const LISTEN_PID: &str = "LISTEN_PID";
/// How many descriptors were passed, from fd 3.
pub(crate) const LISTEN_FDS: &str = "LISTEN_FDS";
/// Their names, `:`-separated (`FileDescriptorName=`; systemd defaults to the socket unit's name).
pub(crate) const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// A listening socket the service manager passed, checked and made non-blocking (tokio refuses
/// blocking sockets) and close-on-exec (it reaches a worker only through the planned handoff, and
/// never a test-run).
#[derive(Debug)]
pub(crate) struct Passed {
    fd: OwnedFd,
    name: Option<String>,
    kind: SocketKind,
    local: Local,
}

/// The address a passed socket is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Local {
    Inet { addr: SocketAddr, v6only: bool },
    Path(PathBuf),
    Abstract(Vec<u8>),
    Unnamed,
}

impl fmt::Display for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Local::Inet { addr, .. } => write!(f, "{addr}"),
            Local::Path(p) => write!(f, "{}", p.display()),
            Local::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
            Local::Unnamed => f.write_str("an unnamed socket"),
        }
    }
}

impl fmt::Display for Passed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fd {}", self.fd.as_raw_fd())?;
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        write!(f, " ({})", self.local)
    }
}

impl Passed {
    fn into_bound(self, name: String) -> BoundSocket {
        BoundSocket {
            name,
            kind: self.kind,
            fd: self.fd,
            // The socket file belongs to the .socket unit, which outlives this master.
            unlink_on_exit: None,
            from_manager: true,
        }
    }
}

/// Reads and removes `LISTEN_*`; when they are meant for this process, takes the descriptors.
pub(crate) fn take_passed() -> Result<Vec<Passed>, Error> {
    let get = |var: &str| std::env::var_os(var).map(|v| v.to_string_lossy().into_owned());
    let (pid, count, names) = (get(LISTEN_PID), get(LISTEN_FDS), get(LISTEN_FDNAMES));
    for var in [LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES] {
        std::env::remove_var(var);
    }
    let Some(names) = parse(
        pid.as_deref(),
        count.as_deref(),
        names.as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(Vec::new());
    };
    let mut passed = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let number = FIRST_INHERITED_FD + i as RawFd;
        if !fds::is_open(number) {
            return Err(Error::Activation(format!(
                "{LISTEN_FDS} says {} descriptors were passed, but fd {number} is not open",
                passed.len() + 1
            )));
        }
        // SAFETY: LISTEN_PID names this process, so the service manager placed this descriptor
        // here for it; the variables are gone, so nothing else in the process takes it again.
        let fd = unsafe { OwnedFd::from_raw_fd(number) };
        passed.push(inspect(fd, name)?);
    }
    Ok(passed)
}

/// The names of the passed descriptors (one per descriptor), or `None` when nothing was passed to
/// this process.
fn parse(
    pid: Option<&str>,
    count: Option<&str>,
    names: Option<&str>,
    own_pid: u32,
) -> Result<Option<Vec<Option<String>>>, Error> {
    let Some(pid) = pid else {
        if count.is_some() {
            tracing::warn!("{LISTEN_FDS} is set without {LISTEN_PID}; ignoring socket activation");
        }
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| Error::Activation(format!("{LISTEN_PID}={pid:?} is not a pid")))?;
    if pid != own_pid {
        tracing::warn!(
            listen_pid = pid,
            pid = own_pid,
            "{LISTEN_PID} names another process: ignoring the passed sockets and binding. A wrapper \
             script must `exec` the program so that it keeps the pid systemd started"
        );
        return Ok(None);
    }
    let count = count.ok_or_else(|| {
        Error::Activation(format!(
            "{LISTEN_PID} names this process but {LISTEN_FDS} is not set"
        ))
    })?;
    let n: usize = count
        .trim()
        .parse()
        .map_err(|_| Error::Activation(format!("{LISTEN_FDS}={count:?} is not a number")))?;
    if n >= MAX_INHERITED_FDS {
        return Err(Error::Activation(format!(
            "{n} sockets were passed; at most {} are supported",
            MAX_INHERITED_FDS - 1
        )));
    }
    let mut out: Vec<Option<String>> = vec![None; n];
    if let Some(names) = names.filter(|s| !s.is_empty()) {
        let split: Vec<&str> = names.split(':').collect();
        if split.len() == n {
            for (slot, name) in out.iter_mut().zip(split) {
                // "unknown" is what systemd's helpers call a descriptor without a name.
                if !name.is_empty() && name != "unknown" {
                    *slot = Some(name.to_string());
                }
            }
        } else {
            tracing::warn!(
                names = split.len(),
                descriptors = n,
                "{LISTEN_FDNAMES} does not name each passed descriptor; matching by address only"
            );
        }
    }
    Ok(Some(out))
}

/// Checks that `fd` is a listening stream socket and prepares it.
fn inspect(fd: OwnedFd, name: Option<String>) -> Result<Passed, Error> {
    let number = fd.as_raw_fd();
    let what = match &name {
        Some(n) => format!("passed fd {number} ({n:?})"),
        None => format!("passed fd {number}"),
    };
    let fail = |detail: String| Error::Activation(format!("{what} {detail}"));
    let sock = SockRef::from(&fd);
    let ty = sock
        .r#type()
        .map_err(|e| fail(format!("is not a socket ({e})")))?;
    if ty != Type::STREAM {
        return Err(fail(
            "is not a stream socket; upshift hands workers stream listeners only (use \
             ListenStream= in the .socket unit)"
                .into(),
        ));
    }
    if !sock
        .is_listener()
        .map_err(|e| fail(format!("cannot be inspected: {e}")))?
    {
        return Err(fail(
            "is a connection, not a listening socket; use Accept=no in the .socket unit".into(),
        ));
    }
    let domain = sock
        .domain()
        .map_err(|e| fail(format!("cannot be inspected: {e}")))?;
    let local = sock
        .local_addr()
        .map_err(|e| fail(format!("has no local address: {e}")))?;
    let (kind, local) = if domain == Domain::IPV4 || domain == Domain::IPV6 {
        let addr = local
            .as_socket()
            .ok_or_else(|| fail("has no IP address".into()))?;
        let v6only = domain == Domain::IPV6 && sock.only_v6().unwrap_or(true);
        (SocketKind::Tcp, Local::Inet { addr, v6only })
    } else if domain == Domain::UNIX {
        let local = if let Some(path) = local.as_pathname() {
            Local::Path(path.to_path_buf())
        } else if let Some(name) = local.as_abstract_namespace() {
            Local::Abstract(name.to_vec())
        } else {
            Local::Unnamed
        };
        (SocketKind::Unix, local)
    } else {
        return Err(fail(
            "is neither a TCP nor a Unix socket; upshift cannot hand it to workers".into(),
        ));
    };
    fds::set_nonblocking(number)
        .and_then(|()| fds::set_cloexec(number))
        .map_err(|e| {
            fail(format!(
                "cannot be made non-blocking and close-on-exec: {e}"
            ))
        })?;
    Ok(Passed {
        fd,
        name,
        kind,
        local,
    })
}

/// The master's sockets for `addrs`: passed ones matched to them, the rest bound here, then the
/// passed sockets nobody configured (see the module's policy). `unix` (mode, owner) applies only
/// to the Unix sockets bound here: passed ones are as their `.socket` unit made them.
pub(crate) fn listeners(
    addrs: &[(String, ListenAddr)],
    passed: Vec<Passed>,
    unix: &UnixSocketOptions,
) -> Result<Vec<BoundSocket>, Error> {
    if passed.is_empty() {
        return addrs
            .iter()
            .map(|(name, addr)| listener::bind(addr, name.clone(), unix))
            .collect();
    }
    let summary = passed
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut pool: Vec<Option<Passed>> = passed.into_iter().map(Some).collect();
    let chosen = assign(addrs, &mut pool);

    let mut out = Vec::with_capacity(addrs.len() + pool.len());
    for ((name, addr), passed) in addrs.iter().zip(chosen) {
        match passed {
            Some(p) => {
                let wanted = match addr {
                    ListenAddr::Tcp(_) => SocketKind::Tcp,
                    ListenAddr::Unix(_) => SocketKind::Unix,
                };
                if p.kind != wanted {
                    tracing::warn!(listener = %name, configured = %addr, passed = %p, "the passed socket of this name is not of the configured kind; using it anyway");
                }
                tracing::info!(listener = %name, passed = %p, "adopting a socket passed by the service manager");
                out.push(p.into_bound(name.clone()));
            }
            None => {
                let bound = listener::bind(addr, name.clone(), unix).map_err(|e| {
                    Error::Activation(format!(
                        "listener {name:?} ({addr}) is not among the sockets the service manager \
                         passed ({summary}) and binding it here failed: {e}. Add it to the .socket \
                         unit (ListenStream={addr}, FileDescriptorName={name}) or free the address"
                    ))
                })?;
                tracing::info!(listener = %name, %addr, "not passed by the service manager: bound by the master");
                out.push(bound);
            }
        }
    }
    for p in pool.into_iter().flatten() {
        let name = unique_name(&p, &out);
        tracing::info!(listener = %name, passed = %p, "adopting a passed socket no listener was configured for");
        out.push(p.into_bound(name));
    }
    if out.len() >= MAX_INHERITED_FDS {
        return Err(Error::Activation(format!(
            "{} listeners in all with the passed sockets; at most {} are supported",
            out.len(),
            MAX_INHERITED_FDS - 1
        )));
    }
    Ok(out)
}

/// Which socket of `pool` each configured listener takes (taken out of the pool): the one of its
/// name and address, else the one of its name, else one of its address.
fn assign(addrs: &[(String, ListenAddr)], pool: &mut [Option<Passed>]) -> Vec<Option<Passed>> {
    let resolved: Vec<Vec<SocketAddr>> = addrs.iter().map(|(_, a)| resolve(a)).collect();
    let mut chosen: Vec<Option<Passed>> = addrs.iter().map(|_| None).collect();
    for (i, (name, addr)) in addrs.iter().enumerate() {
        let named: Vec<usize> = (0..pool.len())
            .filter(|&j| matches!(&pool[j], Some(p) if p.name.as_deref() == Some(name.as_str())))
            .collect();
        let pick = named
            .iter()
            .copied()
            .find(|&j| matches!(&pool[j], Some(p) if same_address(addr, &resolved[i], &p.local)))
            .or_else(|| named.first().copied());
        if let Some(j) = pick {
            chosen[i] = pool[j].take();
        }
    }
    for (i, (_, addr)) in addrs.iter().enumerate() {
        if chosen[i].is_some() {
            continue;
        }
        let pick = (0..pool.len())
            .find(|&j| matches!(&pool[j], Some(p) if same_address(addr, &resolved[i], &p.local)));
        if let Some(j) = pick {
            chosen[i] = pool[j].take();
        }
    }
    chosen
}

/// The listeners a re-executed master goes on with, from the sockets its previous image handed
/// over (see `master::handover`).
#[derive(Debug)]
pub(crate) struct AfterReexec {
    /// In the configured order, then the service manager's sockets no listener names.
    pub(crate) sockets: Vec<BoundSocket>,
    /// Handed over but no longer configured: closed once the new worker has taken over (the
    /// workers that use them hold their own copies until they have drained).
    pub(crate) retired: Vec<BoundSocket>,
    /// Names of listeners bound afresh (configured now, not before).
    pub(crate) added: Vec<String>,
}

/// Matches the configured listeners with the handed-over sockets as with socket activation (name
/// and address, else address: a listener only renamed keeps its socket and its queue), and binds
/// what the new configuration adds. A handed-over socket whose name changed with the same address
/// counts as kept.
pub(crate) fn after_reexec(
    addrs: &[(String, ListenAddr)],
    handed: Vec<crate::master::handover::HandedListener>,
    unix: &UnixSocketOptions,
) -> Result<AfterReexec, Error> {
    let mut extra = std::collections::HashMap::new();
    let mut pool = Vec::with_capacity(handed.len());
    for h in handed {
        if !fds::is_open(h.fd) {
            return Err(Error::Protocol(format!(
                "the handed-over listener {:?} at fd {} is not open",
                h.name, h.fd
            )));
        }
        // SAFETY: the previous image left this descriptor open for us under this number, and
        // the handover document, read once, is the only thing that names it.
        let fd = unsafe { OwnedFd::from_raw_fd(h.fd) };
        let passed = inspect(fd, Some(h.name.clone()))?;
        extra.insert(h.fd, (h.from_manager, h.unlink));
        pool.push(Some(passed));
    }
    let chosen = assign(addrs, &mut pool);
    let mut sockets = Vec::with_capacity(addrs.len());
    let mut added = Vec::new();
    let restore = |p: Passed, name: String, extra: &mut std::collections::HashMap<_, _>| {
        let (from_manager, unlink) = extra.remove(&p.fd.as_raw_fd()).unwrap_or((false, None));
        let mut bound = p.into_bound(name);
        bound.from_manager = from_manager;
        bound.unlink_on_exit = unlink.map(|u: crate::master::handover::SocketFileId| {
            crate::unix_socket::SocketFile::from_id(u.path, u.dev, u.ino)
        });
        bound
    };
    for ((name, addr), passed) in addrs.iter().zip(chosen) {
        match passed {
            Some(p) => sockets.push(restore(p, name.clone(), &mut extra)),
            None => {
                sockets.push(listener::bind(addr, name.clone(), unix)?);
                added.push(name.clone());
            }
        }
    }
    let mut retired = Vec::new();
    for p in pool.into_iter().flatten() {
        let name = p.name.clone().unwrap_or_default();
        let bound = restore(p, name, &mut extra);
        if bound.from_manager {
            sockets.push(bound);
        } else {
            retired.push(bound);
        }
    }
    Ok(AfterReexec {
        sockets,
        retired,
        added,
    })
}

/// What a configured TCP address resolves to (nothing for Unix paths, or when it does not resolve:
/// binding it reports that).
fn resolve(addr: &ListenAddr) -> Vec<SocketAddr> {
    match addr {
        ListenAddr::Tcp(hostport) => hostport
            .to_socket_addrs()
            .map(|it| it.collect())
            .unwrap_or_default(),
        ListenAddr::Unix(_) => Vec::new(),
    }
}

fn same_address(configured: &ListenAddr, resolved: &[SocketAddr], local: &Local) -> bool {
    match (configured, local) {
        (ListenAddr::Tcp(_), Local::Inet { addr, v6only }) => resolved.iter().any(|r| {
            r == addr
                || (!v6only
                    && addr.is_ipv6()
                    && addr.ip().is_unspecified()
                    && r.is_ipv4()
                    && r.ip().is_unspecified()
                    && r.port() == addr.port())
        }),
        (ListenAddr::Unix(path), Local::Path(p)) => {
            p == path
                || matches!(
                    (std::fs::canonicalize(p), std::fs::canonicalize(path)),
                    (Ok(a), Ok(b)) if a == b
                )
        }
        _ => false,
    }
}

/// A name for an unmatched passed socket that no other listener has: its descriptor name, else its
/// address, else its descriptor number.
fn unique_name(p: &Passed, taken: &[BoundSocket]) -> String {
    let free =
        |n: &str| !n.is_empty() && !n.contains(['\n', '\0']) && taken.iter().all(|b| b.name != n);
    let address = (p.local != Local::Unnamed).then(|| p.local.to_string());
    p.name
        .iter()
        .cloned()
        .chain(address)
        .find(|n| free(n))
        .unwrap_or_else(|| format!("fd{}", p.fd.as_raw_fd()))
}

#[cfg(test)]
#[path = "activation_tests.rs"]
mod tests;
