//! Reading published sha256 checksums: one parser for every fetcher, so a document means the
//! same thing whether it sits next to a file, behind a URL, in a bucket or on a GitHub release.
//!
//! # Accepted lines
//!
//! * GNU `sha256sum`: `HEX  name`, `HEX *name` (binary mode), and the escaped form `\HEX  name`
//!   whose name has `\\`, `\n` and `\r` unescaped;
//! * BSD / `sha256sum --tag`: `SHA256 (name) = HEX` (also `\SHA256 (…)`, and OpenSSL's
//!   `SHA256(name)= HEX`);
//! * a bare `HEX` (a sidecar that only holds the digest).
//!
//! Hex is read in either case and answered lower-case. Lines may end in CRLF; blank lines and `#`
//! comments are skipped. A name matches the file wanted when it is the same, or when its last
//! path component is (`./app`, `dist/app`: lists are often written from another directory).
//!
//! # Which line counts
//!
//! * A **sidecar** ([`Kind::Sidecar`], `app.sha256`) is about one file. When all its sha256 lines
//!   give the same digest, that digest is the answer *whatever name they carry*:
//!   `sha256sum app > app.sha256` before a rename is common, and a sidecar is found by its own
//!   name. When they give several different digests, the lines naming the file decide.
//! * A **list** ([`Kind::List`], `SHA256SUMS`) is about many files: only lines naming the file
//!   count; other lines (other files, comments, a PGP armour around the list, other algorithms)
//!   are passed over.
//!
//! Either way, two different digests for the file is [`ChecksumError::Ambiguous`], never the
//! first one: a list that contradicts itself is a broken publication.

/// The largest document [`sha256`] reads: 1 MiB, some ten thousand lines. Fetchers cap what
/// they download at or below it; a caller that passes more gets [`ChecksumError::TooLarge`].
///
/// ```
/// assert_eq!(upshift::fetch::checksum::MAX_DOCUMENT, 1024 * 1024);
/// ```
pub const MAX_DOCUMENT: usize = 1024 * 1024;

/// What kind of checksum document is read: it decides which lines count (see the
/// [module](self) docs).
///
/// ```
/// use upshift::fetch::checksum::{sha256, Kind};
/// let h = "ab".repeat(32);
/// // A sidecar's one digest is the answer whatever name it gives…
/// assert_eq!(sha256(Kind::Sidecar, &format!("{h}  old-name\n"), "app"), Ok(h.clone()));
/// // …a list's line must name the file.
/// assert!(sha256(Kind::List, &format!("{h}  old-name\n"), "app").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<file>.sha256`: the checksum of one file.
    Sidecar,
    /// `SHA256SUMS`, `checksums.txt`: one line per file.
    List,
}

/// Why a checksum document gives no sha256 for the file.
///
/// ```
/// use upshift::fetch::checksum::{sha256, ChecksumError, Kind};
/// let err = sha256(Kind::Sidecar, "", "app").unwrap_err();
/// assert_eq!(err, ChecksumError::Empty);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChecksumError {
    /// Nothing but blank lines and comments.
    #[error("the checksum document is empty")]
    Empty,
    /// More than [`MAX_DOCUMENT`] bytes.
    #[error("the checksum document is {len} bytes, more than the {MAX_DOCUMENT} read")]
    TooLarge {
        /// Its size in bytes.
        len: usize,
    },
    /// No sha256 line names the file (a list), or a sidecar's several digests name other files.
    #[error("no sha256 line for {name:?}")]
    NotListed {
        /// The file looked up.
        name: String,
    },
    /// Two different sha256 digests for the file.
    #[error("two different sha256 digests are given for {name:?}")]
    Ambiguous {
        /// The file looked up.
        name: String,
    },
    /// The digest for the file is of another length or algorithm (a sha512 list, a `SHA1 (…)`
    /// line).
    #[error(
        "expected a sha256 digest (64 hex digits, as `sha256sum` writes), found {found} in {line:?}"
    )]
    NotSha256 {
        /// What the digest is: `128 hex digits`, `a SHA512 digest`.
        found: String,
        /// The line, cut at 80 characters.
        line: String,
    },
    /// A sidecar with no line in any checksum format.
    #[error("expected a sha256 digest (64 hex digits, as `sha256sum` writes), found {line:?}")]
    Malformed {
        /// Its first line, cut at 80 characters.
        line: String,
    },
}

/// One sha256 line of a checksum document.
///
/// ```
/// use upshift::fetch::checksum::Entry;
/// let h = "ab".repeat(32);
/// let e = Entry::parse(&format!("{h} *./dist/app\r")).expect("a sha256 line");
/// assert_eq!(e.sha256, h);
/// assert!(e.names("app") && !e.names("ap"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The digest, lower-case hex.
    pub sha256: String,
    /// The file name as written (unescaped); `None` for a bare digest.
    pub name: Option<String>,
}

