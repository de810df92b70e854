//! Delta releases: the patch `upshift-publish --delta-from` writes beside the release for the
//! build a host runs (`<name>.from-<sha256 prefix>.zst`), found with one small request (its
//! `.sha256` sidecar) or none (its line in the `SHA256SUMS` already read), and handed to the
//! pipeline with the full release behind it, unrequested, as the fallback.

use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Url;
use upshift::fetch::checksum::{self, Kind};
use upshift::fetch::{body as shared_body, Current, Delta, FetchError, ReleaseBody, TrustPolicy};

use crate::body::{self, Commit};
use crate::meta;
use crate::request::{Doc, Getter, Got};
use crate::SIDECAR_LIMIT;

/// A patch published for the build `current` runs.
pub(crate) struct FoundPatch {
    url: Url,
    sha256: String,
    signature: Option<String>,
    base_sha256: String,
}

/// The patch's URL: the release URL's last path segment replaced by the patch's name.
pub(crate) fn patch_url(release: &Url, base_sha256: &str) -> Option<Url> {
    let name = meta::file_name(release);
    if name.is_empty() || base_sha256.len() != 64 {
        return None;
    }
    let mut url = release.clone();
    url.path_segments_mut()
        .ok()?
        .pop()
        .push(&upshift::delta::patch_name(&name, base_sha256));
    Some(url)
}

/// Looks for the patch from `current`'s build. `sums` is the checksum list this poll read, when
/// the release's checksum comes from one; `release_signed`, whether the release has a signature
/// (only then is the patch's looked for: a key requires both, and without one neither is
/// checked). A patch without a checksum is not offered; a failed look is no error (the full
/// release is there), except a rate limit, which the poll loop must honour.
pub(crate) async fn find(
    getter: &Getter<'_>,
    release: &Url,
    current: &Current,
    sums: Option<&str>,
    release_signed: bool,
    timeout: Duration,
) -> Result<Option<FoundPatch>, FetchError> {
    let Some(url) = patch_url(release, &current.sha256) else {
        return Ok(None);
    };
    let looked = look(getter, &url, sums, release_signed, timeout).await;
    match looked {
        Ok(Some((sha256, signature))) => Ok(Some(FoundPatch {
            url,
            sha256,
            signature,
            base_sha256: current.sha256.to_ascii_lowercase(),
        })),
        Ok(None) => {
            tracing::debug!(patch = %meta::redact(&url), "no patch published for the running build");
            Ok(None)
        }
        Err(e @ FetchError::RateLimited(_)) => Err(e),
        Err(e) => {
            tracing::info!(patch = %meta::redact(&url), error = %e, "cannot read the patch's checksum; the full release will be downloaded");
            Ok(None)
        }
    }
}

async fn look(
    getter: &Getter<'_>,
    url: &Url,
    sums: Option<&str>,
    signed: bool,
    timeout: Duration,
) -> Result<Option<(String, Option<String>)>, FetchError> {
    let name = meta::file_name(url);
    let sha256 = match sums {
        // The list that names the release names its patches too: no request.
        Some(text) => match checksum::sha256(Kind::List, text, &name) {
            Ok(d) => d,
            Err(_) => return Ok(None),
        },
        None => {
            let sidecar = meta::with_path_suffix(url, ".sha256");
            match getter
                .small_doc(&sidecar, None, timeout, SIDECAR_LIMIT)
                .await?
            {
                Doc::Found { text, .. } => checksum::sha256(Kind::Sidecar, &text, &name)
                    .map_err(|e| FetchError::Source(format!("{}: {e}", meta::redact(&sidecar))))?,
                Doc::Missing | Doc::NotModified => return Ok(None),
            }
        }
    };
    let signature = match signed {
        false => None,
        true => {
            let minisig = meta::with_path_suffix(url, ".minisig");
            match getter
                .small_doc(&minisig, None, timeout, SIDECAR_LIMIT)
                .await?
            {
                Doc::Found { text, .. } => Some(text),
                Doc::Missing | Doc::NotModified => None,
            }
        }
    };
    Ok(Some((sha256, signature)))
}

/// What the lazy bodies need to make their own requests, owned (they outlive the poll).
#[derive(Clone)]
pub(crate) struct Requester {
    pub(crate) client: reqwest::Client,
    pub(crate) origin: Url,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) policy: TrustPolicy,
    /// The stall deadline of a body.
    pub(crate) stall: Duration,
    /// The whole request's deadline.
    pub(crate) timeout: Duration,
}

impl Requester {
    /// A `GET` of `url` made on the first read of the returned body, read through the shared
    /// bounded reader; `commit` runs once it was read to its end.
    pub(crate) fn lazy_get(self, url: Url, commit: Option<Commit>) -> ReleaseBody {
        shared_body::lazy(async move {
            let getter = Getter {
                client: self.client.clone(),
                origin: &self.origin,
                headers: &self.headers,
                policy: self.policy,
            };
            let got = getter.release(&url, None, self.timeout).await;
            let (resp, at) = match got {
                Ok(Got::Ok(resp, at)) => (resp, at),
                Ok(Got::Missing | Got::NotModified) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("GET {}: gone since the check", meta::redact(&url)),
                    ))
                }
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            };
            let length = resp.content_length();
            let what = format!("GET {}", meta::redact(&at));
            let reader = body::reader(resp, what)
                .stall(self.stall)
                .expect_len(length);
            Ok(match commit {
                Some(commit) => Box::new(reader.on_complete(move || commit.apply())) as ReleaseBody,
                None => Box::new(reader) as ReleaseBody,
            })
        })
    }
}

impl FoundPatch {
    /// The [`Delta`] the pipeline tries, its body requested on the first read.
    pub(crate) fn into_delta(self, requester: Requester) -> Delta {
        Delta {
            name: meta::redact(&self.url),
            base_sha256: self.base_sha256,
            sha256: self.sha256,
            signature: self.signature,
            size_hint: None,
            body: requester.lazy_get(self.url, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_sits_beside_the_release_and_keeps_the_query() {
        let base = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let url = Url::parse("https://example.com/dl/app-linux?token=x").unwrap();
        let patch = patch_url(&url, base).unwrap();
        assert_eq!(
            patch.as_str(),
            format!(
                "https://example.com/dl/{}?token=x",
                upshift::delta::patch_name("app-linux", base)
            )
        );
        assert!(patch_url(&Url::parse("https://example.com/dl/").unwrap(), base).is_none());
        assert!(patch_url(&url, "").is_none(), "no running build, no patch");
    }
}
