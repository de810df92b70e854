//! Uploads above one part size: CreateMultipartUpload, the parts (a few at a time, each with
//! its SHA256 checksum), CompleteMultipartUpload, and AbortMultipartUpload on any failure.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};

use super::{body, checksum_b64, s3_error, unreadable, S3Store};
use crate::artifact::{content_type, Artifact};
use crate::progress::{Counter, Progress};
use crate::Error;

/// Parts uploaded at once.
const PARALLEL_PARTS: usize = 4;

/// A 2xx answer that the SDK could not turn into the operation's output (a body it cannot
/// parse): the request may have done its work.
fn is_unreadable_success<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    let status = e.raw_response().map(|r| r.status().as_u16());
    matches!(e, SdkError::ServiceError(_) | SdkError::ResponseError(_))
        && e.code().is_none()
        && matches!(status, Some(200..=299))
}

/// Why a HEAD's `size`, metadata `sha256` and `etag` are not those of `artifact` uploaded in
/// `count` parts; `None` if they are.
fn completed_mismatch(
    size: Option<i64>,
    sha256: Option<&str>,
    etag: Option<&str>,
    artifact: &Artifact,
    count: usize,
) -> Option<String> {
    let parts = etag
        .map(|t| t.trim_matches('"'))
        .and_then(|t| t.rsplit_once('-'))
        .and_then(|(_, n)| n.parse::<usize>().ok());
    if size != i64::try_from(artifact.size).ok() {
        Some(format!("its size is {size:?}, not {}", artifact.size))
    } else if sha256 != Some(artifact.sha256.as_str()) {
        Some(format!(
            "its x-amz-meta-sha256 is {sha256:?}, not {}",
            artifact.sha256
        ))
    } else if parts != Some(count) {
        Some(format!(
            "its ETag {etag:?} is not that of an upload in {count} parts"
        ))
    } else {
        None
    }
}

