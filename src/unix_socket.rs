//! Unix socket listeners, made to behave like TCP ones: binding a path where a live socket accepts
//! fails with "address already in use" instead of taking the path over; only a stale socket file
//! (nothing accepts on it) is replaced; at exit the master removes the path only while it is still
//! the socket it created; the file's mode and owner can be set before any worker starts.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Mode and owner of the socket files the master binds; see [`Upgrader::listen_unix_mode`] and
/// [`Upgrader::listen_unix_owner`](crate::Upgrader::listen_unix_owner).
///
/// [`Upgrader::listen_unix_mode`]: crate::Upgrader::listen_unix_mode
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UnixSocketOptions {
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
}

impl UnixSocketOptions {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        match self.mode {
            Some(mode) if mode > 0o7777 => Err(Error::Config(format!(
                "listen_unix_mode({mode:#o}) is not a file mode: at most 0o7777"
            ))),
            _ => Ok(()),
        }
    }
}

impl crate::Upgrader {
    /// The permission bits of every Unix socket file the master binds, e.g. `0o660` so that the
    /// owner's group may connect (connecting needs write permission). Default: what the umask
    /// leaves. The mode is set between bind and the first worker's start, so no connection is
    /// ever accepted under another mode; on Linux the file is also created with no more than
    /// these bits. Sockets passed by systemd socket activation are left as their `.socket` unit
    /// made them (`SocketMode=`). A mode above `0o7777` makes `run` fail; failing to set it is a
    /// start error naming the path.
    ///
    /// ```no_run
    /// upshift::Upgrader::new()
    ///     .listen("/run/app/app.sock")
    ///     .listen_unix_mode(0o660)
    ///     .run(|state| {
    ///         # drop(state);
    ///     })?;
    /// # Ok::<(), upshift::Error>(())
    /// ```
    pub fn listen_unix_mode(mut self, mode: u32) -> Self {
        self.unix_socket.mode = Some(mode);
        self
    }

    /// The owner and group given to every Unix socket file the master binds (numeric ids; `None`
    /// keeps that one as created: the master's user and group). Set, like the mode, before the
    /// first worker starts; changing the owner usually needs root. Sockets passed by systemd
    /// socket activation are not changed (`SocketUser=`, `SocketGroup=` set theirs). Failing to
    /// change it is a start error naming the path.
    ///
    /// ```no_run
    /// // The web server's group (id 33 here) may connect; others may not.
    /// upshift::Upgrader::new()
    ///     .listen("/run/app/app.sock")
    ///     .listen_unix_owner(None, Some(33))
    ///     .listen_unix_mode(0o660)
    ///     .run(|state| {
    ///         # drop(state);
    ///     })?;
    /// # Ok::<(), upshift::Error>(())
    /// ```
    pub fn listen_unix_owner(mut self, uid: Option<u32>, gid: Option<u32>) -> Self {
        self.unix_socket.uid = uid;
        self.unix_socket.gid = gid;
        self
    }
}

/// The socket file a master created, known by (device, inode) recorded right after bind: whatever
/// is at the path later is only removed if it is still that file.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn at(path: &Path) -> io::Result<SocketFile> {
        let md = std::fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            dev: md.dev(),
            ino: md.ino(),
        })
    }

    /// Path, device and inode: what crosses a master's re-exec (see `master::handover`).
    pub(crate) fn id(&self) -> (&Path, u64, u64) {
        (&self.path, self.dev, self.ino)
    }

    /// The socket file an earlier image of this master created, as it described it.
    pub(crate) fn from_id(path: PathBuf, dev: u64, ino: u64) -> SocketFile {
        SocketFile { path, dev, ino }
    }

    fn is_at_path(&self) -> bool {
        matches!(std::fs::symlink_metadata(&self.path),
            Ok(md) if md.file_type().is_socket() && md.dev() == self.dev && md.ino() == self.ino)
    }

    /// Removes the path if it is still this socket. A path that now holds another file (a new
    /// instance bound there, an operator replaced it) is someone else's and stays.
    pub(crate) fn remove_if_ours(&self) {
        let path = self.path.display();
        if !self.is_at_path() {
            tracing::info!(%path, "socket file left in place: the path no longer holds the socket this master created");
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(%path, error = %e, "cannot remove the socket file");
        }
    }
}

/// What was at the path before binding.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Nothing,
    Socket { dev: u64, ino: u64 },
    Other(&'static str),
}

fn found(path: &Path) -> io::Result<Found> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => return Err(e),
    };
    let t = md.file_type();
    Ok(if t.is_socket() {
        Found::Socket {
            dev: md.dev(),
            ino: md.ino(),
        }
    } else {
        Found::Other(if t.is_file() {
            "a regular file"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_symlink() {
            "a symbolic link"
        } else if t.is_fifo() {
            "a FIFO"
        } else {
            "a device file"
        })
    })
}

