//! The simulated hosts of the `fleet` scenario: one tokio task per host, each with its own
//! fetcher instance (the real `upshift-http`, `upshift-s3` or `upshift-github`) and its own
//! [`Current`], polled as the master's poll loop polls (`src/master/updater.rs`, `poll` and
//! `check_once`):
//!
//! - the first check at once (the master does not jitter it), or after `Host::first` for a fleet
//!   whose start is spread;
//! - then the fetcher's interval ± 10 % (`Upgrader::poll_jitter`'s default, `src/rollout.rs`);
//! - a release outside this host's rollout bucket (`upshift::rollout::in_rollout`, with the
//!   release's own percentage, else the operator's host-side one, as `Upgrader::rollout_percent`)
//!   is dropped unread after `Fetcher::deferred`;
//! - `FetchError::RateLimited(wait)` waits `wait` (at most an hour), without jitter, as
//!   `src/master/backoff.rs`; other errors back off exponentially (2 s, 4 s, … up to 10 min),
//!   jittered; a cut download is `deferred` and retried after its own backoff.
//!
//! A host that takes a release reads its body to the end, hashing it as staging does, and
//! installs it in the only sense that matters to its fetcher: its `Current` names the new sha256,
//! identity and version. What the master does after staging (test run, install, restart) is not
//! simulated.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use upshift::fetch::{Current, FetchError, Fetcher, Release, ReleaseBody};

use crate::originlog::unix;

/// The master's poll jitter by default (`Upgrader::poll_jitter`): ± 10 % of the interval.
pub const JITTER: f64 = 0.1;
/// `MAX_RATE_LIMIT_WAIT` in `src/master/backoff.rs`.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(3600);
/// `MAX_ERROR_BACKOFF` in `src/master/backoff.rs`.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(600);

/// What the hosts of one group share: the operator's host-side rollout percentage, the stop
/// signal, and the live count of downloads.
pub struct Fleet {
    percent: AtomicU64,
    stop: watch::Sender<bool>,
    downloading: AtomicUsize,
    peak_downloading: AtomicUsize,
    took: AtomicUsize,
}

impl Fleet {
    pub fn new() -> Arc<Fleet> {
        Arc::new(Fleet {
            percent: AtomicU64::new(100f64.to_bits()),
            stop: watch::channel(false).0,
            downloading: AtomicUsize::new(0),
            peak_downloading: AtomicUsize::new(0),
            took: AtomicUsize::new(0),
        })
    }

    /// The share of hosts that take a release carrying no percentage of its own.
    pub fn set_percent(&self, p: f64) {
        self.percent.store(p.to_bits(), Ordering::SeqCst);
    }

    fn percent(&self) -> f64 {
        f64::from_bits(self.percent.load(Ordering::SeqCst))
    }

    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Hosts that have taken a release so far.
    pub fn took(&self) -> usize {
        self.took.load(Ordering::SeqCst)
    }

    /// Downloads in progress now.
    pub fn downloading(&self) -> usize {
        self.downloading.load(Ordering::SeqCst)
    }

    /// The most downloads in progress at once, as the hosts counted them.
    pub fn peak_downloading(&self) -> usize {
        self.peak_downloading.load(Ordering::SeqCst)
    }
}

/// One simulated host.
pub struct Host {
    /// Its host name, which places it in a rollout ([`upshift::rollout::bucket`]).
    pub name: String,
    pub fetcher: Box<dyn Fetcher>,
    pub current: Current,
    /// The wait before its first check: zero as the master does it.
    pub first: Duration,
    /// The build it runs, which a patch is applied to (shared by every host of a group).
    pub base: Arc<Vec<u8>>,
}

/// A release a host took.
#[derive(Clone, Debug)]
pub struct Took {
    /// Unix seconds: the check that offered it began, its body's last byte arrived.
    pub offered: f64,
    pub finished: f64,
    pub bytes: u64,
    /// Full release or patch (see [`Body`]).
    pub body: Body,
}

/// What one host did.
#[derive(Clone, Debug, Default)]
pub struct HostLog {
    pub checks: u32,
    /// Unix seconds when its first check began and ended.
    pub first_check: Option<(f64, f64)>,
    pub offered: u32,
    /// Releases set aside because the host was outside the rollout.
    pub deferred: u32,
    /// Check errors other than rate limits, and the first one's text.
    pub errors: u32,
    pub first_error: Option<String>,
    /// `FetchError::RateLimited` answers, and the waits they asked for (seconds).
    pub rate_limited: u32,
    pub rate_waits: Vec<f64>,
    pub took: Option<Took>,
    /// Patches that were offered and did not rebuild the release (the full one was read).
    pub delta_failed: u32,
    /// Downloads cut short, and bodies whose sha256 did not match.
    pub downloads_failed: u32,
    pub mismatched: u32,
    /// Body bytes read, whatever became of them.
    pub received: u64,
}

