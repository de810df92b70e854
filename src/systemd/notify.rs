//! The sd_notify protocol, spoken by the master: one datagram of `KEY=VALUE` lines per change,
//! sent to the socket named by `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
//!
//! What systemd is told, and why:
//!
//! - `READY=1` with `MAINPID=` once the first worker is ready: `Type=notify` start-up ends when the
//!   service answers, not when the master has forked.
//! - `RELOADING=1` with `MONOTONIC_USEC=` when a restart or a release starts, and `READY=1` when it is
//!   over, successful or not (a failed restart leaves the old worker serving, which is "ready"). A
//!   release counts from its first downloaded bytes, so `TimeoutStartSec=`, which bounds a reload,
//!   also covers the download and test-run; `EXTEND_TIMEOUT_USEC=` on every sign of progress keeps a
//!   slow but moving step alive, while a stalled one still times out.
//! - `STOPPING=1` when the master starts draining, with `EXTEND_TIMEOUT_USEC=` covering the drain
//!   timeout, after which the master kills what is left and exits.
//! - `STATUS=` per phase, for `systemctl status`.
//!
//! Failing to notify never stops the master: errors are logged (the first at `warn`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::events::UpgradeEvent;
use crate::master::EventHook;

/// The variable naming the service manager's notification socket.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Added to a step's own bound in `EXTEND_TIMEOUT_USEC=`: the master acts on its timers, then reaps.
const SLACK: Duration = Duration::from_secs(10);
/// How long a pipeline step (download, staging, install) may go without a sign of progress before
/// the service manager may time the reload out.
const PROGRESS_HEARTBEAT: Duration = Duration::from_secs(60);
/// The most characters of a reason (a refused release's) in `STATUS=`: `systemctl status` shows
/// one line, and the status is world-readable, so it says why in short; the log has the details.
const REASON_MAX: usize = 160;
/// The most characters of a whole `STATUS=` value.
const STATUS_MAX: usize = 256;
/// Downloads report progress every 100 ms; the service manager hears of it at most this often.
const DOWNLOAD_STATUS_EVERY: Duration = Duration::from_secs(1);

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A socket file.
    Path(PathBuf),
    /// A name in Linux's abstract namespace (`@name` in the variable, without the `@`).
    Abstract(Vec<u8>),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Path(p) => write!(f, "{}", p.display()),
            Target::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

/// Reads and removes `NOTIFY_SOCKET`.
pub(crate) fn take_target() -> Option<Target> {
    let value = std::env::var_os(NOTIFY_SOCKET)?;
    std::env::remove_var(NOTIFY_SOCKET);
    parse_target(&value)
}

fn parse_target(value: &OsStr) -> Option<Target> {
    let bytes = value.as_bytes();
    match bytes.first() {
        None => None,
        Some(b'/') => Some(Target::Path(PathBuf::from(value))),
        Some(b'@') if bytes.len() > 1 => Some(Target::Abstract(bytes[1..].to_vec())),
        _ => {
            tracing::warn!(
                value = %value.to_string_lossy(),
                "{NOTIFY_SOCKET} is neither a socket path nor an abstract @name (vsock is not \
                 supported); the service manager will not hear from this master"
            );
            None
        }
    }
}

/// The bounds of the steps whose duration the service manager is told about.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) ready: Duration,
    pub(crate) drain: Duration,
}

/// Sends the master's notifications; does nothing when `NOTIFY_SOCKET` was not set. Cheap to clone:
/// the install pipeline's event hook holds one too.
#[derive(Clone, Default)]
pub(crate) struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    socket: UnixDatagram,
    addr: SocketAddr,
    target: Target,
    timeouts: Timeouts,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// `READY=1` went out once: from then on a restart is a reload.
    ready_once: bool,
    /// `STOPPING=1` went out: no reload starts or ends any more.
    stopping: bool,
    /// The restart being requested comes from the restart signal.
    signalled: bool,
    /// A restart is under way in the master (from the request until a worker is ready or failed).
    restarting: bool,
    /// A release is in the pipeline, from its first bytes until the master takes over the handoff.
    releasing: bool,
    serving: Option<(u64, u32)>,
    last_download_status: Option<Instant>,
    test_run: Duration,
    failures: u64,
}

impl State {
    fn reloading(&self) -> bool {
        self.restarting || self.releasing
    }

    fn serving_suffix(&self) -> String {
        match self.serving {
            Some((generation, pid)) => format!("; generation {generation} (pid {pid}) serving"),
            None => "; no worker serving".into(),
        }
    }
}

