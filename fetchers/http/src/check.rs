//! One poll: the checksum first, then, only if it says so, the release file (or, for a release
//! the pipeline would refuse unread, only its metadata).

use std::time::Duration;

use reqwest::Url;
use upshift::fetch::checksum::Kind;
use upshift::fetch::{Current, FetchError, Origin, Release};

use crate::body::{self, Commit, Validators};
use crate::checksum;
use crate::delta;
use crate::meta;
use crate::request::{Doc, Getter, Got};
use crate::{ChecksumSource, HttpFetcher, SignatureSource, SIDECAR_LIMIT, SUMS_LIMIT};

/// The release last handed to the pipeline under a published checksum, and what the server
/// said about its file then.
#[derive(Debug, Clone)]
pub(crate) struct Offered {
    digest: String,
    signature: Option<String>,
    /// [`Release::source`] as offered.
    source: Option<String>,
    /// The file's validators as offered: a conditional request on them tells whether the file
    /// changed since.
    file: Validators,
}

impl Offered {
    /// Makes the next look at the file unconditional: it is to be offered again as it is.
    pub(crate) fn forget_file(&mut self) {
        self.file = Validators::default();
    }

    fn identity(&self) -> String {
        format!("sha256:{}", self.digest)
    }

    fn installed(&self, current: &Current) -> bool {
        self.digest.eq_ignore_ascii_case(&current.sha256)
            || current.identity.as_deref() == Some(self.identity().as_str())
    }

    /// Whether the pipeline refused it for good: the file need not be looked at again while
    /// the checksum and signature stay as they are.
    fn refused_for_good(&self, current: &Current) -> bool {
        current.was_rejected(
            &self.identity(),
            Some(&self.digest),
            self.signature.as_deref(),
        )
    }

    /// Whether it was refused for what the file was then (a checksum mismatch, a cut transfer):
    /// once the file changes, it is tried again.
    fn refused_as_it_was(&self, current: &Current, signature: Option<&str>) -> bool {
        self.signature.as_deref() == signature
            && current.was_rejected_from(
                &self.identity(),
                Some(&self.digest),
                signature,
                self.source.as_deref(),
            )
    }
}

/// How step 2 asks for the release file.
enum FileRequest {
    /// A `GET`, conditional on these validators if any.
    Get(Option<Validators>),
    /// A `HEAD` only: the release has no checksum and no signature, and the pipeline refuses
    /// such a release unread.
    Head,
}

