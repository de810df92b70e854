use std::time::{Duration, Instant};

use std::ffi::OsStr;

use super::{rt, TempDir};
use crate::install::testrun::{answer_line, judge, parse_answer, FD_ENV, HANDOVER_ENV, TOKEN_ENV};
use crate::install::{answer_test_run_if_asked, test_run, InstallError};
use crate::release::model::{refusal_kind, RefusalKind};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A test run that does not ask about the handover document, as before master re-exec.
fn run(path: &std::path::Path, timeout: Duration) -> Result<(), InstallError> {
    rt().block_on(test_run(path, &[], timeout, None))
}

/// A test run that needs the candidate to read `handover`, as a master that re-executes asks.
fn run_asking(path: &std::path::Path, handover: u32) -> Result<(), InstallError> {
    rt().block_on(test_run(path, &[], TIMEOUT, Some(handover)))
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
        answer_test_run_if_asked(|| Ok(()));
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
    // A build of this version can take over a master of this version, and says so only for a
    // version it reads.
    let writes = crate::master::handover::WRITES;
    rt().block_on(test_run(
        &script,
        &[],
        Duration::from_secs(30),
        Some(writes),
    ))
    .unwrap();
    let err = rt()
        .block_on(test_run(&script, &[], Duration::from_secs(30), Some(99)))
        .unwrap_err();
    assert!(
        matches!(err, InstallError::HandoverIncompatible { version: 99 }),
        "{err}"
    );

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

/// A candidate as a build of this version answers: `handover <n>` for the version it reads.
/// It also records what it was asked, to show that the variable is passed only when needed.
fn reads_version(dir: &TempDir, name: &str, version: u32) -> std::path::PathBuf {
    let asked = dir.path().join(format!("{name}.asked"));
    let body = format!(
        "#!/bin/sh\nprintf '%s' \"${{{HANDOVER_ENV}-unset}}\" > '{}'\n\
         printf '%s handover {version}\\n' \"${TOKEN_ENV}\" >&\"${FD_ENV}\"\n",
        asked.display()
    );
    dir.exe(name, body.as_bytes())
}

/// A candidate as a build of an older upshift answers: the bare token, whatever it is asked.
fn token_only(dir: &TempDir) -> std::path::PathBuf {
    dir.exe(
        "old",
        b"#!/bin/sh\nprintf '%s\\n' \"$UPSHIFT_TEST_RUN_TOKEN\" >&\"$UPSHIFT_TEST_RUN_FD\"\n",
    )
}

#[test]
fn a_candidate_that_reads_the_handover_version_passes_and_is_asked_only_when_needed() {
    let dir = TempDir::new("handover");
    let script = reads_version(&dir, "new", 1);
    let asked = || std::fs::read_to_string(dir.path().join("new.asked")).unwrap();
    run_asking(&script, 1).unwrap();
    assert_eq!(asked(), "1");
    // Asked for a version it does not read, its answer does not do.
    let err = run_asking(&script, 2).unwrap_err();
    assert!(
        matches!(err, InstallError::HandoverIncompatible { version: 2 }),
        "{err}"
    );
    // Not asked: the variable is absent, and any answer with the token passes.
    run(&script, TIMEOUT).unwrap();
    assert_eq!(asked(), "unset");
}

#[test]
fn a_candidate_that_answers_only_the_token_cannot_take_over_the_master() {
    let dir = TempDir::new("old");
    let script = token_only(&dir);
    let err = run_asking(&script, 1).unwrap_err();
    assert!(
        matches!(err, InstallError::HandoverIncompatible { version: 1 }),
        "{err}"
    );
    let msg = err.to_string();
    for says in [
        "cannot take over the running master",
        "version 1",
        "older or different upshift",
        "not installed",
        "keeps serving",
        "master_reexec(false)",
    ] {
        assert!(msg.contains(says), "{says:?} missing from {msg}");
    }
    // The same bytes would fail the same way: remembered as refused, not retried.
    assert!(err.is_release_fault());
    assert_eq!(refusal_kind(&err), Some(RefusalKind::Release));
    // Without master re-exec it is as good a release as ever.
    run(&script, TIMEOUT).unwrap();
}

#[test]
fn a_failure_or_a_missing_token_is_reported_before_the_handover() {
    let dir = TempDir::new("handover-order");
    let fails = dir.exe("fails", b"#!/bin/sh\nexit 3\n");
    let err = run_asking(&fails, 1).unwrap_err();
    assert!(matches!(err, InstallError::TestRunFailed { .. }), "{err}");
    let silent = dir.exe("silent", b"#!/bin/sh\nexit 0\n");
    let err = run_asking(&silent, 1).unwrap_err();
    assert!(matches!(err, InstallError::NotUpshift), "{err}");
}

#[test]
fn the_answer_names_the_handover_version_only_when_asked_for_one_it_reads() {
    let answer = |asked: Option<&str>, reads: &[u32]| {
        String::from_utf8(answer_line(b"tok", asked.map(OsStr::new), reads)).unwrap()
    };
    assert_eq!(answer(Some("1"), &[1]), "tok handover 1\n");
    assert_eq!(answer(Some("2"), &[1, 2]), "tok handover 2\n");
    // Not asked, asked for a version it cannot read, or asked in a way it does not understand:
    // the bare token, as a build without handover support answers.
    for asked in [
        None,
        Some("99"),
        Some(""),
        Some("x"),
        Some("+1"),
        Some(" 1"),
        Some("1 "),
        Some("-1"),
    ] {
        assert_eq!(answer(asked, &[1]), "tok\n", "{asked:?}");
    }
    assert_eq!(answer(Some("4294967296"), &[0]), "tok\n");
    assert_eq!(answer(Some("1"), &[]), "tok\n");
    // Non-UTF-8: not understood either.
    use std::os::unix::ffi::OsStrExt;
    let odd = answer_line(b"tok", Some(OsStr::from_bytes(b"1\xff")), &[1]);
    assert_eq!(odd, b"tok\n");
}

#[test]
fn the_parent_reads_the_answer_strictly_about_the_token_and_leniently_after_it() {
    let t = "0123abcd";
    assert_eq!(parse_answer(b"0123abcd", t), Some(None));
    assert_eq!(parse_answer(b"0123abcd\n", t), Some(None));
    assert_eq!(parse_answer(b"0123abcd handover 1\n", t), Some(Some(1)));
    assert_eq!(parse_answer(b"0123abcd handover 1", t), Some(Some(1)));
    // A later version may say more; the token alone proves an upshift program.
    assert_eq!(
        parse_answer(b"0123abcd future 7 handover 3\n", t),
        Some(Some(3))
    );
    assert_eq!(parse_answer(b"0123abcd future\n", t), Some(None));
    assert_eq!(parse_answer(b"0123abcd handover\n", t), Some(None));
    assert_eq!(parse_answer(b"0123abcd handover x\n", t), Some(None));
    assert_eq!(parse_answer(b"0123abcd handover +1\n", t), Some(None));
    for not_answered in [
        &b""[..],
        b"\n",
        b"0123abc",
        b"0123abcde",
        b"0123abcd\n\n",
        b"x0123abcd",
        b"0123abcdhandover 1",
        b"wrong handover 1\n",
    ] {
        assert_eq!(
            parse_answer(not_answered, t),
            None,
            "{:?}",
            String::from_utf8_lossy(not_answered)
        );
    }

    // What a child answers, the parent reads back.
    let asked = Some(OsStr::new("1"));
    assert!(judge(&answer_line(t.as_bytes(), asked, &[1]), t, Some(1)).is_ok());
    assert!(judge(&answer_line(t.as_bytes(), None, &[1]), t, None).is_ok());
    let old = answer_line(t.as_bytes(), asked, &[]);
    assert!(judge(&old, t, None).is_ok());
    assert!(matches!(
        judge(&old, t, Some(1)),
        Err(InstallError::HandoverIncompatible { version: 1 })
    ));
    assert!(matches!(
        judge(b"other\n", t, Some(1)),
        Err(InstallError::NotUpshift)
    ));
}
