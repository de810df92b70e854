//! Where an object's expected sha256 comes from, parsed: S3's own SHA256 checksum (base64 of the
//! raw digest, unless it is a multipart upload's composite), `x-amz-meta-sha256` (hex) and the
//! `<key>.sha256` sidecar (read by [`upshift::fetch::checksum`], as every fetcher reads one).

use upshift::fetch::checksum::{self, Kind};
use upshift::fetch::FetchError;

/// A 64-digit hex string, lower-cased; `None` if `s` is not one.
pub(crate) fn hex_digest(s: &str) -> Option<String> {
    let s = s.trim();
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// What an object's `x-amz-checksum-sha256` says about its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum S3Checksum {
    /// None sent, or one that does not decode to a sha256.
    Absent,
    /// The sha256 of the whole object, lower-case hex.
    Full(String),
    /// A multipart upload's checksum: a checksum of its parts' checksums, not the sha256 of the
    /// object. `parts` when the checksum or the ETag says how many.
    Composite { parts: Option<u32> },
}

/// Classifies S3's `x-amz-checksum-sha256` (`checksum`, base64 of the raw digest), given
/// `x-amz-checksum-type` and the ETag as sent.
///
/// A multipart upload's SHA256 checksum is always a composite (S3 has no full-object SHA256 for
/// multipart uploads). S3 says so with the type `COMPOSITE` and a `-<parts>` suffix; moto sends
/// neither, but its ETag, like S3's for any multipart upload, ends in `-<parts>`. Any of the
/// three makes the checksum a composite, unless the type says `FULL_OBJECT`.
pub(crate) fn classify(
    checksum: Option<&str>,
    checksum_type: Option<&str>,
    etag: Option<&str>,
) -> S3Checksum {
    let Some(checksum) = checksum.map(str::trim).filter(|c| !c.is_empty()) else {
        return S3Checksum::Absent;
    };
    let typed = checksum_type.map(str::trim);
    let suffixed = part_count(checksum);
    let etag_parts =
        etag.and_then(|e| part_count(e.trim().trim_start_matches("W/").trim_matches('"')));
    let full_object = typed.is_some_and(|t| t.eq_ignore_ascii_case("FULL_OBJECT"));
    if typed.is_some_and(|t| t.eq_ignore_ascii_case("COMPOSITE"))
        || suffixed.is_some()
        || (etag_parts.is_some() && !full_object)
    {
        return S3Checksum::Composite {
            parts: suffixed.or(etag_parts),
        };
    }
    match aws_smithy_types::base64::decode(checksum) {
        Ok(raw) if raw.len() == 32 => S3Checksum::Full(hex::encode(raw)),
        _ => S3Checksum::Absent,
    }
}

/// The `N` of a multipart upload's `<value>-N` (ETag or checksum); `None` for anything else.
pub(crate) fn part_count(value: &str) -> Option<u32> {
    let (head, n) = value.rsplit_once('-')?;
    if head.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok().filter(|&n| n > 0)
}

/// Why nothing gives the sha256 of an object: what its S3 checksum is (`etag_parts`: the part
/// count its ETag shows), that it has no `x-amz-meta-sha256`, and that `sidecar` (its location)
/// does not exist.
pub(crate) fn missing_sha256(
    checksum: &S3Checksum,
    etag_parts: Option<u32>,
    sidecar: &str,
) -> String {
    let s3 = match (checksum, etag_parts) {
        (S3Checksum::Composite { parts: Some(n) }, _) => format!(
            "object uploaded in {n} parts: its SHA256 checksum covers the parts, not the file"
        ),
        (S3Checksum::Composite { parts: None }, _) => {
            "object uploaded in parts: its SHA256 checksum covers the parts, not the file".into()
        }
        (_, Some(n)) => format!("no SHA256 checksum (object uploaded in {n} parts)"),
        _ => "no SHA256 checksum".into(),
    };
    format!("{s3}; no x-amz-meta-sha256; no {sidecar}")
}

