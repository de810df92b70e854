//! Delta releases with upshift-s3 against s3s-fs: the patch from the running build is found
//! beside the object and offered with the release, whose object is then not requested until it
//! is read. Requests are counted by the test bed's proxy. Any bytes serve as a patch here: the
//! fetcher only finds it and hands it over (rebuilding from it is the pipeline's, tested there).

mod common;

use aws_sdk_s3::types::ChecksumAlgorithm;
use common::proxy::Exchange;
use common::{Bed, BedFetcher, BUCKET, KEY};
use upshift::fetch::{Current, Fetcher, Release};
use upshift_fetcher_conformance::{installed, payload, read_body, sha256_hex};
use upshift_s3::S3Fetcher;

/// The build the host runs, which the patches are made from.
fn running() -> Current {
    installed(&sha256_hex(b"the build this host runs"), None)
}

/// The patch's key for `base` (a running build's sha256), as `upshift-publish` names it.
fn patch_key(base: &str) -> String {
    let dir = KEY.rsplit_once('/').map_or("", |(d, _)| d);
    format!("{dir}/{}", upshift::delta::patch_name("myapp", base))
}

fn path(key: &str) -> String {
    format!("/{BUCKET}/{key}")
}

/// Puts `bytes` at `key` the way `upshift-publish --s3` does: `x-amz-meta-sha256` and S3's own
/// SHA256 checksum.
fn publish(bed: &Bed, key: &str, bytes: &[u8]) {
    let sha = sha256_hex(bytes);
    bed.put_with(key, bytes, |r| {
        r.metadata("sha256", sha)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
    });
}

async fn found(f: &mut S3Fetcher, current: &Current) -> Release {
    match f.check(current).await {
        Ok(Some(r)) => r,
        Ok(None) => panic!("{}: expected a release, got none", f.name()),
        Err(e) => panic!("{}: expected a release, got: {e}", f.name()),
    }
}

fn since(bed: &Bed, mark: usize) -> Vec<String> {
    describe(&bed.proxy.log()[mark..])
}

fn describe(log: &[Exchange]) -> Vec<String> {
    log.iter()
        .map(|e| format!("{} {} -> {}", e.method, e.path, e.status))
        .collect()
}

/// Checks with `f`: the release is offered without a patch, after exactly `requests`, and its
/// body, requested by the check, is `release`.
async fn offered_alone(
    bed: &Bed,
    mut f: S3Fetcher,
    current: &Current,
    release: &[u8],
    requests: Vec<String>,
) {
    let mark = bed.proxy.log().len();
    let mut offered = found(&mut f, current).await;
    assert!(offered.delta.is_none(), "{offered:?}");
    assert_eq!(since(bed, mark), requests);
    let body = read_body(&mut offered, release.len()).await;
    assert_eq!(body.expect("the release reads"), release);
}

/// Whether anything asked for the object's bytes (not its HEAD, not its side objects).
fn object_requested(bed: &Bed) -> bool {
    bed.proxy
        .log()
        .iter()
        .any(|e| e.method == "GET" && e.path == path(KEY))
}

