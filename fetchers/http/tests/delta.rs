//! Delta releases through [`HttpFetcher`] against a real nginx: what a poll costs with and
//! without a patch for the running build (from nginx's access log), the full release left
//! unrequested until read, and checksum lists that name patches without a request.

mod common;

use common::{sha256_hex, Hit, Nginx};
use tokio::io::AsyncReadExt;
use upshift::delta::patch_name;
use upshift::fetch::{Current, Fetcher, Release};
use upshift_fetcher_conformance::Loopback;
use upshift_http::HttpFetcher;

fn bytes(tag: &str, len: usize) -> Vec<u8> {
    format!("upshift-http delta test {tag}\n")
        .bytes()
        .cycle()
        .take(len)
        .collect()
}

/// The host runs `running`; the origin serves `new` as `releases/app` with its sidecar, and a
/// patch from `running` (any bytes do: the fetcher does not apply it) with its own sidecar.
struct Origin {
    nginx: Nginx,
    running: Vec<u8>,
    new: Vec<u8>,
    patch: Vec<u8>,
    patch_uri: String,
}

impl Origin {
    fn start() -> Option<Origin> {
        let nginx = Nginx::start_or_skip()?;
        let running = bytes("running", 200 * 1024);
        let new = bytes("new", 200 * 1024);
        let patch = bytes("patch", 3 * 1024);
        let name = patch_name("app", &sha256_hex(&running));
        let sha = sha256_hex(&new);
        nginx.put_settled("releases/app.sha256", format!("{sha}  app\n").as_bytes());
        nginx.put_settled("releases/app", &new);
        Some(Origin {
            nginx,
            running,
            new,
            patch,
            patch_uri: format!("/releases/{name}"),
        })
    }

    fn publish_patch(&self, sidecar: bool) {
        let rel = self.patch_uri.trim_start_matches('/');
        if sidecar {
            let sha = sha256_hex(&self.patch);
            self.nginx
                .put_settled(&format!("{rel}.sha256"), format!("{sha}\n").as_bytes());
        }
        self.nginx.put_settled(rel, &self.patch);
    }

    fn current(&self) -> Current {
        Current {
            sha256: sha256_hex(&self.running),
            ..Current::default()
        }
    }

    fn fetcher(&self) -> HttpFetcher {
        HttpFetcher::new(self.nginx.url("releases/app"))
            .expect("valid URL")
            .loopback()
    }

    fn hits(&self) -> Vec<(String, String, u16)> {
        self.nginx
            .settled_hits()
            .into_iter()
            .map(|h: Hit| (h.method, h.uri, h.status))
            .collect()
    }
}

fn hit(method: &str, uri: &str, status: u16) -> (String, String, u16) {
    (method.to_string(), uri.to_string(), status)
}

async fn offered(f: &mut HttpFetcher, current: &Current) -> Release {
    match f.check(current).await {
        Ok(Some(r)) => r,
        other => panic!("expected a release, got {other:?}"),
    }
}

async fn read(body: &mut upshift::fetch::ReleaseBody) -> Vec<u8> {
    let mut out = Vec::new();
    body.read_to_end(&mut out).await.expect("body");
    out
}

#[tokio::test]
async fn a_patch_for_the_running_build_is_offered_and_the_full_release_is_not_requested() {
    let Some(origin) = Origin::start() else {
        return;
    };
    origin.publish_patch(true);
    let mut f = origin.fetcher();
    let mut release = offered(&mut f, &origin.current()).await;
    let delta = release.delta.as_mut().expect("a delta is offered");
    assert_eq!(delta.base_sha256, origin.current().sha256);
    assert_eq!(delta.sha256, sha256_hex(&origin.patch));
    assert_eq!(
        release.sha256.as_deref(),
        Some(sha256_hex(&origin.new).as_str())
    );
    assert_eq!(release.size_hint, Some(origin.new.len() as u64));
    let sidecar = format!("{}.sha256", origin.patch_uri);
    assert_eq!(
        origin.hits(),
        [
            hit("GET", "/releases/app.sha256", 200),
            hit("GET", "/releases/app.minisig", 404),
            hit("GET", &sidecar, 200),
            hit("HEAD", "/releases/app", 200),
        ],
        "the check asks about the full release (HEAD) and reads neither body"
    );

    let mut delta = release.delta.take().expect("delta");
    assert_eq!(read(&mut delta.body).await, origin.patch);
    let after_patch = origin.hits();
    assert_eq!(
        after_patch.last(),
        Some(&hit("GET", &origin.patch_uri, 200))
    );
    assert!(
        !after_patch.contains(&hit("GET", "/releases/app", 200)),
        "the full release was requested: {after_patch:#?}"
    );

    // The fallback: the full release, requested only now.
    assert_eq!(read(&mut release.body).await, origin.new);
    assert_eq!(
        origin.hits().last(),
        Some(&hit("GET", "/releases/app", 200))
    );
}