/// One notification being put together.
#[derive(Debug, Default)]
struct Message(Vec<String>);

impl Message {
    fn field(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        // A value is one line: a newline would start a field of its own (`MAINPID=`, say).
        let value = value.to_string().replace(char::is_control, " ");
        self.0.push(format!("{key}={value}"));
        self
    }
    /// `STATUS=`: one short line, whatever it is made of (a reason may quote a release).
    fn status(self, value: impl std::fmt::Display) -> Self {
        self.field("STATUS", one_line(&value.to_string(), STATUS_MAX))
    }
    fn extend_timeout(self, by: Duration) -> Self {
        self.field("EXTEND_TIMEOUT_USEC", by.as_micros())
    }
    fn reloading(self) -> Self {
        self.field("RELOADING", 1)
            .field("MONOTONIC_USEC", monotonic_usec())
    }
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Some(inner) => write!(f, "Notifier({})", inner.target),
            None => f.write_str("Notifier(off)"),
        }
    }
}

impl Notifier {
    /// A notifier for `target`; off when there is none or its socket cannot be made.
    pub(crate) fn new(target: Option<Target>, timeouts: Timeouts) -> Self {
        let Some(target) = target else {
            return Notifier::default();
        };
        match open(&target) {
            Ok((socket, addr)) => {
                tracing::debug!(%target, "notifying the service manager");
                Notifier {
                    inner: Some(Arc::new(Inner {
                        socket,
                        addr,
                        target,
                        timeouts,
                        state: Mutex::new(State::default()),
                    })),
                }
            }
            Err(e) => {
                tracing::warn!(%target, error = %e, "cannot prepare to notify the service manager; it will not hear from this master");
                Notifier::default()
            }
        }
    }

    /// A notifier taken over from the master's previous image (see `master::handover`): the
    /// socket named as `NOTIFY_SOCKET` names it, and whether `READY=1` went out already and a
    /// restart signal is being answered.
    pub(crate) fn resume(
        target: Option<&str>,
        timeouts: Timeouts,
        ready_once: bool,
        signalled: bool,
    ) -> Self {
        let notifier = Notifier::new(target.and_then(|t| parse_target(OsStr::new(t))), timeouts);
        notifier.with(|st, _| {
            st.ready_once = ready_once;
            st.signalled = signalled;
            None
        });
        notifier
    }

    /// The socket as `NOTIFY_SOCKET` names it, to hand over across the master's re-exec.
    pub(crate) fn target_value(&self) -> Option<String> {
        self.inner.as_ref().map(|i| i.target.to_string())
    }

