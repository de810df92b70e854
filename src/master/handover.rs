//! The handover document: what a master passes to its next image across `execve`.
//!
//! The descriptors themselves (listeners, the workers' control sockets) cross exec because the
//! master clears close-on-exec on them just before it; this document says what each number is,
//! plus everything else the new image must know to carry on where the old one stopped. It travels
//! in a `memfd` whose number is in [`FD_ENV`].
//!
//! The format is versioned `key value` lines, written and read only here. A release learns to read
//! a version in its test run, which asks it whether it reads [`WRITES`] (see
//! `install::testrun`): a new image that could not read this document is never executed.
//!
//! ```text
//! upshift-handover 1
//! build v1.4.2
//! image_sha256 9f86…
//! next_generation 7
//! crash_streak 0
//! restart SIGUSR2 received
//! notify /run/systemd/notify
//! notify_ready 1
//! notify_signalled 1
//! listener 3 tcp 0 - public
//! listener 4 unix 0 2f72756e2f6170702e736f636b:2049:1234567 admin
//! worker 4242 6 5 serving 1 12000 -
//! worker 4100 5 6 draining 1 - 29000
//! refusal 1 5000 - 6b6579 7632 9f86… its version 0.9.0 is not newer than 1.0.0
//! end
//! ```

use std::fmt::Write as _;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::listener::SocketKind;

/// The version this master writes.
pub(crate) const WRITES: u32 = 1;
/// The versions this image reads.
pub(crate) const READS: &[u32] = &[1];
/// The environment variable naming the descriptor that holds the document in the new image.
pub(crate) const FD_ENV: &str = "UPSHIFT_HANDOVER_FD";
/// A document is a few hundred bytes per worker; anything larger is not one.
const MAX_BYTES: u64 = 256 * 1024;

/// Everything the old master hands to the new one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Handover {
    /// The old master's build label (its `build_id`, else a short sha256), for the event.
    pub(crate) build: String,
    /// The sha256 of the image being executed, as the old master hashed the very descriptor it
    /// executes: the new image's identity without hashing itself again.
    pub(crate) image_sha256: Option<String>,
    pub(crate) next_generation: u64,
    pub(crate) crash_streak: u32,
    /// A restart was asked for and is carried out by the new image (why, for its log line).
    pub(crate) restart: Option<String>,
    /// The service manager's notification socket (`NOTIFY_SOCKET`'s value), which the old master
    /// took out of the environment.
    pub(crate) notify: Option<String>,
    /// `READY=1` went out already: from now on a restart is a reload.
    pub(crate) notify_ready: bool,
    /// The restart signal arrived and its `RELOADING=1` is still to be sent (by the new image,
    /// which carries out the restart).
    pub(crate) notify_signalled: bool,
    pub(crate) listeners: Vec<HandedListener>,
    pub(crate) workers: Vec<HandedWorker>,
    /// Releases refused and remembered in memory: a new image must not download and refuse them
    /// all over again (the rest of the release state is on disk).
    pub(crate) refusals: Vec<HandedRefusal>,
}

/// A refused release, as the release state remembers it (times relative to the handover).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HandedRefusal {
    pub(crate) key: String,
    pub(crate) identity: String,
    pub(crate) binary_sha256: Option<String>,
    pub(crate) reason: String,
    /// The release's own fault (`true`), or possibly the source's state at the time.
    pub(crate) release_fault: bool,
    /// How long ago it was refused or last reminded of.
    pub(crate) reminded_ago: Duration,
    /// For a transient refusal: forgotten after this long.
    pub(crate) expires_in: Option<Duration>,
}

/// A listening socket, open at `fd` in the new image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HandedListener {
    pub(crate) fd: RawFd,
    pub(crate) kind: SocketKind,
    pub(crate) name: String,
    /// Passed by the service manager, not bound by the master: kept even when not configured.
    pub(crate) from_manager: bool,
    /// A Unix socket file the master created and removes when it exits, if still the same.
    pub(crate) unlink: Option<SocketFileId>,
}

/// A socket file by path and identity, removed only if the path still holds that very file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocketFileId {
    pub(crate) path: PathBuf,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// Where a worker stood when the master re-executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Serving,
    Draining,
}

/// A live worker: still the master's child after exec, with its control socket at `control_fd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HandedWorker {
    pub(crate) pid: i32,
    pub(crate) generation: u64,
    pub(crate) control_fd: RawFd,
    pub(crate) role: Role,
    /// Forked by the thread that execs, so that it survives exec without its parent-death
    /// signal firing.
    pub(crate) forked_here: bool,
    /// How long ago it became ready.
    pub(crate) ready_for: Option<Duration>,
    /// A draining worker: how long it may still drain before it is killed.
    pub(crate) drain_left: Option<Duration>,
}

