//! Reading published checksums: GitHub's asset `digest`, `SHA256SUMS` lists, `<asset>.sha256`.

use upshift::fetch::checksum::{self, ChecksumError, Kind};

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The sha256 in an asset's `digest` field (`"sha256:HEX"`); `None` for another algorithm or a
/// malformed value.
pub(crate) fn from_digest(digest: &str) -> Option<String> {
    let (algo, hex) = digest.trim().split_once(':')?;
    (algo.eq_ignore_ascii_case("sha256") && is_sha256_hex(hex)).then(|| hex.to_ascii_lowercase())
}

/// The sha256 that a checksum list (`SHA256SUMS`, `*checksums.txt`) gives for `asset`, read as
/// every upshift fetcher reads one ([`upshift::fetch::checksum`]). `Ok(None)` when this list
/// gives it no sha256 (not listed, or only another algorithm's digest, as goreleaser's
/// `checksums.txt` with sha512): the next source is asked. `Err` for a list that contradicts
/// itself or cannot be read.
pub(crate) fn from_list(text: &str, asset: &str) -> Result<Option<String>, String> {
    match checksum::sha256(Kind::List, text, asset) {
        Ok(digest) => Ok(Some(digest)),
        Err(ChecksumError::NotListed { .. } | ChecksumError::Empty) => Ok(None),
        Err(e @ ChecksumError::NotSha256 { .. }) => {
            tracing::debug!(%asset, "checksum list passed over: {e}");
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The sha256 in a `<asset>.sha256` file, read as every upshift fetcher reads one. `Err`
/// describes a file that holds none.
pub(crate) fn from_sidecar(text: &str, asset: &str) -> Result<String, String> {
    checksum::sha256(Kind::Sidecar, text, asset).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

    #[test]
    fn digests() {
        assert_eq!(from_digest(&format!("sha256:{A}")), Some(A.to_string()));
        assert_eq!(
            from_digest(&format!("SHA256:{B}")),
            Some(B.to_ascii_lowercase())
        );
        assert_eq!(from_digest(&format!("sha512:{A}")), None);
        assert_eq!(from_digest("sha256:abc"), None);
        assert_eq!(from_digest(""), None);
    }

    /// Every document of the shared table, through the functions the fetcher reads checksum
    /// assets with: the same answer as the other backends; a list that gives the asset no
    /// sha256 is passed over (`None`) for the next source, as before.
    #[test]
    fn the_shared_checksum_table() {
        use upshift::fetch::checksum::table;
        for row in table::rows() {
            let want = row.expected.clone();
            match row.kind {
                Kind::Sidecar => {
                    let got = from_sidecar(&row.document, row.name);
                    assert_eq!(got, want.map_err(|e| e.to_string()), "{}", row.what);
                }
                Kind::List => {
                    let got = from_list(&row.document, row.name);
                    let want = match want {
                        Ok(h) => Ok(Some(h)),
                        Err(
                            ChecksumError::NotListed { .. }
                            | ChecksumError::Empty
                            | ChecksumError::NotSha256 { .. },
                        ) => Ok(None),
                        Err(e) => Err(e.to_string()),
                    };
                    assert_eq!(got, want, "{}", row.what);
                }
            }
        }
    }
}