impl Entry {
    /// The sha256 entry on `line`; `None` for anything else (a comment, another algorithm, text).
    ///
    /// ```
    /// use upshift::fetch::checksum::Entry;
    /// assert!(Entry::parse("# built by CI").is_none());
    /// ```
    pub fn parse(line: &str) -> Option<Entry> {
        match parse_line(line) {
            Line::Entry(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the entry is about `file`: its name is `file`, or its last path component is.
    ///
    /// ```
    /// use upshift::fetch::checksum::Entry;
    /// let e = Entry::parse(&format!("{}  ./app.tar.gz", "0".repeat(64))).unwrap();
    /// assert!(e.names("app.tar.gz") && !e.names("app"));
    /// ```
    pub fn names(&self, file: &str) -> bool {
        self.name.as_deref().is_some_and(|n| name_matches(n, file))
    }
}

fn name_matches(listed: &str, file: &str) -> bool {
    !file.is_empty() && (listed == file || listed.rsplit('/').next() == Some(file))
}

/// The sha256 that a checksum document of `kind` gives for the file `name`, lower-case hex.
///
/// ```
/// use upshift::fetch::checksum::{sha256, ChecksumError, Kind};
/// let (a, b) = ("a".repeat(64), "b".repeat(64));
/// let sums = format!("{a}  app-linux.tar.gz\r\nSHA256 (app-macos.zip) = {b}\r\n");
/// assert_eq!(sha256(Kind::List, &sums, "app-macos.zip"), Ok(b));
/// assert!(matches!(
///     sha256(Kind::List, &sums, "app-windows.zip"),
///     Err(ChecksumError::NotListed { .. })
/// ));
/// ```
pub fn sha256(kind: Kind, text: &str, name: &str) -> Result<String, ChecksumError> {
    if text.len() > MAX_DOCUMENT {
        return Err(ChecksumError::TooLarge { len: text.len() });
    }
    let lines: Vec<Line> = text.split('\n').map(parse_line).collect();
    let entries: Vec<&Entry> = lines
        .iter()
        .filter_map(|l| match l {
            Line::Entry(e) => Some(e),
            _ => None,
        })
        .collect();
    if kind == Kind::Sidecar && !entries.is_empty() {
        if let Some(only) = one_digest(entries.iter().copied()) {
            return Ok(only.to_string());
        }
    }
    let named: Vec<&Entry> = entries.iter().copied().filter(|e| e.names(name)).collect();
    if let Some(first) = named.first() {
        return match one_digest(named.iter().copied()) {
            Some(_) => Ok(first.sha256.clone()),
            None => Err(ChecksumError::Ambiguous { name: name.into() }),
        };
    }
    if !entries.is_empty() {
        return Err(ChecksumError::NotListed { name: name.into() });
    }
    // No sha256 line for the file: say what stands in its place.
    let problem = lines.iter().find(|l| match (kind, l) {
        (Kind::List, Line::NotSha256 { name: n, .. }) => {
            n.as_deref().is_some_and(|n| name_matches(n, name))
        }
        (Kind::Sidecar, Line::NotSha256 { .. } | Line::Other(_)) => true,
        _ => false,
    });
    match problem {
        Some(Line::NotSha256 { found, line, .. }) => Err(ChecksumError::NotSha256 {
            found: found.clone(),
            line: shown(line),
        }),
        Some(Line::Other(line)) => Err(ChecksumError::Malformed { line: shown(line) }),
        _ if lines.iter().all(|l| matches!(l, Line::Skip)) => Err(ChecksumError::Empty),
        _ => Err(ChecksumError::NotListed { name: name.into() }),
    }
}

/// The digest all `entries` agree on; `None` if they differ (or there are none).
fn one_digest<'a>(mut entries: impl Iterator<Item = &'a Entry>) -> Option<&'a str> {
    let first = entries.next()?;
    entries
        .all(|e| e.sha256 == first.sha256)
        .then_some(first.sha256.as_str())
}

fn shown(line: &str) -> String {
    line.chars().take(80).collect()
}

/// What one line of a checksum document is.
enum Line<'a> {
    /// Blank or a `#` comment.
    Skip,
    Entry(Entry),
    /// A checksum line whose digest is not a sha256.
    NotSha256 {
        name: Option<String>,
        found: String,
        line: &'a str,
    },
    /// Text in no checksum format.
    Other(&'a str),
}

fn parse_line(raw: &str) -> Line<'_> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return Line::Skip;
    }
    // GNU tools start a line with `\` when the name holds a backslash or a line break.
    let (escaped, body) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let unescape = |name: &str| match escaped {
        true => unescape(name),
        false => name.to_string(),
    };
    if let Some((algo, name, hex)) = tagged(body) {
        let name = Some(unescape(name));
        let sha256 = algo.eq_ignore_ascii_case("SHA256") || algo.eq_ignore_ascii_case("SHA2-256");
        return match (sha256, is_hex(hex) && hex.len() == 64) {
            (true, true) => Line::Entry(Entry {
                sha256: hex.to_ascii_lowercase(),
                name,
            }),
            (true, false) => Line::NotSha256 {
                name,
                found: format!("{:?}", hex),
                line,
            },
            (false, _) => Line::NotSha256 {
                name,
                found: format!("a {algo} digest"),
                line,
            },
        };
    }
    let (hex, rest) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
    if !is_hex(hex) {
        return Line::Other(line);
    }
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('*').unwrap_or(rest);
    let name = (!rest.is_empty()).then(|| unescape(rest));
    if hex.len() != 64 {
        let found = format!("{} hex digits", hex.len());
        return Line::NotSha256 { name, found, line };
    }
    Line::Entry(Entry {
        sha256: hex.to_ascii_lowercase(),
        name,
    })
}

/// `ALGO (name) = HEX` as `(ALGO, name, HEX)`; the space before `(` and around `=` optional.
fn tagged(line: &str) -> Option<(&str, &str, &str)> {
    let (head, hex) = line.rsplit_once('=')?;
    let (algo, name) = head.trim_end().strip_suffix(')')?.split_once('(')?;
    let algo = algo.trim_end();
    // A GNU line whose name looks like `(x)=y` starts with its digest, not an algorithm.
    let plain = !algo.is_empty()
        && algo.len() < 32
        && algo.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    plain.then_some((algo, name, hex.trim()))
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// GNU's name escapes: `\\`, `\n`, `\r`; any other backslash is kept as written.
fn unescape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[doc(hidden)]
#[path = "checksum_table.rs"]
pub mod table;

#[cfg(test)]
#[path = "checksum_tests.rs"]
mod tests;
