use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn sample() -> Handover {
    Handover {
        build: "v1.4.2".into(),
        image_sha256: Some("cd".repeat(32)),
        next_generation: 7,
        crash_streak: 2,
        restart: Some("SIGUSR2 received".into()),
        notify: Some("@systemd notify\nodd".into()),
        notify_ready: true,
        notify_signalled: false,
        listeners: vec![
            HandedListener {
                fd: 3,
                kind: SocketKind::Tcp,
                name: "public api".into(),
                from_manager: true,
                unlink: None,
            },
            HandedListener {
                fd: 4,
                kind: SocketKind::Unix,
                name: "/run/app.sock".into(),
                from_manager: false,
                unlink: Some(SocketFileId {
                    path: PathBuf::from("/run/a b:c\n.sock"),
                    dev: 2049,
                    ino: 1_234_567,
                }),
            },
        ],
        workers: vec![
            HandedWorker {
                pid: 4242,
                generation: 6,
                control_fd: 5,
                role: Role::Serving,
                forked_here: true,
                ready_for: Some(Duration::from_millis(12_000)),
                drain_left: None,
            },
            HandedWorker {
                pid: 4100,
                generation: 5,
                control_fd: 6,
                role: Role::Draining,
                forked_here: false,
                ready_for: None,
                drain_left: Some(Duration::from_millis(29_000)),
            },
        ],
        refusals: vec![HandedRefusal {
            key: "sha256:ab cd".into(),
            identity: "s3://bucket/my app".into(),
            binary_sha256: Some("ab".repeat(32)),
            reason: "its version 0.9.0 is not newer than 1.0.0".into(),
            release_fault: true,
            reminded_ago: Duration::from_millis(5_000),
            expires_in: None,
        }],
    }
}

#[test]
fn a_document_reads_back_as_written() {
    let doc = sample();
    let text = doc.encode();
    assert!(text.starts_with("upshift-handover 1\n"), "{text}");
    assert_eq!(Handover::decode(&text).unwrap(), doc);
    assert_eq!(doc.descriptors(), vec![3, 4, 5, 6]);
}

#[test]
fn another_version_is_refused_by_number() {
    let text = sample()
        .encode()
        .replacen("upshift-handover 1", "upshift-handover 2", 1);
    let err = Handover::decode(&text).unwrap_err();
    assert!(
        err.to_string()
            .contains("version 2; this build reads versions [1]"),
        "{err}"
    );
    let err = Handover::decode("something else entirely\nend\n").unwrap_err();
    assert!(matches!(err, ReadError::Version(_)), "{err}");
    assert!(matches!(Handover::decode(""), Err(ReadError::Version(_))));
}

#[test]
fn a_cut_or_damaged_document_is_refused_with_its_line() {
    let text = sample().encode();
    let cut = &text[..text.len() - "end\n".len()];
    let err = Handover::decode(cut).unwrap_err();
    assert!(err.to_string().contains("cut short"), "{err}");

    for (bad, why) in [
        ("worker 4242 6 5 serving 1 12000\n", "malformed worker"),
        ("worker 1 6 5 serving 1 - -\n", "malformed worker"), // pid 1 is never a worker
        ("worker 4242 6 5 idle 1 - -\n", "malformed worker"),
        ("listener x tcp 0 - name\n", "malformed listener"),
        ("listener 3 udp 0 - name\n", "malformed listener"),
        ("listener 3 tcp 0 -\n", "malformed listener"),
        ("listener 3 unix 0 zz:1:2 name\n", "malformed listener"),
        ("next_generation many\n", "not a number"),
        ("notify_ready yes\n", "not 0/1"),
        ("refusal 1 5 - zz 00 - why\n", "malformed refusal"),
        ("refusal 1 5 -\n", "malformed refusal"),
    ] {
        let damaged = text.replacen("end\n", &format!("{bad}end\n"), 1);
        let err = Handover::decode(&damaged).unwrap_err();
        assert!(err.to_string().contains(why), "{bad:?}: {err}");
    }
    let after_end = format!("{text}worker 4242 6 5 serving 1 - -\n");
    assert!(Handover::decode(&after_end).is_err());
    let no_generation = text.replace("next_generation 7\n", "");
    assert!(Handover::decode(&no_generation).is_err());
}