    /// Whether `READY=1` went out already.
    pub(crate) fn ready_sent(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.lock().ready_once)
    }

    /// Whether a restart signal is waiting for its `RELOADING=1`.
    pub(crate) fn signalled(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.lock().signalled)
    }

    /// A `STATUS=` line of its own (the master's re-exec, which no other step reports).
    pub(crate) fn status(&self, text: &str) {
        self.with(|_, _| Some(Message::default().status(text)));
    }

    /// A worker is being started.
    pub(crate) fn worker_starting(&self, generation: u64, reason: &str) {
        self.with(|_, _| {
            Some(Message::default().status(format!("starting generation {generation} ({reason})")))
        });
    }

    /// The restart signal arrived; [`restart_requested`](Self::restart_requested) follows. Each
    /// signal gets a `RELOADING=1` of its own, even while a reload is under way: with
    /// `Type=notify-reload` systemd sends the signal and waits for a `RELOADING=1` stamped after it.
    pub(crate) fn restart_signalled(&self) {
        self.with(|st, _| {
            st.signalled = true;
            None
        });
    }

    /// A restart was asked for (a signal, a queued restart, a release's handoff, a rollback).
    pub(crate) fn restart_requested(&self, reason: &str) {
        self.with(|st, t| {
            let fresh = std::mem::take(&mut st.signalled) && st.reloading();
            let mut msg = begin(st, |st| st.restarting = true);
            if fresh && st.ready_once && !st.stopping {
                msg = Message::default().reloading();
            }
            Some(
                msg.extend_timeout(t.ready + SLACK)
                    .status(format!("restarting ({reason})")),
            )
        });
    }

    /// A worker became ready; `settled` when no other worker is starting after it.
    pub(crate) fn worker_ready(&self, generation: u64, pid: u32, settled: bool) {
        self.with(|st, _| {
            st.serving = Some((generation, pid));
            let status = format!("serving: generation {generation} (pid {pid})");
            if !st.ready_once && !st.stopping {
                st.ready_once = true;
                if settled {
                    st.restarting = false;
                }
                let mut msg = Message::default()
                    .field("READY", 1)
                    .field("MAINPID", std::process::id())
                    .status(status);
                if st.reloading() {
                    // A restart asked for during start-up is under way already.
                    msg = msg.reloading();
                }
                return Some(msg);
            }
            let msg = end(st, |st| {
                if settled {
                    st.restarting = false;
                }
            });
            Some(msg.status(status))
        });
    }

    /// A restart ended without a new worker: it failed to start or to become ready.
    pub(crate) fn restart_failed(&self, why: &str, serving: Option<u64>) {
        self.with(|st, _| {
            if serving.is_none() {
                st.serving = None;
            }
            let keeps = match st.serving {
                Some((generation, _)) => format!("generation {generation} keeps serving"),
                None => "no worker is serving; retrying after a backoff".into(),
            };
            let what = if st.ready_once { "restart" } else { "start" };
            let msg = end(st, |st| st.restarting = false);
            Some(msg.status(format!("{what} failed: {why}; {keeps}")))
        });
    }

    /// The serving worker exited on its own.
    pub(crate) fn worker_lost(&self, generation: u64, what: &str) {
        self.with(|st, _| {
            if st.serving.is_some_and(|(g, _)| g == generation) {
                st.serving = None;
            }
            Some(Message::default().status(format!("generation {generation} {what}")))
        });
    }

    /// The master is stopping: every worker drains, within the drain timeout.
    pub(crate) fn stopping(&self, draining: usize) {
        self.with(|st, t| {
            st.restarting = false;
            st.releasing = false;
            st.stopping = true;
            let plural = if draining == 1 { "" } else { "s" };
            Some(
                Message::default()
                    .field("STOPPING", 1)
                    .extend_timeout(t.drain + SLACK)
                    .status(format!("stopping: draining {draining} worker{plural}")),
            )
        });
    }

    /// Wraps the install pipeline's event hook so that every [`UpgradeEvent`] reaches the service
    /// manager too; `test_run` bounds the test-run step.
    pub(crate) fn wrap_hook(
        &self,
        hook: Option<EventHook>,
        test_run: Duration,
    ) -> Option<EventHook> {
        if self.inner.is_none() {
            return hook;
        }
        self.with(|st, _| {
            st.test_run = test_run;
            None
        });
        let notifier = self.clone();
        Some(Arc::new(move |event: &UpgradeEvent| {
            notifier.upgrade_event(event);
            if let Some(hook) = &hook {
                hook(event);
            }
        }))
    }

    fn upgrade_event(&self, event: &UpgradeEvent) {
        self.with(|st, t| match event {
            // Checks happen only between releases (under the pipeline's lock): a release that ended
            // without a verdict (its source still served the old bytes) is over.
            UpgradeEvent::Checking { .. } | UpgradeEvent::CheckFailed { .. } => {
                st.releasing.then(|| end(st, |st| st.releasing = false))
            }
            UpgradeEvent::Downloading {
                identity,
                bytes,
                total,
            } => {
                let first = !st.releasing;
                let done = *total == Some(*bytes);
                let due = st
                    .last_download_status
                    .map_or(true, |at| at.elapsed() >= DOWNLOAD_STATUS_EVERY);
                if !(first || done || due) {
                    return None;
                }
                st.last_download_status = Some(Instant::now());
                let progress = match total {
                    Some(total) => format!("{bytes}/{total} bytes"),
                    None => format!("{bytes} bytes"),
                };
                let msg = begin(st, |st| st.releasing = true);
                Some(
                    msg.extend_timeout(PROGRESS_HEARTBEAT)
                        .status(format!("downloading release {identity}: {progress}")),
                )
            }
            UpgradeEvent::TestRunning { identity } => {
                let msg = begin(st, |st| st.releasing = true);
                Some(
                    msg.extend_timeout(st.test_run + SLACK)
                        .status(format!("test-running release {identity}")),
                )
            }
            UpgradeEvent::Installing { identity } => {
                let msg = begin(st, |st| st.releasing = true);
                Some(
                    msg.extend_timeout(PROGRESS_HEARTBEAT)
                        .status(format!("installing release {identity}")),
                )
            }
            UpgradeEvent::HandingOff { identity } => {
                // From here on the reload is the master's restart, which ends it when the new
                // worker is ready or has failed.
                let msg = begin(st, |st| {
                    st.releasing = false;
                    st.restarting = true;
                });
                Some(
                    msg.extend_timeout(t.ready + SLACK)
                        .status(format!("handing off to release {identity}")),
                )
            }
            UpgradeEvent::Serving {
                identity,
                generation,
            } => Some(Message::default().status(format!(
                "serving: generation {generation}, release {identity} (on probation)"
            ))),
            UpgradeEvent::Upgraded {
                identity,
                generation,
            } => Some(Message::default().status(format!(
                "serving: generation {generation}, release {identity}"
            ))),
            UpgradeEvent::Rejected { identity, reason } => {
                let msg = end(st, |st| st.releasing = false);
                let serving = st.serving_suffix();
                Some(msg.status(format!(
                    "release {identity} rejected: {}{serving}",
                    short(reason)
                )))
            }
            UpgradeEvent::RolledBack { identity, reason } => {
                let msg = end(st, |st| st.releasing = false);
                Some(msg.status(format!("release {identity} rolled back: {}", short(reason))))
            }
            UpgradeEvent::Retrying { identity, reason } => {
                let msg = end(st, |st| st.releasing = false);
                let serving = st.serving_suffix();
                Some(msg.status(format!(
                    "release {identity} not installed this time, will retry: {}{serving}",
                    short(reason)
                )))
            }
            UpgradeEvent::Skipped { identity, reason } => {
                let msg = end(st, |st| st.releasing = false);
                let serving = st.serving_suffix();
                Some(msg.status(format!(
                    "release {identity} skipped: {}{serving}",
                    short(reason)
                )))
            }
            #[allow(unreachable_patterns)]
            _ => None,
        });
    }

    /// Runs `f` on the state and sends what it returns.
    fn with(&self, f: impl FnOnce(&mut State, &Timeouts) -> Option<Message>) {
        let Some(inner) = &self.inner else {
            return;
        };
        let mut st = inner.lock();
        if let Some(msg) = f(&mut st, &inner.timeouts) {
            inner.send(&mut st, &msg);
        }
    }
}

