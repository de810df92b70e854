//! Counting a release's bytes as they pass, for `Downloading` events.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};

use super::updater::EventHook;
use crate::events::UpgradeEvent;

/// Counts a release's bytes as they pass, for `Downloading` events.
pub(super) struct Progress {
    inner: crate::fetch::ReleaseBody,
    identity: String,
    total: Option<u64>,
    bytes: u64,
    last_report: Instant,
    hook: Option<EventHook>,
    /// Raised at the first byte read.
    read: Arc<AtomicBool>,
}

impl Progress {
    pub(super) fn new(
        inner: crate::fetch::ReleaseBody,
        identity: String,
        total: Option<u64>,
        hook: Option<EventHook>,
        read: Arc<AtomicBool>,
    ) -> Self {
        Progress {
            inner,
            identity,
            total,
            bytes: 0,
            last_report: Instant::now(),
            hook,
            read,
        }
    }

    fn report(&mut self) {
        self.last_report = Instant::now();
        let event = UpgradeEvent::Downloading {
            identity: self.identity.clone(),
            bytes: self.bytes,
            total: self.total,
        };
        tracing::debug!(%event, "upgrade");
        if let Some(hook) = &self.hook {
            hook(&event);
        }
    }
}

impl AsyncRead for Progress {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = (buf.filled().len() - before) as u64;
            self.bytes += n;
            self.read.store(true, Ordering::Relaxed);
            if n == 0 || self.last_report.elapsed() >= Duration::from_millis(100) {
                self.report();
            }
        }
        polled
    }
}
