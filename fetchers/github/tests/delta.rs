//! Delta releases with [`GithubFetcher`] against the fixture server: the patch from the running
//! build is found among the release's assets and offered with the release, whose asset is then
//! not requested until it is read. Requests are read from the fixture's log. Any bytes serve as
//! a patch here: the fetcher only finds it and hands it over (rebuilding from it is the
//! pipeline's, tested there).

mod common;

use std::collections::HashMap;

use common::setup::{asset, body, found, none, nothing_installed, Setup};
use common::{http_full, sha256_hex, Logged};
use serde_json::json;
use tokio::io::AsyncReadExt;
use upshift::fetch::Current;

const TAG: &str = "v1.0.0";

/// The patch's asset name for `base` (a running build's sha256), as `upshift-publish` names it.
fn patch_name(base: &str) -> String {
    upshift::delta::patch_name(&asset(), base)
}

/// Publishes [`TAG`] with `files` (the release's asset among them).
fn publish(s: &Setup, files: &[(String, Vec<u8>)]) {
    s.repo
        .meta(TAG, json!({ "created_at": "2025-01-01T00:00:00Z" }));
    for (name, bytes) in files {
        s.repo.file(TAG, name, bytes);
    }
}

/// The release's assets by id, asked of the fixture directly (call it before a log mark).
fn asset_names(s: &Setup) -> HashMap<u64, String> {
    let path = format!("/repos/acme/app/releases/tags/{TAG}");
    let (status, _, text) = http_full(s.fixture.api_addr(), "GET", &path, &[]);
    assert_eq!(status, 200, "{text}");
    let release: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let assets = release["assets"].as_array().cloned().unwrap_or_default();
    assets
        .iter()
        .map(|a| {
            let id = a["id"].as_u64().expect("an asset id");
            (id, a["name"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

/// Each logged request, named: `latest 200`, `asset NAME 302` (the API's asset endpoint),
/// `object NAME 200` (the storage host it redirects to).
fn named(log: &[Logged], names: &HashMap<u64, String>) -> Vec<String> {
    let name = |id: &str| {
        let id: u64 = id.split('?').next().unwrap_or("").parse().unwrap_or(0);
        names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"))
    };
    log.iter()
        .map(|l| {
            let what = if l.path.ends_with("/releases/latest") {
                "latest".to_string()
            } else if let Some(id) = l.path.split("/releases/assets/").nth(1) {
                format!("asset {}", name(id))
            } else if let Some(id) = l.path.split("/objects/acme/app/").nth(1) {
                format!("object {}", name(id))
            } else {
                l.path.clone()
            };
            format!("{what} {}", l.status)
        })
        .collect()
}

/// A download of `name` (its API endpoint, then the storage host): two requests.
fn download(name: &str) -> [String; 2] {
    [format!("asset {name} 302"), format!("object {name} 200")]
}

fn requests(first: &[&str], downloads: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = first.iter().map(|s| s.to_string()).collect();
    all.extend(downloads.iter().flat_map(|n| download(n)));
    all
}

async fn read(body: &mut upshift::fetch::ReleaseBody) -> Vec<u8> {
    let mut out = Vec::new();
    body.read_to_end(&mut out).await.expect("the body reads");
    out
}

/// Checks with `f`: the release is offered without a patch, after exactly `expected`, and its
/// body, requested by the check, is `bytes`.
async fn offered_alone(
    s: &Setup,
    f: &mut upshift_github::GithubFetcher,
    current: &Current,
    bytes: &[u8],
    expected: Vec<String>,
) {
    let names = asset_names(s);
    let before = s.fixture.log().len();
    let mut r = found(f, current).await;
    assert!(r.delta.is_none(), "{r:?}");
    assert_eq!(named(&s.log_since(before), &names), expected);
    assert_eq!(body(&mut r).await, bytes);
}

/// The case: a new signed release with a patch for the running build. The check reads
/// the release document and the two signatures; neither the asset nor the patch is requested
/// until its body is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_patch_for_the_running_build_is_offered_and_the_asset_is_not_requested() {
    let s = Setup::new(&[]);
    let current = nothing_installed();
    let release = vec![7u8; 1024 * 1024];
    let patch = b"a patch from the running build".to_vec();
    let patch_name = patch_name(&current.sha256);
    let release_sig = b"untrusted comment: the release's signature\nRWQrelease\n".to_vec();
    let patch_sig = b"untrusted comment: the patch's signature\nRWQpatch\n".to_vec();
    publish(
        &s,
        &[
            (asset(), release.clone()),
            (format!("{}.minisig", asset()), release_sig.clone()),
            (patch_name.clone(), patch.clone()),
            (format!("{patch_name}.minisig"), patch_sig.clone()),
        ],
    );
    let names = asset_names(&s);

    let mut f = s.fetcher();
    let before = s.fixture.log().len();
    let mut r = found(&mut f, &current).await;
    assert_eq!(
        named(&s.log_since(before), &names),
        requests(
            &["latest 200"],
            &[
                &format!("{}.minisig", asset()),
                &format!("{patch_name}.minisig")
            ]
        ),
        "the check downloads neither the asset nor the patch"
    );
    assert_eq!(r.sha256.as_deref(), Some(sha256_hex(&release).as_str()));
    assert_eq!(
        r.signature.as_deref().map(str::as_bytes),
        Some(&release_sig[..])
    );
    assert_eq!(r.size_hint, Some(release.len() as u64));
    let mut delta = r.delta.take().expect("the patch is offered");
    assert_eq!(delta.base_sha256, current.sha256);
    assert_eq!(delta.sha256, sha256_hex(&patch));
    assert_eq!(
        delta.signature.as_deref().map(str::as_bytes),
        Some(&patch_sig[..])
    );
    assert_eq!(delta.size_hint, Some(patch.len() as u64));
    assert!(delta.name.contains(&patch_name), "{}", delta.name);

    // The pipeline reads the patch: only the patch is downloaded.
    let before = s.fixture.log().len();
    assert_eq!(read(&mut delta.body).await, patch);
    assert_eq!(
        named(&s.log_since(before), &names),
        requests(&[], &[&patch_name])
    );

    // The patch did not work: the release's body is the whole asset (the fallback).
    let before = s.fixture.log().len();
    assert_eq!(body(&mut r).await, release);
    assert_eq!(
        named(&s.log_since(before), &names),
        requests(&[], &[&asset()])
    );
}

/// Only the running build's patch is looked for: one for another build is not offered, and the
/// asset is downloaded as without patches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_for_another_build_is_not_offered() {
    let s = Setup::new(&[]);
    let release = b"the new build".to_vec();
    let other = patch_name(&sha256_hex(b"a build this host does not run"));
    publish(
        &s,
        &[
            (asset(), release.clone()),
            (other, b"another patch".to_vec()),
        ],
    );
    let expected = requests(&["latest 200"], &[&asset()]);
    offered_alone(
        &s,
        &mut s.fetcher(),
        &nothing_installed(),
        &release,
        expected,
    )
    .await;
}

/// A patch whose sha256 nothing gives (no `digest`, no line in a list, no `.sha256`) is not
/// offered. Where the asset's sha256 comes from, the patch's comes from too: a `.sha256` asset,
/// or the `SHA256SUMS` asset, read once for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_without_a_checksum_is_not_offered() {
    let s = Setup::new(&[]);
    let current = nothing_installed();
    let release = b"the new build".to_vec();
    let patch = b"a patch nothing vouches for".to_vec();
    let patch_name = patch_name(&current.sha256);
    publish(
        &s,
        &[
            (asset(), release.clone()),
            (patch_name.clone(), patch.clone()),
            (format!("{patch_name}.nodigest"), Vec::new()),
        ],
    );
    let expected = requests(&["latest 200"], &[&asset()]);
    offered_alone(&s, &mut s.fetcher(), &current, &release, expected).await;

    // Its `.sha256` asset vouches for it.
    let sidecar = format!("{patch_name}.sha256");
    let line = format!("{}  {patch_name}\n", sha256_hex(&patch));
    s.repo.file(TAG, &sidecar, line.as_bytes());
    let names = asset_names(&s);
    let before = s.fixture.log().len();
    let r = found(&mut s.fetcher(), &current).await;
    assert_eq!(r.delta.expect("offered").sha256, sha256_hex(&patch));
    assert_eq!(
        named(&s.log_since(before), &names),
        requests(&["latest 200"], &[&sidecar])
    );
    s.repo.remove_file(TAG, &sidecar);

    // The SHA256SUMS that gives the asset's sha256 gives the patch's: read once.
    s.repo.file(TAG, &format!("{}.nodigest", asset()), b"");
    let sums = format!("{}  {}\n{line}", sha256_hex(&release), asset());
    s.repo.file(TAG, "SHA256SUMS", sums.as_bytes());
    let names = asset_names(&s);
    let before = s.fixture.log().len();
    let r = found(&mut s.fetcher(), &current).await;
    assert_eq!(r.sha256.as_deref(), Some(sha256_hex(&release).as_str()));
    assert_eq!(r.delta.expect("offered").sha256, sha256_hex(&patch));
    assert_eq!(
        named(&s.log_since(before), &names),
        requests(&["latest 200"], &["SHA256SUMS"])
    );

    // A list that does not name it: not offered.
    let sums = format!("{}  {}\n", sha256_hex(&release), asset());
    s.repo.file(TAG, "SHA256SUMS", sums.as_bytes());
    let expected = requests(&["latest 200"], &["SHA256SUMS", &asset()]);
    offered_alone(&s, &mut s.fetcher(), &current, &release, expected).await;
}

/// Polls that find nothing new cost what they did before patches: one conditional request. A
/// release offered again (its transfer did not complete) does not look for its patch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_poll_does_not_look_for_a_patch() {
    let s = Setup::new(&[]);
    let current = nothing_installed();
    let release = b"the new build".to_vec();
    let patch_name = patch_name(&current.sha256);
    publish(
        &s,
        &[
            (asset(), release.clone()),
            (
                format!("{}.minisig", asset()),
                b"untrusted comment: r\nRWQ\n".to_vec(),
            ),
            (patch_name.clone(), b"a patch".to_vec()),
            (
                format!("{patch_name}.minisig"),
                b"untrusted comment: p\nRWQ\n".to_vec(),
            ),
        ],
    );
    let mut f = s.fetcher();
    let first = found(&mut f, &current).await;
    assert!(first.delta.is_some(), "{first:?}");
    let identity = first.identity.clone();
    let sha = first.sha256.clone().expect("a digest");
    drop(first);

    // Not installed (dropped unread): offered again, with its patch, from the cached document.
    let before = s.fixture.log().len();
    let again = found(&mut f, &current).await;
    assert!(again.delta.is_some(), "{again:?}");
    drop(again);
    let log = s.log_since(before);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].status, 304, "{log:?}");

    // Installed: nothing offered, nothing looked up.
    let installed = Current {
        sha256: sha,
        identity: Some(identity),
        ..current.clone()
    };
    for what in ["installed", "installed, identity unknown"] {
        let now = match what {
            "installed" => installed.clone(),
            _ => Current {
                identity: None,
                ..installed.clone()
            },
        };
        let before = s.fixture.log().len();
        none(&mut f, &now, what).await;
        let log = s.log_since(before);
        assert_eq!(log.len(), 1, "{what}: {log:?}");
        assert_eq!(log[0].status, 304, "{what}: {log:?}");
    }
    // Neither offer's bodies were ever requested.
    let names = asset_names(&s);
    let downloaded: Vec<String> = named(&s.fixture.log(), &names)
        .into_iter()
        .filter(|l| l.contains(&asset()) && !l.contains(".minisig"))
        .collect();
    assert!(downloaded.is_empty(), "{downloaded:?}");
}

/// `deltas(false)`: no look (not even at the patch's signature), and the asset is downloaded as
/// before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_deltas_the_release_is_downloaded_as_before() {
    let s = Setup::new(&[]);
    let current = nothing_installed();
    let release = b"the new build".to_vec();
    let patch_name = patch_name(&current.sha256);
    let release_sig = format!("{}.minisig", asset());
    publish(
        &s,
        &[
            (asset(), release.clone()),
            (release_sig.clone(), b"untrusted comment: r\nRWQ\n".to_vec()),
            (patch_name.clone(), b"a patch".to_vec()),
            (
                format!("{patch_name}.minisig"),
                b"untrusted comment: p\nRWQ\n".to_vec(),
            ),
        ],
    );
    let expected = requests(&["latest 200"], &[&release_sig, &asset()]);
    let mut f = s.fetcher().deltas(false);
    offered_alone(&s, &mut f, &current, &release, expected).await;
}
