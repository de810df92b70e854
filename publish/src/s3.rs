//! The S3 destination (and S3-compatible stores: MinIO, R2, Ceph, s3s, moto).
//!
//! One shape on every store, which upshift-s3 reads the same way everywhere. The object always
//! carries its sha256 as `x-amz-meta-sha256` (hex), next to the `NAME.sha256` sidecar. Up to one
//! `--part-size`, it goes up in one PUT that also carries S3's own SHA256 checksum, sent as the
//! AWS SDKs send one (`x-amz-sdk-checksum-algorithm` and `x-amz-checksum-sha256`; moto keeps the
//! value only with the algorithm header): the server verifies it on arrival and the fetcher
//! reads it first. Larger objects go up as a multipart upload with a SHA256 checksum per part,
//! verified per part; the object's checksum is then a composite (a checksum of the parts'
//! checksums), which the fetcher never takes for the file's sha256: it uses the metadata. A
//! whole-file checksum of a multipart upload (S3's `FULL_OBJECT` type) exists only for the CRC
//! algorithms, never SHA256, so the metadata and the sidecar are what carry the sha256.
//!
//! A failed multipart upload is aborted, so no parts are left behind. A 2xx answer to
//! CompleteMultipartUpload that the SDK cannot read (moto 5.2.1 names its root element
//! `CompleteMultipartUploadResponse`) counts as success only once a HEAD shows the object
//! complete: this size, this sha256 and this number of parts.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use aws_smithy_http_client::tls;
use sha2::{Digest, Sha256};

use crate::artifact::{content_type, Artifact};
use crate::config::S3Config;
use crate::progress::{Counter, Progress};
use crate::publish::Store;
use crate::Error;

mod body;
mod multipart;

const DEFAULT_REGION: &str = "us-east-1";

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
        // A 2xx whose body the SDK cannot read: say what it could not read.
        (None, _, Some(status @ 200..=299)) => {
            format!("HTTP {status}: {}", unreadable(&e))
        }
        // A HEAD's error has no body to name it.
        (None, _, Some(status)) => format!("HTTP {status}"),
        _ => DisplayErrorContext(&e).to_string(),
    };
    Error::S3(format!("{what} ({endpoint}): {detail}{hint}"))
}

/// What the SDK could not make of an answer, without the raw response (headers, body) that
/// `DisplayErrorContext` of the whole error would print.
fn unreadable<E: std::error::Error + 'static>(e: &SdkError<E>) -> String {
    match e {
        SdkError::ServiceError(se) => DisplayErrorContext(se.err()).to_string(),
        other => DisplayErrorContext(other).to_string(),
    }
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
            // The algorithm too (`x-amz-sdk-checksum-algorithm`), as the AWS SDKs send it: moto
            // keeps a checksum only with it, and the SDK then sends ours instead of computing one.
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
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
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
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
