//! The `GET` of an object's bytes, one way for every body the fetcher hands out: the release read
//! at once, the release behind a patch (requested on its first read), and the patch itself. Each
//! is pinned to the version its `HEAD` saw (`If-Match`), validated against S3's full-object
//! checksum where there is one, and read through the shared [`BoundedBody`] (stall timeout,
//! announced length).

use std::time::Duration;

use aws_sdk_s3::types::ChecksumMode;
use upshift::fetch::body::{self as shared_body, BoundedBody};
use upshift::fetch::{FetchError, ReleaseBody};

use crate::errors;

/// One object version to read, owned: a lazy body outlives the check that found it.
#[derive(Clone)]
pub(crate) struct ObjectGet {
    pub(crate) s3: aws_sdk_s3::Client,
    pub(crate) bucket: String,
    pub(crate) key: String,
    /// For errors: the endpoint URL, or "AWS S3 (region)".
    pub(crate) endpoint: String,
    /// The ETag as its `HEAD` sent it (quoted), for `If-Match`; `None` if the store sent none.
    pub(crate) raw_etag: Option<String>,
    /// The ETag without quotes, to compare with a store that ignores `If-Match`.
    pub(crate) etag: String,
    /// Whether S3's checksum of the object is a full-object one the SDK can validate as the
    /// body streams (a multipart upload's composite it cannot, and says so at WARN on every GET).
    pub(crate) validate: bool,
    /// The longest the body may go without data.
    pub(crate) stall: Duration,
}

/// What a `GET` found.
pub(crate) enum Got {
    /// The body (its `on_complete` already set) and the length S3 announced.
    Body(ReleaseBody, Option<u64>),
    /// No such object (any more).
    Missing,
    /// The object is another version than the `HEAD` saw.
    Changed,
}

impl ObjectGet {
    /// `GET s3://bucket/key`, for messages.
    fn what(&self) -> String {
        format!("GET s3://{}/{}", self.bucket, self.key)
    }

    /// Sends the `GET`; `on_complete` runs once the body was read to its end, complete.
    pub(crate) async fn send(
        &self,
        on_complete: Option<Box<dyn FnOnce() + Send>>,
    ) -> Result<Got, FetchError> {
        let what = self.what();
        let mut get = self.s3.get_object().bucket(&self.bucket).key(&self.key);
        if self.validate {
            get = get.checksum_mode(ChecksumMode::Enabled);
        }
        if let Some(etag) = &self.raw_etag {
            get = get.if_match(etag.clone());
        }
        let out = match get.send().await {
            Ok(out) => out,
            Err(e) if errors::is_not_found(&e) => return Ok(Got::Missing),
            Err(e) if errors::status(&e) == Some(412) => return Ok(Got::Changed),
            Err(e) => return Err(errors::convert(e, &what, &self.endpoint)),
        };
        // Stores that ignore If-Match: compare the ETag.
        if let (Some(_), Some(got)) = (&self.raw_etag, out.e_tag()) {
            if crate::unquote(got) != self.etag {
                return Ok(Got::Changed);
            }
        }
        let size = out.content_length().and_then(|l| u64::try_from(l).ok());
        let mut body = BoundedBody::new(Box::pin(out.body.into_async_read()), what)
            .stall(self.stall)
            .expect_len(size);
        if let Some(f) = on_complete {
            body = body.on_complete(f);
        }
        Ok(Got::Body(Box::new(body), size))
    }

    /// The body, requested on its first read ([`shared_body::lazy`]): nothing is asked of S3
    /// while it is not read. The object gone or changed since its `HEAD` is that read's error.
    pub(crate) fn lazy(self, on_complete: Option<Box<dyn FnOnce() + Send>>) -> ReleaseBody {
        shared_body::lazy(async move {
            let what = self.what();
            match self.send(on_complete).await {
                Ok(Got::Body(body, _)) => Ok(body),
                Ok(Got::Missing) => Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{what}: no such object any more"),
                )),
                Ok(Got::Changed) => Err(std::io::Error::other(format!(
                    "{what}: the object changed since it was checked"
                ))),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            }
        })
    }
}
