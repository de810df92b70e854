//! The checksum documents every fetcher backend must read alike: the core's tests and each
//! backend's run every row through their own reading path and compare with `expected`.

use super::{ChecksumError, Kind, MAX_DOCUMENT};

/// A sha256 (of `abc`).
pub const A: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
/// Another sha256 (of `abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq`).
pub const B: &str = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
/// The file a sidecar row is read for.
pub const SIDECAR_NAME: &str = "app";
/// The file a list row is looked up for.
pub const LIST_NAME: &str = "app-linux.tar.gz";

/// One document and what reading it must give.
#[derive(Debug, Clone)]
pub struct Row {
    /// What the row shows, for failure messages.
    pub what: &'static str,
    /// Read as a sidecar or a list.
    pub kind: Kind,
    /// The document's text.
    pub document: String,
    /// [`SIDECAR_NAME`] or [`LIST_NAME`], by `kind`.
    pub name: &'static str,
    /// What [`sha256`](super::sha256) answers, and every backend with it.
    pub expected: Result<String, ChecksumError>,
}

/// Every row.
///
/// ```
/// let rows = upshift::fetch::checksum::table::rows();
/// assert!(rows.iter().all(|r| upshift::fetch::checksum::sha256(r.kind, &r.document, r.name) == r.expected));
/// ```
pub fn rows() -> Vec<Row> {
    let sha512 = "c".repeat(128);
    let ok = |h: &str| Ok(h.to_string());
    let not_listed = |n: &str| Err(ChecksumError::NotListed { name: n.into() });
    let ambiguous = |n: &str| Err(ChecksumError::Ambiguous { name: n.into() });
    let not_sha256 = |found: String, line: &str| {
        Err(ChecksumError::NotSha256 {
            found,
            line: line.into(),
        })
    };
    let malformed = |line: &str| Err(ChecksumError::Malformed { line: line.into() });
    let big = format!("{A}  app\n{}", "#".repeat(MAX_DOCUMENT));
    let big_len = big.len();
    let side = |what, document, expected| row(Kind::Sidecar, what, document, expected);
    let list = |what, document, expected| row(Kind::List, what, document, expected);
    let l = LIST_NAME;
    vec![
        side("gnu text mode", format!("{A}  app\n"), ok(A)),
        side("gnu binary mode", format!("{A} *app\n"), ok(A)),
        side("gnu escaped", format!("\\{A}  dir\\\\app\n"), ok(A)),
        side("bare digest", A.to_string(), ok(A)),
        side("blank lines", format!("\n{A}\n\n"), ok(A)),
        side("bsd tag", format!("SHA256 (app) = {A}\n"), ok(A)),
        side(
            "bsd tag escaped",
            format!("\\SHA256 (a\\\\pp) = {A}\n"),
            ok(A),
        ),
        side(
            "upper case, crlf",
            format!("{}  app\r\n", A.to_uppercase()),
            ok(A),
        ),
        side("leading ./", format!("{A}  ./app\n"), ok(A)),
        side("renamed file", format!("{A}  app-1.2.3\n"), ok(A)),
        side(
            "several, name picks",
            format!("{B}  other\n{A}  app\n"),
            ok(A),
        ),
        side(
            "several, none named",
            format!("{A}  x\n{B}  y\n"),
            not_listed("app"),
        ),
        side(
            "two for the file",
            format!("{A}  app\n{B}  app\n"),
            ambiguous("app"),
        ),
        side("empty", String::new(), Err(ChecksumError::Empty)),
        side(
            "comments only",
            "\r\n# c\n".into(),
            Err(ChecksumError::Empty),
        ),
        side(
            "not a digest",
            "not-a-digest  app\n".into(),
            malformed("not-a-digest  app"),
        ),
        side("non-hex", "g".repeat(64), malformed(&"g".repeat(64))),
        side(
            "63 digits",
            A[1..].to_string(),
            not_sha256("63 hex digits".into(), &A[1..]),
        ),
        side(
            "sha512 gnu",
            format!("{sha512}  app\n"),
            not_sha256("128 hex digits".into(), &format!("{sha512}  app")[..80]),
        ),
        side(
            "sha512 bsd",
            format!("SHA512 (app) = {sha512}\n"),
            not_sha256(
                "a SHA512 digest".into(),
                &format!("SHA512 (app) = {sha512}")[..80],
            ),
        ),
        side(
            "bsd bad hex",
            "SHA256 (app) = xyz".into(),
            not_sha256("\"xyz\"".into(), "SHA256 (app) = xyz"),
        ),
        side(
            "too large",
            big,
            Err(ChecksumError::TooLarge { len: big_len }),
        ),
        list("gnu list", format!("{B}  app-macos.zip\n{A}  {l}\n"), ok(A)),
        list(
            "binary, ./dist, crlf",
            format!("{B} *./dist/{l}\r\n"),
            ok(B),
        ),
        list(
            "bsd list, comment",
            format!("# c\nSHA256 ({l}) = {A}\n"),
            ok(A),
        ),
        list("escaped line", format!("{B}  a\n\\{A}  {l}\n"), ok(A)),
        list(
            "pgp clearsigned",
            format!(
                "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n{A}  {l}\n\
                 -----BEGIN PGP SIGNATURE-----\niQEz=\n-----END PGP SIGNATURE-----\n"
            ),
            ok(A),
        ),
        list(
            "same digest twice",
            format!("{A}  {l}\n{A}  ./{l}\n"),
            ok(A),
        ),
        list(
            "prefix is another file",
            format!("{A}  app-linux\n"),
            not_listed(l),
        ),
        list(
            "one line, another file",
            format!("{A}  old-name\n"),
            not_listed(l),
        ),
        list("bare digest", format!("{A}\n"), not_listed(l)),
        list(
            "two for the file",
            format!("{A}  {l}\n{B}  {l}\n"),
            ambiguous(l),
        ),
        list("empty", String::new(), Err(ChecksumError::Empty)),
        list("no checksum lines", "garbage\n".into(), not_listed(l)),
        list(
            "sha512 list",
            format!("{sha512}  {l}\n"),
            not_sha256("128 hex digits".into(), &format!("{sha512}  {l}")[..80]),
        ),
        list(
            "sha512 and sha256",
            format!("{sha512}  {l}\n{A}  {l}\n"),
            ok(A),
        ),
        list(
            "sha512 of another file",
            format!("{sha512}  x\n"),
            not_listed(l),
        ),
    ]
}

fn row(
    kind: Kind,
    what: &'static str,
    document: String,
    expected: Result<String, ChecksumError>,
) -> Row {
    let name = match kind {
        Kind::Sidecar => SIDECAR_NAME,
        Kind::List => LIST_NAME,
    };
    Row {
        what,
        kind,
        document,
        name,
        expected,
    }
}