/// How a check ended, for the next delay (as `Checked` in the master).
enum Checked {
    Done,
    RetryAfterFault,
}

/// Polls until the fleet is stopped; returns what the host did.
pub async fn run(mut host: Host, fleet: Arc<Fleet>) -> HostLog {
    let mut log = HostLog::default();
    let mut stop = fleet.stop.subscribe();
    let interval = host.fetcher.interval();
    let mut rng = seed(&host.name);
    let (mut errors, mut faults) = (0u32, 0u32);
    let mut delay = host.first;
    loop {
        let stopped = tokio::select! {
            () = tokio::time::sleep(delay) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopped {
            return log;
        }
        let outcome = tokio::select! {
            o = check_once(&mut host, &fleet, &mut log) => Some(o),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(outcome) = outcome else {
            return log;
        };
        delay = match outcome {
            Ok(Checked::Done) => {
                (errors, faults) = (0, 0);
                jittered(interval, &mut rng)
            }
            Ok(Checked::RetryAfterFault) => {
                errors = 0;
                faults = faults.saturating_add(1);
                jittered(error_backoff(faults, interval), &mut rng)
            }
            Err(FetchError::RateLimited(wait)) => {
                log.rate_limited += 1;
                log.rate_waits.push(wait.as_secs_f64());
                wait.min(MAX_RATE_LIMIT_WAIT)
            }
            Err(e) => {
                log.errors += 1;
                log.first_error.get_or_insert_with(|| e.to_string());
                errors = errors.saturating_add(1);
                jittered(error_backoff(errors, interval), &mut rng)
            }
        };
    }
}

async fn check_once(
    host: &mut Host,
    fleet: &Fleet,
    log: &mut HostLog,
) -> Result<Checked, FetchError> {
    log.checks += 1;
    let began = unix(SystemTime::now());
    let found = host.fetcher.check(&host.current).await;
    log.first_check
        .get_or_insert_with(|| (began, unix(SystemTime::now())));
    let Some(release) = found? else {
        return Ok(Checked::Done);
    };
    log.offered += 1;
    let percent = release.rollout_percent.unwrap_or_else(|| fleet.percent());
    if !upshift::rollout::in_rollout(&host.name, &release.identity, percent) {
        log.deferred += 1;
        host.fetcher.deferred(&release.identity);
        // Dropped unread, as the master drops it: the transfer the fetcher opened is aborted.
        return Ok(Checked::Done);
    }
    let identity = release.identity.clone();
    let (sha256, signature, version) = (
        release.sha256.clone(),
        release.signature.clone(),
        release.version.clone(),
    );
    fleet.downloading.fetch_add(1, Ordering::SeqCst);
    let now = fleet.downloading.load(Ordering::SeqCst);
    fleet.peak_downloading.fetch_max(now, Ordering::SeqCst);
    let (kind, read) = download(release, host.base.clone(), log).await;
    fleet.downloading.fetch_sub(1, Ordering::SeqCst);
    let (bytes, actual) = match read {
        Ok(r) => r,
        Err(_) => {
            // A cut transfer is no fault of the release: the master sets it aside and retries.
            log.downloads_failed += 1;
            host.fetcher.deferred(&identity);
            return Ok(Checked::RetryAfterFault);
        }
    };
    if sha256
        .as_deref()
        .is_some_and(|s| !s.eq_ignore_ascii_case(&actual))
    {
        log.mismatched += 1;
        if actual != host.current.sha256 {
            // Refused, and remembered as the pipeline remembers it.
            let key = Current::rejection_key(&identity, sha256.as_deref(), signature.as_deref());
            host.current.rejected.push(key);
        }
        // Else the source still served the installed file under the new checksum (a deploy
        // writes the checksum first): the next poll gets the new one.
        return Ok(Checked::Done);
    }
    host.current.sha256 = actual;
    host.current.identity = Some(identity);
    if version.is_some() {
        host.current.version = version;
    }
    log.took = Some(Took {
        offered: began,
        finished: unix(SystemTime::now()),
        bytes,
        body: kind,
    });
    fleet.took.fetch_add(1, Ordering::SeqCst);
    Ok(Checked::Done)
}

/// What a host downloads for a release it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// The whole published file.
    Full,
    /// The patch from the build the host runs.
    Delta,
}

/// Downloads what a host that takes `release` needs, the one place that decides: the patch
/// from the build it runs when the fetcher offered one (read to its end, checked against its
/// published sha256, applied to the host's build with upshift's own codec, as the master's
/// pipeline does), else, or when the patch fails, the full release. Returns what was used, and
/// the bytes received with the sha256 of the binary they make.
async fn download(
    mut release: Release,
    base: Arc<Vec<u8>>,
    log: &mut HostLog,
) -> (Body, std::io::Result<(u64, String)>) {
    if let Some(delta) = release.delta.take() {
        let patched = async {
            let expected = delta.sha256.clone();
            let mut patch = Vec::new();
            let mut body = delta.body;
            body.read_to_end(&mut patch).await?;
            log.received += patch.len() as u64;
            if hex::encode(Sha256::digest(&patch)) != expected.to_ascii_lowercase() {
                return Err(std::io::Error::other("the patch does not match its sha256"));
            }
            let applied = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                upshift::delta::apply(&base, &mut &patch[..], &mut out, 1 << 30)
                    .map(|_| (patch.len() as u64, hex::encode(Sha256::digest(&out))))
            })
            .await
            .map_err(std::io::Error::other)?;
            applied.map_err(std::io::Error::other)
        }
        .await;
        match patched {
            Ok((bytes, sha))
                if release
                    .sha256
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case(&sha)) =>
            {
                return (Body::Delta, Ok((bytes, sha)));
            }
            // As the pipeline does: anything wrong with the patch, and the full release is read.
            _ => log.delta_failed += 1,
        }
    }
    (Body::Full, read_hashing(release.body, log).await)
}