/// The case: a new signed release with a patch for the running build. The check asks
/// about the object (HEAD) and the patch (HEAD, its signature) and reads neither; the patch is
/// requested when its body is read, the object only when the release's body is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_patch_for_the_running_build_is_offered_and_the_release_is_not_requested() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let current = running();
    let release = payload("the new build", 1024 * 1024);
    let patch = payload("a patch from the running build", 20_000);
    let patch_key = patch_key(&current.sha256);
    let release_sig = "untrusted comment: the release's signature\nRWQrelease\n";
    let patch_sig = "untrusted comment: the patch's signature\nRWQpatch\n";
    bed.put(&format!("{KEY}.minisig"), release_sig.as_bytes());
    bed.put(&format!("{patch_key}.minisig"), patch_sig.as_bytes());
    publish(&bed, &patch_key, &patch);
    publish(&bed, KEY, &release);

    let mut f = bed.fetcher();
    let mark = bed.proxy.log().len();
    let mut offered = found(&mut f, &current).await;
    assert_eq!(
        since(&bed, mark),
        vec![
            format!("HEAD {} -> 200", path(KEY)),
            format!("GET {}.minisig -> 200", path(KEY)),
            format!("HEAD {} -> 200", path(&patch_key)),
            format!("GET {}.minisig -> 200", path(&patch_key)),
        ],
        "the check reads neither the object nor the patch"
    );
    assert_eq!(
        offered.sha256.as_deref(),
        Some(sha256_hex(&release).as_str())
    );
    assert_eq!(offered.signature.as_deref(), Some(release_sig));
    assert_eq!(offered.size_hint, Some(release.len() as u64));
    let mut delta = offered.delta.take().expect("the patch is offered");
    assert_eq!(delta.base_sha256, current.sha256);
    assert_eq!(delta.sha256, sha256_hex(&patch));
    assert_eq!(delta.signature.as_deref(), Some(patch_sig));
    assert_eq!(delta.size_hint, Some(patch.len() as u64));
    assert_eq!(delta.name, format!("s3://{BUCKET}/{patch_key}"));

    // The pipeline reads the patch: only the patch is requested.
    let mark = bed.proxy.log().len();
    let mut got = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut delta.body, &mut got)
        .await
        .expect("the patch reads");
    assert_eq!(got, patch);
    assert_eq!(
        since(&bed, mark),
        vec![format!("GET {} -> 200", path(&patch_key))]
    );
    assert!(!object_requested(&bed), "{:?}", describe(&bed.proxy.log()));
    assert_eq!(bed.proxy.release_body_bytes(), 0);

    // The patch did not work: the release's body is the whole object (the fallback).
    assert_eq!(
        read_body(&mut offered, release.len())
            .await
            .expect("the release reads"),
        release
    );
    assert_eq!(bed.proxy.release_body_bytes(), release.len() as u64);

    // The release installed (from the patch or not): an unchanged poll is one HEAD, the patch
    // not looked for again.
    let now = installed(&sha256_hex(&release), Some(&offered.identity));
    for poll in 0..2 {
        let mark = bed.proxy.log().len();
        assert!(f.check(&now).await.expect("a check").is_none());
        assert_eq!(
            since(&bed, mark),
            vec![format!("HEAD {} -> 200", path(KEY))],
            "poll {poll}"
        );
    }
}

/// Only the running build's patch is looked for: one for another build is not offered, and the
/// release is downloaded as without patches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_for_another_build_is_not_offered() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let current = running();
    let other = sha256_hex(b"a build this host does not run");
    let release = payload("new build", 100_000);
    publish(&bed, &patch_key(&other), b"a patch from another build");
    publish(&bed, KEY, &release);

    let requests = vec![
        format!("HEAD {} -> 200", path(KEY)),
        format!("GET {}.minisig -> 404", path(KEY)),
        format!("HEAD {} -> 404", path(&patch_key(&current.sha256))),
        format!("GET {} -> 200", path(KEY)),
    ];
    offered_alone(&bed, bed.fetcher(), &current, &release, requests).await;
}

