//! The release body: the GET's byte stream as it arrives (never buffered whole), with errors that
//! name the object, an idle timeout, a check that the announced length arrived, and a flag raised
//! once the body was read to its end.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

pub(crate) struct Body {
    inner: Pin<Box<dyn AsyncBufRead + Send>>,
    /// `GET s3://bucket/key`, for errors.
    what: String,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    /// Whether the last poll of `inner` was pending (the timer then runs).
    waiting: bool,
    read: u64,
    expected: Option<u64>,
    /// Raised when the body was read to its end, complete.
    delivered: Arc<AtomicBool>,
}

impl Body {
    pub(crate) fn new(
        inner: impl AsyncBufRead + Send + 'static,
        what: String,
        idle: Duration,
        expected: Option<u64>,
        delivered: Arc<AtomicBool>,
    ) -> Body {
        Body {
            inner: Box::pin(inner),
            what,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
            read: 0,
            expected,
            delivered,
        }
    }

    fn fail(&self, kind: io::ErrorKind, msg: impl std::fmt::Display) -> io::Error {
        io::Error::new(kind, format!("{}: {msg}", self.what))
    }
}

impl AsyncRead for Body {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match this.inner.as_mut().poll_read(cx, buf) {
            Poll::Pending => {
                // The idle time counts from the first read that found nothing, not from the
                // last data: a consumer that pauses between reads is not a stalled source.
                if !this.waiting {
                    this.waiting = true;
                    let deadline = Instant::now() + this.idle;
                    this.timer.as_mut().reset(deadline);
                }
                ready!(this.timer.as_mut().poll(cx));
                let read = this.read;
                Poll::Ready(Err(this.fail(
                    io::ErrorKind::TimedOut,
                    format!("no data for {:?} after {read} bytes", this.idle),
                )))
            }
            Poll::Ready(Err(e)) => {
                this.waiting = false;
                Poll::Ready(Err(this.fail(e.kind(), e)))
            }
            Poll::Ready(Ok(())) => {
                this.waiting = false;
                let n = (buf.filled().len() - before) as u64;
                if n > 0 {
                    this.read += n;
                    if let Some(expected) = this.expected.filter(|&e| this.read > e) {
                        return Poll::Ready(Err(this.fail(
                            io::ErrorKind::InvalidData,
                            format!("more than the announced {expected} bytes"),
                        )));
                    }
                    return Poll::Ready(Ok(()));
                }
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                // The end of the stream.
                if let Some(expected) = this.expected.filter(|&e| this.read < e) {
                    let read = this.read;
                    return Poll::Ready(Err(this.fail(
                        io::ErrorKind::UnexpectedEof,
                        format!("the transfer ended after {read} of {expected} bytes"),
                    )));
                }
                this.delivered.store(true, Ordering::Release);
                Poll::Ready(Ok(()))
            }
        }
    }
}
