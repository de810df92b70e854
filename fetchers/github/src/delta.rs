//! Delta releases: the patch `upshift-publish --delta-from` uploads beside the release's asset
//! for the build a host runs (`<asset>.from-<sha256 prefix>.zst`). The release document names
//! every asset, so the patch costs no request to find; its sha256 comes from where the asset's
//! would (GitHub's `digest`, a checksum list, a `.sha256` asset), its signature from its
//! `.minisig`. It is handed to the pipeline with the asset behind it, unrequested, as the
//! fallback.

use upshift::fetch::{Current, Delta, FetchError};

use crate::api::{Api, AssetGet};
use crate::select::AssetMeta;
use crate::{GithubFetcher, Lists, Pick, Resolved};

/// A patch published for the build `current` runs.
#[derive(Debug, Clone)]
pub(crate) struct FoundPatch {
    asset: AssetMeta,
    sha256: String,
    signature: Option<String>,
    base_sha256: String,
}

/// What looking for the patch from one build found, remembered with the release document so
/// that offering the release again (a transfer that failed) looks up nothing.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    base_sha256: String,
    found: Option<FoundPatch>,
}

/// The running build's sha256, lower-case, when it is one to name a patch by.
fn base_of(current: &Current) -> Option<String> {
    let base = current.sha256.trim();
    (base.len() == 64 && base.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| base.to_ascii_lowercase())
}

impl GithubFetcher {
    /// Looks for the patch from `current`'s build beside `asset` (whose checksum and signature
    /// are `resolved`). A patch without a sha256 is not offered; a failed look is no error (the
    /// full release is there), except a rate limit, which the poll loop must honour.
    pub(crate) async fn find_patch(
        &mut self,
        api: &Api,
        pick: &Pick,
        asset: &AssetMeta,
        resolved: &Resolved,
        current: &Current,
        lists: &mut Lists,
    ) -> Result<Option<FoundPatch>, FetchError> {
        let Some(base_sha256) = base_of(current) else {
            return Ok(None);
        };
        if let Some(known) = resolved
            .patch
            .as_ref()
            .filter(|l| l.base_sha256 == base_sha256)
        {
            return Ok(known.found.clone());
        }
        let name = upshift::delta::patch_name(&asset.name, &base_sha256);
        let found = match pick.assets.iter().find(|a| a.name == name) {
            None => {
                tracing::debug!(fetcher = %self.name, tag = %pick.tag, patch = %name, "no patch published for the running build");
                None
            }
            Some(patch) => {
                let signed = resolved.signature.is_some();
                match self.look(api, pick, patch, signed, lists).await {
                    Ok(Some((sha256, signature))) => Some(FoundPatch {
                        asset: patch.clone(),
                        sha256,
                        signature,
                        base_sha256: base_sha256.clone(),
                    }),
                    Ok(None) => {
                        tracing::info!(fetcher = %self.name, tag = %pick.tag, patch = %name, "the patch has no sha256; not used");
                        None
                    }
                    Err(e @ FetchError::RateLimited(_)) => return Err(e),
                    Err(e) => {
                        // Not remembered: the next offer looks again.
                        tracing::info!(fetcher = %self.name, tag = %pick.tag, patch = %name, error = %e, "cannot read the patch's checksum or signature; the full release will be downloaded");
                        return Ok(None);
                    }
                }
            }
        };
        let lookup = Lookup {
            base_sha256,
            found: found.clone(),
        };
        let asset_id = asset.id;
        self.remember(pick, |r| {
            if let Some(r) = r.as_mut().filter(|r| r.asset_id == asset_id) {
                r.patch = Some(lookup);
            }
        });
        Ok(found)
    }

    /// The patch's sha256 and, when the release is `signed`, its signature. `None` without a
    /// sha256.
    async fn look(
        &self,
        api: &Api,
        pick: &Pick,
        patch: &AssetMeta,
        signed: bool,
        lists: &mut Lists,
    ) -> Result<Option<(String, Option<String>)>, FetchError> {
        let Some(sha256) = self.sha256_of(api, pick, patch, lists).await? else {
            return Ok(None);
        };
        // Without the release's signature the pipeline refuses the release (keys configured)
        // or checks no signature at all: the patch's would not be used.
        let signature = match signed {
            true => self.signature_of(api, pick, patch).await?,
            false => None,
        };
        Ok(Some((sha256, signature)))
    }
}

impl FoundPatch {
    /// The patch's asset name.
    pub(crate) fn name(&self) -> &str {
        &self.asset.name
    }

    pub(crate) fn asset(&self) -> &AssetMeta {
        &self.asset
    }

    /// The [`Delta`] the pipeline tries, its body (`get`) requested on the first read.
    pub(crate) fn into_delta(self, get: AssetGet) -> Delta {
        Delta {
            name: get.what.clone(),
            base_sha256: self.base_sha256,
            sha256: self.sha256,
            signature: self.signature,
            size_hint: Some(self.asset.size),
            body: get.lazy(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_sha256_names_a_patch() {
        let hex = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";
        let current = |sha256: &str| Current {
            sha256: sha256.into(),
            ..Current::default()
        };
        assert_eq!(
            base_of(&current(&format!(" {hex}\n"))),
            Some(hex.to_ascii_lowercase())
        );
        assert_eq!(base_of(&current("")), None, "no running build, no patch");
        assert_eq!(base_of(&current(&hex[1..])), None);
        assert_eq!(base_of(&current(&hex.replace('F', "g"))), None);
    }
}
