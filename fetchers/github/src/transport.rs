//! Transport rules for the GitHub fetcher: the API base must be `https://` unless plain
//! transport is allowed, a token never travels in clear beyond this machine, and redirects
//! (GitHub's asset downloads answer `302` to a presigned URL on its storage host) are followed
//! here, hop by hop, never from `https://` to `http://`.
//!
//! octocrab is built without its `follow-redirect` and `tracing` features: the first would follow
//! any redirect, downgrades included, before this code sees it; the second logs every request's
//! full URL, presigned query string included, at DEBUG. Should another crate in a build turn
//! `follow-redirect` back on (Cargo unifies features), [`followed_elsewhere`] still refuses a
//! response that octocrab fetched from a plain URL after an `https://` request.

use http::{StatusCode, Uri};
use upshift::fetch::{transport, FetchError, TrustPolicy};

/// The most redirects followed for one request.
pub(crate) const MAX_REDIRECTS: usize = 10;

/// Refuses a plain `http://` API base where `policy` does not allow it, and one that would
/// carry a token in clear to another machine whatever the policy: the token grants access to
/// the repository, not only to its releases.
pub(crate) fn check_api_base(
    policy: &TrustPolicy,
    base: &str,
    has_token: bool,
) -> Result<(), FetchError> {
    transport::require_tls(policy, "GitHub API base", base)?;
    if has_token && transport::is_plain(base) {
        let host = base
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_string))
            .unwrap_or_default();
        if !transport::is_loopback_host(&host) {
            return Err(FetchError::Source(format!(
                "the GitHub API base {} is plain http and a token is configured: the token \
                 would travel in clear. Use an https:// API base (plain http is accepted with a \
                 token only on this machine, 127.0.0.1 or localhost)",
                transport::redact_url(base)
            )));
        }
    }
    Ok(())
}

/// Whether `status` is a redirect to follow (not `304 Not Modified`).
fn is_redirect(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    )
}

/// `location` resolved against `at` (an absolute URL): absolute, scheme-relative (`//host/…`)
/// or absolute-path (`/…`) references. `None` for anything else.
fn resolve(at: &str, location: &str) -> Option<String> {
    let location = location.trim();
    if location.contains("://") {
        return matches!(
            location.split("://").next()?.to_ascii_lowercase().as_str(),
            "http" | "https"
        )
        .then(|| location.to_string());
    }
    let at: Uri = at.parse().ok()?;
    let scheme = at.scheme_str()?;
    if let Some(rest) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{rest}"));
    }
    let authority = at.authority()?;
    location
        .starts_with('/')
        .then(|| format!("{scheme}://{authority}{location}"))
}

/// The URL to follow when `response` to a request for `at` (an absolute URL) is a redirect,
/// checked against `policy`; `None` when it is not a redirect.
pub(crate) fn redirect_target<B>(
    policy: &TrustPolicy,
    at: &str,
    response: &http::Response<B>,
) -> Result<Option<String>, String> {
    if !is_redirect(response.status()) {
        return Ok(None);
    }
    let Some(location) = response.headers().get(http::header::LOCATION) else {
        return Ok(None); // a 3xx without a target: the caller's status check reports it
    };
    let next = location
        .to_str()
        .ok()
        .and_then(|l| resolve(at, l))
        .ok_or_else(|| {
            format!(
                "HTTP {} redirects to an invalid or non-HTTP location",
                response.status()
            )
        })?;
    transport::check_redirect(policy, at, &next).map_err(|e| e.to_string())?;
    Ok(Some(next))
}

/// When octocrab followed redirects itself (its `follow-redirect` feature turned on by another
/// crate), the URL that answered, checked against `requested`: an error for a downgrade.
pub(crate) fn followed_elsewhere<B>(
    policy: &TrustPolicy,
    requested: &str,
    response: &http::Response<B>,
) -> Result<(), String> {
    let Some(tower_http::follow_redirect::RequestUri(answered)) = response.extensions().get()
    else {
        return Ok(());
    };
    let answered = answered.to_string();
    if answered == requested {
        return Ok(());
    }
    transport::check_redirect(policy, requested, &answered).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(status: u16, location: &str) -> http::Response<()> {
        http::Response::builder()
            .status(status)
            .header(http::header::LOCATION, location)
            .body(())
            .unwrap()
    }

    const OPTED_IN: TrustPolicy = TrustPolicy {
        signature_required: false,
        allow_insecure_transport: true,
    };

    #[test]
    fn redirects_are_resolved_and_a_downgrade_refused() {
        let at = "https://api.example/repos/o/r/releases/assets/1";
        let r = redirect(302, "https://objects.example/a?sig=s");
        assert_eq!(
            redirect_target(&TrustPolicy::default(), at, &r).unwrap(),
            Some("https://objects.example/a?sig=s".into())
        );
        let r = redirect(307, "/other");
        assert_eq!(
            redirect_target(&TrustPolicy::default(), at, &r).unwrap(),
            Some("https://api.example/other".into())
        );
        for policy in [TrustPolicy::default(), OPTED_IN] {
            let e = redirect_target(
                &policy,
                at,
                &redirect(302, "http://objects.example/a?sig=s"),
            )
            .unwrap_err();
            assert!(e.contains("never followed") && !e.contains("sig=s"), "{e}");
        }
        let plain = "http://127.0.0.1:1/repos/o/r/releases/assets/1";
        let r = redirect(302, "http://127.0.0.1:2/objects/a?token=t");
        assert!(redirect_target(&OPTED_IN, plain, &r).unwrap().is_some());
        assert!(redirect_target(&TrustPolicy::default(), plain, &r).is_err());
        let not_modified = http::Response::builder().status(304).body(()).unwrap();
        assert_eq!(
            redirect_target(&OPTED_IN, plain, &not_modified).unwrap(),
            None
        );
        assert!(redirect_target(&OPTED_IN, plain, &redirect(302, "ftp://x/y")).is_err());
    }

    #[test]
    fn a_token_never_travels_in_clear_beyond_this_machine() {
        let strict = TrustPolicy::default();
        assert!(check_api_base(&strict, "https://ghe.example/api/v3", true).is_ok());
        assert!(check_api_base(&strict, "http://127.0.0.1:9", false).is_err());
        assert!(check_api_base(&OPTED_IN, "http://127.0.0.1:9", true).is_ok());
        assert!(check_api_base(&OPTED_IN, "http://localhost:9", true).is_ok());
        assert!(check_api_base(&OPTED_IN, "http://ghe.example", false).is_ok());
        let e = check_api_base(&OPTED_IN, "http://ghe.example", true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("token") && e.contains("http://ghe.example"),
            "{e}"
        );
        let signed = TrustPolicy {
            signature_required: true,
            ..OPTED_IN
        };
        assert!(check_api_base(&signed, "http://ghe.example/api/v3", true).is_err());
    }
}