/// Reads `body` to its end: its length and lower-case hex sha256.
async fn read_hashing(mut body: ReleaseBody, log: &mut HostLog) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = body.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, hex::encode(hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        log.received += n as u64;
    }
}

/// `error_backoff` in `src/master/backoff.rs`: 2 s, 4 s, … up to 10 min (or the interval).
fn error_backoff(errors: u32, interval: Duration) -> Duration {
    let exp = Duration::from_secs(1).saturating_mul(1u32 << errors.min(10));
    exp.min(MAX_ERROR_BACKOFF.max(interval))
}

/// `d` ± [`JITTER`] of it, uniformly (as `src/rollout.rs`'s `jittered`).
fn jittered(d: Duration, rng: &mut u64) -> Duration {
    d.mul_f64((1.0 + JITTER * (2.0 * uniform(rng) - 1.0)).max(0.0))
}

/// A per-host random stream: xorshift64*, seeded from the host name and the clock.
pub fn seed(name: &str) -> u64 {
    let h = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    let nanos = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (u64::from_le_bytes(b) ^ u64::from(nanos)) | 1
}

/// The next number in `[0, 1)`.
pub fn uniform(x: &mut u64) -> f64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

/// How long after `from` the first `percent` % of `hosts` hosts had taken the release, given
/// when each host that took it did (`None` if fewer did).
pub fn time_until(took_at: &[f64], hosts: usize, percent: f64, from: f64) -> Option<f64> {
    let need = ((percent / 100.0) * hosts as f64).ceil().max(1.0) as usize;
    let mut t: Vec<f64> = took_at.to_vec();
    t.sort_by(f64::total_cmp);
    t.get(need - 1).map(|at| at - from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_until_a_share_of_the_fleet() {
        // 10 hosts; 9 took it, at 1..=9 s after the publish at 100.
        let took: Vec<f64> = (1..=9).rev().map(|s| 100.0 + f64::from(s)).collect();
        assert_eq!(time_until(&took, 10, 50.0, 100.0), Some(5.0));
        assert_eq!(time_until(&took, 10, 90.0, 100.0), Some(9.0));
        // 99 % of 10 hosts is all 10: one never took it.
        assert_eq!(time_until(&took, 10, 99.0, 100.0), None);
        assert_eq!(time_until(&took, 10, 100.0, 100.0), None);
        assert_eq!(time_until(&[], 10, 50.0, 0.0), None);
    }

    #[test]
    fn backoff_and_jitter_stay_in_bounds() {
        let i = Duration::from_secs(60);
        assert_eq!(error_backoff(1, i), Duration::from_secs(2));
        assert_eq!(error_backoff(30, i), MAX_ERROR_BACKOFF);
        let mut rng = seed("web-1");
        for _ in 0..1000 {
            let d = jittered(i, &mut rng).as_secs_f64();
            assert!((54.0..=66.0).contains(&d), "{d}");
        }
    }
}
