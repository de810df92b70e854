//! The S3 destination (and S3-compatible stores: MinIO, R2, Ceph, s3s).
//!
//! The object carries its sha256 twice, as upshift-s3 reads it: as `x-amz-meta-sha256` (hex;
//! always) and, for a single-request upload, as S3's own SHA256 checksum, which the server
//! verifies on arrival. A multipart upload (above one `--part-size`) sends a SHA256 checksum
//! with each part, verified per part; the object's checksum is then a composite that the
//! fetcher ignores in favour of the metadata. A failed multipart upload is aborted, so no parts
//! are left behind.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls;
use sha2::{Digest, Sha256};

use crate::artifact::{content_type, Artifact};
use crate::config::S3Config;
use crate::progress::{Counter, Progress};
use crate::publish::Store;
use crate::Error;

mod body;

const DEFAULT_REGION: &str = "us-east-1";
/// Parts uploaded at once in a multipart upload.
const PARALLEL_PARTS: usize = 4;

/// An S3 "directory": the key's prefix, names below it.
pub(crate) struct S3Store {
    config: S3Config,
    /// The key's prefix, up to and including its last `/` (empty at the bucket's root).
    prefix: String,
    timeout: Duration,
    client: Option<aws_sdk_s3::Client>,
    /// For messages: the endpoint URL, or "AWS S3 (region)".
    endpoint: String,
}

/// base64 of the raw sha256 of `bytes`: S3's `x-amz-checksum-sha256`.
fn checksum_b64(raw: &[u8]) -> String {
    aws_smithy_types::base64::encode(raw)
}

/// What S3 said, with a hint for the usual causes.
fn s3_error<E>(what: &str, endpoint: &str, e: SdkError<E>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let hint = match (e.code(), status) {
        (Some("AccessDenied"), _) | (None, Some(403)) => {
            " (wrong credentials, or not allowed there: s3:GetObject, s3:PutObject and \
             s3:DeleteObject are needed)"
        }
        (Some("NoSuchBucket"), _) => " (the bucket does not exist)",
        (Some("InvalidAccessKeyId" | "SignatureDoesNotMatch"), _) => " (check the credentials)",
        (Some("BadDigest" | "XAmzContentSHA256Mismatch" | "InvalidDigest"), _) => {
            " (the bytes that arrived do not match their checksum: retry)"
        }
        (_, Some(500..=599)) => " (the store failed: retry later)",
        _ => "",
    };
    let detail = match (e.code(), e.message(), status) {
        (Some(code), Some(msg), _) => format!("{code}: {msg}"),
        (Some(code), None, _) => code.to_string(),
        // A HEAD's error has no body to name it.
        (None, _, Some(status)) => format!("HTTP {status}"),
        _ => DisplayErrorContext(&e).to_string(),
    };
    Error::S3(format!("{what} ({endpoint}): {detail}{hint}"))
}

/// "No such object": a HEAD's bare 404, or `NoSuchKey` (a missing bucket is an error).
fn is_not_found<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    match e {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            matches!(e.code(), Some("NoSuchKey" | "NotFound"))
                || (e.raw_response().map(|r| r.status().as_u16()) == Some(404)
                    && e.code() != Some("NoSuchBucket"))
        }
        _ => false,
    }
}

