//! Where an object's expected sha256 comes from, parsed: S3's own SHA256 checksum (base64 of the
//! raw digest), `x-amz-meta-sha256` (hex) and the `<key>.sha256` sidecar (`sha256sum` output or
//! bare hex).

/// A 64-digit hex string, lower-cased; `None` if `s` is not one.
pub(crate) fn hex_digest(s: &str) -> Option<String> {
    let s = s.trim();
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// S3's `x-amz-checksum-sha256` as lower-case hex, if it is a full-object digest.
///
/// A multipart upload's checksum is a checksum of the parts' checksums (`<base64>-<parts>`, type
/// `COMPOSITE`), not the sha256 of the object: `None` for it, as for anything undecodable.
pub(crate) fn from_s3_checksum(b64: &str, composite: bool) -> Option<String> {
    if composite || b64.contains('-') {
        return None;
    }
    let raw = aws_smithy_types::base64::decode(b64.trim()).ok()?;
    (raw.len() == 32).then(|| hex::encode(raw))
}

/// The digest in a `.sha256` sidecar: `sha256sum` output (`HEX  name`, the first line counts),
/// `sha256sum --tag` output (`SHA256 (name) = HEX`) or bare hex. `None` if it holds none.
pub(crate) fn from_sidecar(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    if line.starts_with("SHA256 (") {
        return hex_digest(line.rsplit('=').next()?);
    }
    // `sha256sum` marks binary mode with `*` before the name; the digest is the first token.
    hex_digest(line.split_whitespace().next()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn sidecar_formats() {
        assert_eq!(from_sidecar(&format!("{HEX}  app\n")).as_deref(), Some(HEX));
        assert_eq!(from_sidecar(&format!("{HEX} *app\n")).as_deref(), Some(HEX));
        assert_eq!(from_sidecar(&format!("\n{HEX}\n")).as_deref(), Some(HEX));
        let upper = HEX.to_ascii_uppercase();
        assert_eq!(from_sidecar(&upper).as_deref(), Some(HEX));
        assert_eq!(
            from_sidecar(&format!("SHA256 (app) = {HEX}\n")).as_deref(),
            Some(HEX)
        );
        assert_eq!(from_sidecar("not a digest"), None);
        assert_eq!(from_sidecar(""), None);
        assert_eq!(from_sidecar(&HEX[..63]), None);
    }

    #[test]
    fn s3_checksum_is_base64_of_the_raw_digest() {
        let b64 = aws_smithy_types::base64::encode(hex::decode(HEX).unwrap_or_default());
        assert_eq!(from_s3_checksum(&b64, false).as_deref(), Some(HEX));
        assert_eq!(from_s3_checksum(&b64, true), None);
        assert_eq!(from_s3_checksum(&format!("{b64}-3"), false), None);
        assert_eq!(from_s3_checksum("!!!", false), None);
        assert_eq!(from_s3_checksum("AAAA", false), None);
    }
}