impl HttpFetcher {
    pub(crate) async fn poll(&mut self, current: &Current) -> Result<Option<Release>, FetchError> {
        if let Some(e) = &self.config_error {
            return Err(FetchError::Source(format!("{}: {e}", self.name)));
        }
        self.require_tls()
            .map_err(|e| FetchError::Source(format!("{}: {e}", self.name)))?;
        self.checks += 1;
        let seq = self.checks;
        let client = self.client()?;
        let getter = Getter {
            client,
            origin: &self.url,
            headers: &self.headers,
            policy: self.policy,
        };
        let remembered = self.memory().clone();
        let small_timeout = self.small_timeout();

        // 1. The checksum: the change detector, and "is this what is installed?".
        let mut checksum_validators = None;
        let mut digest = None;
        // The signature, when step 1 needed it already.
        let mut signature_first = None;
        let mut file_request = FileRequest::Get(remembered.file.clone());
        // The checksum list this poll read, if the checksum comes from one: it names patches too.
        let mut sums = None;
        if let Some((kind, url)) = match &self.checksum {
            ChecksumSource::None => None,
            ChecksumSource::Sidecar(u) => Some((Kind::Sidecar, u)),
            ChecksumSource::Sums(u) => Some((Kind::List, u)),
        } {
            let limit = match kind {
                Kind::Sidecar => SIDECAR_LIMIT,
                Kind::List => SUMS_LIMIT,
            };
            let conditional = remembered.checksum.as_ref();
            match getter
                .small_doc(url, conditional, small_timeout, limit)
                .await?
            {
                Doc::NotModified => match self.last_offered.clone() {
                    Some(o) if !o.installed(current) && !o.refused_for_good(current) => {
                        // The release offered under this checksum was neither installed nor
                        // refused for good: its bytes did not match (a deploy writes the
                        // checksum first, and that poll got the old file, or the new one half
                        // written in place) or its transfer was cut. Ask for the file again,
                        // conditionally on what it was: an unchanged file costs no body bytes.
                        tracing::debug!(url = %meta::redact(url), "checksum unchanged, last release neither installed nor refused for good: checking the file");
                        checksum_validators = remembered.checksum.clone();
                        file_request = FileRequest::Get(recheck_validators(&o, &remembered));
                        digest = Some(o.digest);
                    }
                    _ => {
                        tracing::debug!(url = %meta::redact(url), "checksum unchanged: no new release");
                        return Ok(None);
                    }
                },
                Doc::Missing => {
                    tracing::debug!(url = %meta::redact(url), "no checksum published");
                    self.memory().forget_checksum(seq);
                }
                Doc::Found { text, validators } => {
                    let d = checksum::published(kind, &text, url, &self.url)?;
                    if kind == Kind::List {
                        sums = Some(text);
                    }
                    let identity = format!("sha256:{d}");
                    if d.eq_ignore_ascii_case(&current.sha256)
                        || current.identity.as_deref() == Some(identity.as_str())
                    {
                        tracing::debug!(%identity, "the published release is the installed one");
                        self.memory().commit_checksum(seq, Some(validators));
                        return Ok(None);
                    }
                    // A new checksum: before the release is requested, is it one the pipeline
                    // refused? That depends on its signature too (a corrected one makes a new
                    // candidate), so fetch it first.
                    let signature =
                        fetch_signature(&getter, &self.signature, small_timeout).await?;
                    if current.was_rejected(&identity, Some(&d), signature.as_deref()) {
                        tracing::debug!(%identity, "the published release was refused before");
                        self.memory().commit_checksum(seq, Some(validators));
                        return Ok(None);
                    }
                    file_request = match self.last_offered.as_ref() {
                        // Refused for what the file was (a cut transfer leaves the checksum's
                        // validators unremembered, so this poll read it again): only a changed
                        // file is worth a download.
                        Some(o)
                            if o.digest == d
                                && o.refused_as_it_was(current, signature.as_deref()) =>
                        {
                            FileRequest::Get(recheck_validators(o, &remembered))
                        }
                        _ => FileRequest::Get(None),
                    };
                    signature_first = Some(signature);
                    checksum_validators = Some(validators);
                    digest = Some(d);
                }
            }
        }

        // Without a checksum, a release the pipeline refuses unread (neither checksum nor
        // signature) costs its metadata only.
        if digest.is_none() && current.requires_checksum {
            let signature = fetch_signature(&getter, &self.signature, small_timeout).await?;
            if signature.is_none() {
                file_request = FileRequest::Head;
            }
            signature_first = Some(signature);
        }

        // 2. A patch from the running build, if one is published: then the release itself is
        // only asked about (HEAD), and read only if the patch does not work.
        let mut patch = None;
        if self.deltas && digest.is_some() && matches!(file_request, FileRequest::Get(None)) {
            patch = delta::find(
                &getter,
                &self.url,
                current,
                sums.as_deref(),
                matches!(signature_first, Some(Some(_))),
                small_timeout,
            )
            .await?;
            if patch.is_some() {
                file_request = FileRequest::Head;
            }
        }

        // 3. The release itself.
        let timeout = self.timeout;
        let got = match &file_request {
            FileRequest::Get(conditional) => {
                getter
                    .release(&self.url, conditional.as_ref(), timeout)
                    .await?
            }
            FileRequest::Head => getter.head(&self.url, small_timeout).await?,
        };
        let (resp, final_url) = match got {
            Got::NotModified => {
                tracing::debug!(url = %self.name, "release unchanged");
                if digest.is_some() {
                    // The file is as it was offered under this checksum: remember the checksum,
                    // so that the next poll is a 304 on it before anything else.
                    self.memory().commit_checksum(seq, checksum_validators);
                }
                return Ok(None);
            }
            Got::Missing => {
                tracing::debug!(url = %self.name, "no release published (404)");
                self.memory().forget_file(seq);
                return Ok(None);
            }
            Got::Ok(resp, url) => (resp, url),
        };
        let file_validators = Validators::of(resp.headers());
        let size_hint = match file_request {
            // A HEAD's body is empty: the length the file has is in the header.
            FileRequest::Head => resp
                .headers()
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            FileRequest::Get(_) => resp.content_length(),
        };
        let source = meta::source_of(&file_validators, size_hint);
        let identity = match &digest {
            Some(d) => format!("sha256:{d}"),
            None => meta::identity_without_digest(&file_validators, &final_url, size_hint),
        };
        if digest.is_none() && current.identity.as_deref() == Some(identity.as_str()) {
            tracing::debug!(%identity, "the published release is the installed one");
            self.memory().commit(seq, None, file_validators);
            return Ok(None); // dropping `resp` aborts the transfer
        }
        let format = match &self.format {
            Some(f) => f.clone(),
            None => meta::guess_format(&final_url, resp.headers(), &self.url),
        };

        // 4. The signature, optional (already fetched if step 1 needed it).
        let signature = match signature_first {
            Some(signature) => signature,
            None => fetch_signature(&getter, &self.signature, small_timeout).await?,
        };
        if current.was_rejected_from(
            &identity,
            digest.as_deref(),
            signature.as_deref(),
            source.as_deref(),
        ) {
            // Refused before, and the server says the bytes are the same: a restarted fetcher
            // that did not know, or a file that changed back. Not worth a download.
            tracing::debug!(%identity, ?source, "the published release was refused before");
            self.remember_offered(&digest, &signature, &source, &file_validators);
            self.memory()
                .commit(seq, checksum_validators, file_validators);
            return Ok(None); // dropping `resp` aborts the transfer
        }

        let rollout_percent = match &self.rollout {
            Some(url) => fetch_rollout(&getter, url, small_timeout).await?,
            None => None,
        };

        let requester = delta::Requester {
            client: getter.client.clone(),
            origin: self.url.clone(),
            headers: self.headers.clone(),
            policy: self.policy,
            stall: small_timeout,
            timeout,
        };
        tracing::debug!(%identity, url = %meta::redact(&final_url), ?size_hint, ?format, ?rollout_percent, ?source, "new release");
        self.remember_offered(&digest, &signature, &source, &file_validators);
        let commit = Commit::new(
            self.memory.clone(),
            seq,
            checksum_validators.clone(),
            file_validators.clone(),
        );
        let delta = patch.map(|p| p.into_delta(requester.clone()));
        let body: upshift::fetch::ReleaseBody = match file_request {
            // Read only if the patch does not work.
            FileRequest::Head if delta.is_some() => {
                drop(resp);
                requester.lazy_get(final_url.clone(), Some(commit))
            }
            // Nothing to read: the pipeline refuses a release without checksum or signature
            // before reading a byte.
            FileRequest::Head => Box::new(tokio::io::empty()),
            FileRequest::Get(_) => {
                let length = resp.content_length();
                let what = format!("GET {}", meta::redact(&final_url));
                Box::new(
                    body::reader(resp, what)
                        .stall(small_timeout)
                        .expect_len(length)
                        .on_complete(move || commit.apply()),
                )
            }
        };
        Ok(Some(Release {
            identity,
            sha256: digest,
            signature,
            size_hint,
            format,
            origin: Origin::Remote,
            body,
            local_file: None,
            delta,
            rollout_percent,
            version: None,
            source,
        }))
    }