/// Why a handover document could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("reading the handover document from fd {fd}: {source}")]
    Io { fd: RawFd, source: std::io::Error },
    #[error("the handover document is version {0}; this build reads versions {READS:?}")]
    Version(String),
    #[error("the handover document is damaged at line {line}: {why}")]
    Corrupt { line: usize, why: String },
}

impl Handover {
    /// The document's text.
    pub(crate) fn encode(&self) -> String {
        let mut out = format!("upshift-handover {WRITES}\n");
        let mut line = |key: &str, value: &dyn std::fmt::Display| {
            let _ = writeln!(out, "{key} {value}");
        };
        line("build", &one_line(&self.build));
        if let Some(sha) = &self.image_sha256 {
            line("image_sha256", &one_line(sha));
        }
        line("next_generation", &self.next_generation);
        line("crash_streak", &self.crash_streak);
        if let Some(reason) = &self.restart {
            line("restart", &one_line(reason));
        }
        if let Some(target) = &self.notify {
            line("notify", &hex::encode(target.as_bytes()));
        }
        line("notify_ready", &u8::from(self.notify_ready));
        line("notify_signalled", &u8::from(self.notify_signalled));
        for l in &self.listeners {
            let unlink = match &l.unlink {
                Some(f) => format!(
                    "{}:{}:{}",
                    hex::encode(f.path.as_os_str().as_bytes()),
                    f.dev,
                    f.ino
                ),
                None => "-".into(),
            };
            let manager = u8::from(l.from_manager);
            let value = format!("{} {} {manager} {unlink} {}", l.fd, l.kind.tag(), l.name);
            line("listener", &value);
        }
        for w in &self.workers {
            let role = match w.role {
                Role::Serving => "serving",
                Role::Draining => "draining",
            };
            let ms = |d: Option<Duration>| d.map_or("-".into(), |d| d.as_millis().to_string());
            let value = format!(
                "{} {} {} {role} {} {} {}",
                w.pid,
                w.generation,
                w.control_fd,
                u8::from(w.forked_here),
                ms(w.ready_for),
                ms(w.drain_left)
            );
            line("worker", &value);
        }
        for r in &self.refusals {
            let value = format!(
                "{} {} {} {} {} {} {}",
                u8::from(r.release_fault),
                r.reminded_ago.as_millis(),
                r.expires_in
                    .map_or("-".into(), |d| d.as_millis().to_string()),
                hex::encode(r.key.as_bytes()),
                hex::encode(r.identity.as_bytes()),
                r.binary_sha256.as_deref().unwrap_or("-"),
                one_line(&r.reason),
            );
            line("refusal", &value);
        }
        out.push_str("end\n");
        out
    }

    /// Reads a document written by [`encode`](Self::encode) of any version in [`READS`].
    pub(crate) fn decode(text: &str) -> Result<Handover, ReadError> {
        let mut lines = text.lines().enumerate();
        let version = match lines.next() {
            Some((_, first)) => first.strip_prefix("upshift-handover ").unwrap_or(first),
            None => "",
        };
        if !version.parse::<u32>().is_ok_and(|v| READS.contains(&v)) {
            return Err(ReadError::Version(version.chars().take(40).collect()));
        }
        let mut doc = Handover::default();
        let mut ended = false;
        let mut seen_generation = false;
        for (i, raw) in lines {
            let corrupt = |why: &str| ReadError::Corrupt {
                line: i + 1,
                why: why.to_string(),
            };
            if ended {
                return Err(corrupt("text after `end`"));
            }
            let (key, value) = raw.split_once(' ').unwrap_or((raw, ""));
            match key {
                "build" => doc.build = value.to_string(),
                "image_sha256" => doc.image_sha256 = Some(value.to_string()),
                "next_generation" => {
                    doc.next_generation = number(value).ok_or_else(|| corrupt("not a number"))?;
                    seen_generation = true;
                }
                "crash_streak" => {
                    doc.crash_streak = number(value).ok_or_else(|| corrupt("not a number"))?
                }
                "restart" => doc.restart = Some(value.to_string()),
                "notify" => {
                    let bytes = hex::decode(value).map_err(|_| corrupt("not hex"))?;
                    let target = String::from_utf8(bytes).map_err(|_| corrupt("not UTF-8"))?;
                    doc.notify = Some(target);
                }
                "notify_ready" => {
                    doc.notify_ready = flag(value).ok_or_else(|| corrupt("not 0/1"))?
                }
                "notify_signalled" => {
                    doc.notify_signalled = flag(value).ok_or_else(|| corrupt("not 0/1"))?
                }
                "listener" => doc
                    .listeners
                    .push(listener(value).ok_or_else(|| corrupt("malformed listener"))?),
                "worker" => doc
                    .workers
                    .push(worker(value).ok_or_else(|| corrupt("malformed worker"))?),
                "refusal" => doc
                    .refusals
                    .push(refusal(value).ok_or_else(|| corrupt("malformed refusal"))?),
                "end" => ended = true,
                // A later version of this same format may add keys; they are not ours to act on.
                _ => {}
            }
        }
        if !ended {
            return Err(ReadError::Corrupt {
                line: text.lines().count(),
                why: "no `end` line: the document is cut short".into(),
            });
        }
        if !seen_generation {
            return Err(ReadError::Corrupt {
                line: 1,
                why: "no next_generation".into(),
            });
        }
        Ok(doc)
    }

