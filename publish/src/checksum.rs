//! The checksum files, in the `sha256sum` format every fetcher parses: a `NAME.sha256` sidecar
//! and a `SHA256SUMS` list that is updated in place, keeping the lines of other files (the other
//! platforms' builds published beside this one).

use upshift::fetch::checksum::Entry;

use crate::Error;

/// The `NAME.sha256` sidecar: `sha256sum`'s output line (`HEX  NAME`).
pub fn sidecar_text(sha256: &str, name: &str) -> String {
    format!("{sha256}  {name}\n")
}

/// `existing` (a `SHA256SUMS` list, or `None` for a new one) with the line for `name` set to
/// `sha256`: replaced where it was (every line naming `name`, so the list never gives two
/// digests for it), else appended. Other lines are kept as they are. `what` names the list in
/// errors.
pub fn merge_sums(
    existing: Option<&[u8]>,
    name: &str,
    sha256: &str,
    what: &str,
) -> Result<String, Error> {
    let text = match existing {
        None => String::new(),
        Some(bytes) => String::from_utf8(bytes.to_vec()).map_err(|_| {
            Error::Conflict(format!(
                "{what} exists but is not a text checksum list; remove it or choose another \
                 --sums-name"
            ))
        })?,
    };
    let new_line = sidecar_text(sha256, name);
    let mut out = String::with_capacity(text.len() + new_line.len());
    let mut placed = false;
    for line in text.lines() {
        // Read as every fetcher reads the list, so the line replaced is the one they would find.
        if Entry::parse(line).is_some_and(|e| e.names(name)) {
            if !placed {
                out.push_str(&new_line);
                placed = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !placed {
        out.push_str(&new_line);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const B: &str = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";

    #[test]
    fn sidecar_is_sha256sum_output() {
        assert_eq!(sidecar_text(A, "app"), format!("{A}  app\n"));
    }

    #[test]
    fn merging_keeps_other_files() {
        let fresh = merge_sums(None, "app-linux", A, "SHA256SUMS").unwrap();
        assert_eq!(fresh, format!("{A}  app-linux\n"));
        let list = format!("# built by CI\n{B}  app-macos\n{B} *./dist/app-linux\n");
        let merged = merge_sums(Some(list.as_bytes()), "app-linux", A, "SHA256SUMS").unwrap();
        assert_eq!(
            merged,
            format!("# built by CI\n{B}  app-macos\n{A}  app-linux\n")
        );
        // Appended when absent; the BSD form is recognised and replaced too.
        let bsd = format!("SHA256 (app-linux) = {B}\nSHA256 (app-linux) = {B}\n");
        let merged = merge_sums(Some(bsd.as_bytes()), "app-linux", A, "S").unwrap();
        assert_eq!(merged, format!("{A}  app-linux\n"));
        let merged = merge_sums(Some(b"no newline at end"), "x", A, "S").unwrap();
        assert_eq!(merged, format!("no newline at end\n{A}  x\n"));
        // A prefix of another name is another file.
        let list = format!("{B}  app-linux.tar.gz\n");
        let merged = merge_sums(Some(list.as_bytes()), "app-linux", A, "S").unwrap();
        assert_eq!(merged, format!("{B}  app-linux.tar.gz\n{A}  app-linux\n"));
        assert!(merge_sums(Some(&[0xff, 0xfe]), "x", A, "S").is_err());
    }

    /// What the publisher writes, every fetcher reads back: the sidecar, and a merged list whose
    /// old line for the file (escaped, under `./`) is replaced rather than left to contradict.
    #[test]
    fn fetchers_read_what_is_written() {
        use upshift::fetch::checksum::{sha256, Kind};
        assert_eq!(
            sha256(Kind::Sidecar, &sidecar_text(A, "app"), "app"),
            Ok(A.into())
        );
        let old = format!("\\{B}  ./app\n\\{B}  ./a\\\\b\n{B}  other\n");
        let merged = merge_sums(Some(old.as_bytes()), "app", A, "S").unwrap();
        assert_eq!(sha256(Kind::List, &merged, "app"), Ok(A.into()));
        assert_eq!(sha256(Kind::List, &merged, "a\\b"), Ok(B.into()));
        assert_eq!(sha256(Kind::List, &merged, "other"), Ok(B.into()));
    }
}
