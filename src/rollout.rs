//! Upgrading a fleet safely: poll jitter, staged rollouts, holds and pins.
//!
//! - **Jitter**: each poll waits its fetcher's interval ±10 % by default
//!   ([`Upgrader::poll_jitter`](crate::Upgrader::poll_jitter)), so hosts started together drift
//!   apart and do not hit the release server in step.
//! - **Staged rollout**: a host takes a release only when its [`bucket`] for that release, a
//!   stable hash of its host name and the release's identity, falls under the release's rollout
//!   percentage. The percentage comes from the release itself when its fetcher publishes one
//!   ([`Release::rollout_percent`]: the File fetcher reads `<path>.rollout`, `upshift-http` reads
//!   [`HttpFetcher::rollout_url`](https://docs.rs/upshift-http)), else from
//!   [`Upgrader::rollout_percent`](crate::Upgrader::rollout_percent) (default 100). A host left
//!   out checks again at every poll: raise the percentage and more hosts follow, the hosts already
//!   in staying in. The identity is part of the hash so that a different share of the fleet goes
//!   first for every release; no host is always the canary.
//! - **Hold and pin**: [`Upgrader::hold`](crate::Upgrader::hold), `UPSHIFT_HOLD=1` in the master's
//!   environment ([`HOLD_ENV`]) or a hold file (`<program>.hold` beside the program as invoked,
//!   or [`Upgrader::hold_file`](crate::Upgrader::hold_file)) stop upgrades from fetchers; the
//!   restart signal still restarts. A hold file naming a release identity, or
//!   [`Upgrader::pin`](crate::Upgrader::pin), pins the host instead: it takes that release when a
//!   fetcher offers it, whatever the rollout, and no other.
//!
//! ```
//! use upshift::rollout::{bucket, in_rollout};
//!
//! let identity = "sha256:4f2a"; // as the fetcher names the release
//! let b = bucket("web-17", identity);
//! assert!((0.0..100.0).contains(&b));
//! assert_eq!(in_rollout("web-17", identity, 50.0), b < 50.0);
//! assert!(!in_rollout("web-17", identity, 0.0) && in_rollout("web-17", identity, 100.0));
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::fetch::Release;

/// The environment variable that holds upgrades from fetchers when set to `1`, `true` or `yes` in
/// the master's environment (read once, when the master starts).
///
/// ```
/// assert_eq!(upshift::rollout::HOLD_ENV, "UPSHIFT_HOLD");
/// ```
pub const HOLD_ENV: &str = "UPSHIFT_HOLD";

/// Appended to the program's path as invoked to name the default hold file
/// (`/srv/app/bin/app.hold`).
///
/// ```
/// assert_eq!(upshift::rollout::HOLD_FILE_SUFFIX, ".hold");
/// ```
pub const HOLD_FILE_SUFFIX: &str = ".hold";

/// The largest hold file or rollout document read.
const SMALL_FILE_LIMIT: u64 = 4096;

/// Where `host` stands for the release `identity`: a number in `[0, 100)`, the same on every
/// machine and in every version of upshift (the first 53 bits of a sha256 over both). The host
/// takes the release at a rollout percentage `p` when its bucket is below `p`.
///
/// ```
/// let b = upshift::rollout::bucket("web-17", "v1.4.0");
/// assert_eq!(b, upshift::rollout::bucket("web-17", "v1.4.0"));
/// assert!((0.0..100.0).contains(&b));
/// ```
pub fn bucket(host: &str, identity: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(b"upshift-rollout-v1\0");
    // Length-prefixed, so that ("ab", "c") and ("a", "bc") are different inputs.
    h.update((host.len() as u64).to_be_bytes());
    h.update(host.as_bytes());
    h.update(identity.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits fit an f64 exactly: the bucket is exact, whatever the platform.
    let x = u64::from_be_bytes(first) >> 11;
    x as f64 / (1u64 << 53) as f64 * 100.0
}

/// Whether `host` takes the release `identity` when `percent` % of the fleet should: `0` means
/// no host, `100` every host. Raising the percentage only adds hosts.
///
/// ```
/// use upshift::rollout::in_rollout;
/// let hosts: Vec<String> = (0..1000).map(|i| format!("web-{i}")).collect();
/// let taking = hosts.iter().filter(|h| in_rollout(h, "v2", 25.0)).count();
/// assert!((200..300).contains(&taking), "{taking}");
/// ```
pub fn in_rollout(host: &str, identity: &str, percent: f64) -> bool {
    percent >= 100.0 || bucket(host, identity) < percent
}

/// A rollout percentage that could not be read.
///
/// ```
/// let e = upshift::rollout::parse_percent("most").unwrap_err();
/// assert!(e.to_string().contains("\"most\""));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "expected a rollout percentage from 0 to 100 (`50`, `12.5%` or `rollout: 50`), found {0:?}"
)]
pub struct ParsePercentError(String);

