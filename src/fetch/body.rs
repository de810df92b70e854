//! One bounded body reader for every fetcher: a stall deadline (no byte for too long), a total
//! deadline, a size cap, a check that the announced length arrived, and a hook run once the body
//! was read to a clean end. Generic over [`AsyncRead`], so any HTTP stack fits: reqwest's byte
//! stream through `tokio_util::io::StreamReader`, aws-sdk's `ByteStream::into_async_read`, an
//! `http_body` through `http_body_util::BodyDataStream`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Why a [`BoundedBody`] stopped. Read through [`AsyncRead`], it arrives inside an
/// [`io::Error`] of the matching [`kind`](BodyError::kind); [`BodyError::from_io`] gets it back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// No byte arrived for `stall`: the source or the network stopped sending. Raise the
    /// fetcher's timeout if the source is merely slow to start.
    #[error("{what}: no data for {stall:?} after {read} bytes (the source stalled)")]
    Stalled {
        /// What was being read (`GET https://…`).
        what: String,
        /// The stall deadline.
        stall: Duration,
        /// Bytes read before the stall.
        read: u64,
    },
    /// The whole body did not arrive within `total`: the source is too slow for the timeout.
    #[error("{what}: not read within {total:?} ({read} bytes read); raise the timeout for a slow source")]
    DeadlineExceeded {
        /// What was being read.
        what: String,
        /// The total deadline.
        total: Duration,
        /// Bytes read by then.
        read: u64,
    },
    /// The body is larger than the cap: not the document or release it should be.
    #[error("{what}: larger than the cap of {cap} bytes")]
    TooLarge {
        /// What was being read.
        what: String,
        /// The cap.
        cap: u64,
    },
    /// More bytes arrived than the source announced (`Content-Length`, an asset's size).
    #[error("{what}: more than the announced {expected} bytes")]
    LongerThanAnnounced {
        /// What was being read.
        what: String,
        /// The announced length.
        expected: u64,
    },
    /// The transfer ended before the announced length: cut, or still being uploaded.
    #[error("{what}: the transfer ended after {read} of {expected} bytes")]
    Truncated {
        /// What was being read.
        what: String,
        /// Bytes read.
        read: u64,
        /// The announced length.
        expected: u64,
    },
    /// The transport failed (connection reset, TLS error…).
    #[error("{what}: {source}")]
    Transport {
        /// What was being read.
        what: String,
        /// The transport's error.
        source: io::Error,
    },
    /// Read again after one of the errors above.
    #[error("{what}: read after the transfer failed")]
    Failed {
        /// What was being read.
        what: String,
    },
}

impl BodyError {
    /// The [`io::ErrorKind`] this error travels as through [`AsyncRead`].
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            BodyError::Stalled { .. } | BodyError::DeadlineExceeded { .. } => {
                io::ErrorKind::TimedOut
            }
            BodyError::TooLarge { .. } | BodyError::LongerThanAnnounced { .. } => {
                io::ErrorKind::InvalidData
            }
            BodyError::Truncated { .. } => io::ErrorKind::UnexpectedEof,
            BodyError::Transport { source, .. } => source.kind(),
            BodyError::Failed { .. } => io::ErrorKind::Other,
        }
    }

    /// The `BodyError` inside an error read from a [`BoundedBody`]; any other error becomes
    /// [`BodyError::Transport`] about `what`.
    ///
    /// ```
    /// use upshift::fetch::body::BodyError;
    /// let e: std::io::Error = BodyError::TooLarge { what: "GET x".into(), cap: 3 }.into();
    /// assert!(matches!(BodyError::from_io(e, "GET x"), BodyError::TooLarge { cap: 3, .. }));
    /// ```
    pub fn from_io(e: io::Error, what: &str) -> BodyError {
        if e.get_ref().is_some_and(|inner| inner.is::<BodyError>()) {
            if let Some(inner) = e.into_inner() {
                if let Ok(body) = inner.downcast::<BodyError>() {
                    return *body;
                }
            }
            return BodyError::Failed { what: what.into() };
        }
        BodyError::Transport {
            what: what.into(),
            source: e,
        }
    }
}

