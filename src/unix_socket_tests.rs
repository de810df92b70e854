use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};

use super::*;

/// A private directory under /tmp (short: socket paths are limited to 108 bytes), removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("ups-us-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
    fn sock(&self) -> PathBuf {
        self.0.join("s.sock")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn inode(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).unwrap().ino()
}

fn bind_error(err: Error) -> io::Error {
    match err {
        Error::Bind { source, .. } => source,
        other => panic!("not a bind error: {other}"),
    }
}

#[test]
fn a_connect_is_read_as_live_stale_gone_or_undecidable() {
    let err = |code| Err(io::Error::from_raw_os_error(code));
    assert_eq!(classify_connect(Ok(())).unwrap(), Probe::Live);
    // A full accept queue: the server is alive, only busy.
    assert_eq!(classify_connect(err(libc::EAGAIN)).unwrap(), Probe::Live);
    assert_eq!(
        classify_connect(err(libc::ECONNREFUSED)).unwrap(),
        Probe::Stale
    );
    assert_eq!(classify_connect(err(libc::ENOENT)).unwrap(), Probe::Gone);
    // Not allowed to connect, or a datagram socket: nothing says the file is stale.
    for code in [libc::EACCES, libc::EPROTOTYPE] {
        let e = classify_connect(err(code)).unwrap_err();
        assert!(e.to_string().contains("refusing to replace it"), "{e}");
    }
}

#[test]
fn a_mode_above_0o7777_is_a_configuration_error() {
    let opts = |mode| UnixSocketOptions {
        mode: Some(mode),
        ..Default::default()
    };
    assert!(opts(0o7777).validate().is_ok());
    assert!(UnixSocketOptions::default().validate().is_ok());
    let err = opts(0o10000).validate().unwrap_err().to_string();
    assert!(
        err.contains("0o10000") && err.contains("not a file mode"),
        "{err}"
    );
}

#[test]
fn a_live_socket_is_address_in_use_and_stays_untouched() {
    let dir = Dir::new("live");
    let path = dir.sock();
    let live = UnixListener::bind(&path).unwrap();
    let before = inode(&path);
    let err = bind(&path, &UnixSocketOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&path.display().to_string()) && text.contains("address already in use"),
        "{text}"
    );
    assert_eq!(bind_error(err).kind(), io::ErrorKind::AddrInUse);
    assert_eq!(inode(&path), before, "the live socket's file was replaced");
    // The live listener still gets connections through the path (the probe's among them).
    let _client = UnixStream::connect(&path).unwrap();
    live.set_nonblocking(true).unwrap();
    assert!(live.accept().is_ok());
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = Dir::new("stale");
    let path = dir.sock();
    drop(UnixListener::bind(&path).unwrap());
    // Binding over the old file would fail with EADDRINUSE: succeeding shows it was removed.
    let (fd, file) = bind(&path, &UnixSocketOptions::default()).unwrap();
    assert!(file.is_at_path());
    let listener = UnixListener::from(fd);
    let _client = UnixStream::connect(&path).unwrap();
    assert!(listener.accept().is_ok());
}

#[test]
fn other_files_are_refused_by_kind_and_left_alone() {
    let dir = Dir::new("other");
    let path = dir.sock();
    std::fs::write(&path, "keep me").unwrap();
    let err = bind(&path, &UnixSocketOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&path.display().to_string()) && err.contains("a regular file"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");

    let sub = dir.0.join("d.sock");
    std::fs::create_dir(&sub).unwrap();
    let err = bind(&sub, &UnixSocketOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("a directory"), "{err}");
    assert!(sub.is_dir());
}

#[test]
fn a_bind_that_loses_the_race_reports_address_in_use() {
    let dir = Dir::new("race");
    let path = dir.sock();
    // As if another process bound the path right after the stale file was removed.
    let _winner = UnixListener::bind(&path).unwrap();
    let e = bind_socket(&path, None).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    assert!(e.to_string().contains("while this one was binding"), "{e}");
}

#[test]
fn only_the_socket_this_master_created_is_removed() {
    let dir = Dir::new("rm");
    let path = dir.sock();
    let (_fd, file) = bind(&path, &UnixSocketOptions::default()).unwrap();
    // Another instance took the path over: its socket is not ours to remove.
    std::fs::remove_file(&path).unwrap();
    let _theirs = UnixListener::bind(&path).unwrap();
    let theirs = inode(&path);
    file.remove_if_ours();
    assert_eq!(inode(&path), theirs);

    std::fs::remove_file(&path).unwrap();
    let (_fd, file) = bind(&path, &UnixSocketOptions::default()).unwrap();
    file.remove_if_ours();
    assert!(
        std::fs::symlink_metadata(&path).is_err(),
        "our own socket stayed"
    );
}

#[test]
fn mode_and_owner_are_set_after_bind() {
    let dir = Dir::new("mode");
    let path = dir.sock();
    // As root the owner can be anyone; otherwise only our own ids are sure to be accepted.
    // SAFETY: geteuid and getegid only read the process's credentials.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let (uid, gid) = if euid == 0 {
        (65534, 65534)
    } else {
        (euid, egid)
    };
    let opts = UnixSocketOptions {
        mode: Some(0o660),
        uid: Some(uid),
        gid: Some(gid),
    };
    let (_fd, _file) = bind(&path, &opts).unwrap();
    let md = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o660);
    assert_eq!((md.uid(), md.gid()), (uid, gid));
}

#[cfg(target_os = "linux")]
#[test]
fn with_a_mode_the_file_never_allows_more_than_it() {
    let dir = Dir::new("early");
    let path = dir.sock();
    // Before the chmod that follows bind, the file already has no more than the mode's bits.
    let _fd = bind_socket(&path, Some(0o600)).unwrap();
    let mode = std::fs::symlink_metadata(&path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o177, 0, "{mode:o}");
}
