//! What the master binds ([`ListenAddr`]) and what a worker receives ([`Listener`]).
//!
//! The master binds every configured address once, at start, and keeps those sockets open for its
//! whole life; every worker gets duplicates of the very same sockets, so the kernel's accept queue is
//! shared and a connection that arrives during a handoff waits in the queue instead of being refused.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::PathBuf;

use crate::error::Error;
use crate::unix_socket::{SocketFile, UnixSocketOptions};

/// Backlog for the listening sockets. Large, because during a handoff the old worker stops
/// accepting before the new one has drained the queue; the queue is what keeps clients waiting
/// instead of refused.
pub(crate) const LISTEN_BACKLOG: i32 = 1024;

/// An address the master listens on, given to [`Upgrader::listen`](crate::Upgrader::listen).
///
/// Parsed from a string: anything that contains a `/` is a Unix socket path, everything else is a
/// TCP `host:port`.
///
/// ```
/// use upshift::ListenAddr;
/// let tcp: ListenAddr = "127.0.0.1:8080".parse().unwrap();
/// let unix: ListenAddr = "/run/app.sock".parse().unwrap();
/// assert!(matches!(tcp, ListenAddr::Tcp(_)));
/// assert!(matches!(unix, ListenAddr::Unix(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP `host:port`; the host is resolved once, when the master binds.
    Tcp(String),
    /// A Unix domain stream socket path. As with a TCP port in use, binding fails ("address
    /// already in use") while a process accepts connections on a socket at that path; a stale
    /// socket file (nothing accepts on it: left by a process that died) is replaced; any other
    /// kind of file at that path is an error and is left alone. At exit the master removes the
    /// path only if it still holds the socket this master created. See
    /// [`Upgrader::listen_unix_mode`](crate::Upgrader::listen_unix_mode) for the file's mode.
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.is_empty() {
            return Err(Error::Config("an empty listen address".into()));
        }
        if s.contains('/') {
            Ok(ListenAddr::Unix(PathBuf::from(s)))
        } else if s.contains(':') {
            Ok(ListenAddr::Tcp(s.to_string()))
        } else {
            Err(Error::Config(format!(
                "listen address {s:?} is neither host:port nor a socket path containing '/'"
            )))
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => f.write_str(a),
            ListenAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A socket the master bound, with the name that travels to the worker.
#[derive(Debug)]
pub(crate) struct BoundSocket {
    pub(crate) name: String,
    pub(crate) kind: SocketKind,
    pub(crate) fd: OwnedFd,
    /// For Unix sockets the master created: removed when the master exits, if still there.
    pub(crate) unlink_on_exit: Option<SocketFile>,
    /// Passed by the service manager rather than bound by the master: kept even when no
    /// listener names it any more (the .socket unit owns it).
    pub(crate) from_manager: bool,
}

/// Which kind of socket an inherited descriptor is; travels in the environment protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketKind {
    Tcp,
    Unix,
}

impl SocketKind {
    pub(crate) fn tag(self) -> &'static str {
        match self {
            SocketKind::Tcp => "tcp",
            SocketKind::Unix => "unix",
        }
    }
    pub(crate) fn from_tag(tag: &str) -> Option<Self> {
        match tag {
            "tcp" => Some(SocketKind::Tcp),
            "unix" => Some(SocketKind::Unix),
            _ => None,
        }
    }
}

impl BoundSocket {
    /// Hands the socket to code in this very process (the disabled mode). The socket file of a
    /// Unix listener is then left behind like any plain server leaves it; the next bind replaces it.
    pub(crate) fn into_listener(mut self) -> io::Result<Listener> {
        self.unlink_on_exit = None;
        let fd = self.fd.try_clone()?;
        listener_from_fd(std::mem::take(&mut self.name), self.kind, fd)
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if let Some(file) = self.unlink_on_exit.take() {
            file.remove_if_ours();
        }
    }
}

/// Binds one address. TCP sockets get SO_REUSEADDR (so a restarted master can bind while old
/// connections sit in TIME_WAIT) and a large backlog; Unix sockets are bound as
/// [`crate::unix_socket`] describes, with `unix`'s mode and owner. All descriptors are
/// close-on-exec: they reach a worker only through the explicit handoff in [`crate::fds`].
pub(crate) fn bind(
    addr: &ListenAddr,
    name: String,
    unix: &UnixSocketOptions,
) -> Result<BoundSocket, Error> {
    match addr {
        ListenAddr::Tcp(hostport) => {
            let resolved: Vec<SocketAddr> = hostport
                .to_socket_addrs()
                .map_err(|e| Error::Bind {
                    addr: hostport.clone(),
                    source: e,
                })?
                .collect();
            let mut last_err =
                io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
            for sa in resolved {
                match bind_tcp(sa) {
                    Ok(fd) => {
                        return Ok(BoundSocket {
                            name,
                            kind: SocketKind::Tcp,
                            fd,
                            unlink_on_exit: None,
                            from_manager: false,
                        })
                    }
                    Err(e) => last_err = e,
                }
            }
            Err(Error::Bind {
                addr: hostport.clone(),
                source: last_err,
            })
        }
        ListenAddr::Unix(path) => {
            let (fd, file) = crate::unix_socket::bind(path, unix)?;
            Ok(BoundSocket {
                name,
                kind: SocketKind::Unix,
                fd,
                unlink_on_exit: Some(file),
                from_manager: false,
            })
        }
    }
}

