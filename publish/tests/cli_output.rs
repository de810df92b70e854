//! The tool's own output to a reader that goes away: `upshift-publish --help | head -1`.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

/// A pipe whose read end is already closed: every write to it fails with EPIPE, every time.
fn closed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array we own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe()");
    // SAFETY: both descriptors are ours alone; the read end is closed at once.
    unsafe {
        drop(OwnedFd::from_raw_fd(fds[0]));
        OwnedFd::from_raw_fd(fds[1])
    }
}

#[test]
fn help_and_version_to_a_closed_pipe_exit_0_without_a_panic() {
    for flag in ["--help", "-V"] {
        let out = Command::new(env!("CARGO_BIN_EXE_upshift-publish"))
            .arg(flag)
            .stdin(Stdio::null())
            .stdout(Stdio::from(closed_pipe()))
            .stderr(Stdio::piped())
            .output()
            .expect("run upshift-publish");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("panicked"),
            "upshift-publish {flag} into a closed pipe: {} {stderr}",
            out.status
        );
    }
}
