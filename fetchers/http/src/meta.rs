//! What a URL or a response says about a release: names fit to show, file names, formats,
//! identities.

use reqwest::header::{HeaderMap, CONTENT_DISPOSITION, CONTENT_TYPE};
use reqwest::Url;
pub(crate) use upshift::fetch::error_chain;
use upshift::fetch::Format;

use crate::body::Validators;

/// `url` fit for logs and errors: no userinfo, no fragment, and a query string (which may hold
/// a signature or token) shown as `?…`.
pub(crate) fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_fragment(None);
    let query = shown.query().is_some();
    shown.set_query(None);
    match query {
        true => format!("{shown}?…"),
        false => shown.to_string(),
    }
}

/// `url` with `suffix` appended to its path (the query string stays).
pub(crate) fn with_path_suffix(url: &Url, suffix: &str) -> Url {
    let mut u = url.clone();
    u.set_path(&format!("{}{suffix}", url.path()));
    u
}

/// The last segment of `url`'s path, percent-decoded (`""` for a path ending in `/`).
pub(crate) fn file_name(url: &Url) -> String {
    let last = url.path().rsplit('/').next().unwrap_or("");
    percent_encoding::percent_decode_str(last)
        .decode_utf8_lossy()
        .into_owned()
}

/// The innermost I/O error's kind in `e`'s chain, if any.
pub(crate) fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut kind = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            kind = Some(io.kind());
        }
        cur = err.source();
    }
    kind
}

/// Whether `a` and `b` have the same origin: scheme, host and port.
pub(crate) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// The identity of a release published without a checksum; see the crate documentation.
pub(crate) fn identity_without_digest(v: &Validators, url: &Url, len: Option<u64>) -> String {
    let text =
        |h: &reqwest::header::HeaderValue| String::from_utf8_lossy(h.as_bytes()).into_owned();
    if let Some(etag) = &v.etag {
        format!("etag:{}", text(etag))
    } else if let Some(date) = &v.last_modified {
        format!("last-modified:{}", text(date))
    } else {
        let len = len.map_or_else(|| "?".to_string(), |n| n.to_string());
        format!("url:{}#{len}", redact(url))
    }
}

/// What the server said about a release file's bytes ([`Release::source`]): its ETag, else its
/// Last-Modified and length. `None` when it said neither. When they were not settled (the file
/// was modified in the second it was served, as during an upload in place), a same-size rewrite
/// within that second keeps them, so a refusal remembered under them could outlive the bytes it
/// was about: the source is then made unique to this response, and the next poll tries again
/// until the file has settled.
///
/// [`Release::source`]: upshift::fetch::Release::source
pub(crate) fn source_of(v: &Validators, len: Option<u64>) -> Option<String> {
    let text =
        |h: &reqwest::header::HeaderValue| String::from_utf8_lossy(h.as_bytes()).into_owned();
    static UNSETTLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unsettled = (!v.reliable()).then(|| {
        let n = UNSETTLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("unsettled#{n}:")
    });
    let settled = match (&v.etag, &v.last_modified) {
        (Some(etag), _) => Some(format!("etag:{}", text(etag))),
        (None, Some(date)) => {
            let len = len.map_or_else(|| "?".to_string(), |n| n.to_string());
            Some(format!("last-modified:{}#{len}", text(date)))
        }
        (None, None) => None,
    }?;
    Some(unsettled.unwrap_or_default() + &settled)
}

/// The format by name, if the name says one (`None` for a plain name: the executable itself, or
/// a name that says nothing).
fn format_of_name(name: &str) -> Option<Format> {
    match Format::from_name(name) {
        Format::Raw => None,
        f => Some(f),
    }
}

fn format_of_content_type(ct: &str) -> Option<Format> {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/x-tar+gzip"
        | "application/tar+gzip"
        | "application/x-gtar"
        | "application/x-compressed-tar"
        | "application/x-tgz" => Some(Format::TarGz { binary: None }),
        "application/zip" | "application/x-zip-compressed" | "application/x-zip" => {
            Some(Format::Zip { binary: None })
        }
        "application/gzip" | "application/x-gzip" => Some(Format::Gzip),
        _ => None,
    }
}