fn bind_tcp(sa: SocketAddr) -> io::Result<OwnedFd> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(sa), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if sa.is_ipv6() {
        // One address, one family: `[::]:80` should not silently also take 0.0.0.0:80.
        socket.set_only_v6(true)?;
    }
    socket.bind(&sa.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(OwnedFd::from(socket))
}

/// A listening socket handed to `prog`, already non-blocking (tokio requires it) and
/// close-on-exec (so processes `prog` spawns do not hold the port).
///
/// ```no_run
/// # async fn demo(mut state: upshift::State) -> std::io::Result<()> {
/// for listener in state.take_listeners() {
///     println!("serving {}", listener.name());
///     match listener.into_tokio()? {
///         upshift::TokioListener::Tcp(tcp) => { let _ = tcp.accept().await?; }
///         upshift::TokioListener::Unix(unix) => { let _ = unix.accept().await?; }
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Listener {
    name: String,
    socket: ListenerSocket,
}

/// The socket inside a [`Listener`].
#[derive(Debug)]
pub enum ListenerSocket {
    /// A TCP listener.
    Tcp(std::net::TcpListener),
    /// A Unix domain stream listener.
    Unix(StdUnixListener),
}

/// A [`Listener`] registered with the current tokio runtime.
#[derive(Debug)]
pub enum TokioListener {
    /// A TCP listener.
    Tcp(tokio::net::TcpListener),
    /// A Unix domain stream listener.
    Unix(tokio::net::UnixListener),
}

impl Listener {
    pub(crate) fn new(name: String, socket: ListenerSocket) -> Self {
        Listener { name, socket }
    }

    /// Wraps a TCP listener bound elsewhere (tests, or serving without a master), making it
    /// non-blocking and close-on-exec.
    ///
    /// ```
    /// let std = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let l = upshift::Listener::from_tcp("api", std)?;
    /// assert_eq!(l.name(), "api");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// If the descriptor's flags cannot be changed.
    pub fn from_tcp(name: impl Into<String>, listener: std::net::TcpListener) -> io::Result<Self> {
        listener_from_fd(name.into(), SocketKind::Tcp, OwnedFd::from(listener))
    }

    /// Wraps a Unix listener bound elsewhere; see [`from_tcp`](Self::from_tcp).
    ///
    /// # Errors
    /// If the descriptor's flags cannot be changed.
    pub fn from_unix(name: impl Into<String>, listener: StdUnixListener) -> io::Result<Self> {
        listener_from_fd(name.into(), SocketKind::Unix, OwnedFd::from(listener))
    }

    /// The listener's name: the address as configured (`127.0.0.1:8080`, `/run/app.sock`) unless
    /// it was named with [`Upgrader::listen_named`](crate::Upgrader::listen_named).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The std socket, non-blocking.
    pub fn socket(&self) -> &ListenerSocket {
        &self.socket
    }

    /// Consumes the listener, returning the std socket (non-blocking).
    pub fn into_socket(self) -> ListenerSocket {
        self.socket
    }

    /// The local address, for display.
    pub fn local_addr_string(&self) -> String {
        match &self.socket {
            ListenerSocket::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            ListenerSocket::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_default(),
        }
    }

    /// Registers the socket with the current tokio runtime.
    ///
    /// # Errors
    /// Fails outside a tokio runtime, or if the runtime cannot register the descriptor.
    pub fn into_tokio(self) -> io::Result<TokioListener> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "Listener::into_tokio needs a tokio runtime: call it inside the runtime that will serve",
            ));
        }
        Ok(match self.socket {
            ListenerSocket::Tcp(l) => TokioListener::Tcp(tokio::net::TcpListener::from_std(l)?),
            ListenerSocket::Unix(l) => TokioListener::Unix(tokio::net::UnixListener::from_std(l)?),
        })
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match &self.socket {
            ListenerSocket::Tcp(l) => l.as_raw_fd(),
            ListenerSocket::Unix(l) => l.as_raw_fd(),
        }
    }
}

/// Builds a [`Listener`] from a descriptor this process owns, making it non-blocking and
/// close-on-exec.
pub(crate) fn listener_from_fd(
    name: String,
    kind: SocketKind,
    fd: OwnedFd,
) -> io::Result<Listener> {
    crate::fds::set_nonblocking(fd.as_raw_fd())?;
    crate::fds::set_cloexec(fd.as_raw_fd())?;
    let socket = match kind {
        SocketKind::Tcp => ListenerSocket::Tcp(std::net::TcpListener::from(fd)),
        SocketKind::Unix => ListenerSocket::Unix(StdUnixListener::from(fd)),
    };
    Ok(Listener::new(name, socket))
}
