//! Delta releases: the patch `upshift-publish --delta-from` writes beside the release object for
//! the build a host runs (`<key>.from-<sha256 prefix>.zst`), found with one `HEAD` (which also
//! gives its sha256, as the release's gives the release's), and handed to the pipeline with the
//! object behind it, unrequested, as the fallback.

use upshift::fetch::checksum::{self, Kind};
use upshift::fetch::{Current, Delta, FetchError};

use crate::get::ObjectGet;
use crate::{digest, file_name, S3Fetcher};

/// A patch published for the build `current` runs.
pub(crate) struct FoundPatch {
    key: String,
    location: String,
    sha256: String,
    signature: Option<String>,
    base_sha256: String,
    size: Option<u64>,
    raw_etag: Option<String>,
    etag: String,
    validate: bool,
}

/// The patch's key: the release key's last segment replaced by the patch's name. `None` without
/// a running build's sha256 to name it by.
pub(crate) fn patch_key(key: &str, base_sha256: &str) -> Option<String> {
    let base = digest::hex_digest(base_sha256)?;
    let name = upshift::delta::patch_name(file_name(key), &base);
    Some(match key.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{name}"),
        None => name,
    })
}

impl S3Fetcher {
    /// Looks for the patch from `current`'s build. `sums` is the checksum object's text when this
    /// check read it; `signed`: whether the release has a signature (the patch's is read only
    /// then: without one the pipeline refuses the release, or checks no signature at all). A
    /// patch without a sha256 is not offered; a failed look is no error (the full release is
    /// there), except a rate limit, which the poll loop must honour.
    pub(crate) async fn find_patch(
        &self,
        s3: &aws_sdk_s3::Client,
        endpoint: &str,
        current: &Current,
        sums: Option<&str>,
        signed: bool,
    ) -> Result<Option<FoundPatch>, FetchError> {
        let Some(key) = patch_key(&self.key, &current.sha256) else {
            return Ok(None);
        };
        let location = self.locate(&key);
        let base_sha256 = current.sha256.trim().to_ascii_lowercase();
        match self
            .look(s3, endpoint, &key, base_sha256, sums, signed)
            .await
        {
            Ok(Some(found)) => Ok(Some(found)),
            Ok(None) => {
                tracing::debug!(fetcher = %self.name, patch = %location, "no patch published for the running build");
                Ok(None)
            }
            Err(e @ FetchError::RateLimited(_)) => Err(e),
            Err(e) => {
                tracing::info!(fetcher = %self.name, patch = %location, error = %e, "cannot read the patch's checksum; the full release will be downloaded");
                Ok(None)
            }
        }
    }

    async fn look(
        &self,
        s3: &aws_sdk_s3::Client,
        endpoint: &str,
        key: &str,
        base_sha256: String,
        sums: Option<&str>,
        signed: bool,
    ) -> Result<Option<FoundPatch>, FetchError> {
        let Some(head) = self.head_of(s3, endpoint, key).await? else {
            return Ok(None);
        };
        let sha256 = match head.sha256.clone() {
            Some(sha) => sha,
            None => match self.patch_checksum(s3, endpoint, key, sums).await? {
                Some(sha) => sha,
                None => {
                    tracing::info!(fetcher = %self.name, patch = %self.locate(key), "the patch has no sha256; not used");
                    return Ok(None);
                }
            },
        };
        let signature = match signed {
            true => {
                self.side_object(s3, endpoint, &format!("{key}.minisig"))
                    .await?
            }
            false => None,
        };
        Ok(Some(FoundPatch {
            key: key.to_string(),
            location: self.locate(key),
            sha256,
            signature,
            base_sha256,
            size: head.size,
            validate: matches!(head.checksum, digest::S3Checksum::Full(_)),
            raw_etag: head.raw_etag,
            etag: head.etag,
        }))
    }

    /// The patch's sha256 from a checksum object, as the release's comes from one: its line in
    /// the configured [`checksum_key`](S3Fetcher::checksum_key) list (`sums`, when this check
    /// read it already), else its own `<patch>.sha256` sidecar.
    async fn patch_checksum(
        &self,
        s3: &aws_sdk_s3::Client,
        endpoint: &str,
        key: &str,
        sums: Option<&str>,
    ) -> Result<Option<String>, FetchError> {
        let (kind, object) = match &self.checksum_key {
            Some(list) => (Kind::List, list.clone()),
            None => (Kind::Sidecar, format!("{key}.sha256")),
        };
        let text = match (kind, sums) {
            (Kind::List, Some(text)) => text.to_string(),
            _ => match self.side_object(s3, endpoint, &object).await? {
                Some(text) => text,
                None => return Ok(None),
            },
        };
        match checksum::sha256(kind, &text, file_name(key)) {
            Ok(sha) => Ok(Some(sha)),
            // A list for the release's files that does not name the patch.
            Err(_) if kind == Kind::List => Ok(None),
            Err(e) => Err(FetchError::Source(format!("{}: {e}", self.locate(&object)))),
        }
    }
}

impl FoundPatch {
    /// The [`Delta`] the pipeline tries, its body requested on the first read through `release`'s
    /// client and limits.
    pub(crate) fn into_delta(self, release: ObjectGet) -> Delta {
        let get = ObjectGet {
            key: self.key,
            raw_etag: self.raw_etag,
            etag: self.etag,
            validate: self.validate,
            ..release
        };
        Delta {
            name: self.location,
            base_sha256: self.base_sha256,
            sha256: self.sha256,
            signature: self.signature,
            size_hint: self.size,
            body: get.lazy(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_sits_beside_the_release() {
        let base = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
        let lower = base.to_ascii_lowercase();
        assert_eq!(
            patch_key("myapp/linux/myapp", base).as_deref(),
            Some(
                format!(
                    "myapp/linux/{}",
                    upshift::delta::patch_name("myapp", &lower)
                )
                .as_str()
            )
        );
        assert_eq!(
            patch_key("myapp", &lower),
            Some(upshift::delta::patch_name("myapp", &lower))
        );
        assert_eq!(patch_key("myapp", ""), None, "no running build, no patch");
        assert_eq!(patch_key("myapp", "not a digest"), None);
    }
}
