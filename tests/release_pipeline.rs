//! The release pipeline end to end, with the real master: a copy of the fixture runs as
//! `<dir>/app --watch <dir>/next`, and each test publishes one release to `<dir>/next` the way a
//! deploy script does (side files first, then the build written to `next.tmp` and renamed).
//!
//! For every bad release the test asserts that traffic never left the old worker (same pid, build
//! `base`, polled throughout and for 2 s after the master logged its verdict), that `<dir>/app` is
//! byte-identical to the original, that no staging or rollback temp file is left behind, and that
//! the master's log says what was wrong. Releases are fixture copies with a build stamp
//! (`UPSHIFT-TEST-BUILD:<id>[:<behavior>]`, see `examples/fixture.rs`).

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

#[test]
fn wrong_checksum_is_rejected() {
    let mut rig = Rig::new("rp-sum");
    rig.start(&[]);
    let mut bytes = fs::read(fixture_path()).unwrap();
    bytes.extend_from_slice(b"UPSHIFT-TEST-BUILD:bad-sum\n");
    let wrong = sha_hex(b"some other build");
    let actual = sha_hex(&bytes);
    refused(
        &mut rig,
        &bytes,
        Some(&wrong),
        &[
            "checksum mismatch",
            &actual,
            &format!("but {wrong} was published"),
        ],
    );
}

#[test]
fn garbage_bytes_are_rejected() {
    let mut rig = Rig::new("rp-junk");
    rig.start(&[]);
    // 1 MiB of xorshift noise: neither ELF magic nor `#!`.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    let mut bytes: Vec<u8> = (0..(1 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    bytes[..8].copy_from_slice(b"GARBAGE!");
    refused(
        &mut rig,
        &bytes,
        None,
        &["is not an executable for this machine"],
    );
}

#[test]
fn binary_for_another_architecture_is_rejected_without_running() {
    let mut rig = Rig::new("rp-arch");
    rig.start(&[]);
    let mut bytes = fs::read(fixture_path()).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([bytes[18], bytes[19]]),
        62,
        "the fixture is not x86_64"
    );
    bytes[18..20].copy_from_slice(&0xB7u16.to_le_bytes()); // EM_AARCH64
    bytes.extend_from_slice(b"UPSHIFT-TEST-BUILD:arm\n");
    refused(
        &mut rig,
        &bytes,
        None,
        &["is not an executable for this machine"],
    );
    // It never ran: no worker but the base one ever started.
    let starts = read_starts(&rig.path("starts"));
    rig.expect(
        starts.len() == 1 && starts[0].0 == rig.base_pid,
        format!("workers started: {starts:?}"),
    );
}

#[test]
fn binary_that_exits_at_once_fails_its_test_run() {
    let mut rig = Rig::new("rp-exit");
    rig.start(&[]);
    let mut bytes = fs::read(fixture_path()).unwrap();
    bytes.extend_from_slice(b"UPSHIFT-TEST-BUILD:quits:exit-at-start\n");
    let reason = refused(
        &mut rig,
        &bytes,
        None,
        &[
            "failed its test run (exit status: 4)",
            "in the master's log",
        ],
    );
    // What the binary wrote is logged, never part of the reason (which reaches STATUS=).
    assert!(!reason.contains("stamped exit-at-start"), "{reason}");
    rig.wait_log("fixture: stamped exit-at-start", STEP_LOG);
}

/// How long a line logged with a verdict may take to show.
const STEP_LOG: Duration = Duration::from_secs(5);

#[test]
fn binary_not_built_with_upshift_is_rejected() {
    let mut rig = Rig::new("rp-true");
    rig.start(&[]);
    let bytes = fs::read("/bin/true").unwrap();
    refused(
        &mut rig,
        &bytes,
        None,
        &["did not answer upshift's test-run handshake"],
    );
}

/// With master re-exec on (the default), a release must prove at its test run that it can read
/// the master's handover document. This one answers as a build of an older upshift does: the
/// token and nothing more.
#[test]
fn release_that_cannot_take_over_the_master_is_refused_at_its_test_run() {
    let mut rig = Rig::new("rp-handover");
    rig.start(&[]);
    let bytes =
        b"#!/bin/sh\nprintf '%s\\n' \"$UPSHIFT_TEST_RUN_TOKEN\" >&\"$UPSHIFT_TEST_RUN_FD\"\n";
    refused(
        &mut rig,
        bytes,
        None,
        &[
            "cannot take over the running master",
            "handover document",
            "master_reexec(false)",
        ],
    );
}