#[test]
fn keys_of_a_later_revision_are_ignored() {
    let text = sample()
        .encode()
        .replacen("end\n", "watchdog_usec 30000000\nend\n", 1);
    assert_eq!(Handover::decode(&text).unwrap(), sample());
}

#[test]
fn the_document_crosses_in_a_memfd() {
    use std::os::fd::IntoRawFd;
    let doc = sample();
    let fd = to_memfd(&doc).unwrap().into_raw_fd();
    assert_eq!(read_fd(fd).unwrap(), doc);
    // read_fd took the descriptor and closed it.
    assert!(!crate::fds::is_open(fd) || fd_is_reused(fd));
    let err = read_fd(-1).unwrap_err();
    assert!(err.to_string().contains("fd -1"), "{err}");
}

/// Another test thread may have opened a descriptor at the same number since.
fn fd_is_reused(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|p| !p.to_string_lossy().contains("upshift-handover"))
}

fn any_text() -> impl Strategy<Value = String> {
    "[ -~\n]{0,40}"
}

fn any_name() -> impl Strategy<Value = String> {
    "[!-~][ -~]{0,30}"
}

prop_compose! {
    fn any_listener()(
        fd in 0..1000i32,
        unix in any::<bool>(),
        name in any_name(),
        from_manager in any::<bool>(),
        file in proptest::option::of(("[ -~\n]{1,40}", any::<u64>(), any::<u64>())),
    ) -> HandedListener {
        HandedListener {
            fd,
            kind: if unix { SocketKind::Unix } else { SocketKind::Tcp },
            name,
            from_manager,
            unlink: file.map(|(path, dev, ino)| SocketFileId { path: PathBuf::from(path), dev, ino }),
        }
    }
}

prop_compose! {
    fn any_refusal()(
        key in any_text(),
        identity in any_text(),
        binary_sha256 in proptest::option::of("[0-9a-f]{64}"),
        reason in "[!-~][ -~]{0,40}",
        release_fault in any::<bool>(),
        reminded_ms in 0..u64::MAX / 2,
        expires_ms in proptest::option::of(0..u64::MAX / 2),
    ) -> HandedRefusal {
        HandedRefusal {
            key,
            identity,
            binary_sha256,
            reason,
            release_fault,
            reminded_ago: Duration::from_millis(reminded_ms),
            expires_in: expires_ms.map(Duration::from_millis),
        }
    }
}

prop_compose! {
    fn any_worker()(
        pid in 2..i32::MAX,
        generation in any::<u64>(),
        control_fd in 0..1000i32,
        serving in any::<bool>(),
        forked_here in any::<bool>(),
        ready_ms in proptest::option::of(0..u64::MAX / 2),
        drain_ms in proptest::option::of(0..u64::MAX / 2),
    ) -> HandedWorker {
        HandedWorker {
            pid,
            generation,
            control_fd,
            role: if serving { Role::Serving } else { Role::Draining },
            forked_here,
            ready_for: ready_ms.map(Duration::from_millis),
            drain_left: drain_ms.map(Duration::from_millis),
        }
    }
}

proptest! {
    #[test]
    fn any_document_reads_back_as_written(
        build in "[ -~]{0,40}",
        image_sha256 in proptest::option::of("[0-9a-f]{64}"),
        next_generation in any::<u64>(),
        crash_streak in any::<u32>(),
        restart in proptest::option::of("[ -~]{0,40}"),
        notify in proptest::option::of(any_text()),
        notify_ready in any::<bool>(),
        notify_signalled in any::<bool>(),
        listeners in proptest::collection::vec(any_listener(), 0..6),
        workers in proptest::collection::vec(any_worker(), 0..6),
        refusals in proptest::collection::vec(any_refusal(), 0..4),
    ) {
        let doc = Handover {
            build, image_sha256, next_generation, crash_streak, restart, notify, notify_ready, notify_signalled,
            listeners, workers, refusals,
        };
        prop_assert_eq!(Handover::decode(&doc.encode()).unwrap(), doc);
    }

    /// Whatever the bytes, reading never panics: it is a document or an error.
    #[test]
    fn any_text_is_read_or_refused_without_panicking(
        lines in proptest::collection::vec("[ -~]{0,60}", 0..12),
    ) {
        let text = format!("upshift-handover 1\n{}\nend\n", lines.join("\n"));
        let _ = Handover::decode(&text);
        let _ = Handover::decode(&lines.join("\n"));
    }
}
