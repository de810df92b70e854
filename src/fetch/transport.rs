//! Transport rules every remote fetcher applies, in one place so that `upshift-http`,
//! `upshift-s3` and `upshift-github` refuse, warn and redact in the same words.
//!
//! Without a minisign key the expected sha256 travels over the same channel as the release, so
//! plain `http://` lets anyone on the network path replace both: such URLs are refused unless a
//! key is configured or the operator opted in
//! ([`Upgrader::allow_insecure_transport`](crate::Upgrader::allow_insecure_transport)). A redirect
//! from `https://` to `http://` is never followed, whatever the policy: whoever wrote that
//! `Location` (or sits on the path after it) would get the request, and with it any presigned
//! query string, in clear.

use super::{FetchError, TrustPolicy};

/// The scheme of `url` (`"http"`, `"https"`, …), lower-cased; `""` when it has none.
fn scheme(url: &str) -> String {
    match url.split_once("://") {
        Some((s, _)) => s.trim().to_ascii_lowercase(),
        None => String::new(),
    }
}

/// Whether `url` is plain `http://` (not TLS).
///
/// ```
/// use upshift::fetch::transport::is_plain;
///
/// assert!(is_plain("http://127.0.0.1:8080/app"));
/// assert!(is_plain("HTTP://example.com"));
/// assert!(!is_plain("https://example.com/app"));
/// ```
pub fn is_plain(url: &str) -> bool {
    scheme(url) == "http"
}

/// `url` fit for logs and errors: `scheme://host[:port]/path`, without userinfo, query string
/// (where presigned URLs carry their signature, `X-Amz-Signature=`, `sig=`, `token=`) or
/// fragment. A query string is shown as `?…`.
///
/// ```
/// use upshift::fetch::transport::redact_url;
///
/// assert_eq!(
///     redact_url("https://user:pw@objects.example/a/b?X-Amz-Signature=s3cret#f"),
///     "https://objects.example/a/b?…"
/// );
/// assert_eq!(redact_url("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
/// ```
pub fn redact_url(url: &str) -> String {
    let (before_fragment, _) = url.split_once('#').unwrap_or((url, ""));
    let (base, query) = match before_fragment.split_once('?') {
        Some((b, _)) => (b, true),
        None => (before_fragment, false),
    };
    let shown = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => base.to_string(),
    };
    match query {
        true => format!("{shown}?…"),
        false => shown,
    }
}

/// Refuses a plain `http://` `url` unless `policy` allows plain transport. `what` names the URL
/// in the message (`"release"`, `"checksum"`, `"S3 endpoint"`, …); the message names the URL
/// (redacted) and the two fixes.
///
/// ```
/// use upshift::fetch::{transport::require_tls, TrustPolicy};
///
/// let strict = TrustPolicy::default();
/// assert!(require_tls(&strict, "release", "https://example.com/app").is_ok());
/// let e = require_tls(&strict, "release", "http://example.com/app").unwrap_err();
/// assert!(e.to_string().contains("http://example.com/app"));
/// let opted_in = TrustPolicy { allow_insecure_transport: true, ..strict };
/// assert!(require_tls(&opted_in, "release", "http://127.0.0.1:8080/app").is_ok());
/// ```
pub fn require_tls(policy: &TrustPolicy, what: &str, url: &str) -> Result<(), FetchError> {
    if !is_plain(url) || policy.plain_transport_allowed() {
        return Ok(());
    }
    Err(FetchError::Source(format!(
        "the {what} URL {} is plain http: without a minisign key, anyone on the network path can \
         replace both the release and its checksum. Use an https:// URL, or configure a minisign \
         public key (Upgrader::minisign_public_key), or allow plain transport explicitly with \
         Upgrader::allow_insecure_transport(true) (meant for loopback test servers)",
        redact_url(url)
    )))
}