#[test]
fn release_larger_than_the_file_size_limit_is_not_installed_and_the_master_survives() {
    let mut rig = Rig::new("rp-fsize");
    let app_len = fs::metadata(&rig.app).unwrap().len();
    // The master may write files up to just over the app's size; the release is 2 MiB larger.
    let limit = app_len + (1 << 20);
    rig.start_with(&[], &[], Some(limit));
    let traffic = rig.watch();
    let sha = rig.prepare_build("big", 2 << 20);
    assert!(fs::metadata(rig.path("next.tmp")).unwrap().len() > limit);
    let identity = rig.publish_prepared(&sha);
    let reason = rig.wait_not_installed(&identity);
    for e in ["writing the new binary", "File too large"] {
        rig.expect(
            reason.contains(e),
            format!("the rejection does not say {e:?}: {reason}"),
        );
    }
    rig.assert_master_alive("after EFBIG");
    std::thread::sleep(HOLD);
    let seen = traffic.stop();
    rig.assert_master_alive("2 s after EFBIG");
    rig.assert_only_base_served(&seen, "after EFBIG");
    rig.assert_app_is_original("after EFBIG");
    // A machine fault is retried after a backoff, and a retry stages again: a staged file may
    // exist for a moment, but none may stay.
    let dir = rig.dir.join("");
    let cleared = wait_for(Duration::from_secs(10), || {
        stray_temp_files(&dir).is_empty().then_some(())
    });
    if cleared.is_none() {
        rig.assert_no_temp_files("after EFBIG and its retries");
    }
}

// ---------------------------------------------------------------------------------------------
// Releases that pass every check and fail once they run.

#[test]
fn worker_that_never_becomes_ready_is_rolled_back() {
    let mut rig = Rig::new("rp-nready");
    rig.start(&["--ready-timeout-ms", "1500"]);
    let traffic = rig.watch();
    let (identity, _) = rig.publish_build("nr:never-ready");
    rig.wait_log(&format!("installing release {identity}"), VERDICT);
    let line = rig.wait_log(&format!("release {identity} rolled back: "), VERDICT);
    rig.expect(
        line.contains("not ready within 1.5s"),
        format!("the rollback does not say why: {line}"),
    );
    rig.wait_log("rolled back to the previous binary", Duration::from_secs(5));
    rig.assert_untouched(traffic, "after a never-ready worker");
    // It did run (and was killed): a second worker started, of the never-ready build.
    let starts = read_starts(&rig.path("starts"));
    rig.expect(
        starts.len() == 2 && starts[1].2.contains("NeverReady"),
        format!("worker starts: {starts:?}"),
    );
    rig.expect(
        file_sha(&rig.path("app.prev")) == rig.original_sha,
        "app.prev is not the original",
    );
}