#[tokio::test]
async fn without_a_patch_or_its_checksum_the_full_release_is_offered_as_before() {
    let Some(origin) = Origin::start() else {
        return;
    };
    // A patch without a checksum is not offered.
    origin.publish_patch(false);
    let mut f = origin.fetcher();
    let mut release = offered(&mut f, &origin.current()).await;
    assert!(release.delta.is_none());
    assert_eq!(read(&mut release.body).await, origin.new);
    let sidecar = format!("{}.sha256", origin.patch_uri);
    assert_eq!(
        origin.hits(),
        [
            hit("GET", "/releases/app.sha256", 200),
            hit("GET", "/releases/app.minisig", 404),
            hit("GET", &sidecar, 404),
            hit("GET", "/releases/app", 200),
        ]
    );
}

#[tokio::test]
async fn an_unchanged_poll_costs_no_patch_lookup_and_deltas_can_be_switched_off() {
    let Some(origin) = Origin::start() else {
        return;
    };
    origin.publish_patch(true);
    // Installed: the published release is the running build. The unchanged poll is one
    // conditional request, with or without patches published.
    let installed = Current {
        sha256: sha256_hex(&origin.new),
        ..Current::default()
    };
    let mut f = origin.fetcher();
    assert!(f.check(&installed).await.expect("check").is_none());
    let first = origin.hits().len();
    assert!(f.check(&installed).await.expect("check").is_none());
    let polls = origin.hits();
    assert_eq!(polls.len(), first + 1, "{polls:#?}");
    assert_eq!(polls[first].1, "/releases/app.sha256");

    let mut off = origin.fetcher().deltas(false);
    let before = origin.hits().len();
    let mut release = offered(&mut off, &origin.current()).await;
    assert!(release.delta.is_none());
    assert_eq!(read(&mut release.body).await, origin.new);
    let looked: Vec<_> = origin.hits()[before..]
        .iter()
        .filter(|h| h.1.contains(".from-"))
        .cloned()
        .collect();
    assert!(
        looked.is_empty(),
        "deltas(false) looked for a patch: {looked:#?}"
    );
}

#[tokio::test]
async fn a_checksum_list_names_the_patch_without_a_request_of_its_own() {
    let Some(origin) = Origin::start() else {
        return;
    };
    origin.publish_patch(false);
    let name = origin.patch_uri.rsplit('/').next().unwrap_or_default();
    let sums = format!(
        "{}  app\n{}  {name}\n",
        sha256_hex(&origin.new),
        sha256_hex(&origin.patch)
    );
    origin
        .nginx
        .put_settled("releases/SHA256SUMS", sums.as_bytes());
    let mut f = origin
        .fetcher()
        .sha256sums_url(origin.nginx.url("releases/SHA256SUMS"));
    let release = offered(&mut f, &origin.current()).await;
    let delta = release.delta.as_ref().expect("a delta from the list");
    assert_eq!(delta.sha256, sha256_hex(&origin.patch));
    assert_eq!(
        origin.hits(),
        [
            hit("GET", "/releases/SHA256SUMS", 200),
            hit("GET", "/releases/app.minisig", 404),
            hit("HEAD", "/releases/app", 200),
        ]
    );
}