impl From<BodyError> for io::Error {
    fn from(e: BodyError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// A transport error stays an I/O error (its kind kept); the others are the source's fault.
impl From<BodyError> for super::FetchError {
    fn from(e: BodyError) -> super::FetchError {
        match e {
            BodyError::Transport { what, source } => super::FetchError::Io { what, source },
            e => super::FetchError::Source(e.to_string()),
        }
    }
}

/// A body read with deadlines and a cap; see the [module](self) documentation.
///
/// ```
/// use std::time::Duration;
/// use tokio::io::AsyncReadExt;
/// use upshift::fetch::body::{BodyError, BoundedBody};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let source: &[u8] = b"0123456789";
/// let body = BoundedBody::new(source, "GET https://example.com/app")
///     .stall(Duration::from_secs(30))
///     .total(Duration::from_secs(300))
///     .max_bytes(4);
/// match body.read_to_vec().await {
///     Err(BodyError::TooLarge { cap, .. }) => assert_eq!(cap, 4),
///     other => panic!("{other:?}"),
/// }
/// let mut body = BoundedBody::new(source, "GET https://example.com/app").expect_len(Some(10));
/// let mut all = Vec::new();
/// body.read_to_end(&mut all).await.unwrap();
/// assert_eq!(all, source);
/// # }
/// ```
pub struct BoundedBody<R> {
    inner: R,
    what: String,
    stall: Option<Duration>,
    total: Option<Duration>,
    deadline: Option<Instant>,
    cap: Option<u64>,
    expected: Option<u64>,
    read: u64,
    /// Armed while the inner reader is pending: idle time counts from the first read that found
    /// nothing, not from the last data, so a consumer that pauses between reads is no stall.
    stall_timer: Option<Pin<Box<Sleep>>>,
    total_timer: Option<Pin<Box<Sleep>>>,
    on_complete: Option<Box<dyn FnOnce() + Send>>,
    failed: bool,
    ended: bool,
}

impl<R> std::fmt::Debug for BoundedBody<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedBody")
            .field("what", &self.what)
            .field("read", &self.read)
            .field("cap", &self.cap)
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> BoundedBody<R> {
    /// Reads `inner` with no limits yet; `what` (`GET https://…`, `GET s3://bucket/key`) starts
    /// every error. The total deadline, when set, counts from here.
    pub fn new(inner: R, what: impl Into<String>) -> BoundedBody<R> {
        BoundedBody {
            inner,
            what: what.into(),
            stall: None,
            total: None,
            deadline: None,
            cap: None,
            expected: None,
            read: 0,
            stall_timer: None,
            total_timer: None,
            on_complete: None,
            failed: false,
            ended: false,
        }
    }

    /// Fails with [`BodyError::Stalled`] when no byte arrives for `d`.
    pub fn stall(mut self, d: Duration) -> Self {
        self.stall = Some(d);
        self
    }

    /// Fails with [`BodyError::DeadlineExceeded`] unless the body is read within `d` from now.
    pub fn total(mut self, d: Duration) -> Self {
        self.total = Some(d);
        self.deadline = Some(Instant::now() + d);
        self
    }

    /// Fails with [`BodyError::TooLarge`] once byte `cap + 1` arrives; `cap` bytes pass.
    pub fn max_bytes(mut self, cap: u64) -> Self {
        self.cap = Some(cap);
        self
    }

    /// The length the source announced, if any: fewer bytes at the end are
    /// [`BodyError::Truncated`], more are [`BodyError::LongerThanAnnounced`].
    pub fn expect_len(mut self, expected: Option<u64>) -> Self {
        self.expected = expected;
        self
    }

    /// Runs `f` once, when the body has been read to a clean end (every announced byte).
    pub fn on_complete(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.on_complete = Some(Box::new(f));
        self
    }

    /// The bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Reads the whole body into memory (for small documents: set a cap).
    pub async fn read_to_vec(mut self) -> Result<Vec<u8>, BodyError> {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 8 * 1024];
        loop {
            let mut buf = ReadBuf::new(&mut chunk);
            std::future::poll_fn(|cx| self.poll_typed(cx, &mut buf)).await?;
            if buf.filled().is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(buf.filled());
        }
    }

    fn poll_typed(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<Result<(), BodyError>> {
        if self.failed {
            return Poll::Ready(Err(BodyError::Failed {
                what: self.what.clone(),
            }));
        }
        if self.ended || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let polled = self.poll_inner(cx, buf);
        if let Poll::Ready(Err(_)) = polled {
            self.failed = true;
        }
        polled
    }

    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<Result<(), BodyError>> {
        if let Some(deadline) = self.deadline {
            let timer = self
                .total_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(BodyError::DeadlineExceeded {
                    what: self.what.clone(),
                    total: self.total.unwrap_or_default(),
                    read: self.read,
                }));
            }
        }
        // Ask for at most one byte past the cap: byte `cap + 1` is the error, and no byte past
        // the cap is ever handed over.
        let want = match self.cap {
            Some(cap) => {
                let room = cap.saturating_sub(self.read).saturating_add(1);
                usize::try_from(room)
                    .unwrap_or(usize::MAX)
                    .min(buf.remaining())
            }
            None => buf.remaining(),
        };
        let mut window = ReadBuf::new(buf.initialize_unfilled_to(want));
        match Pin::new(&mut self.inner).poll_read(cx, &mut window) {
            Poll::Pending => {
                let Some(stall) = self.stall else {
                    return Poll::Pending;
                };
                let timer = self
                    .stall_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(BodyError::Stalled {
                        what: self.what.clone(),
                        stall,
                        read: self.read,
                    })),
                    Poll::Pending => Poll::Pending,
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(BodyError::from_io(e, &self.what))),
            Poll::Ready(Ok(())) => {
                self.stall_timer = None;
                let n = window.filled().len();
                if n == 0 {
                    return Poll::Ready(self.end());
                }
                let read = self.read.saturating_add(n as u64);
                if let Some(cap) = self.cap.filter(|&cap| read > cap) {
                    return Poll::Ready(Err(BodyError::TooLarge {
                        what: self.what.clone(),
                        cap,
                    }));
                }
                if let Some(expected) = self.expected.filter(|&e| read > e) {
                    return Poll::Ready(Err(BodyError::LongerThanAnnounced {
                        what: self.what.clone(),
                        expected,
                    }));
                }
                self.read = read;
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
        }
    }

