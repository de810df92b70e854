//! The validators a fetcher remembers, and the release body (the shared bounded reader) that
//! commits them once it has been read to its end.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use reqwest::header::{
    HeaderMap, HeaderValue, DATE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};
use tokio_util::io::StreamReader;
use upshift::fetch::body::BoundedBody;

/// What a response said about its version: sent back as `If-None-Match` / `If-Modified-Since`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Validators {
    pub(crate) etag: Option<HeaderValue>,
    pub(crate) last_modified: Option<HeaderValue>,
    /// Whether a later change is sure to change them; see [`settled`].
    reliable: bool,
}

/// Whether a resource last modified at `last_modified` and served at `date` (the response's
/// `Date`, else now) has validators a later change is sure to change: its modification time is
/// at least a second in the past (RFC 9110, 8.8.2.2). Static servers derive both validators from
/// the file's mtime in whole seconds (nginx's ETag is `"<mtime>-<size>"`), so a file rewritten
/// in the second it was served, at the same size (a checksum sidecar always has the same size),
/// would keep them, and a conditional request would hide the change.
fn settled(last_modified: &HeaderValue, date: Option<&HeaderValue>) -> bool {
    let parse = |v: &HeaderValue| {
        v.to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok())
    };
    let Some(modified) = parse(last_modified) else {
        return false;
    };
    let served = date.and_then(parse).unwrap_or_else(SystemTime::now);
    served
        .duration_since(modified)
        .is_ok_and(|age| age >= Duration::from_secs(1))
}

impl Validators {
    pub(crate) fn of(headers: &HeaderMap) -> Validators {
        let last_modified = headers.get(LAST_MODIFIED).cloned();
        let reliable = match &last_modified {
            Some(lm) => settled(lm, headers.get(DATE)),
            None => true, // an ETag alone: the server vouches for it
        };
        Validators {
            etag: headers.get(ETAG).cloned(),
            last_modified,
            reliable,
        }
    }

    #[cfg(test)]
    pub(crate) fn new(etag: Option<HeaderValue>, last_modified: Option<HeaderValue>) -> Self {
        Validators {
            etag,
            last_modified,
            reliable: true,
        }
    }

    /// Whether a later change of the resource is sure to change these (see [`settled`]).
    pub(crate) fn reliable(&self) -> bool {
        self.reliable
    }

    fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }

    /// Makes `req` conditional on these validators (both, when both are known).
    pub(crate) fn apply(&self, mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(etag) = &self.etag {
            req = req.header(IF_NONE_MATCH, etag.clone());
        }
        if let Some(date) = &self.last_modified {
            req = req.header(IF_MODIFIED_SINCE, date.clone());
        }
        req
    }

    /// `None` when the response carried neither validator, or unreliable ones: the next request
    /// is then unconditional.
    pub(crate) fn usable(self) -> Option<Validators> {
        (self.reliable && !self.is_empty()).then_some(self)
    }
}

/// The validators of the checksum document and of the release file as last handed over (or
/// found installed), and which check they came from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Memory {
    pub(crate) checksum: Option<Validators>,
    pub(crate) file: Option<Validators>,
    /// The check that last changed this memory: an older check's late commit is ignored.
    seq: u64,
}

impl Memory {
    fn newer(&mut self, seq: u64) -> bool {
        let newer = seq >= self.seq;
        if newer {
            self.seq = seq;
        }
        newer
    }

    pub(crate) fn forget_checksum(&mut self, seq: u64) {
        if self.newer(seq) {
            self.checksum = None;
        }
    }

    pub(crate) fn forget_file(&mut self, seq: u64) {
        if self.newer(seq) {
            self.file = None;
        }
    }

    /// The checksum names the installed build: remember it, the file is not needed.
    pub(crate) fn commit_checksum(&mut self, seq: u64, checksum: Option<Validators>) {
        if self.newer(seq) {
            self.checksum = checksum.and_then(Validators::usable);
        }
    }

    pub(crate) fn commit(&mut self, seq: u64, checksum: Option<Validators>, file: Validators) {
        if self.newer(seq) {
            self.checksum = checksum.and_then(Validators::usable);
            self.file = file.usable();
        }
    }
}

pub(crate) fn lock(m: &Mutex<Memory>) -> MutexGuard<'_, Memory> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a release's check learnt, to be remembered once its body has been read to the end.
pub(crate) struct Commit {
    memory: Arc<Mutex<Memory>>,
    seq: u64,
    checksum: Option<Validators>,
    file: Validators,
}

impl Commit {
    pub(crate) fn new(
        memory: Arc<Mutex<Memory>>,
        seq: u64,
        checksum: Option<Validators>,
        file: Validators,
    ) -> Commit {
        Commit {
            memory,
            seq,
            checksum,
            file,
        }
    }

    pub(crate) fn apply(self) {
        lock(&self.memory).commit(self.seq, self.checksum, self.file);
    }
}

/// A response body, read through the shared bounded reader. Dropping it aborts the transfer.
pub(crate) type Body = BoundedBody<StreamReader<BoxStream<'static, io::Result<Bytes>>, Bytes>>;

/// `resp`'s body about `what` (`GET <url>`), no limits set yet; a transport error keeps its
/// kind (a timeout is `TimedOut`) and its cause.
pub(crate) fn reader(resp: reqwest::Response, what: String) -> Body {
    let stream = resp
        .bytes_stream()
        .map(|chunk| chunk.map_err(read_error))
        .boxed();
    BoundedBody::new(StreamReader::new(stream), what)
}

fn read_error(e: reqwest::Error) -> io::Error {
    let kind = match e.is_timeout() {
        true => io::ErrorKind::TimedOut,
        false => io::ErrorKind::Other,
    };
    io::Error::new(kind, crate::meta::error_chain(&e.without_url()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn validators_of_a_file_modified_in_the_second_served_are_not_kept() {
        let fresh = headers(&[
            ("etag", "\"6571-4b\""),
            ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ]);
        assert_eq!(Validators::of(&fresh).usable(), None);
        let settled = headers(&[
            ("etag", "\"6571-4b\""),
            ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("date", "Wed, 21 Oct 2015 07:28:01 GMT"),
        ]);
        assert!(Validators::of(&settled).usable().is_some());
        let etag_only = headers(&[("etag", "\"abc\"")]);
        assert!(Validators::of(&etag_only).usable().is_some());
        let garbage = headers(&[("last-modified", "yesterday")]);
        assert_eq!(Validators::of(&garbage).usable(), None);
        assert_eq!(Validators::of(&HeaderMap::new()).usable(), None);
    }

    #[test]
    fn an_older_check_does_not_overwrite_a_newer_one() {
        let v = |tag: &'static str| Validators::new(Some(HeaderValue::from_static(tag)), None);
        let mut m = Memory::default();
        m.commit(2, Some(v("\"b\"")), v("\"B\""));
        m.commit(1, Some(v("\"a\"")), v("\"A\""));
        assert_eq!(m.checksum, Some(v("\"b\"")));
        assert_eq!(m.file, Some(v("\"B\"")));
        m.forget_checksum(3);
        assert_eq!(m.checksum, None);
        assert_eq!(m.file, Some(v("\"B\"")));
    }
}
