//! Upload bodies read from the staged file, a byte range at a time, counted for the progress
//! display. The SDK rebuilds a body to retry a request; each rebuild starts its part's count
//! over.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use sha2::{Digest, Sha256};

use crate::progress::Counter;
use crate::Error;

const BUFFER: usize = 256 * 1024;

/// A body that counts the data it hands out.
struct Counted {
    inner: SdkBody,
    counter: Counter,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.counter.add(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

/// `len` bytes of `path` from `offset`, as a retryable SDK body whose bytes are counted.
pub(super) async fn file_part(
    path: &Path,
    offset: u64,
    len: u64,
    counter: Counter,
) -> Result<ByteStream, Error> {
    let stream = ByteStream::read_from()
        .path(path)
        .offset(offset)
        .length(Length::Exact(len))
        .buffer_size(BUFFER)
        .build()
        .await
        .map_err(|e| Error::S3(format!("reading {}: {e}", path.display())))?;
    let counted = stream.into_inner().map_preserve_contents(move |inner| {
        counter.reset();
        SdkBody::from_body_1_x(Counted {
            inner,
            counter: counter.clone(),
        })
    });
    Ok(ByteStream::new(counted))
}

/// The raw sha256 of `len` bytes of `path` from `offset` (a multipart part's checksum).
/// Blocking.
pub(super) fn sha256_range(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
    let what = |e: std::io::Error| Error::io(format!("hashing a part of {}", path.display()), e);
    let mut file = File::open(path).map_err(what)?;
    file.seek(SeekFrom::Start(offset)).map_err(what)?;
    let mut hasher = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; BUFFER];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = file.read(&mut buf[..want]).map_err(what)?;
        if n == 0 {
            return Err(what(std::io::ErrorKind::UnexpectedEof.into()));
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher.finalize().to_vec())
}