    fn remember_offered(
        &mut self,
        digest: &Option<String>,
        signature: &Option<String>,
        source: &Option<String>,
        file: &Validators,
    ) {
        self.last_offered = digest.clone().map(|digest| Offered {
            digest,
            signature: signature.clone(),
            source: source.clone(),
            file: file.clone(),
        });
    }
}

/// What to make a second look at the file offered as `o` conditional on: the validators it was
/// offered with if they are to be trusted, else those remembered for a file read to its end.
/// `None` (an unconditional request) when neither is.
fn recheck_validators(o: &Offered, remembered: &body::Memory) -> Option<Validators> {
    o.file.clone().usable().or_else(|| remembered.file.clone())
}

/// The release's rollout percentage, if a rollout document is configured and published.
async fn fetch_rollout(
    getter: &Getter<'_>,
    url: &Url,
    timeout: Duration,
) -> Result<Option<f64>, FetchError> {
    match getter.small_doc(url, None, timeout, SIDECAR_LIMIT).await? {
        Doc::Found { text, .. } => upshift::rollout::parse_percent(&text)
            .map(Some)
            .map_err(|e| FetchError::Source(format!("{}: {e}", meta::redact(url)))),
        Doc::Missing | Doc::NotModified => Ok(None),
    }
}

/// The release's detached minisign signature, if one is configured and published.
async fn fetch_signature(
    getter: &Getter<'_>,
    source: &SignatureSource,
    timeout: Duration,
) -> Result<Option<String>, FetchError> {
    let SignatureSource::Url(url) = source else {
        return Ok(None);
    };
    match getter.small_doc(url, None, timeout, SIDECAR_LIMIT).await? {
        Doc::Found { text, .. } => Ok(Some(text)),
        Doc::Missing | Doc::NotModified => {
            tracing::debug!(url = %meta::redact(url), "no signature published");
            Ok(None)
        }
    }
}