/// Whether a redirect from `from` to `to` may be followed: never from `https://` to `http://`;
/// to any other `http://` URL only when `policy` allows plain transport (see [`require_tls`]).
///
/// ```
/// use upshift::fetch::{transport::check_redirect, TrustPolicy};
///
/// let opted_in = TrustPolicy { allow_insecure_transport: true, ..TrustPolicy::default() };
/// assert!(check_redirect(&opted_in, "http://a/app", "http://b/app").is_ok());
/// assert!(check_redirect(&opted_in, "http://a/app", "https://b/app").is_ok());
/// // A downgrade is refused even with the opt-in (and with a key).
/// assert!(check_redirect(&opted_in, "https://a/app", "http://b/app").is_err());
/// assert!(check_redirect(&TrustPolicy::default(), "http://a/app", "http://b/app").is_err());
/// ```
pub fn check_redirect(policy: &TrustPolicy, from: &str, to: &str) -> Result<(), FetchError> {
    if scheme(from) == "https" && is_plain(to) {
        return Err(FetchError::Source(format!(
            "refused a redirect from {} to {}: a redirect from https to plain http is never \
             followed (not even with allow_insecure_transport or a minisign key)",
            redact_url(from),
            redact_url(to)
        )));
    }
    require_tls(policy, "redirect target", to)
}

/// Whether `host` (a host name or IP literal, IPv6 with or without brackets) is this machine:
/// `localhost`, `127.0.0.0/8` or `::1`.
///
/// ```
/// use upshift::fetch::transport::is_loopback_host;
///
/// assert!(is_loopback_host("127.0.0.1") && is_loopback_host("[::1]") && is_loopback_host("localhost"));
/// assert!(!is_loopback_host("10.0.0.1") && !is_loopback_host("example.com"));
/// ```
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Logs, once per fetcher at startup (from [`Fetcher::apply_policy`](super::Fetcher::apply_policy)),
/// what protects its releases when no minisign key is configured: a WARN saying what the
/// checksum does and does not protect. Does nothing when `policy` requires a signature.
///
/// ```
/// use upshift::fetch::{transport::warn_without_key, TrustPolicy};
///
/// warn_without_key(&TrustPolicy::default(), "https://releases.example.com/app");
/// ```
pub fn warn_without_key(policy: &TrustPolicy, fetcher: &str) {
    if policy.signature_required {
        return;
    }
    tracing::warn!(
        fetcher = %fetcher,
        plain_transport_allowed = policy.allow_insecure_transport,
        "no minisign key configured: releases are checked against their sha256 checksum only. \
         The checksum detects corruption and a mismatched upload; it does not stop whoever \
         controls the release origin or the network path from serving their own binary with a \
         matching checksum. Configure a minisign public key (Upgrader::minisign_public_key) so \
         that only releases you signed install"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_scheme_host_and_path_only() {
        for (url, shown) in [
            (
                "https://objects.example/o/r/a?expires=1&token=t0k",
                "https://objects.example/o/r/a?…",
            ),
            ("http://u@h:1/p#frag", "http://h:1/p"),
            ("https://h", "https://h"),
            ("not a url?sig=x", "not a url?…"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn plain_urls_need_the_opt_in_or_a_key() {
        let strict = TrustPolicy::default();
        let msg = require_tls(&strict, "checksum", "http://u:pw@h/app.sha256?sig=x")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("checksum URL http://h/app.sha256?…"), "{msg}");
        assert!(!msg.contains("pw") && !msg.contains("sig=x"), "{msg}");
        assert!(
            msg.contains("https://") && msg.contains("allow_insecure_transport(true)"),
            "{msg}"
        );
        assert!(msg.contains("minisign"), "{msg}");
        let signed = TrustPolicy {
            signature_required: true,
            ..strict
        };
        assert!(require_tls(&signed, "checksum", "http://h/app.sha256").is_ok());
        assert!(require_tls(&strict, "checksum", "HTTPS://h/app.sha256").is_ok());
    }

    #[test]
    fn a_downgrade_is_never_followed() {
        let all = [
            TrustPolicy::default(),
            TrustPolicy {
                allow_insecure_transport: true,
                signature_required: false,
            },
            TrustPolicy {
                allow_insecure_transport: true,
                signature_required: true,
            },
        ];
        for policy in all {
            let e = check_redirect(&policy, "https://a/x", "HTTP://b/y?sig=s")
                .unwrap_err()
                .to_string();
            assert!(e.contains("never followed") && !e.contains("sig=s"), "{e}");
            assert!(check_redirect(&policy, "https://a/x", "https://b/y").is_ok());
            assert!(check_redirect(&policy, "http://a/x", "https://b/y").is_ok());
        }
        assert!(check_redirect(&all[0], "http://a/x", "http://b/y").is_err());
        assert!(check_redirect(&all[1], "http://a/x", "http://b/y").is_ok());
    }
}