/// What a connect to an existing socket file says about it.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// Something accepts there (or its queue is full: it is alive, just busy).
    Live,
    /// Refused: no socket is bound to that file any more, it was left by a process that died.
    Stale,
    /// The file disappeared meanwhile.
    Gone,
}

fn classify_connect(result: io::Result<()>) -> io::Result<Probe> {
    match result {
        Ok(()) => Ok(Probe::Live),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Probe::Live),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(Probe::Live),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(Probe::Stale),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Probe::Gone),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!(
                "cannot tell whether a process accepts on the socket file at this path \
                 (connect: {e}); refusing to replace it"
            ),
        )),
    }
}

/// Connects without blocking: a live server's full queue must not stall the master's start.
fn probe(path: &Path) -> io::Result<Probe> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    classify_connect(socket.connect(&SockAddr::unix(path)?))
}

fn in_use(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("address already in use: {why}"),
    )
}

/// Clears the way for binding `path`: nothing there, or a stale socket file that is removed.
fn make_way(path: &Path) -> io::Result<()> {
    let (dev, ino) = match found(path)? {
        Found::Nothing => return Ok(()),
        Found::Other(kind) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{kind} is at this path, not a socket; refusing to remove it"),
            ))
        }
        Found::Socket { dev, ino } => (dev, ino),
    };
    match probe(path)? {
        Probe::Live => Err(in_use(
            "a process accepts connections on this socket (another instance running?); stop it \
             or choose another path",
        )),
        Probe::Gone => Ok(()),
        Probe::Stale => {
            // Another instance may have replaced the file since it was probed: only the very
            // file found stale is removed.
            if found(path)? != (Found::Socket { dev, ino }) {
                return Err(in_use(
                    "the socket file was replaced while it was being checked",
                ));
            }
            tracing::info!(path = %path.display(), "removing a stale socket file: nothing accepts connections on it");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
    }
}

/// Creates the listening socket at `path`. With a mode, the unbound socket gets it first: Linux
/// creates the file with the socket's mode less the umask, so the file never allows more than
/// asked, even before the exact mode is set after bind.
fn bind_socket(path: &Path, mode: Option<u32>) -> io::Result<OwnedFd> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    if let Some(mode) = mode {
        // Best effort: other systems may refuse fchmod on a socket; the chmod after bind counts.
        // SAFETY: fchmod on a descriptor this function owns.
        let _ = unsafe { libc::fchmod(socket.as_raw_fd(), mode as libc::mode_t) };
    }
    let addr = SockAddr::unix(path)?;
    socket.bind(&addr).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            in_use(&format!(
                "another process bound this path while this one was binding it ({e})"
            ))
        } else {
            e
        }
    })?;
    socket.listen(crate::listener::LISTEN_BACKLOG)?;
    Ok(OwnedFd::from(socket))
}

fn apply_options(file: &SocketFile, opts: &UnixSocketOptions) -> Result<(), Error> {
    let path = file.path.display();
    if let Some(mode) = opts.mode {
        std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(mode)).map_err(
            |e| {
                Error::io(
                    format!("cannot set the mode of socket {path} to {mode:04o}"),
                    e,
                )
            },
        )?;
    }
    if opts.uid.is_some() || opts.gid.is_some() {
        std::os::unix::fs::lchown(&file.path, opts.uid, opts.gid).map_err(|e| {
            let id = |v: Option<u32>| v.map_or("unchanged".to_string(), |v| v.to_string());
            Error::io(
                format!(
                    "cannot change the owner of socket {path} to uid {} gid {}",
                    id(opts.uid),
                    id(opts.gid)
                ),
                e,
            )
        })?;
    }
    Ok(())
}

/// Binds a Unix listener at `path` as described in the module docs; the [`SocketFile`] is what
/// the master removes at exit.
pub(crate) fn bind(path: &Path, opts: &UnixSocketOptions) -> Result<(OwnedFd, SocketFile), Error> {
    let bind_error = |source| Error::Bind {
        addr: path.display().to_string(),
        source,
    };
    make_way(path).map_err(bind_error)?;
    let fd = bind_socket(path, opts.mode).map_err(bind_error)?;
    let file = SocketFile::at(path).map_err(|e| {
        Error::io(
            format!(
                "cannot stat socket {} right after binding it",
                path.display()
            ),
            e,
        )
    })?;
    if let Err(e) = apply_options(&file, opts) {
        file.remove_if_ours();
        return Err(e);
    }
    Ok((fd, file))
}

#[cfg(test)]
#[path = "unix_socket_tests.rs"]
mod tests;