/// Reads a rollout document: its first line that is neither blank nor a `#` comment, as `50`,
/// `50%`, `12.5`, `rollout: 50` or `rollout=50`. Fetchers use it for the rollout they publish
/// beside a release.
///
/// ```
/// use upshift::rollout::parse_percent;
/// assert_eq!(parse_percent("rollout: 25\n"), Ok(25.0));
/// assert_eq!(parse_percent("# canary first\n12.5%\n"), Ok(12.5));
/// assert!(parse_percent("150").is_err());
/// assert!(parse_percent("").is_err());
/// ```
///
/// # Errors
/// Anything else, or a value outside `0..=100`.
pub fn parse_percent(text: &str) -> Result<f64, ParsePercentError> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    let bad = || ParsePercentError(line.chars().take(80).collect());
    let value = match line.split_once([':', '=']) {
        Some((key, v)) if key.trim().eq_ignore_ascii_case("rollout") => v.trim(),
        Some(_) => return Err(bad()),
        None => line,
    };
    let value = value.strip_suffix('%').unwrap_or(value).trim_end();
    match value.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(bad()),
    }
}

/// Reads a rollout document from a file (`Ok(None)` when there is none), for fetchers of local
/// files.
pub(crate) async fn read_percent_file(
    path: &Path,
) -> Result<Option<f64>, crate::fetch::FetchError> {
    let Some(text) = read_small(path)
        .await
        .map_err(|source| crate::fetch::FetchError::Io {
            what: format!("reading {}", path.display()),
            source,
        })?
    else {
        return Ok(None);
    };
    parse_percent(&text)
        .map(Some)
        .map_err(|e| crate::fetch::FetchError::Source(format!("{}: {e}", path.display())))
}

async fn read_small(path: &Path) -> std::io::Result<Option<String>> {
    use tokio::io::AsyncReadExt;
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(SMALL_FILE_LIMIT).read_to_end(&mut bytes).await?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// What holds or pins this host right now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Standing {
    /// Upgrades from fetchers are off; why.
    Held(String),
    /// Only this identity (or sha256) is taken; what pinned it.
    Pinned {
        pin: String,
        by: String,
    },
    Open,
}

/// The fleet settings, checked at every poll.
#[derive(Debug)]
pub(crate) struct Fleet {
    host: String,
    percent: f64,
    /// Set by the configuration or the environment: the hold file is not even read then.
    hold: Option<String>,
    pin: Option<String>,
    hold_file: Option<PathBuf>,
    jitter: f64,
    /// The last deferral logged at info level: later polls repeat it at debug level only.
    noted: Mutex<Option<String>>,
}

/// What [`Fleet::new`] is built from (the `Upgrader` settings).
#[derive(Debug, Clone, Default)]
pub(crate) struct FleetOptions {
    pub(crate) host_name: Option<String>,
    pub(crate) rollout_percent: Option<f64>,
    pub(crate) hold: bool,
    pub(crate) pin: Option<String>,
    pub(crate) hold_file: Option<PathBuf>,
    pub(crate) jitter: Option<f64>,
}