impl S3Store {
    /// `config.key` is the object's full key, or a prefix ending in `/`.
    pub fn new(config: S3Config, timeout: Duration) -> S3Store {
        let prefix = match config.key.rfind('/') {
            Some(i) => config.key[..=i].to_string(),
            None => String::new(),
        };
        S3Store {
            config,
            prefix,
            timeout,
            client: None,
            endpoint: String::new(),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn client(&self) -> Result<&aws_sdk_s3::Client, Error> {
        self.client
            .as_ref()
            .ok_or_else(|| Error::S3("not connected".into()))
    }

    /// Runs a small request within the timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(self.timeout, f)
            .await
            .unwrap_or_else(|_| {
                Err(Error::S3(format!(
                    "{what} ({}): no answer within {} s",
                    self.endpoint,
                    self.timeout.as_secs()
                )))
            })
    }

    async fn single_put(
        &self,
        artifact: &Artifact,
        key: &str,
        counter: Counter,
    ) -> Result<(), Error> {
        let client = self.client()?;
        let raw = hex::decode(&artifact.sha256).map_err(|e| Error::S3(format!("sha256: {e}")))?;
        let body = body::file_part(&artifact.path, 0, artifact.size, counter).await?;
        client
            .put_object()
            .bucket(&self.config.bucket)
            .key(key)
            .body(body)
            .content_length(artifact.size as i64)
            .content_type(content_type(&artifact.name))
            .metadata("sha256", &artifact.sha256)
            .checksum_sha256(checksum_b64(&raw))
            .send()
            .await
            .map_err(|e| {
                s3_error(
                    &format!("PUT s3://{}/{key}", self.config.bucket),
                    &self.endpoint,
                    e,
                )
            })?;
        Ok(())
    }

    async fn multipart_put(
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
            Ok(parts) => client
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
                .await
                .map(drop)
                .map_err(|e| s3_error(&what, &self.endpoint, e)),
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

impl Store for S3Store {
    fn location(&self, name: &str) -> String {
        format!("s3://{}/{}", self.config.bucket, self.key(name))
    }

    fn may_replace(&self) -> bool {
        // Overwriting the key is how the S3 fetcher sees a release (its ETag changes).
        true
    }

    async fn begin(&mut self) -> Result<(), Error> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        // No read timeout: an upload's answer comes only after its last byte; stalls are
        // caught by the progress watchdog and small requests by `bounded`.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10).min(self.timeout))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts);
        if let Some(profile) = &self.config.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &self.config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some((id, secret)) = &self.config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                id,
                &secret.0,
                None,
                None,
                "upshift-publish",
            ));
        }
        let sdk = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&sdk)
            // Only the checksums set here: the SDK's default CRC32 trailers would be a second,
            // different checksum on every upload.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        let region = match sdk.region() {
            Some(r) => r.to_string(),
            None => {
                config = config.region(Region::from_static(DEFAULT_REGION));
                DEFAULT_REGION.to_string()
            }
        };
        if let Some(url) = &self.config.endpoint {
            config = config.endpoint_url(url.clone());
        }
        let path_style = self
            .config
            .path_style
            .unwrap_or(self.config.endpoint.is_some());
        config = config.force_path_style(path_style);
        self.endpoint = match self.config.endpoint.as_deref().or(sdk.endpoint_url()) {
            Some(url) => url.to_string(),
            None => format!("AWS S3 {region}"),
        };
        tracing::debug!(endpoint = %self.endpoint, %region, path_style, "S3 client configured");
        self.client = Some(aws_sdk_s3::Client::from_conf(config.build()));
        Ok(())
    }

    async fn exists(&mut self, name: &str) -> Result<bool, Error> {
        let key = self.key(name);
        let what = format!("GET {}", self.location(name));
        let client = self.client()?;
        // A 1-byte GET rather than a HEAD: an error then comes with S3's code (a wrong secret
        // is `SignatureDoesNotMatch`, not a bare 403).
        let probe = client
            .get_object()
            .bucket(&self.config.bucket)
            .key(&key)
            .range("bytes=0-0")
            .send();
        self.bounded(&what, async {
            match probe.await {
                Ok(_) => Ok(true),
                Err(e) if is_not_found(&e) => Ok(false),
                // An empty object has no byte 0.
                Err(e) if e.code() == Some("InvalidRange") => Ok(true),
                Err(e) => Err(s3_error(&what, &self.endpoint, e)),
            }
        })
        .await
    }

    async fn read_small(&mut self, name: &str) -> Result<Option<Vec<u8>>, Error> {
        let key = self.key(name);
        let what = format!("GET {}", self.location(name));
        let client = self.client()?;
        let get = client
            .get_object()
            .bucket(&self.config.bucket)
            .key(&key)
            .send();
        self.bounded(&what, async {
            let out = match get.await {
                Ok(out) => out,
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(s3_error(&what, &self.endpoint, e)),
            };
            let bytes = out
                .body
                .collect()
                .await
                .map_err(|e| Error::S3(format!("{what}: {e}")))?;
            Ok(Some(bytes.into_bytes().to_vec()))
        })
        .await
    }

    async fn put_small(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), Error> {
        let key = self.key(name);
        let what = format!("PUT {}", self.location(name));
        let sha = checksum_b64(&Sha256::digest(&bytes));
        let client = self.client()?;
        let put = client
            .put_object()
            .bucket(&self.config.bucket)
            .key(&key)
            .content_type(content_type(name))
            .checksum_sha256(sha)
            .body(ByteStream::from(bytes))
            .send();
        self.bounded(&what, async {
            put.await
                .map(drop)
                .map_err(|e| s3_error(&what, &self.endpoint, e))
        })
        .await
    }

    async fn remove(&mut self, name: &str) -> Result<(), Error> {
        let key = self.key(name);
        let what = format!("DELETE {}", self.location(name));
        let client = self.client()?;
        let delete = client
            .delete_object()
            .bucket(&self.config.bucket)
            .key(&key)
            .send();
        self.bounded(&what, async {
            match delete.await {
                Ok(_) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(s3_error(&what, &self.endpoint, e)),
            }
        })
        .await
    }

    async fn put_main(&mut self, artifact: &Artifact, progress: &Progress) -> Result<(), Error> {
        let key = self.key(&artifact.name);
        match artifact.size > self.config.part_size {
            true => self.multipart_put(artifact, &key, progress).await,
            false => self.single_put(artifact, &key, progress.counter(0)).await,
        }
    }

    async fn commit(&mut self) -> Result<Vec<String>, Error> {
        Ok(vec![format!("endpoint {}", self.endpoint)])
    }

    async fn abort(&mut self) -> String {
        String::new()
    }

    fn abort_removes_all(&self) -> bool {
        false
    }
}