impl S3Store {
    pub(super) async fn multipart_put(
        &self,
        artifact: &Artifact,
        key: &str,
        progress: &Progress,
    ) -> Result<(), Error> {
        let client = self.client()?.clone();
        let bucket = self.config.bucket.clone();
        let what = format!("multipart upload to s3://{bucket}/{key}");
        let created = client
            .create_multipart_upload()
            .bucket(&bucket)
            .key(key)
            .content_type(content_type(&artifact.name))
            .metadata("sha256", &artifact.sha256)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| s3_error(&what, &self.endpoint, e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| Error::S3(format!("{what}: the store returned no upload id")))?
            .to_string();
        let parts = self.upload_parts(artifact, key, &upload_id, progress).await;
        let completed = match parts {
            Ok(parts) => {
                let count = parts.len();
                let answer = client
                    .complete_multipart_upload()
                    .bucket(&bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await;
                match answer {
                    Ok(_) => Ok(()),
                    Err(e) if is_unreadable_success(&e) => {
                        self.confirm_completed(artifact, key, count, &what, &e)
                            .await
                    }
                    Err(e) => Err(s3_error(&what, &self.endpoint, e)),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = completed {
            // Parts of an upload never completed are stored (and billed) until aborted.
            let aborted = client
                .abort_multipart_upload()
                .bucket(&bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
            let note = match aborted {
                Ok(_) => "the incomplete multipart upload was aborted".to_string(),
                Err(a) => format!(
                    "aborting the incomplete multipart upload {upload_id} failed too (set a \
                     lifecycle rule to clean up incomplete uploads): {}",
                    s3_error("abort", &self.endpoint, a)
                ),
            };
            return Err(e.with_note(note));
        }
        Ok(())
    }

    /// After a 2xx answer to CompleteMultipartUpload that the SDK could not read (moto 5.2.1
    /// names its root element `CompleteMultipartUploadResponse`, not S3's
    /// `CompleteMultipartUploadResult`): the upload counts as complete only if a HEAD shows an
    /// object of this size, this `x-amz-meta-sha256` and an ETag of `count` parts (`<hex>-N`).
    async fn confirm_completed<E>(
        &self,
        artifact: &Artifact,
        key: &str,
        count: usize,
        what: &str,
        answer: &SdkError<E>,
    ) -> Result<(), Error>
    where
        E: std::error::Error + 'static,
    {
        let unreadable = unreadable(answer);
        let head = self
            .client()?
            .head_object()
            .bucket(&self.config.bucket)
            .key(key)
            .send();
        let head = self
            .bounded(what, async {
                head.await
                    .map_err(|e| s3_error("HEAD to confirm it", &self.endpoint, e))
            })
            .await;
        let mismatch = match &head {
            Err(e) => Some(e.to_string()),
            Ok(out) => completed_mismatch(
                out.content_length(),
                out.metadata()
                    .and_then(|m| m.get("sha256"))
                    .map(String::as_str),
                out.e_tag(),
                artifact,
                count,
            ),
        };
        match mismatch {
            None => {
                tracing::warn!(
                    endpoint = %self.endpoint,
                    answer = %unreadable,
                    "the store's answer to CompleteMultipartUpload is not S3's; a HEAD shows \
                     the object complete (size, sha256 and part count match)"
                );
                Ok(())
            }
            Some(why) => Err(Error::S3(format!(
                "{what} ({}): the store answered CompleteMultipartUpload with HTTP 2xx but a \
                 response that cannot be read ({unreadable}), and the object is not this upload: \
                 {why}",
                self.endpoint
            ))),
        }
    }

    async fn upload_parts(
        &self,
        artifact: &Artifact,
        key: &str,
        upload_id: &str,
        progress: &Progress,
    ) -> Result<Vec<CompletedPart>, Error> {
        let size = self.config.part_size;
        let count = artifact.size.div_ceil(size);
        let mut tasks = tokio::task::JoinSet::new();
        let mut done: Vec<CompletedPart> = Vec::new();
        let mut next = 0u64;
        while next < count || !tasks.is_empty() {
            while next < count && tasks.len() < PARALLEL_PARTS {
                let offset = next * size;
                let len = size.min(artifact.size - offset);
                let part = Part {
                    client: self.client()?.clone(),
                    bucket: self.config.bucket.clone(),
                    key: key.to_string(),
                    upload_id: upload_id.to_string(),
                    number: (next + 1) as i32,
                    path: artifact.path.clone(),
                    offset,
                    len,
                    counter: progress.counter(next as usize),
                    endpoint: self.endpoint.clone(),
                };
                tasks.spawn(part.send());
                next += 1;
            }
            match tasks.join_next().await {
                Some(Ok(Ok(p))) => done.push(p),
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(Error::S3(format!("a part's upload task failed: {e}"))),
                None => break,
            }
        }
        done.sort_by_key(|p| p.part_number());
        Ok(done)
    }
}

/// One part of a multipart upload.
struct Part {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    upload_id: String,
    number: i32,
    path: std::path::PathBuf,
    offset: u64,
    len: u64,
    counter: Counter,
    endpoint: String,
}

impl Part {
    async fn send(self) -> Result<CompletedPart, Error> {
        let (path, offset, len) = (self.path.clone(), self.offset, self.len);
        let digest = tokio::task::spawn_blocking(move || body::sha256_range(&path, offset, len))
            .await
            .map_err(|e| Error::S3(format!("hashing part {}: {e}", self.number)))??;
        let sha = checksum_b64(&digest);
        let body = body::file_part(&self.path, self.offset, self.len, self.counter.clone()).await?;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(self.number)
            .content_length(self.len as i64)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(&sha)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                s3_error(
                    &format!("part {} of s3://{}/{}", self.number, self.bucket, self.key),
                    &self.endpoint,
                    e,
                )
            })?;
        Ok(CompletedPart::builder()
            .part_number(self.number)
            .set_e_tag(out.e_tag().map(str::to_string))
            .checksum_sha256(out.checksum_sha256().unwrap_or(&sha))
            .build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::Archive;

    fn artifact() -> Artifact {
        Artifact {
            name: "app".into(),
            path: "/nonexistent/app".into(),
            size: 11_000_000,
            sha256: "ab".repeat(32),
            archive: Archive::Raw,
            base: None,
        }
    }

    /// Only an object of this size, sha256 and part count is this upload, completed.
    #[test]
    fn a_head_confirms_only_this_upload() {
        let a = artifact();
        let sha = a.sha256.clone();
        let ok = |size, sha: Option<&str>, etag| completed_mismatch(size, sha, etag, &a, 3);
        assert_eq!(ok(Some(11_000_000), Some(&sha), Some("\"4ee0-3\"")), None);
        let why = ok(Some(10_000_000), Some(&sha), Some("\"4ee0-3\"")).unwrap();
        assert!(why.contains("size"), "{why}");
        let why = ok(Some(11_000_000), None, Some("\"4ee0-3\"")).unwrap();
        assert!(why.contains("x-amz-meta-sha256"), "{why}");
        let other = "cd".repeat(32);
        assert!(ok(Some(11_000_000), Some(&other), Some("\"4ee0-3\"")).is_some());
        // An earlier single-part object, or one in another number of parts.
        for etag in ["\"4ee01546146588e32fd83df1976e0ea5\"", "\"4ee0-2\""] {
            let why = ok(Some(11_000_000), Some(&sha), Some(etag)).unwrap();
            assert!(why.contains("3 parts"), "{why}");
        }
        assert!(ok(Some(11_000_000), Some(&sha), None).is_some());
        assert!(ok(None, Some(&sha), Some("\"4ee0-3\"")).is_some());
    }
}
