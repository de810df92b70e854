use std::time::{Duration, Instant};

use super::{rt, TempDir};
use crate::install::testrun::{FD_ENV, TOKEN_ENV};
use crate::install::{answer_test_run_if_asked, test_run, InstallError};

const TIMEOUT: Duration = Duration::from_secs(10);

fn run(path: &std::path::Path, timeout: Duration) -> Result<(), InstallError> {
    rt().block_on(test_run(path, &[], timeout))
}

#[test]
fn a_program_that_answers_passes_whatever_it_prints() {
    let dir = TempDir::new("answer");
    let script = dir.exe(
        "app",
        b"#!/bin/sh\necho lots of output on stdout\necho noise >&2\nprintf '%s\\n' \"$UPSHIFT_TEST_RUN_TOKEN\" >&\"$UPSHIFT_TEST_RUN_FD\"\n",
    );
    run(&script, TIMEOUT).unwrap();
}

#[test]
fn a_failing_program_reports_its_status_and_stderr() {
    let dir = TempDir::new("fail");
    let script = dir.exe("app", b"#!/bin/sh\necho 'config missing' >&2\nexit 3\n");
    let err = run(&script, TIMEOUT).unwrap_err();
    let InstallError::TestRunFailed {
        status,
        stderr_tail,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(stderr_tail.contains("config missing"), "{err:?}");
    // The message goes to STATUS= and hooks: it says where the stderr is, not what it says.
    assert!(!err.to_string().contains("config missing"), "{err}");
    assert!(err.to_string().contains("exit status: 3"), "{err}");

    let script = dir.exe("crash", b"#!/bin/sh\nkill -SEGV $$\n");
    let err = run(&script, TIMEOUT).unwrap_err();
    let InstallError::TestRunFailed { status, .. } = &err else {
        panic!("{err}")
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGSEGV), "{err}");
}

#[test]
fn a_program_that_exits_0_without_answering_is_not_upshift() {
    let dir = TempDir::new("silent");
    let script = dir.exe("app", b"#!/bin/sh\nexit 0\n");
    assert!(matches!(
        run(&script, TIMEOUT),
        Err(InstallError::NotUpshift)
    ));
    let truth = dir.exe("true", &std::fs::read("/bin/true").unwrap());
    assert!(matches!(
        run(&truth, TIMEOUT),
        Err(InstallError::NotUpshift)
    ));
    let liar = dir.exe("liar", b"#!/bin/sh\necho wrong-token >&3\n");
    assert!(matches!(run(&liar, TIMEOUT), Err(InstallError::NotUpshift)));
}

#[test]
fn garbage_and_foreign_binaries_are_not_executable() {
    let dir = TempDir::new("noexec");
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1)
        .collect();
    let path = dir.exe("garbage", &garbage);
    let err = run(&path, TIMEOUT).unwrap_err();
    assert!(matches!(err, InstallError::NotExecutable(_)), "{err}");
    assert!(
        err.to_string()
            .contains("not an executable for this machine"),
        "{err}"
    );

    let mut elf = std::fs::read("/bin/true").unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    let foreign: u16 = if cfg!(target_arch = "aarch64") {
        0x3e
    } else {
        0xb7
    };
    elf[18..20].copy_from_slice(&foreign.to_le_bytes());
    let path = dir.exe("foreign", &elf);
    let err = run(&path, TIMEOUT).unwrap_err();
    assert!(matches!(err, InstallError::NotExecutable(_)), "{err}");
}

fn gone(pid: &str) -> bool {
    // Gone, or a zombie waiting for a reaper that is not us.
    match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_program_that_hangs_is_killed_with_its_children_at_the_timeout() {
    let dir = TempDir::new("hang");
    let body = format!(
        "#!/bin/sh\necho $$ > {d}/pid\nsleep 100 &\necho $! > {d}/child\nwait\n",
        d = dir.path().display()
    );
    let script = dir.exe("app", body.as_bytes());
    let timeout = Duration::from_millis(700);
    let started = Instant::now();
    let err = run(&script, timeout).unwrap_err();
    assert!(
        started.elapsed() < timeout + Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, InstallError::TestRunTimeout(t) if t == timeout),
        "{err}"
    );
    let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
    let child = std::fs::read_to_string(dir.path().join("child")).unwrap();
    assert!(gone(&pid), "the test run {pid} survived");
    let until = Instant::now() + Duration::from_secs(2);
    while !gone(&child) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(gone(&child), "its child {child} survived");
}

/// The child side, answered by a re-executed copy of this test binary: run through a wrapper
/// script (a test run passes no arguments), it answers the handshake and exits before the test
/// body; with a bad descriptor it exits 70.
#[test]
fn the_child_side_answers_the_handshake() {
    if std::env::var_os(TOKEN_ENV).is_some() {
        answer_test_run_if_asked();
        unreachable!("answer_test_run_if_asked returns only when not asked");
    }
    let dir = TempDir::new("child");
    let exe = std::env::current_exe().unwrap();
    let name = "install::tests::testrun::the_child_side_answers_the_handshake";
    let script = dir.exe(
        "app",
        format!(
            "#!/bin/sh\nexec '{}' --exact {name} --nocapture\n",
            exe.display()
        )
        .as_bytes(),
    );
    run(&script, Duration::from_secs(30)).unwrap();

    let out = std::process::Command::new(&exe)
        .args(["--exact", name, "--nocapture"])
        .env(TOKEN_ENV, "abc")
        .env(FD_ENV, "999")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(70), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(FD_ENV),
        "{out:?}"
    );
}
