use super::table::{rows, A, B};
use super::*;

/// Every row of the shared table, through the parser every backend calls.
#[test]
fn the_shared_table() {
    let rows = rows();
    assert!(rows.len() > 30, "the table lost rows");
    for row in rows {
        let got = sha256(row.kind, &row.document, row.name);
        assert_eq!(got, row.expected, "{}: {:?}", row.what, row.kind);
    }
}

#[test]
fn escaped_names_are_unescaped() {
    let e = Entry::parse(&format!("\\{A}  a\\nb\\\\c\\rd\\x")).expect("an entry");
    assert_eq!(e.name.as_deref(), Some("a\nb\\c\rd\\x"));
    // A name with a line break is found under its real name only.
    let doc = format!("\\{A}  new\\nline\n{B}  other\n");
    assert_eq!(sha256(Kind::List, &doc, "new\nline"), Ok(A.into()));
    assert!(sha256(Kind::List, &doc, "new\\nline").is_err());
}

#[test]
fn names_match_whole_path_components() {
    let e = Entry::parse(&format!("{A}  ./dist/app")).expect("an entry");
    assert!(e.names("app"));
    assert!(e.names("./dist/app"));
    assert!(!e.names("pp"));
    assert!(!e.names(""));
    assert!(Entry::parse(A).is_some_and(|e| !e.names("app")));
}

#[test]
fn a_gnu_name_that_looks_like_a_tag_is_a_name() {
    let e = Entry::parse(&format!("{A}  (x)=y")).expect("a GNU line");
    assert_eq!(e.name.as_deref(), Some("(x)=y"));
    let openssl = Entry::parse(&format!("SHA256(app)= {B}")).expect("OpenSSL's form");
    assert_eq!((openssl.sha256.as_str(), openssl.names("app")), (B, true));
}

#[test]
fn errors_say_what_was_found() {
    let err = sha256(Kind::Sidecar, &"f".repeat(128), "app").unwrap_err();
    assert!(err.to_string().contains("128 hex digits"), "{err}");
    let err = sha256(Kind::List, "", "app").unwrap_err();
    assert_eq!(err.to_string(), "the checksum document is empty");
    let err = sha256(Kind::List, &format!("{A}  a\n{B}  a\n"), "a").unwrap_err();
    assert!(err.to_string().contains("two different"), "{err}");
}