#[test]
fn worker_that_crashes_during_probation_is_rolled_back() {
    let mut rig = Rig::new("rp-crash");
    rig.start(&["--probation-ms", "5000"]);
    let traffic = rig.watch();
    let (identity, _) = rig.publish_build("cr:crash-after-ready 2000");
    let line = rig.wait_log(&format!("release {identity} rolled back: "), VERDICT);
    rig.expect(
        line.contains("within the probation window"),
        format!("the rollback does not say why: {line}"),
    );
    // Back on a base-build worker, started after the rollback.
    let addr = rig.addr.clone();
    let back = wait_for(VERDICT, || {
        get(&addr, "/")
            .ok()
            .and_then(|r| served(&r))
            .filter(|(pid, build)| *pid != rig.base_pid && build == "base")
    })
    .unwrap_or_else(|| rig.fail("no new base-build worker after the rollback"));
    std::thread::sleep(HOLD);
    let seen = traffic.stop();
    let phases = phases(&seen);
    // Who served, in order of first appearance: the old base worker, the cr worker, then a
    // third, base-build worker. (A worker told to drain may answer a request or two after its
    // successor became ready, so the phases may interleave briefly at a handover.)
    let mut order: Vec<(u32, String)> = Vec::new();
    for o in &seen {
        if let Obs::Served { pid, build } = o {
            if !order.iter().any(|(p, _)| p == pid) {
                order.push((*pid, build.clone()));
            }
        }
    }
    let errors = seen.iter().filter(|o| matches!(o, Obs::Failed(_))).count();
    let last = seen
        .iter()
        .rev()
        .take(10)
        .all(|o| matches!(o, Obs::Served { pid, build } if *pid == back.0 && build == "base"));
    let ok = order.len() == 3
        && order[0] == (rig.base_pid, "base".to_string())
        && order[1].1 == "cr"
        && order[2] == (back.0, "base".to_string())
        && last
        && errors <= 3;
    rig.expect(
        ok,
        format!(
            "traffic went {phases:?}; expected the old base worker, then cr, then a new base \
             worker (at most 3 failed requests, around the crash)"
        ),
    );
    rig.assert_app_is_original("after the rollback");
    rig.assert_no_temp_files("after the rollback");
    eprintln!(
        "crash rollback: traffic {:?}",
        phases
            .iter()
            .map(|(o, n)| format!("{o:?} x{n}"))
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Releases that go through.

#[test]
fn good_release_is_served_and_the_original_kept_as_prev() {
    let mut rig = Rig::new("rp-good");
    rig.start(&[]);
    let traffic = rig.watch();
    let (identity, sha) = rig.publish_build("good1");
    let addr = rig.addr.clone();
    let (new_pid, _) = wait_for(VERDICT, || {
        get(&addr, "/")
            .ok()
            .and_then(|r| served(&r))
            .filter(|(_, b)| b == "good1")
    })
    .unwrap_or_else(|| rig.fail("build good1 never served"));
    rig.expect(new_pid != rig.base_pid, "good1 served by the old pid");
    rig.wait_log(
        &format!("release {identity} passed probation"),
        Duration::from_secs(15),
    );
    let seen = traffic.stop();
    let failed = seen.iter().filter(|o| matches!(o, Obs::Failed(_))).count();
    rig.expect(
        failed == 0,
        format!("requests failed during the upgrade: {:?}", phases(&seen)),
    );
    rig.expect(file_sha(&rig.app) == sha, "app is not the new build");
    rig.expect(
        file_sha(&rig.path("app.prev")) == rig.original_sha,
        "app.prev is not the original binary",
    );
    rig.assert_no_temp_files("after a good release");
    let r = get(&rig.addr, "/").unwrap();
    rig.expect(
        served(&r) == Some((new_pid, "good1".into())),
        format!("after probation: {:?}", r.body),
    );
}

#[test]
fn minisign_signature_by_another_key_is_rejected_and_a_good_one_accepted() {
    let mut rig = Rig::new("rp-sig");
    let right = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let wrong = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let pubfile = rig.path("minisign.pub");
    fs::write(&pubfile, right.pk.to_box().unwrap().into_string()).unwrap();
    let pubarg = pubfile.display().to_string();
    rig.start(&["--minisign-pubkey", &pubarg]);
    let sign = |kp: &minisign::KeyPair, path: &Path| {
        sign_for(kp, path, "app", "1.0.0", upshift::release::BUILD_TARGET)
    };

    // Signed by the wrong key: refused.
    let traffic = rig.watch();
    let sha = rig.prepare_build("sig-wrong", 0);
    let sig = sign(&wrong, &rig.path("next.tmp"));
    rig.write_side("next.minisig", sig.as_bytes());
    let identity = rig.publish_prepared(&sha);
    let reason = rig.wait_rejected(&identity);
    rig.expect(
        reason.contains("minisign signature is not valid for the configured public key"),
        format!("the rejection does not say the signature is bad: {reason}"),
    );
    rig.assert_untouched(traffic, "after a release signed by another key");

    // Signed by the configured key: served.
    let sha = rig.prepare_build("sig-ok", 0);
    let sig = sign(&right, &rig.path("next.tmp"));
    rig.write_side("next.minisig", sig.as_bytes());
    let identity = rig.publish_prepared(&sha);
    let addr = rig.addr.clone();
    wait_for(VERDICT, || {
        get(&addr, "/")
            .ok()
            .and_then(|r| served(&r))
            .filter(|(_, b)| b == "sig-ok")
    })
    .unwrap_or_else(|| rig.fail(format!("the correctly signed {identity} never served")));
    rig.expect(file_sha(&rig.app) == sha, "app is not the signed build");
}

#[test]
fn rejected_release_is_not_retried_on_later_polls_or_a_touch() {
    let mut rig = Rig::new("rp-once");
    // The updater's debug lines show each time the fetcher offers the release again.
    rig.start_with(
        &[],
        &[(
            "RUST_LOG",
            "info,upshift::master::updater=debug,upshift::install=debug",
        )],
        None,
    );
    // Not an executable: a fault of the bytes themselves, which no change of the file's stamp
    // can cure (a checksum mismatch, which may be a half-written file, is retried: see below).
    let mut bytes = b"GARBAGE!".to_vec();
    bytes.extend_from_slice(&[0u8; 4096]);
    bytes.extend_from_slice(b"UPSHIFT-TEST-BUILD:once\n");
    let traffic = rig.watch();
    let identity = rig.publish(&bytes, None);
    rig.wait_rejected(&identity);
    // Three poll intervals (1 s each): nothing new may happen.
    std::thread::sleep(Duration::from_millis(3500));
    // A touch (mtime only, same inode and bytes) makes the File fetcher offer it again...
    let f = fs::File::options().write(true).open(&rig.next).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    let again = format!("release was rejected before; not trying it again identity={identity}");
    rig.wait_log(&again, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    // ... and the updater refuses it from memory: exactly one attempt in the whole log.
    let found = log_lines_with(rig.m(), &format!("new release found identity={identity}"));
    let rejected = log_lines_with(rig.m(), &format!("release {identity} rejected: "));
    let staged = log_lines_with(rig.m(), "staging a release");
    rig.expect(
        found.len() == 1 && rejected.len() == 1,
        format!(
            "expected exactly one attempt at {identity}: {} 'new release found', {} rejections",
            found.len(),
            rejected.len()
        ),
    );
    rig.expect(
        staged.len() == 1,
        format!("staged {} times: {staged:?}", staged.len()),
    );
    let refusals = log_lines_with(rig.m(), &again).len();
    eprintln!(
        "not retried: {} 'new release found', {} rejection, {} staging, {refusals} refusal(s) \
         from memory after the touch",
        found.len(),
        rejected.len(),
        staged.len()
    );
    let seen = traffic.stop();
    rig.assert_only_base_served(&seen, "while a rejected release sat in next");
    rig.assert_app_is_original("after the touch");
    rig.assert_no_temp_files("after the touch");
}

#[test]
fn a_checksum_mismatch_is_retried_only_when_the_file_changes() {
    let mut rig = Rig::new("rp-mismatch");
    rig.start_with(
        &[],
        &[("RUST_LOG", "info,upshift::master::updater=debug")],
        None,
    );
    let mut bytes = fs::read(fixture_path()).unwrap();
    bytes.extend_from_slice(b"UPSHIFT-TEST-BUILD:mismatch\n");
    let wrong = sha_hex(b"not this build");
    let identity = rig.publish(&bytes, Some(&wrong));
    rig.wait_rejected(&identity);
    let attempts = |rig: &Rig| {
        log_lines_with(rig.m(), &format!("new release found identity={identity}")).len()
    };
    // Unchanged, it is not read again: three poll intervals and nothing new.
    std::thread::sleep(Duration::from_millis(3500));
    rig.expect(attempts(&rig) == 1, "an unchanged file was tried again");
    // The file changes (as when an upload in place goes on): it is a new candidate.
    let f = fs::File::options().write(true).open(&rig.next).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    wait_for(VERDICT, || (attempts(&rig) == 2).then_some(()))
        .unwrap_or_else(|| rig.fail("the changed file was not tried again"));
    std::thread::sleep(Duration::from_millis(3500));
    rig.expect(attempts(&rig) == 2, "tried again without a change");
    // The same bytes refused for the same reason are not news: one warning, not two.
    let warned = log_lines_with(rig.m(), &format!("release {identity} rejected: ")).len();
    rig.expect(
        warned == 1,
        format!("{warned} rejection warnings for the same bytes"),
    );
    rig.assert_app_is_original("after two mismatches");
    rig.assert_no_temp_files("after two mismatches");
}

/// When a round of the SIGKILL test kills the master.
// ---------------------------------------------------------------------------------------------
// Fixing what was wrong without republishing the binary: the signature is part of what the
// updater remembers a refusal by, and a machine fault (disk full) is not remembered at all.

#[test]
fn release_re_signed_with_the_right_key_is_accepted() {
    let mut rig = Rig::new("rp-resign");
    let right = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let wrong = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let pubfile = rig.path("minisign.pub");
    fs::write(&pubfile, right.pk.to_box().unwrap().into_string()).unwrap();
    let pubarg = pubfile.display().to_string();
    rig.start_with(
        &["--minisign-pubkey", &pubarg],
        &[("RUST_LOG", "info,upshift::master::updater=debug")],
        None,
    );
    let sign = |kp: &minisign::KeyPair, path: &Path| {
        sign_for(kp, path, "app", "1.0.0", upshift::release::BUILD_TARGET)
    };
    let sha = rig.prepare_build("resigned", 0);
    let bad = sign(&wrong, &rig.path("next.tmp"));
    let good = sign(&right, &rig.path("next.tmp"));
    rig.write_side("next.minisig", bad.as_bytes());
    let identity = rig.publish_prepared(&sha);
    rig.wait_rejected(&identity);
    // The operator notices and publishes the right signature for the same build.
    rig.write_side("next.minisig", good.as_bytes());
    let addr = rig.addr.clone();
    if wait_for(VERDICT.min(Duration::from_secs(10)), || {
        get(&addr, "/")
            .ok()
            .and_then(|r| served(&r))
            .filter(|(_, b)| b == "resigned")
    })
    .is_none()
    {
        rig.fail(format!(
            "the same build re-signed with the configured key was never installed ({identity})"
        ));
    }
}

#[test]
fn release_not_installed_for_a_full_disk_is_retried_once_there_is_room() {
    let mut rig = Rig::new("rp-room");
    let app_len = fs::metadata(&rig.app).unwrap().len();
    rig.start_with(
        &[],
        &[("RUST_LOG", "info,upshift::master::updater=debug")],
        Some(app_len + (1 << 20)),
    );
    let sha = rig.prepare_build("roomy", 2 << 20);
    let identity = rig.publish_prepared(&sha);
    let reason = rig.wait_not_installed(&identity);
    rig.expect(reason.contains("File too large"), &reason);
    // The operator makes room: lift the master's limit, and touches nothing else. The
    // updater retries a release refused for the machine's fault on its own, with a backoff.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit on our own child's pid with a struct we own.
    let r = unsafe {
        libc::prlimit(
            rig.m().pid() as i32,
            libc::RLIMIT_FSIZE,
            &unlimited,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    let addr = rig.addr.clone();
    if wait_for(Duration::from_secs(15), || {
        get(&addr, "/")
            .ok()
            .and_then(|r| served(&r))
            .filter(|(_, b)| b == "roomy")
    })
    .is_none()
    {
        rig.fail(format!(
            "{identity}, refused for want of room, was never retried once there was room"
        ));
    }
}

#[test]
fn a_second_master_on_the_same_binary_installs_nothing_until_the_first_exits() {
    let mut rig = Rig::new("rp-two-masters");
    // The first master runs from the same file and watches a path of its own.
    let (listen, addr) = free_tcp_addr();
    let other_next = rig.path("other-next").display().to_string();
    let args = ["--listen", &listen, "--watch", &other_next];
    let mut first = Master::spawn(&rig.app, &args, &[]);
    first.wait_serving(&addr, START);
    let took = wait_until(START, || {
        !log_lines_with(&first, "now installs releases for its binary").is_empty()
    });
    assert!(
        took,
        "the first master never took the lock: {}",
        first.log_tail(4000)
    );

    rig.start(&[]);
    rig.wait_log("will not install releases while the other one runs", START);
    let mut bytes = fs::read(fixture_path()).unwrap();
    bytes.extend_from_slice(b"UPSHIFT-TEST-BUILD:second\n");
    let reason = not_installed(
        &mut rig,
        &bytes,
        None,
        &["another upshift master holds", "app.upshift-lock"],
    );
    assert!(reason.contains("keeps serving"), "{reason}");

    // Once the holder is gone, the same release is tried again and installed.
    first.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        first.wait_exit(START).is_some(),
        "the first master did not exit"
    );
    rig.wait_build("second", VERDICT);
}

#[test]
fn a_test_run_gets_only_stdio_and_its_handshake_descriptor() {
    const STRAY_FD: i32 = 42;
    let mut rig = Rig::new("rp-testrun-fds");
    let stray = fs::File::create(rig.path("stray")).unwrap();
    let listing = rig.path("test-run-fds");
    let listing_arg = listing.display().to_string();
    let args = rig.args(&["--test-run-fds", &listing_arg]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // A master that inherited a descriptor without close-on-exec, as from a careless shell.
    let stray_fd = ExtraFd {
        source: std::os::fd::AsFd::as_fd(&stray),
        target: STRAY_FD,
    };
    rig.master = Some(Master::spawn_with_extra_fds(
        &rig.app,
        &args,
        &[],
        &[stray_fd],
    ));
    let addr = rig.addr.clone();
    rig.m_mut().wait_serving(&addr, START);
    let held = fs::read_link(format!("/proc/{}/fd/{STRAY_FD}", rig.m().pid()));
    rig.expect(
        held.is_ok(),
        "the master does not hold the stray descriptor",
    );

    rig.publish_build("fds");
    rig.wait_build("fds", VERDICT);
    let text =
        fs::read_to_string(&listing).unwrap_or_else(|e| rig.fail(format!("no listing: {e}")));
    let fds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "the test-run saw:\n{text}");
}