/// A patch whose sha256 nothing gives is not offered. Its `.sha256` sidecar, or its line in the
/// configured checksum list (already read for the release: no request), gives it one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_without_a_checksum_is_not_offered() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let current = running();
    let release = payload("new build", 100_000);
    let patch = b"a patch nothing vouches for".to_vec();
    let patch_key = patch_key(&current.sha256);
    bed.put(&patch_key, &patch);
    publish(&bed, KEY, &release);

    let requests = vec![
        format!("HEAD {} -> 200", path(KEY)),
        format!("GET {}.minisig -> 404", path(KEY)),
        format!("HEAD {} -> 200", path(&patch_key)),
        format!("GET {}.sha256 -> 404", path(&patch_key)),
        format!("GET {} -> 200", path(KEY)),
    ];
    offered_alone(&bed, bed.fetcher(), &current, &release, requests).await;

    // Its sidecar vouches for it.
    let name = patch_key.rsplit('/').next().unwrap_or_default();
    bed.put(
        &format!("{patch_key}.sha256"),
        format!("{}  {name}\n", sha256_hex(&patch)).as_bytes(),
    );
    let offered = found(&mut bed.fetcher(), &current).await;
    let delta = offered.delta.expect("the patch, with its sidecar");
    assert_eq!(delta.sha256, sha256_hex(&patch));
    bed.delete(&format!("{patch_key}.sha256"));

    // A checksum list for the release's files names it: the list read for the release says it.
    let list = "myapp/SHA256SUMS";
    bed.put(KEY, &release);
    bed.put(
        list,
        format!(
            "{}  myapp\n{}  {name}\n",
            sha256_hex(&release),
            sha256_hex(&patch)
        )
        .as_bytes(),
    );
    let mark = bed.proxy.log().len();
    let offered = found(&mut bed.fetcher().checksum_key(list), &current).await;
    assert_eq!(
        offered.delta.expect("the patch, listed").sha256,
        sha256_hex(&patch)
    );
    assert_eq!(
        since(&bed, mark),
        vec![
            format!("HEAD {} -> 200", path(KEY)),
            format!("GET {} -> 200", path(list)),
            format!("GET {}.minisig -> 404", path(KEY)),
            format!("HEAD {} -> 200", path(&patch_key)),
        ]
    );
    // A list that does not name it: not offered.
    bed.put(
        list,
        format!("{}  myapp\n", sha256_hex(&release)).as_bytes(),
    );
    let offered = found(&mut bed.fetcher().checksum_key(list), &current).await;
    assert!(offered.delta.is_none(), "{offered:?}");
}

/// Polls that find nothing new cost what they did before patches: one HEAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_poll_does_not_look_for_a_patch() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let current = running();
    let release = payload("installed build", 100_000);
    publish(&bed, &patch_key(&current.sha256), b"a patch");
    publish(&bed, KEY, &release);
    let mut f = bed.fetcher();
    let mut first = found(&mut f, &current).await;
    drop(first.delta.take());
    read_body(&mut first, release.len()).await.expect("body");

    // Installed; then a restarted master that knows only the hash; then refused as it is.
    let now = installed(&sha256_hex(&release), Some(&first.identity));
    let only_hash = installed(&sha256_hex(&release), None);
    let refused = upshift_fetcher_conformance::refused_for_its_bytes(current.clone(), &first);
    for (what, c, mut f) in [
        ("installed", &now, f),
        ("installed, identity unknown", &only_hash, bed.fetcher()),
        ("refused", &refused, bed.fetcher()),
    ] {
        // A first check of a fresh fetcher; then the poll measured.
        assert!(f.check(c).await.expect("check").is_none(), "{what}");
        let mark = bed.proxy.log().len();
        assert!(f.check(c).await.expect("check").is_none(), "{what}");
        assert_eq!(
            since(&bed, mark),
            vec![format!("HEAD {} -> 200", path(KEY))],
            "{what}"
        );
    }
    // The patch offered first and dropped unread was never requested.
    let patch_path = path(&patch_key(&current.sha256));
    let log = bed.proxy.log();
    assert!(
        !log.iter()
            .any(|e| e.method == "GET" && e.path == patch_path),
        "{:?}",
        describe(&log)
    );
}

/// `deltas(false)`: no look, and the release is downloaded as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_deltas_the_release_is_downloaded_as_before() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let current = running();
    let release = payload("new build", 100_000);
    publish(&bed, &patch_key(&current.sha256), b"a patch");
    publish(&bed, KEY, &release);

    let requests = vec![
        format!("HEAD {} -> 200", path(KEY)),
        format!("GET {}.minisig -> 404", path(KEY)),
        format!("GET {} -> 200", path(KEY)),
    ];
    let f = bed.fetcher().deltas(false);
    offered_alone(&bed, f, &current, &release, requests).await;
}
