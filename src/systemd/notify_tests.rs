//! The notifier against a real datagram socket: what each phase sends, in order.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use super::*;

const TIMEOUTS: Timeouts = Timeouts {
    ready: Duration::from_secs(30),
    drain: Duration::from_secs(5),
};

/// A bound notification socket in a private directory, like systemd's.
struct Manager {
    socket: UnixDatagram,
    _dir: TempDir,
    path: PathBuf,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Manager {
    fn new() -> Manager {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("ups-notify-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Manager {
            socket,
            _dir: TempDir(dir),
            path,
        }
    }

    fn notifier(&self) -> Notifier {
        Notifier::new(Some(Target::Path(self.path.clone())), TIMEOUTS)
    }

    /// The next datagram as fields.
    fn next(&self) -> BTreeMap<String, String> {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).expect("a notification");
        fields(std::str::from_utf8(&buf[..n]).unwrap())
    }

    fn nothing_pending(&self) -> bool {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        let r = self.socket.recv(&mut buf);
        self.socket.set_nonblocking(false).unwrap();
        matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

fn fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn targets_are_paths_or_abstract_names() {
    assert_eq!(
        parse_target(OsStr::new("/run/systemd/notify")),
        Some(Target::Path("/run/systemd/notify".into()))
    );
    assert_eq!(
        parse_target(OsStr::new("@sd-notify")),
        Some(Target::Abstract(b"sd-notify".to_vec()))
    );
    assert_eq!(parse_target(OsStr::new("vsock:2:1234")), None);
    assert_eq!(parse_target(OsStr::new("")), None);
    assert_eq!(parse_target(OsStr::new("@")), None);
}

#[test]
fn start_restart_failed_restart_and_stop() {
    let m = Manager::new();
    let n = m.notifier();

    n.worker_starting(1, "first start");
    let start = m.next();
    assert_eq!(start["STATUS"], "starting generation 1 (first start)");
    assert!(!start.contains_key("READY"), "{start:?}");

    n.worker_ready(1, 101, true);
    let ready = m.next();
    assert_eq!(ready["READY"], "1");
    assert_eq!(ready["MAINPID"], std::process::id().to_string());
    assert_eq!(ready["STATUS"], "serving: generation 1 (pid 101)");

    let before = monotonic_usec();
    n.restart_requested("SIGUSR2 received");
    let reloading = m.next();
    assert_eq!(reloading["RELOADING"], "1", "{reloading:?}");
    let at: u128 = reloading["MONOTONIC_USEC"].parse().unwrap();
    assert!(at >= before && at <= monotonic_usec(), "{at} vs {before}");
    assert_eq!(reloading["EXTEND_TIMEOUT_USEC"], "40000000");

    n.worker_starting(2, "SIGUSR2 received");
    assert!(!m.next().contains_key("RELOADING"));
    n.worker_ready(2, 102, true);
    let ready = m.next();
    assert_eq!(ready["READY"], "1");
    assert!(
        !ready.contains_key("MAINPID"),
        "MAINPID only once: {ready:?}"
    );
    assert_eq!(ready["STATUS"], "serving: generation 2 (pid 102)");

    n.restart_requested("SIGUSR2 received");
    assert_eq!(m.next()["RELOADING"], "1");
    n.restart_failed("exited before it was ready (exit status 3)", Some(2));
    let failed = m.next();
    assert_eq!(
        failed["READY"], "1",
        "a failed restart ends the reload: {failed:?}"
    );
    assert_eq!(
        failed["STATUS"],
        "restart failed: exited before it was ready (exit status 3); generation 2 keeps serving"
    );

    n.stopping(1);
    let stopping = m.next();
    assert_eq!(stopping["STOPPING"], "1");
    assert_eq!(stopping["EXTEND_TIMEOUT_USEC"], "15000000");
    assert_eq!(stopping["STATUS"], "stopping: draining 1 worker");
    assert!(m.nothing_pending());
}

#[test]
fn a_restart_queued_at_start_up_follows_the_first_ready() {
    let m = Manager::new();
    let n = m.notifier();
    n.restart_requested("SIGUSR2 received");
    assert!(
        !m.next().contains_key("RELOADING"),
        "no reload before READY"
    );
    n.worker_ready(1, 101, false);
    let first = m.next();
    assert_eq!(first["READY"], "1");
    assert_eq!(first["RELOADING"], "1", "{first:?}");
    n.worker_ready(2, 102, true);
    assert_eq!(m.next()["READY"], "1");
}

#[test]
fn a_release_reloads_from_its_first_bytes_until_the_new_worker_is_ready() {
    let m = Manager::new();
    let n = m.notifier();
    let user_saw = Arc::new(Mutex::new(Vec::new()));
    let seen = user_saw.clone();
    let user: EventHook =
        Arc::new(move |e: &UpgradeEvent| seen.lock().unwrap().push(e.to_string()));
    let hook = n.wrap_hook(Some(user), Duration::from_secs(7)).unwrap();
    n.worker_ready(1, 101, true);
    m.next();

    hook(&UpgradeEvent::Checking {
        fetcher: "file".into(),
    });
    let id = "sha256:ab".to_string();
    hook(&UpgradeEvent::Downloading {
        identity: id.clone(),
        bytes: 10,
        total: Some(100),
    });
    let first = m.next();
    assert_eq!(first["RELOADING"], "1", "{first:?}");
    assert_eq!(first["EXTEND_TIMEOUT_USEC"], "60000000");
    assert_eq!(
        first["STATUS"],
        "downloading release sha256:ab: 10/100 bytes"
    );
    hook(&UpgradeEvent::Downloading {
        identity: id.clone(),
        bytes: 20,
        total: Some(100),
    });
    assert!(
        m.nothing_pending(),
        "progress is sent at most once a second"
    );
    hook(&UpgradeEvent::Downloading {
        identity: id.clone(),
        bytes: 100,
        total: Some(100),
    });
    let done = m.next();
    assert!(!done.contains_key("RELOADING"));
    assert_eq!(
        done["STATUS"],
        "downloading release sha256:ab: 100/100 bytes"
    );

    hook(&UpgradeEvent::TestRunning {
        identity: id.clone(),
    });
    let test_run = m.next();
    assert_eq!(test_run["STATUS"], "test-running release sha256:ab");
    assert_eq!(test_run["EXTEND_TIMEOUT_USEC"], "17000000");
    hook(&UpgradeEvent::Installing {
        identity: id.clone(),
    });
    assert_eq!(m.next()["STATUS"], "installing release sha256:ab");
    hook(&UpgradeEvent::HandingOff {
        identity: id.clone(),
    });
    let handoff = m.next();
    assert!(!handoff.contains_key("READY") && !handoff.contains_key("RELOADING"));
    assert_eq!(handoff["EXTEND_TIMEOUT_USEC"], "40000000");
    n.restart_requested("release sha256:ab");
    assert!(!m.next().contains_key("RELOADING"), "still the same reload");
    n.worker_ready(2, 102, true);
    assert_eq!(m.next()["READY"], "1");
    hook(&UpgradeEvent::Serving {
        identity: id.clone(),
        generation: 2,
    });
    assert_eq!(
        m.next()["STATUS"],
        "serving: generation 2, release sha256:ab (on probation)"
    );
    assert_eq!(
        user_saw.lock().unwrap().len(),
        8,
        "the user's hook sees every event"
    );
}

#[test]
fn every_restart_signal_gets_its_own_reloading_for_notify_reload() {
    let m = Manager::new();
    let n = m.notifier();
    let hook = n.wrap_hook(None, Duration::from_secs(10)).unwrap();
    n.worker_ready(1, 101, true);
    m.next();
    hook(&UpgradeEvent::TestRunning {
        identity: "v2".into(),
    });
    let first: u128 = m.next()["MONOTONIC_USEC"].parse().unwrap();
    // systemctl reload during the release: systemd waits for a RELOADING=1 stamped after its signal.
    n.restart_signalled();
    n.restart_requested("SIGUSR2 received");
    let again = m.next();
    assert_eq!(again["RELOADING"], "1", "{again:?}");
    assert!(again["MONOTONIC_USEC"].parse::<u128>().unwrap() >= first);
    assert_eq!(again["STATUS"], "restarting (SIGUSR2 received)");
    // Once stopping, no reload starts and none ends.
    n.stopping(1);
    assert_eq!(m.next()["STOPPING"], "1");
    n.restart_signalled();
    n.restart_requested("SIGUSR2 received");
    assert!(!m.next().contains_key("RELOADING"));
    n.worker_ready(2, 102, true);
    assert!(!m.next().contains_key("READY"));
}

#[test]
fn a_rejected_or_unfinished_release_ends_its_reload() {
    let m = Manager::new();
    let n = m.notifier();
    let hook = n.wrap_hook(None, Duration::from_secs(10)).unwrap();
    n.worker_ready(1, 101, true);
    m.next();
    let id = "v2".to_string();
    hook(&UpgradeEvent::TestRunning {
        identity: id.clone(),
    });
    assert_eq!(m.next()["RELOADING"], "1");
    hook(&UpgradeEvent::Rejected {
        identity: id.clone(),
        reason: "the test run crashed".into(),
    });
    let rejected = m.next();
    assert_eq!(rejected["READY"], "1");
    assert_eq!(
        rejected["STATUS"],
        "release v2 rejected: the test run crashed; generation 1 (pid 101) serving"
    );

    hook(&UpgradeEvent::Downloading {
        identity: id.clone(),
        bytes: 5,
        total: None,
    });
    assert_eq!(m.next()["RELOADING"], "1");
    // The pipeline gave up without a verdict; the next check shows it is over.
    hook(&UpgradeEvent::Checking {
        fetcher: "file".into(),
    });
    assert_eq!(m.next()["READY"], "1");
    hook(&UpgradeEvent::Checking {
        fetcher: "file".into(),
    });
    assert!(m.nothing_pending());
}

#[cfg(target_os = "linux")]
#[test]
fn abstract_names_work() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("upshift-notify-test-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = Notifier::new(Some(Target::Abstract(name.into_bytes())), TIMEOUTS);
    n.worker_ready(1, 7, true);
    let mut buf = [0u8; 1024];
    let len = socket.recv(&mut buf).unwrap();
    assert_eq!(
        fields(std::str::from_utf8(&buf[..len]).unwrap())["READY"],
        "1"
    );
}

#[test]
fn without_a_listener_nothing_fails() {
    let dir = std::env::temp_dir().join(format!("ups-notify-none-{}", std::process::id()));
    let n = Notifier::new(Some(Target::Path(dir.join("absent"))), TIMEOUTS);
    n.worker_ready(1, 7, true);
    n.restart_requested("x");
    n.stopping(2);
    let off = Notifier::new(None, TIMEOUTS);
    off.worker_ready(1, 7, true);
    assert!(off.wrap_hook(None, Duration::from_secs(1)).is_none());
}

#[test]
fn a_status_is_one_short_line_whatever_the_reason_holds() {
    let m = Manager::new();
    let n = m.notifier();
    let hook = n.wrap_hook(None, Duration::from_secs(10)).unwrap();
    n.worker_ready(1, 101, true);
    m.next();
    // A reason quoting what a release wrote: lines that would be fields of their own, and a lot.
    let reason = format!(
        "the test run crashed\nMAINPID=1\rREADY=1\u{0}{}",
        "x".repeat(5000)
    );
    hook(&UpgradeEvent::Rejected {
        identity: "v2".into(),
        reason,
    });
    let got = m.next();
    assert!(!got.contains_key("MAINPID"), "{got:?}");
    let status = &got["STATUS"];
    assert_eq!(
        status,
        "release v2 rejected: the test run crashed; generation 1 (pid 101) serving"
    );

    let long = "y".repeat(5000);
    hook(&UpgradeEvent::RolledBack {
        identity: "v3".into(),
        reason: long,
    });
    let status = m.next()["STATUS"].clone();
    assert!(
        status.chars().count() <= STATUS_MAX + 1,
        "{} chars",
        status.len()
    );
    assert!(status.ends_with('…'), "{status}");
    assert!(!status.chars().any(char::is_control));
}
