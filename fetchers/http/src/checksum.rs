//! Reading published checksums: a `.sha256` sidecar or a `SHA256SUMS` file.

#[derive(Debug, Clone, Copy)]
pub(crate) enum ChecksumKind {
    Sidecar,
    Sums,
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `(digest, name)` from one line: `HEX  name`, `HEX *name` (binary mode), `\HEX  name` (escaped
/// name), `SHA256 (name) = HEX` (`--tag`), or a bare `HEX`. `None` for anything else.
fn parse_line(line: &str) -> Option<(String, &str)> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("SHA256 (") {
        let (name, hex) = rest.rsplit_once(") = ")?;
        return is_digest(hex.trim()).then(|| (hex.trim().to_ascii_lowercase(), name));
    }
    let (hex, name) = match line.split_once(char::is_whitespace) {
        Some((h, n)) => (h, n.trim_start()),
        None => (line, ""),
    };
    let hex = hex.strip_prefix('\\').unwrap_or(hex);
    let name = name.strip_prefix('*').unwrap_or(name);
    is_digest(hex).then(|| (hex.to_ascii_lowercase(), name))
}

fn shown(line: &str) -> String {
    line.chars().take(80).collect()
}

/// The digest in a `.sha256` sidecar: its first non-empty line, whatever file name it gives.
pub(crate) fn parse_sidecar(text: &str) -> Result<String, String> {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    match parse_line(line) {
        Some((hex, _)) => Ok(hex),
        None => Err(format!(
            "expected a sha256 digest (64 hex digits, as `sha256sum` writes), found {:?}",
            shown(line)
        )),
    }
}

/// The digest on the line of a `SHA256SUMS` file that names `file` (exactly, or as the last
/// component of a path such as `./file` or `dist/file`).
pub(crate) fn find_in_sums(text: &str, file: &str) -> Result<String, String> {
    if file.is_empty() {
        return Err("the release URL names no file to look up (its path ends with `/`)".into());
    }
    let mut found: Option<String> = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Some((hex, name)) = parse_line(line) else {
            continue; // comments, signatures wrapped around the list, other digests
        };
        let base = name.rsplit('/').next().unwrap_or(name);
        if name == file || base == file {
            match &found {
                Some(other) if *other != hex => {
                    return Err(format!("two different digests are listed for {file:?}"));
                }
                _ => found = Some(hex),
            }
        }
    }
    found.ok_or_else(|| format!("no line for {file:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const B: &str = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";

    #[test]
    fn sidecar_forms() {
        for text in [
            format!("{A}  app\n"),
            format!("{A} *app\n"),
            format!("\n{A}\n"),
            format!("\\{A}  dir\\\\app\n"),
            format!("SHA256 (app) = {A}\n"),
            format!("{}  app\n", A.to_ascii_uppercase()),
        ] {
            assert_eq!(parse_sidecar(&text).as_deref(), Ok(A), "{text:?}");
        }
        for bad in ["", "nope", "abc  app", &A[1..]] {
            assert!(parse_sidecar(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sums_lookup() {
        let sums = format!(
            "{B}  app-aarch64-linux.tar.gz\n{A}  app-x86_64-linux.tar.gz\n{B} *./other/app.zip\n"
        );
        assert_eq!(
            find_in_sums(&sums, "app-x86_64-linux.tar.gz").as_deref(),
            Ok(A)
        );
        assert_eq!(find_in_sums(&sums, "app.zip").as_deref(), Ok(B));
        let e = find_in_sums(&sums, "app-x86_64-linux").expect_err("prefix matched");
        assert!(e.contains("no line"), "{e}");
        assert!(find_in_sums(&sums, "").is_err());
        let twice = format!("{A}  app\n{B}  app\n");
        assert!(find_in_sums(&twice, "app").is_err());
        let tagged = format!("# comment\nSHA256 (app) = {A}\n");
        assert_eq!(find_in_sums(&tagged, "app").as_deref(), Ok(A));
    }
}
