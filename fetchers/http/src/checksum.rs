//! Reading published checksums, a `.sha256` sidecar or a `SHA256SUMS` list, with the parser
//! every upshift fetcher shares ([`upshift::fetch::checksum`]).

use reqwest::Url;
use upshift::fetch::checksum::{self, Kind};
use upshift::fetch::FetchError;

use crate::meta;

/// The sha256 that the checksum document `text`, read from `from`, gives for the release at
/// `release`; errors name the (redacted) checksum URL.
pub(crate) fn published(
    kind: Kind,
    text: &str,
    from: &Url,
    release: &Url,
) -> Result<String, FetchError> {
    let file = meta::file_name(release);
    let why = match kind {
        // A list is looked up by the release's file name; a URL ending in `/` has none.
        Kind::List if file.is_empty() => {
            "the release URL names no file to look up (its path ends with `/`)".to_string()
        }
        _ => match checksum::sha256(kind, text, &file) {
            Ok(digest) => return Ok(digest),
            Err(e) => e.to_string(),
        },
    };
    Err(FetchError::Source(format!("{}: {why}", meta::redact(from))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use upshift::fetch::checksum::table;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    /// Every document of the shared table, through the function `check` reads checksums with:
    /// the same answer as the other backends, the error naming the checksum's URL.
    #[test]
    fn the_shared_checksum_table() {
        let from = url("https://example.com/dl/checksum");
        for row in table::rows() {
            let release = url(&format!("https://example.com/dl/{}", row.name));
            let got = published(row.kind, &row.document, &from, &release);
            let want = row
                .expected
                .map_err(|e| format!("https://example.com/dl/checksum: {e}"));
            assert_eq!(got.map_err(|e| e.to_string()), want, "{}", row.what);
        }
    }

    #[test]
    fn a_list_needs_a_file_name() {
        let sums = format!("{}  app\n", table::A);
        let e = published(
            Kind::List,
            &sums,
            &url("https://example.com/SHA256SUMS"),
            &url("https://example.com/dl/"),
        )
        .expect_err("no file name");
        assert!(e.to_string().contains("names no file"), "{e}");
    }
}