/// The digest in the sidecar object at `location` (`s3://bucket/key`) for the object whose key
/// ends in `name`; errors name the sidecar.
pub(crate) fn from_sidecar(text: &str, location: &str, name: &str) -> Result<String, FetchError> {
    checksum::sha256(Kind::Sidecar, text, name)
        .map_err(|e| FetchError::Source(format!("{location}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    /// Every sidecar document of the shared table, through the function the fetcher reads its
    /// sidecar object with: the same answer as the other backends, the error naming the object.
    #[test]
    fn the_shared_checksum_table() {
        use upshift::fetch::checksum::table;
        let at = "s3://b/a/app.sha256";
        for row in table::rows()
            .into_iter()
            .filter(|r| r.kind == Kind::Sidecar)
        {
            let got = from_sidecar(&row.document, at, row.name).map_err(|e| e.to_string());
            let want = row.expected.map_err(|e| format!("{at}: {e}"));
            assert_eq!(got, want, "{}", row.what);
        }
    }

    #[test]
    fn s3_checksum_is_base64_of_the_raw_digest() {
        let b64 = aws_smithy_types::base64::encode(hex::decode(HEX).unwrap_or_default());
        let full = S3Checksum::Full(HEX.to_string());
        assert_eq!(classify(Some(&b64), None, Some("\"d41d8cd9\"")), full);
        assert_eq!(classify(Some(&b64), Some("FULL_OBJECT"), None), full);
        assert_eq!(classify(None, None, None), S3Checksum::Absent);
        assert_eq!(classify(Some("!!!"), None, None), S3Checksum::Absent);
        assert_eq!(classify(Some("AAAA"), None, None), S3Checksum::Absent);
    }

    /// A multipart upload's composite, each way a server can say so.
    #[test]
    fn composite_checksums_are_recognised() {
        let b64 = aws_smithy_types::base64::encode(hex::decode(HEX).unwrap_or_default());
        // S3: the type header (the suffix is not always sent).
        assert_eq!(
            classify(Some(&b64), Some("COMPOSITE"), Some("\"abc\"")),
            S3Checksum::Composite { parts: None }
        );
        // S3's GET and GetObjectAttributes: the `-N` suffix.
        assert_eq!(
            classify(Some(&format!("{b64}-3")), None, None),
            S3Checksum::Composite { parts: Some(3) }
        );
        // moto: neither, but the ETag of a multipart upload ends in `-N`.
        assert_eq!(
            classify(
                Some(&b64),
                None,
                Some("\"d5c2ff3dbd6053b21cd64c58d6be7269-3\"")
            ),
            S3Checksum::Composite { parts: Some(3) }
        );
        assert_eq!(
            classify(Some(&b64), None, Some("W/\"d5c2-12\"")),
            S3Checksum::Composite { parts: Some(12) }
        );
    }

    #[test]
    fn the_missing_sha256_is_explained() {
        let composite = S3Checksum::Composite { parts: Some(3) };
        assert_eq!(
            missing_sha256(&composite, Some(3), "s3://b/app.sha256"),
            "object uploaded in 3 parts: its SHA256 checksum covers the parts, not the file; \
             no x-amz-meta-sha256; no s3://b/app.sha256"
        );
        let none = missing_sha256(&S3Checksum::Absent, Some(2), "s3://b/app.sha256");
        assert!(
            none.starts_with("no SHA256 checksum (object uploaded in 2 parts); "),
            "{none}"
        );
    }

    #[test]
    fn part_counts() {
        assert_eq!(part_count("d5c2ff3dbd6053b21cd64c58d6be7269-3"), Some(3));
        assert_eq!(part_count("abc=-10000"), Some(10000));
        for not in ["abc", "abc-", "-3", "abc-x3", "abc-0", "size-12-modified-x"] {
            assert_eq!(part_count(not), None, "{not}");
        }
    }
}
