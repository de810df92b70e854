//! A Unix socket listener behaves like a TCP one: a second master on a path where a live socket
//! accepts fails to start ("address already in use", naming the path) and the first keeps serving;
//! a stale socket file is replaced; any other file is refused and left intact; the mode option is
//! in place before the first request; at exit the master removes the path only while it still
//! holds the socket it created. Real masters (the `fixture` and `hello` examples), Unix sockets in
//! a private temp dir, every wait bounded, every process killed by PID when the test ends.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const START: Duration = Duration::from_secs(15);
const STOP: Duration = Duration::from_secs(15);

/// A socket path in a fresh private dir, as the `--listen` argument and as an [`Addr`].
fn socket_in(dir: &TestDir) -> (PathBuf, String, Addr) {
    let path = dir.join("s.sock");
    let arg = path.display().to_string();
    (path.clone(), arg, Addr::Unix(path))
}

fn inode(path: &Path) -> u64 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino()
}

/// Waits for a master that must fail to start; returns its log.
fn refused_start(mut master: Master) -> String {
    let st = master
        .wait_exit(START)
        .unwrap_or_else(|| master.fail("the master started where it should have refused to"));
    if st.success() {
        master.fail(format!("the master exited with {st}, not a failure"));
    }
    master.log_contents()
}

/// A fixture master serving on a socket in a fresh private dir.
struct Served {
    _dir: TestDir,
    path: PathBuf,
    arg: String,
    addr: Addr,
    master: Master,
    /// The worker that answered the first request.
    worker: Option<u32>,
}

fn serve_at_fresh_path(tag: &str) -> Served {
    let dir = TestDir::new(tag);
    let (path, arg, addr) = socket_in(&dir);
    let mut master = Master::fixture(&["--listen", &arg]);
    let worker = master.wait_serving(&addr, START).pid();
    Served {
        _dir: dir,
        path,
        arg,
        addr,
        master,
        worker,
    }
}

/// SIGTERM, then waits for the master to have drained and exited.
fn stop(master: &mut Master) {
    master.signal(Signal::SIGTERM);
    if master.wait_exit(STOP).is_none() {
        master.fail("the master did not exit after SIGTERM");
    }
}

#[test]
fn a_second_master_on_a_live_socket_fails_and_the_first_keeps_serving() {
    let Served {
        _dir,
        path,
        arg,
        addr,
        master: mut first,
        worker,
    } = serve_at_fresh_path("us-live");
    let file = inode(&path);

    let log = refused_start(Master::fixture(&["--listen", &arg]));
    let wanted = format!("cannot listen on {arg}: address already in use");
    assert!(log.contains(&wanted), "no {wanted:?} in the log:\n{log}");

    assert_eq!(
        inode(&path),
        file,
        "the socket file of the first master was replaced"
    );
    assert!(first.is_running());
    assert_eq!(
        Some(first.serving_pid(&addr)),
        worker,
        "the path is no longer served by the first master's worker"
    );
}

#[test]
fn a_stale_socket_file_is_replaced_and_served() {
    let dir = TestDir::new("us-stale");
    let (path, arg, addr) = socket_in(&dir);
    // Bound and closed without unlinking: the file stays, nothing accepts on it.
    drop(UnixListener::bind(&path).unwrap());
    assert!(UnixStream::connect(&path).is_err());
    let mut master = Master::fixture(&["--listen", &arg]);
    master.wait_serving(&addr, START);
    let log = master.log_contents();
    assert!(
        log.contains("removing a stale socket file"),
        "the replacement was not logged:\n{log}"
    );
}

#[test]
fn a_regular_file_at_the_path_is_refused_and_left_intact() {
    let dir = TestDir::new("us-file");
    let (path, arg, _) = socket_in(&dir);
    std::fs::write(&path, "not a socket\n").unwrap();
    let log = refused_start(Master::fixture(&["--listen", &arg]));
    let wanted = format!("cannot listen on {arg}: a regular file is at this path, not a socket");
    assert!(log.contains(&wanted), "no {wanted:?} in the log:\n{log}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket\n");
}

#[test]
fn the_socket_mode_is_set_before_the_first_request() {
    let dir = TestDir::new("us-mode");
    let (path, arg, addr) = socket_in(&dir);
    let hello = example_path("hello");
    let master = Master::spawn(&hello, &["--listen", &arg, "--unix-mode", "660"], &[]);
    // Every mode the file shows until the first request is answered: none may allow more than
    // 660, and by the time a worker answers it must be exactly 660.
    let mut seen = Vec::new();
    let answered = wait_for(START, || {
        if let Ok(md) = std::fs::symlink_metadata(&path) {
            seen.push(md.permissions().mode() & 0o7777);
        }
        matches!(get(&addr, "/"), Ok(r) if r.status == 200).then_some(())
    });
    if answered.is_none() {
        master.fail(format!("GET / over {addr} did not answer 200"));
    }
    let md = std::fs::symlink_metadata(&path).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o7777, 0o660);
    assert!(
        seen.iter().all(|m| m & !0o660 == 0),
        "the socket file allowed more than 0660 before it served: {:?}",
        seen.iter().map(|m| format!("{m:o}")).collect::<Vec<_>>()
    );
}

#[test]
fn at_exit_a_socket_file_that_replaced_the_masters_is_kept() {
    // `_dir` is bound so that the directory lives as long as the test.
    let Served {
        _dir,
        path,
        mut master,
        ..
    } = serve_at_fresh_path("us-kept");
    // Someone else now owns the path.
    std::fs::remove_file(&path).unwrap();
    let theirs = UnixListener::bind(&path).unwrap();
    let file = inode(&path);
    stop(&mut master);
    assert_eq!(inode(&path), file, "the other socket's file was removed");
    let _client = UnixStream::connect(&path)
        .unwrap_or_else(|e| panic!("connect to the other socket after the master exited: {e}"));
    theirs.set_nonblocking(true).unwrap();
    assert!(theirs.accept().is_ok());
}

#[test]
fn at_exit_the_master_removes_its_own_socket_file() {
    // `_dir` is bound so that the directory lives as long as the test.
    let Served {
        _dir,
        path,
        mut master,
        ..
    } = serve_at_fresh_path("us-own");
    stop(&mut master);
    assert!(
        std::fs::symlink_metadata(&path).is_err(),
        "the master left its socket file behind"
    );
}