/// The file name in a `Content-Disposition` header (`filename*=UTF-8''…` preferred).
fn disposition_file_name(value: &str) -> Option<String> {
    let mut plain = None;
    for part in value.split(';').map(str::trim) {
        let Some((key, val)) = part.split_once('=') else {
            continue;
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "filename*" => {
                let encoded = val.trim().splitn(3, '\'').nth(2)?;
                let decoded = percent_encoding::percent_decode_str(encoded).decode_utf8_lossy();
                return Some(decoded.into_owned());
            }
            "filename" => plain = Some(val.trim().trim_matches('"').to_string()),
            _ => {}
        }
    }
    plain
}

/// The release's format: the final URL's file name, else `Content-Disposition`'s, else
/// `Content-Type`, else the configured URL's file name, else the executable itself.
pub(crate) fn guess_format(final_url: &Url, headers: &HeaderMap, configured: &Url) -> Format {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    format_of_name(&file_name(final_url))
        .or_else(|| {
            header(CONTENT_DISPOSITION)
                .and_then(disposition_file_name)
                .and_then(|n| format_of_name(&n))
        })
        .or_else(|| header(CONTENT_TYPE).and_then(format_of_content_type))
        .or_else(|| format_of_name(&file_name(configured)))
        .unwrap_or(Format::Raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL")
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact(&url("https://u:p@h.example/a/b?X-Amz-Signature=s#f")),
            "https://h.example/a/b?…"
        );
        assert_eq!(
            redact(&url("http://127.0.0.1:8080/app")),
            "http://127.0.0.1:8080/app"
        );
    }

    #[test]
    fn names_and_suffixes() {
        let u = url("https://h.example/dl/app%20v2.tar.gz?token=t");
        assert_eq!(file_name(&u), "app v2.tar.gz");
        assert_eq!(
            with_path_suffix(&u, ".sha256").as_str(),
            "https://h.example/dl/app%20v2.tar.gz.sha256?token=t"
        );
        assert_eq!(file_name(&url("https://h.example/dl/")), "");
    }

    #[test]
    fn formats() {
        let plain = url("https://h.example/download");
        let none = HeaderMap::new();
        assert_eq!(
            guess_format(&url("https://h.example/a.tar.gz"), &none, &plain),
            Format::TarGz { binary: None }
        );
        assert_eq!(
            guess_format(&plain, &none, &url("https://h.example/latest/a.zip")),
            Format::Zip { binary: None }
        );
        assert_eq!(guess_format(&plain, &none, &plain), Format::Raw);
        let cd = headers(&[(
            "content-disposition",
            "attachment; filename=\"app-linux.tgz\"",
        )]);
        assert_eq!(
            guess_format(&plain, &cd, &plain),
            Format::TarGz { binary: None }
        );
        let cd = headers(&[(
            "content-disposition",
            "attachment; filename*=UTF-8''app%20x.zip",
        )]);
        assert_eq!(
            guess_format(&plain, &cd, &plain),
            Format::Zip { binary: None }
        );
        for (ct, f) in [
            ("application/gzip", Format::Gzip),
            ("application/x-gzip", Format::Gzip),
            ("application/zip", Format::Zip { binary: None }),
            (
                "application/x-tar+gzip; charset=binary",
                Format::TarGz { binary: None },
            ),
            ("application/octet-stream", Format::Raw),
        ] {
            let h = headers(&[("content-type", ct)]);
            assert_eq!(guess_format(&plain, &h, &plain), f, "{ct}");
        }
        // The final URL's name wins over the headers.
        let h = headers(&[("content-type", "application/zip")]);
        assert_eq!(
            guess_format(&url("https://h.example/a.gz"), &h, &plain),
            Format::Gzip
        );
    }

    #[test]
    fn identities_without_a_digest() {
        let u = url("https://h.example/app?t=1");
        let lm_value = HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        let both = Validators::new(
            Some(HeaderValue::from_static("\"abc\"")),
            Some(lm_value.clone()),
        );
        assert_eq!(identity_without_digest(&both, &u, Some(3)), "etag:\"abc\"");
        let lm = Validators::new(None, Some(lm_value));
        assert_eq!(
            identity_without_digest(&lm, &u, None),
            "last-modified:Wed, 21 Oct 2015 07:28:00 GMT"
        );
        let none = Validators::default();
        assert_eq!(
            identity_without_digest(&none, &u, Some(3)),
            "url:https://h.example/app?…#3"
        );
        assert_eq!(
            identity_without_digest(&none, &u, None),
            "url:https://h.example/app?…#?"
        );
    }
}