    /// Every descriptor the document names: each must cross exec.
    pub(crate) fn descriptors(&self) -> Vec<RawFd> {
        let listeners = self.listeners.iter().map(|l| l.fd);
        listeners
            .chain(self.workers.iter().map(|w| w.control_fd))
            .collect()
    }
}

/// Writes the document into a new memfd (close-on-exec until the master clears it at the last
/// moment) and rewinds it for the reader.
pub(crate) fn to_memfd(doc: &Handover) -> std::io::Result<OwnedFd> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new descriptor.
    let fd = unsafe { libc::memfd_create(c"upshift-handover".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned to us, owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(owned);
    file.write_all(doc.encode().as_bytes())?;
    file.rewind()?;
    Ok(OwnedFd::from(file))
}

/// Reads the document at `fd` (taking ownership of it: it is closed once read).
pub(crate) fn read_fd(fd: RawFd) -> Result<Handover, ReadError> {
    let io = |source| ReadError::Io { fd, source };
    if !crate::fds::is_open(fd) {
        return Err(io(std::io::Error::from_raw_os_error(libc::EBADF)));
    }
    // SAFETY: the old image put the document at this number for us, and the variable naming it is
    // removed before anything else could take it.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut text = String::new();
    (&mut file)
        .take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_BYTES {
        return Err(ReadError::Corrupt {
            line: 0,
            why: format!("larger than {MAX_BYTES} bytes"),
        });
    }
    tracing::debug!(
        fd = file.as_raw_fd(),
        bytes = text.len(),
        "read the handover document"
    );
    Handover::decode(&text)
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn number<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.parse().ok()
}

fn flag(s: &str) -> Option<bool> {
    match s {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

fn millis(s: &str) -> Option<Option<Duration>> {
    match s {
        "-" => Some(None),
        _ => number(s).map(|ms| Some(Duration::from_millis(ms))),
    }
}

fn listener(value: &str) -> Option<HandedListener> {
    let mut parts = value.splitn(5, ' ');
    let fd = number(parts.next()?)?;
    let kind = SocketKind::from_tag(parts.next()?)?;
    let from_manager = flag(parts.next()?)?;
    let unlink = match parts.next()? {
        "-" => None,
        file => {
            let mut f = file.split(':');
            let path = hex::decode(f.next()?).ok()?;
            let id = SocketFileId {
                path: PathBuf::from(std::ffi::OsStr::from_bytes(&path)),
                dev: number(f.next()?)?,
                ino: number(f.next()?)?,
            };
            Some(f.next().is_none().then_some(id)?)
        }
    };
    let name = parts.next()?.to_string();
    (fd >= 0 && !name.is_empty()).then_some(HandedListener {
        fd,
        kind,
        name,
        from_manager,
        unlink,
    })
}

fn refusal(value: &str) -> Option<HandedRefusal> {
    let mut p = value.splitn(7, ' ');
    let release_fault = flag(p.next()?)?;
    let reminded_ago = Duration::from_millis(number(p.next()?)?);
    let expires_in = millis(p.next()?)?;
    let text = |h: &str| String::from_utf8(hex::decode(h).ok()?).ok();
    let key = text(p.next()?)?;
    let identity = text(p.next()?)?;
    let binary_sha256 = match p.next()? {
        "-" => None,
        sha => Some(sha.to_string()),
    };
    let reason = p.next()?.to_string();
    Some(HandedRefusal {
        key,
        identity,
        binary_sha256,
        reason,
        release_fault,
        reminded_ago,
        expires_in,
    })
}

fn worker(value: &str) -> Option<HandedWorker> {
    let p: Vec<&str> = value.split(' ').collect();
    let [pid, generation, control_fd, role, forked_here, ready_for, drain_left] = p[..] else {
        return None;
    };
    let role = match role {
        "serving" => Role::Serving,
        "draining" => Role::Draining,
        _ => return None,
    };
    let w = HandedWorker {
        pid: number(pid)?,
        generation: number(generation)?,
        control_fd: number(control_fd)?,
        role,
        forked_here: flag(forked_here)?,
        ready_for: millis(ready_for)?,
        drain_left: millis(drain_left)?,
    };
    (w.pid > 1 && w.control_fd >= 0).then_some(w)
}

#[cfg(test)]
#[path = "handover_tests.rs"]
mod tests;
