//! The environment protocol between master and worker.
//!
//! A worker is the same executable started by the master with these variables set. They say that
//! it is a worker, which descriptors it inherited and under which names. The worker reads them
//! once and removes them before `prog` runs, so processes `prog` spawns are not mistaken for workers.

use std::os::fd::RawFd;
use std::time::Duration;

use crate::error::Error;
use crate::listener::SocketKind;

/// Set by the master in a worker: the worker's generation (1 for the first worker, +1 per start).
pub(crate) const WORKER: &str = "UPSHIFT_WORKER";
/// The master's pid, so a worker can tell whether it has been orphaned.
pub(crate) const MASTER_PID: &str = "UPSHIFT_MASTER_PID";
/// One line per inherited listener, in descriptor order from fd 3: `<kind> <name>`.
pub(crate) const LISTENERS: &str = "UPSHIFT_LISTENERS";
/// The descriptor of the control socket (readiness up, drain down).
pub(crate) const CONTROL_FD: &str = "UPSHIFT_CONTROL_FD";
/// The master's drain timeout in milliseconds; an orphaned worker exits after it.
pub(crate) const DRAIN_TIMEOUT_MS: &str = "UPSHIFT_DRAIN_TIMEOUT_MS";
/// The master's restart signal number: a worker that receives it (a `pkill -USR2 app` reaches
/// every process of the name) says where it belongs instead of dying of the default action.
pub(crate) const RESTART_SIGNAL: &str = "UPSHIFT_RESTART_SIGNAL";
/// The master's build id ([`Upgrader::build_id`](crate::Upgrader::build_id)) when the worker
/// started; empty when the master named none. Later changes come on the control socket.
pub(crate) const MASTER_BUILD: &str = "UPSHIFT_MASTER_BUILD";
/// Set to `1` (or `true`) by a user to run `prog` in-process without a master.
pub const DISABLE: &str = "UPSHIFT_DISABLE";

/// Everything a worker learns from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerEnv {
    pub(crate) generation: u64,
    pub(crate) master_pid: u32,
    pub(crate) listeners: Vec<(SocketKind, String)>,
    pub(crate) control_fd: RawFd,
    pub(crate) drain_timeout: Duration,
    pub(crate) restart_signal: i32,
    pub(crate) master_build: Option<String>,
}

impl WorkerEnv {
    /// The variables to set in a new worker's environment.
    pub(crate) fn encode(&self) -> Vec<(&'static str, String)> {
        let listeners: Vec<String> = self
            .listeners
            .iter()
            .map(|(k, n)| format!("{} {}", k.tag(), n))
            .collect();
        vec![
            (WORKER, self.generation.to_string()),
            (MASTER_PID, self.master_pid.to_string()),
            (LISTENERS, listeners.join("\n")),
            (CONTROL_FD, self.control_fd.to_string()),
            (DRAIN_TIMEOUT_MS, self.drain_timeout.as_millis().to_string()),
            (RESTART_SIGNAL, self.restart_signal.to_string()),
            // Set even when unnamed: a value the master inherited must not pass for its own.
            (MASTER_BUILD, self.master_build.clone().unwrap_or_default()),
        ]
    }

    /// Reads the protocol through `get`; `Ok(None)` when this process is not a worker.
    pub(crate) fn decode(get: impl Fn(&str) -> Option<String>) -> Result<Option<WorkerEnv>, Error> {
        let Some(generation) = get(WORKER) else {
            return Ok(None);
        };
        let number = |var: &str| -> Result<u64, Error> {
            let raw = get(var).ok_or_else(|| Error::Protocol(format!("{var} is missing")))?;
            raw.parse()
                .map_err(|_| Error::Protocol(format!("{var}={raw:?} is not a number")))
        };
        let generation = generation
            .parse()
            .map_err(|_| Error::Protocol(format!("{WORKER}={generation:?} is not a number")))?;
        let listeners_raw = get(LISTENERS).unwrap_or_default();
        let mut listeners = Vec::new();
        for line in listeners_raw.lines().filter(|l| !l.is_empty()) {
            let (tag, name) = line
                .split_once(' ')
                .ok_or_else(|| Error::Protocol(format!("{LISTENERS} line {line:?} has no name")))?;
            let kind = SocketKind::from_tag(tag).ok_or_else(|| {
                Error::Protocol(format!(
                    "{LISTENERS} line {line:?} has unknown kind {tag:?}"
                ))
            })?;
            listeners.push((kind, name.to_string()));
        }
        let control_fd = number(CONTROL_FD)?;
        let control_fd = RawFd::try_from(control_fd)
            .map_err(|_| Error::Protocol(format!("{CONTROL_FD} is out of range")))?;
        Ok(Some(WorkerEnv {
            generation,
            master_pid: u32::try_from(number(MASTER_PID)?)
                .map_err(|_| Error::Protocol(format!("{MASTER_PID} is out of range")))?,
            listeners,
            control_fd,
            drain_timeout: Duration::from_millis(number(DRAIN_TIMEOUT_MS)?),
            // Absent from a master of an older version: no guard then.
            restart_signal: get(RESTART_SIGNAL)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            // Absent from a master of an older version. Only informative, so a value this
            // version would not accept (a newer master's longer label?) is dropped, not fatal.
            master_build: get(MASTER_BUILD).filter(|b| crate::config::valid_build_id(b)),
        }))
    }
}

