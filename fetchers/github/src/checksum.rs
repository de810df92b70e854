//! Reading published checksums: GitHub's asset `digest`, `SHA256SUMS` lists, `<asset>.sha256`.

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The sha256 in an asset's `digest` field (`"sha256:HEX"`); `None` for another algorithm or a
/// malformed value.
pub(crate) fn from_digest(digest: &str) -> Option<String> {
    let (algo, hex) = digest.trim().split_once(':')?;
    (algo.eq_ignore_ascii_case("sha256") && is_sha256_hex(hex)).then(|| hex.to_ascii_lowercase())
}

/// The file name a checksum line names, without `*` (binary mode) or a leading `./` or directory.
fn base_name(name: &str) -> &str {
    let name = name.trim().trim_start_matches('*');
    name.rsplit('/').next().unwrap_or(name)
}

/// The sha256 that a checksum list (`sha256sum` output: `HEX  name` or `HEX *name`; or the BSD
/// form `SHA256 (name) = HEX`) gives for `asset`.
pub(crate) fn from_list(text: &str, asset: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("SHA256 (") {
            if let Some((name, hex)) = rest.split_once(") = ") {
                if base_name(name) == asset && is_sha256_hex(hex.trim()) {
                    return Some(hex.trim().to_ascii_lowercase());
                }
            }
            continue;
        }
        let mut parts = line.splitn(2, char::is_whitespace);
        let (Some(hex), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        if is_sha256_hex(hex) && base_name(name) == asset {
            return Some(hex.to_ascii_lowercase());
        }
    }
    None
}

/// The sha256 in a `<asset>.sha256` file: its first token (`sha256sum` output, or the bare hex),
/// or the BSD form. `Err` describes a file that holds no sha256.
pub(crate) fn from_sidecar(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if let Some(rest) = trimmed.strip_prefix("SHA256 (") {
        if let Some((_, hex)) = rest.split_once(") = ") {
            let hex = hex.split_whitespace().next().unwrap_or("");
            if is_sha256_hex(hex) {
                return Ok(hex.to_ascii_lowercase());
            }
        }
    }
    let first = trimmed.split_whitespace().next().unwrap_or("");
    if is_sha256_hex(first) {
        Ok(first.to_ascii_lowercase())
    } else {
        let shown: String = first.chars().take(80).collect();
        Err(format!("holds no sha256 digest (starts with {shown:?})"))
    }
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

    #[test]
    fn lists() {
        let text =
            format!("{A}  app-linux.tar.gz\n{B} *./dist/app-mac.tar.gz\nSHA256 (app.zip) = {A}\n");
        assert_eq!(from_list(&text, "app-linux.tar.gz"), Some(A.to_string()));
        assert_eq!(
            from_list(&text, "app-mac.tar.gz"),
            Some(B.to_ascii_lowercase())
        );
        assert_eq!(from_list(&text, "app.zip"), Some(A.to_string()));
        assert_eq!(from_list(&text, "app-linux"), None);
        assert_eq!(from_list("garbage\n\n", "x"), None);
    }

    #[test]
    fn sidecars() {
        assert_eq!(from_sidecar(&format!("{A}  app\n")), Ok(A.to_string()));
        assert_eq!(from_sidecar(&format!("{B}\n")), Ok(B.to_ascii_lowercase()));
        assert_eq!(
            from_sidecar(&format!("SHA256 (app) = {A}\n")),
            Ok(A.to_string())
        );
        assert!(from_sidecar("not a digest").is_err());
        assert!(from_sidecar("").is_err());
    }
}