/// A reason as `STATUS=` shows it: see [`REASON_MAX`].
fn short(reason: &str) -> String {
    one_line(reason, REASON_MAX)
}

/// `text`'s first line, control characters blanked, cut to `max` characters (marked with `…`).
fn one_line(text: &str, max: usize) -> String {
    let line = text
        .lines()
        .next()
        .unwrap_or("")
        .replace(char::is_control, " ");
    match line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// Applies `change`; starts with `RELOADING=1` if it started a reload after start-up.
fn begin(st: &mut State, change: impl FnOnce(&mut State)) -> Message {
    let before = st.reloading();
    change(st);
    if st.ready_once && !st.stopping && !before && st.reloading() {
        Message::default().reloading()
    } else {
        Message::default()
    }
}

/// Applies `change`; starts with `READY=1` if it ended a reload.
fn end(st: &mut State, change: impl FnOnce(&mut State)) -> Message {
    let before = st.reloading();
    change(st);
    if st.ready_once && !st.stopping && before && !st.reloading() {
        Message::default().field("READY", 1)
    } else {
        Message::default()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, st: &mut State, msg: &Message) {
        if msg.0.is_empty() {
            return;
        }
        let text = msg.0.join("\n");
        match self.socket.send_to_addr(text.as_bytes(), &self.addr) {
            Ok(_) => tracing::debug!(message = %text.replace('\n', " "), "sd_notify"),
            Err(e) => {
                st.failures += 1;
                if st.failures == 1 {
                    tracing::warn!(target = %self.target, error = %e, message = %text.replace('\n', " "), "cannot notify the service manager (further failures are logged at debug level)");
                } else {
                    tracing::debug!(target = %self.target, error = %e, failures = st.failures, "cannot notify the service manager");
                }
            }
        }
    }
}

/// An unbound datagram socket and the address to send to. Non-blocking: a service manager that
/// does not read must not stall the master's event loop.
fn open(target: &Target) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let addr = match target {
        Target::Path(path) => SocketAddr::from_pathname(path)?,
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Target::Abstract(name) => {
            #[cfg(target_os = "android")]
            use std::os::android::net::SocketAddrExt;
            #[cfg(target_os = "linux")]
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        Target::Abstract(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "abstract socket names exist only on Linux",
            ))
        }
    };
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    Ok((socket, addr))
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares `MONOTONIC_USEC=` with.
fn monotonic_usec() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000 + ts.tv_nsec as u128 / 1_000
}

#[cfg(test)]
#[path = "notify_tests.rs"]
mod tests;