    /// The inner reader ended: complete, or short of the announced length.
    fn end(&mut self) -> Result<(), BodyError> {
        if let Some(expected) = self.expected.filter(|&e| self.read < e) {
            return Err(BodyError::Truncated {
                what: self.what.clone(),
                read: self.read,
                expected,
            });
        }
        self.ended = true;
        if let Some(f) = self.on_complete.take() {
            f();
        }
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for BoundedBody<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_typed(cx, buf).map_err(io::Error::from)
    }
}

#[cfg(test)]
#[path = "body_tests.rs"]
mod tests;

/// A release body that is not requested until it is first read: what a fetcher hands over as
/// [`Release::body`](super::Release::body) beside a [`Delta`](super::Delta), so that the full
/// release costs no request when the patch applies. `open` runs on the first read; its error is
/// that read's error. Dropped unread, nothing is requested.
///
/// ```
/// use tokio::io::AsyncReadExt;
/// use upshift::fetch::{body, ReleaseBody};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// let opened = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
/// let flag = opened.clone();
/// let mut full = body::lazy(async move {
///     flag.store(true, std::sync::atomic::Ordering::SeqCst);
///     Ok(Box::new(&b"the full release"[..]) as ReleaseBody)
/// });
/// assert!(!opened.load(std::sync::atomic::Ordering::SeqCst), "nothing requested yet");
/// let mut text = String::new();
/// full.read_to_string(&mut text).await?;
/// assert_eq!(text, "the full release");
/// # Ok(()) }
/// ```
pub fn lazy<F>(open: F) -> super::ReleaseBody
where
    F: Future<Output = io::Result<super::ReleaseBody>> + Send + 'static,
{
    Box::new(LazyBody::Opening(Box::pin(open)))
}

type Opening = Pin<Box<dyn Future<Output = io::Result<super::ReleaseBody>> + Send>>;

enum LazyBody {
    Opening(Opening),
    Open(super::ReleaseBody),
    Failed,
}

impl AsyncRead for LazyBody {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this {
                LazyBody::Opening(open) => match open.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(body)) => *this = LazyBody::Open(body),
                    Poll::Ready(Err(e)) => {
                        *this = LazyBody::Failed;
                        return Poll::Ready(Err(e));
                    }
                },
                LazyBody::Open(body) => return Pin::new(body).poll_read(cx, buf),
                LazyBody::Failed => {
                    return Poll::Ready(Err(io::Error::other(
                        "the release body could not be opened",
                    )))
                }
            }
        }
    }
}
