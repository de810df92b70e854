//! Upload progress on stderr: bytes sent of the total and the rate, redrawn in place on a
//! terminal (5 times a second) and one line a second otherwise (CI logs), and a stall watchdog.
//!
//! Uploads count their bytes as the HTTP client takes them from the body; a part that is sent
//! again (an SDK retry) starts its count over, so the total never runs past 100 %.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Error;

struct Shared {
    label: String,
    total: u64,
    /// Bytes sent, per part (one part except for S3 multipart uploads).
    parts: Vec<AtomicU64>,
    start: Instant,
    /// Milliseconds after `start` when a byte was last counted.
    last_change_ms: AtomicU64,
}

impl Shared {
    fn sent(&self) -> u64 {
        self.parts.iter().map(|p| p.load(Ordering::Relaxed)).sum()
    }
}

/// One upload's progress. Dropping it stops the display without a final line.
pub struct Progress {
    shared: Arc<Shared>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    tty: bool,
    enabled: bool,
}

/// Counts the bytes of one part. Cloning it shares the count.
#[derive(Clone)]
pub struct Counter {
    shared: Arc<Shared>,
    part: usize,
}

impl Counter {
    /// Starts this part's count over (a new attempt sends it from its beginning).
    pub fn reset(&self) {
        self.shared.parts[self.part].store(0, Ordering::Relaxed);
    }

    /// Counts `n` more bytes sent.
    pub fn add(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.shared.parts[self.part].fetch_add(n, Ordering::Relaxed);
        let ms = self.shared.start.elapsed().as_millis() as u64;
        self.shared.last_change_ms.store(ms, Ordering::Relaxed);
    }
}

/// `1.5 MiB`, `812 B`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{v:.1} {}", UNITS[unit]),
    }
}

fn line(shared: &Shared) -> String {
    let sent = shared.sent().min(shared.total);
    let secs = shared.start.elapsed().as_secs_f64().max(0.001);
    let pct = match shared.total {
        0 => 100,
        t => sent.saturating_mul(100) / t,
    };
    format!(
        "{}: {} / {} ({pct}%), {}/s",
        shared.label,
        human(sent),
        human(shared.total),
        human((sent as f64 / secs) as u64)
    )
}

impl Progress {
    /// Starts showing the progress of an upload of `total` bytes in `parts` parts, labelled
    /// `label`, unless `enabled` is false. Must be called within the tokio runtime.
    pub fn start(label: String, total: u64, parts: usize, enabled: bool) -> Progress {
        let shared = Arc::new(Shared {
            label,
            total,
            parts: (0..parts.max(1)).map(|_| AtomicU64::new(0)).collect(),
            start: Instant::now(),
            last_change_ms: AtomicU64::new(0),
        });
        let tty = std::io::stderr().is_terminal();
        let ticker = enabled.then(|| {
            let shared = shared.clone();
            let every = match tty {
                true => Duration::from_millis(200),
                false => Duration::from_secs(1),
            };
            tokio::spawn(async move {
                let mut last_shown = u64::MAX;
                loop {
                    tokio::time::sleep(every).await;
                    let sent = shared.sent();
                    if sent == last_shown {
                        continue;
                    }
                    last_shown = sent;
                    let mut err = std::io::stderr().lock();
                    let _ = match tty {
                        true => write!(err, "\r\x1b[2K{}", line(&shared)),
                        false => writeln!(err, "{}", line(&shared)),
                    };
                    let _ = err.flush();
                }
            })
        });
        Progress {
            shared,
            ticker,
            tty,
            enabled,
        }
    }

    /// The counter of part `part` (0 for a single-part upload).
    pub fn counter(&self, part: usize) -> Counter {
        Counter {
            shared: self.shared.clone(),
            part: part.min(self.shared.parts.len() - 1),
        }
    }

    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.shared.sent()
    }

    /// Runs `upload`, failing it with [`Error::Stalled`] once no byte has been counted for
    /// `timeout` (the wait for the server's answer after the last byte counts too).
    pub async fn watch<T>(
        &self,
        upload: impl Future<Output = Result<T, Error>>,
        timeout: Duration,
    ) -> Result<T, Error> {
        let mut upload = std::pin::pin!(upload);
        let tick = Duration::from_millis(250).min(timeout);
        loop {
            tokio::select! {
                out = &mut upload => return out,
                _ = tokio::time::sleep(tick) => {
                    let last = Duration::from_millis(self.shared.last_change_ms.load(Ordering::Relaxed));
                    if self.shared.start.elapsed().saturating_sub(last) >= timeout {
                        return Err(Error::Stalled {
                            what: self.shared.label.clone(),
                            secs: timeout.as_secs().max(1),
                        });
                    }
                }
            }
        }
    }

    /// Stops the display; after a success, prints the total and the average rate.
    pub fn finish(mut self, ok: bool) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K");
        }
        if ok {
            let secs = self.shared.start.elapsed().as_secs_f64();
            let rate = (self.shared.total as f64 / secs.max(0.001)) as u64;
            let _ = writeln!(
                err,
                "{}: {} in {secs:.1} s, {}/s",
                self.shared.label,
                human(self.shared.total),
                human(rate)
            );
        }
        let _ = err.flush();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human(812), "812 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(45 * 1024 * 1024 + 512 * 1024), "45.5 MiB");
    }

    #[tokio::test]
    async fn parts_retries_and_stalls() {
        let p = Progress::start("up".into(), 100, 2, false);
        let (a, b) = (p.counter(0), p.counter(1));
        a.add(30);
        b.add(50);
        assert_eq!(p.sent(), 80);
        a.reset();
        a.add(10);
        assert_eq!(p.sent(), 60);
        assert!(line(&p.shared).contains("(60%)"));
        let stalled = p
            .watch(
                std::future::pending::<Result<(), Error>>(),
                Duration::from_millis(300),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(stalled.contains("no progress"), "{stalled}");
        let ok = p
            .watch(async { Ok(7) }, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(ok, 7);
        p.finish(true);
    }
}