/// Whether the user switched the master off through [`DISABLE`].
pub(crate) fn disabled_by_env() -> bool {
    matches!(
        std::env::var(DISABLE).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// Removes the protocol's variables from this process's environment.
pub(crate) fn scrub() {
    for var in [
        WORKER,
        MASTER_PID,
        LISTENERS,
        CONTROL_FD,
        DRAIN_TIMEOUT_MS,
        RESTART_SIGNAL,
        MASTER_BUILD,
    ] {
        // Environment mutation races with concurrent getenv in other threads; `run` documents
        // that it must be called before the program starts threads that read the environment.
        std::env::remove_var(var);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn round_trips_names_with_colons_and_spaces() {
        let env = WorkerEnv {
            generation: 7,
            master_pid: 42,
            listeners: vec![
                (SocketKind::Tcp, "[::1]:8080".into()),
                (SocketKind::Unix, "/run/my app.sock".into()),
            ],
            control_fd: 5,
            drain_timeout: Duration::from_millis(1500),
            restart_signal: 12,
            master_build: Some("v1.4.2 (3f2a9c1)".into()),
        };
        let vars: HashMap<_, _> = env.encode().into_iter().collect();
        let decoded = WorkerEnv::decode(|k| vars.get(k).cloned())
            .unwrap()
            .unwrap();
        assert_eq!(decoded, env);
    }

    fn a_worker(master_build: Option<String>) -> WorkerEnv {
        WorkerEnv {
            generation: 1,
            master_pid: 42,
            listeners: vec![(SocketKind::Tcp, "127.0.0.1:1".into())],
            control_fd: 4,
            drain_timeout: Duration::from_secs(1),
            restart_signal: 12,
            master_build,
        }
    }

    #[test]
    fn the_master_build_round_trips_and_is_none_when_unnamed_or_from_an_older_master() {
        let named = a_worker(Some("x".repeat(crate::config::MAX_BUILD_ID_BYTES)));
        let vars: HashMap<_, _> = named.encode().into_iter().collect();
        let decoded = WorkerEnv::decode(|k| vars.get(k).cloned());
        assert_eq!(decoded.unwrap(), Some(named));

        // Unnamed: the variable is still set (empty), so an inherited value cannot leak through.
        let unnamed = a_worker(None);
        let vars: HashMap<_, _> = unnamed.encode().into_iter().collect();
        assert_eq!(vars.get(MASTER_BUILD).map(String::as_str), Some(""));
        let decoded = WorkerEnv::decode(|k| vars.get(k).cloned());
        assert_eq!(decoded.unwrap(), Some(unnamed.clone()));

        // A master of an older version does not set it at all.
        let decoded = WorkerEnv::decode(|k| (k != MASTER_BUILD).then(|| vars.get(k).cloned())?);
        assert_eq!(decoded.unwrap(), Some(unnamed.clone()));

        // A label this version would not accept is dropped; the worker still starts.
        for odd in ["two\nlines".to_string(), "x".repeat(129)] {
            let decoded = WorkerEnv::decode(|k| match k {
                MASTER_BUILD => Some(odd.clone()),
                _ => vars.get(k).cloned(),
            });
            assert_eq!(decoded.unwrap(), Some(unnamed.clone()), "{odd:?}");
        }
    }

    #[test]
    fn not_a_worker_without_the_marker() {
        assert_eq!(WorkerEnv::decode(|_| None).unwrap(), None);
    }

    #[test]
    fn malformed_values_are_named_in_the_error() {
        let err = WorkerEnv::decode(|k| match k {
            WORKER => Some("1".into()),
            CONTROL_FD => Some("x".into()),
            LISTENERS => Some("tcp 127.0.0.1:1".into()),
            _ => Some("1".into()),
        })
        .unwrap_err();
        assert!(err.to_string().contains(CONTROL_FD), "{err}");
        let err = WorkerEnv::decode(|k| match k {
            WORKER => Some("1".into()),
            LISTENERS => Some("udp 1.2.3.4:5".into()),
            _ => Some("3".into()),
        })
        .unwrap_err();
        assert!(err.to_string().contains("unknown kind"), "{err}");
    }
}