impl Fleet {
    /// Validates the options; reads the host name and [`HOLD_ENV`].
    pub(crate) fn new(o: FleetOptions) -> Result<Fleet, crate::Error> {
        let percent = o.rollout_percent.unwrap_or(100.0);
        if !(0.0..=100.0).contains(&percent) {
            return Err(crate::Error::Config(format!(
                "rollout_percent must be from 0 to 100, not {percent}"
            )));
        }
        let jitter = o.jitter.unwrap_or(0.1);
        if !(0.0..=1.0).contains(&jitter) {
            return Err(crate::Error::Config(format!(
                "poll_jitter must be a fraction from 0 to 1, not {jitter}"
            )));
        }
        let host = match o.host_name {
            Some(h) => h,
            None => match nix::unistd::gethostname() {
                Ok(h) => h.to_string_lossy().into_owned(),
                Err(e) => {
                    // Every host without a name shares one bucket; say so rather than fail.
                    tracing::warn!(error = %e, "cannot read the host name; staged rollouts treat this host as \"\"");
                    String::new()
                }
            },
        };
        let hold = match (o.hold, hold_by_env()) {
            (true, _) => Some("held by Upgrader::hold".to_string()),
            (false, true) => Some(format!("held by {HOLD_ENV}")),
            (false, false) => None,
        };
        let pin = o
            .pin
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty());
        Ok(Fleet {
            host,
            percent,
            hold,
            pin,
            hold_file: o.hold_file,
            jitter,
            noted: Mutex::new(None),
        })
    }

    /// `d` ± the configured jitter, so that a fleet started together does not poll together.
    pub(crate) fn jittered(&self, d: Duration) -> Duration {
        jittered(d, self.jitter)
    }

    /// Whether a hold or pin applies now: the configuration, the environment, the hold file.
    pub(crate) async fn standing(&self, invoked: &Path) -> Standing {
        if let Some(why) = &self.hold {
            return Standing::Held(why.clone());
        }
        let path = match &self.hold_file {
            Some(p) => p.clone(),
            None => {
                let mut s = invoked.as_os_str().to_owned();
                s.push(HOLD_FILE_SUFFIX);
                PathBuf::from(s)
            }
        };
        match read_small(&path).await {
            Ok(None) => {}
            Ok(Some(text)) => {
                let by = format!("the hold file {}", path.display());
                return match text
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                {
                    Some(pin) => Standing::Pinned {
                        pin: pin.to_string(),
                        by: format!("pinned by {by}"),
                    },
                    None => Standing::Held(format!("held by {by}")),
                };
            }
            // Present but unreadable: an operator meant something by it, so hold.
            Err(e) => return Standing::Held(format!("held by {} ({e})", path.display())),
        }
        match &self.pin {
            Some(pin) => Standing::Pinned {
                pin: pin.clone(),
                by: "pinned by Upgrader::pin".into(),
            },
            None => Standing::Open,
        }
    }

    /// Why this host does not take `release` now, or `None` to take it.
    pub(crate) fn defers(&self, standing: &Standing, release: &Release) -> Option<String> {
        match standing {
            Standing::Held(why) => Some(why.clone()),
            Standing::Pinned { pin, .. } if pins(pin, release) => None,
            Standing::Pinned { pin, by } => Some(format!("{by} to {pin}")),
            Standing::Open => {
                let percent = release.rollout_percent.unwrap_or(self.percent);
                if in_rollout(&self.host, &release.identity, percent) {
                    return None;
                }
                let b = bucket(&self.host, &release.identity);
                Some(format!(
                    "host {:?} is outside the {percent} % rollout (its bucket is {b:.2})",
                    self.host
                ))
            }
        }
    }

    /// Logs a deferral: at info level the first time, at debug level while it repeats.
    pub(crate) fn note(&self, identity: Option<&str>, why: &str) {
        let key = format!("{}|{why}", identity.unwrap_or(""));
        let mut noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
        let first = noted.as_deref() != Some(key.as_str());
        *noted = Some(key);
        match (identity, first) {
            (Some(identity), true) => {
                tracing::info!(%identity, reason = %why, "release deferred; checking again at the next poll")
            }
            (Some(identity), false) => {
                tracing::debug!(%identity, reason = %why, "release deferred; checking again at the next poll")
            }
            (None, true) => tracing::info!(reason = %why, "upgrades from fetchers are held"),
            (None, false) => tracing::debug!(reason = %why, "upgrades from fetchers are held"),
        }
    }

    /// Forgets the last deferral, so that the next one is logged at info level again.
    pub(crate) fn clear_note(&self) {
        *self.noted.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Fleet settings; they apply in the master, to upgrades from fetchers.
impl crate::Upgrader {
    /// The share of the fleet, from 0 to 100, that takes a release which carries no rollout
    /// percentage of its own (default 100). A host takes a release when its
    /// [`bucket`](crate::rollout::bucket) for it, a stable hash of the host name and the release's
    /// identity, is below the percentage; the others check again at every poll. A percentage the
    /// release carries ([`Release::rollout_percent`](crate::fetch::Release::rollout_percent), e.g.
    /// the File fetcher's `<path>.rollout`) wins over this one. Outside `0..=100`, `run` fails.
    ///
    /// ```no_run
    /// upshift::Upgrader::new()
    ///     .listen("127.0.0.1:8080")
    ///     .fetcher(upshift::fetch::FileFetcher::new("/srv/app/next"))
    ///     .rollout_percent(10.0) // a tenth of the hosts take each release, unless it says more
    ///     .run(|state| {
    ///         # drop(state);
    ///     })?;
    /// # Ok::<(), upshift::Error>(())
    /// ```
    pub fn rollout_percent(mut self, percent: f64) -> Self {
        self.fleet.rollout_percent = Some(percent);
        self
    }

    /// The name this host goes by in staged rollouts (default: `gethostname`). Give each host of
    /// a fleet its own; hosts sharing a name share a bucket.
    ///
    /// ```no_run
    /// let pod = std::env::var("POD_NAME").unwrap_or_default();
    /// upshift::Upgrader::new()
    ///     .listen("127.0.0.1:8080")
    ///     .host_name(pod)
    ///     .run(|state| {
    ///         # drop(state);
    ///     })?;
    /// # Ok::<(), upshift::Error>(())
    /// ```
    pub fn host_name(mut self, name: impl Into<String>) -> Self {
        self.fleet.host_name = Some(name.into());
        self
    }

    /// Holds upgrades from fetchers: none is checked or installed while it is set. The restart
    /// signal still restarts from the binary on disk. `UPSHIFT_HOLD=1` in the master's environment
    /// does the same, and so does a hold file, which can come and go while the master runs (see
    /// [`hold_file`](Self::hold_file)).
    ///
    /// ```no_run
    /// let frozen = std::path::Path::new("/etc/app/freeze").exists();
    /// upshift::Upgrader::new()
    ///     .listen("127.0.0.1:8080")
    ///     .fetcher(upshift::fetch::FileFetcher::new("/srv/app/next"))
    ///     .hold(frozen)
    ///     .run(|state| {
    ///         # drop(state);
    ///     })?;
    /// # Ok::<(), upshift::Error>(())
    /// ```
    pub fn hold(mut self, hold: bool) -> Self {
        self.fleet.hold = hold;
        self
    }

    /// Pins this host to one release: it installs the release with this identity (or this
    /// sha256, bare or as `sha256:HEX`) when a fetcher offers it, whatever the rollout, and no
    /// other. A hold file naming a release pins too, and wins over this setting.
    ///
    /// ```no_run
    /// upshift::Upgrader::new()
    ///     .listen("127.0.0.1:8080")
    ///     .pin("v1.4.2")
    ///     .run(|state| {
    ///         # drop(state);
    ///     })?;
    /// # Ok::<(), upshift::Error>(())
    /// ```
    pub fn pin(mut self, identity: impl Into<String>) -> Self {
        self.fleet.pin = Some(identity.into());
        self
    }

    /// Where the hold file is (default: the program's path as invoked plus `.hold`, e.g.
    /// `/srv/app/bin/app.hold`). Read before every poll: while it exists, upgrades from fetchers
    /// are held; if it names a release identity (its first line that is not blank or a `#`
    /// comment), the host is pinned to that release instead.
    ///
    /// ```no_run
    /// upshift::Upgrader::new()
    ///     .listen("127.0.0.1:8080")
    ///     .hold_file("/etc/app/upgrades.hold")
    ///     .run(|state| {
    ///         # drop(state);
    ///     })?;
    /// # Ok::<(), upshift::Error>(())
    /// ```
    pub fn hold_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.fleet.hold_file = Some(path.into());
        self
    }

    /// How much each wait between polls varies at random, as a fraction of the fetcher's interval
    /// (default 0.1: ±10 %), so that hosts started together drift apart instead of polling their
    /// release server in step. From 0 to 1; outside, `run` fails.
    ///
    /// ```no_run
    /// upshift::Upgrader::new()
    ///     .listen("127.0.0.1:8080")
    ///     .poll_jitter(0.5) // a 60 s interval becomes 30 s to 90 s
    ///     .run(|state| {
    ///         # drop(state);
    ///     })?;
    /// # Ok::<(), upshift::Error>(())
    /// ```
    pub fn poll_jitter(mut self, fraction: f64) -> Self {
        self.fleet.jitter = Some(fraction);
        self
    }
}

fn hold_by_env() -> bool {
    matches!(
        std::env::var(HOLD_ENV).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// A pin names a release by its identity, or by its sha256 (bare or `sha256:`-prefixed).
fn pins(pin: &str, release: &Release) -> bool {
    if pin == release.identity {
        return true;
    }
    let hex = pin.strip_prefix("sha256:").unwrap_or(pin);
    release
        .sha256
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case(hex))
}

/// `d` ± `fraction` of it, uniformly.
pub(crate) fn jittered(d: Duration, fraction: f64) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded randomly per process and per instance: enough to spread a fleet.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::Instant::now().elapsed().as_nanos());
    let unit = (h.finish() % 2001) as f64 / 1000.0 - 1.0; // in [-1, 1]
    d.mul_f64((1.0 + fraction * unit).max(0.0))
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
