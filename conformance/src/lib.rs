//! A conformance suite for release fetchers, written once and run against every backend (like
//! arrow-rs `object_store`'s shared tests): the File fetcher here, HTTP, GitHub and S3 in their
//! own crates.
//!
//! The suite drives a real `Box<dyn Fetcher>` against the backend's real source: the backend's
//! test implements [`Source`] to *publish into* that source (files in a temp dir, an HTTP server on
//! 127.0.0.1, a local S3 emulator), and each check below calls `check()` in-process and looks at
//! what comes back. Nothing is mocked on the fetcher's side.
//!
//! # Plugging in a backend
//!
//! 1. Add `upshift-fetcher-conformance` (this crate, in the workspace) to the backend's
//!    dev-dependencies, create `tests/conformance.rs` with a type that owns the source (its temp
//!    dir or server) and implements [`Source`]. A check whose capability the backend lacks
//!    (a cut-short transfer, fault injection, a download to refuse) is named `not_applicable`
//!    with the reason in the macro below: `cargo test` then lists it as ignored, with the
//!    reason. A check that is not named must apply: run without its capability, it fails.
//! 2. Invoke the macro at the crate root, with an expression that builds a fresh source (it is
//!    evaluated inside each `#[tokio::test]`, so it may `.await`):
//!
//!    ```ignore
//!    upshift_fetcher_conformance::fetcher_conformance_tests!(MySource::start().await);
//!    ```
//!
//!    That defines one `#[tokio::test]` per check, named after it. Or call the `pub async fn`
//!    checks from hand-written tests, each with a fresh source.
//! 3. A fetcher that needs a poll interval, timeouts or credentials gets them in
//!    [`Source::fetcher`]. For [`Failure::Slow`], give the fetcher a request timeout well under
//!    [`CHECK_BOUND`] and make the source stall for longer than that timeout.
//!
//! Every call into the fetcher runs in its own task, bounded by [`CHECK_BOUND`]: a panic or a hang
//! is a test failure with a message, never a stuck test.

mod loopback;

// Moved to the test kit; re-exported while their users move over.
pub use upshift_testkit::{hello, skip, startup};

pub use loopback::{Loopback, LOOPBACK_POLICY};

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use upshift::fetch::{Current, FetchError, Fetcher, Origin, Release};

/// The longest any single `check()` or body read may take.
pub const CHECK_BOUND: Duration = Duration::from_secs(30);

/// A fault the source can inject into what it serves next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The release (or a document the fetcher needs) answers "not found" although the fetcher had
    /// reason to expect it (404).
    NotFound,
    /// The source answers with a server error (500) or something else unusable.
    ServerError,
    /// Connections are refused: the source is down.
    Refused,
    /// The source accepts the request and then stalls for longer than the fetcher's timeout.
    Slow,
}

/// A backend's real release source, as the suite publishes into it. Implemented once per backend
/// in its test file; see the module documentation.
pub trait Source: Send + Sync {
    /// A fresh fetcher pointed at this source.
    fn fetcher(&self) -> Box<dyn Fetcher>;

    /// Publishes a release: `bytes` as the release file, and with `sha256` a checksum for it (the
    /// backend's sidecar or metadata), or with `None` no checksum (removing any earlier one).
    /// The checksum is published before the file, so a check never pairs them wrongly.
    fn publish(&self, bytes: &[u8], sha256: Option<&str>);

    /// Publishes `bytes` with the checksum of `bytes`, announced (Content-Length or its
    /// equivalent) as `claimed_len` bytes, and ends the transfer after `bytes`. `false` if the
    /// backend cannot express a cut-short transfer (the File fetcher reads a local file); it must
    /// then name `truncated_transfer_is_detectable` as not applicable, or that check fails.
    fn publish_truncated(&self, bytes: &[u8], claimed_len: u64) -> bool;

    /// Makes the release (and its checksum and signature) disappear.
    fn remove(&self);

    /// Makes the source fail in the given way from now on, until [`clear_faults`]
    /// (or, for one-shot faults, for the next request). `false`: not applicable to this backend
    /// (at least one kind must apply, or the backend names
    /// `source_errors_are_reported_and_recovered_from` as not applicable).
    ///
    /// [`clear_faults`]: Source::clear_faults
    fn fail_next(&self, kind: Failure) -> bool;

    /// Ends any fault injected with [`fail_next`](Source::fail_next); what was published before
    /// is served normally again. The default does nothing (one-shot faults clear themselves).
    fn clear_faults(&self) {}

    /// Body bytes of release files the source has sent so far; `None` if not measurable.
    fn bytes_served(&self) -> Option<u64>;

    /// Requests the source has answered so far; `None` if not measurable.
    fn requests_served(&self) -> Option<u64>;

    /// Why this source cannot count what it serves, when [`bytes_served`] or
    /// [`requests_served`] return `None`: the checks that need a count then print
    /// `NOT COUNTED <test>: ...` with this reason, so that what was not checked shows. A source
    /// whose counters return `None` without a reason fails those checks.
    ///
    /// [`bytes_served`]: Source::bytes_served
    /// [`requests_served`]: Source::requests_served
    fn uncounted_because(&self) -> Option<&'static str> {
        None
    }

    /// A string every error about this source must contain, so that the operator reading the
    /// master's log knows which source failed: by default the fetcher's name; a backend whose
    /// errors name the underlying location instead (a path, a URL) returns that.
    fn locator(&self) -> String {
        self.fetcher().name().to_string()
    }
}

/// Lower-case hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A deterministic payload of `len` bytes, distinct per `tag` (several read chunks long).
pub fn payload(tag: &str, len: usize) -> Vec<u8> {
    let line = format!("upshift fetcher conformance payload {tag}\n");
    line.bytes().cycle().take(len).collect()
}

const PAYLOAD_LEN: usize = 300 * 1024;

/// What is installed when the source's releases are all new: nothing the source ever serves.
///
/// ```
/// assert!(upshift_fetcher_conformance::unrelated_current().identity.is_none());
/// ```
pub fn unrelated_current() -> Current {
    Current {
        sha256: sha256_hex(b"the binary that is installed, never published"),
        identity: None,
        version: None,
        rejected: Vec::new(),
        requires_checksum: false,
    }
}

/// What is installed after the release with `sha256` (and `identity`, as the fetcher named it)
/// was installed.
///
/// ```
/// let c = upshift_fetcher_conformance::installed("ab", Some("v1"));
/// assert_eq!((c.sha256.as_str(), c.identity.as_deref()), ("ab", Some("v1")));
/// ```
pub fn installed(sha256: &str, identity: Option<&str>) -> Current {
    Current {
        sha256: sha256.to_string(),
        identity: identity.map(str::to_string),
        version: None,
        rejected: Vec::new(),
        requires_checksum: false,
    }
}

/// `current` with `release` remembered as the pipeline remembers a release refused for what its
/// bytes were (a checksum mismatch, a cut transfer): under
/// [`Current::transient_rejection_key`], with the release's source. For tests: panics when the
/// release has no source.
pub fn refused_for_its_bytes(mut current: Current, release: &Release) -> Current {
    let source = release
        .source
        .as_deref()
        .unwrap_or_else(|| panic!("no source on {release:?}"));
    current.rejected.push(Current::transient_rejection_key(
        &release.identity,
        release.sha256.as_deref(),
        release.signature.as_deref(),
        source,
    ));
    current
}

/// Runs `fetcher.check(current)` in a task of its own, bounded by [`CHECK_BOUND`]; a panic or a
/// hang fails the test naming `what`. Hands the fetcher back.
pub async fn check_bounded(
    fetcher: Box<dyn Fetcher>,
    current: &Current,
    what: &str,
) -> (Box<dyn Fetcher>, Result<Option<Release>, FetchError>) {
    let current = current.clone();
    let name = fetcher.name().to_string();
    let task = tokio::spawn(async move {
        let mut fetcher = fetcher;
        let result = fetcher.check(&current).await;
        (fetcher, result)
    });
    match tokio::time::timeout(CHECK_BOUND, task).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) if e.is_panic() => {
            let payload = e.into_panic();
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "<non-string panic>".into());
            panic!("{what}: {name}: check() panicked: {msg}")
        }
        Ok(Err(e)) => panic!("{what}: {name}: the check task failed: {e}"),
        Err(_) => panic!("{what}: {name}: check() did not return within {CHECK_BOUND:?}"),
    }
}

/// Reads a release's body to its end (bounded in time and size): the bytes, or the read error.
pub async fn read_body(release: &mut Release, max: usize) -> Result<Vec<u8>, std::io::Error> {
    let mut out = Vec::new();
    let limit = (max as u64).saturating_add(1);
    let read = async {
        (&mut release.body)
            .take(limit)
            .read_to_end(&mut out)
            .await
            .map(|_| ())
    };
    match tokio::time::timeout(CHECK_BOUND, read).await {
        Ok(Ok(())) => Ok(out),
        Ok(Err(e)) => Err(e),
        Err(_) => panic!(
            "reading the body of release {} did not finish within {CHECK_BOUND:?} ({} bytes so far)",
            release.identity,
            out.len()
        ),
    }
}

fn expect_none(result: Result<Option<Release>, FetchError>, what: &str) {
    match result {
        Ok(None) => {}
        Ok(Some(r)) => panic!("{what}: expected no release, got {r:?}"),
        Err(e) => panic!("{what}: expected no release, got the error: {e}"),
    }
}

fn expect_some(result: Result<Option<Release>, FetchError>, what: &str) -> Release {
    match result {
        Ok(Some(r)) => r,
        Ok(None) => panic!("{what}: expected a release, got none"),
        Err(e) => panic!("{what}: expected a release, got the error: {e}"),
    }
}

/// Asserts everything a release of `bytes` must say about itself, and that its body reads back
/// as exactly `bytes`. `published_sha` is the checksum the source published, if any.
async fn assert_release_of(
    release: &mut Release,
    bytes: &[u8],
    published_sha: Option<&str>,
    what: &str,
) {
    assert!(
        !release.identity.trim().is_empty(),
        "{what}: empty identity in {release:?}"
    );
    match (published_sha, release.sha256.as_deref()) {
        (Some(p), Some(r)) => assert!(
            r.trim().eq_ignore_ascii_case(p),
            "{what}: the release carries sha256 {r}, but {p} was published"
        ),
        (Some(p), None) => panic!("{what}: sha256 {p} was published but the release carries none"),
        // Without a published checksum a fetcher may still state the hash it computed, which
        // must then be the true one.
        (None, Some(r)) => assert!(
            r.trim().eq_ignore_ascii_case(&sha256_hex(bytes)),
            "{what}: no checksum was published, yet the release claims sha256 {r}, which is not \
             the hash of its bytes"
        ),
        (None, None) => {}
    }
    if let Some(hint) = release.size_hint {
        assert_eq!(
            hint,
            bytes.len() as u64,
            "{what}: size_hint is not the published size"
        );
    }
    let body = read_body(release, bytes.len())
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the body of {release:?} failed: {e}"));
    assert!(
        body == bytes,
        "{what}: the body is {} bytes (sha256 {}), the published file {} bytes (sha256 {})",
        body.len(),
        sha256_hex(&body),
        bytes.len(),
        sha256_hex(bytes)
    );
}

/// Nothing published: `Ok(None)`, twice, from a fresh fetcher.
pub async fn nothing_published_is_no_release(src: &dyn Source) {
    let current = unrelated_current();
    let (f, r) = check_bounded(src.fetcher(), &current, "first check, nothing published").await;
    expect_none(r, "first check, nothing published");
    let (_f, r) = check_bounded(f, &current, "second check, nothing published").await;
    expect_none(r, "second check, nothing published");
}

/// A release published while a fetcher exists is found by that fetcher and by a fresh one: its
/// body reads back byte for byte, it carries the published checksum, and both fetchers give it
/// the same identity (the pipeline remembers rejected releases by identity).
pub async fn published_release_reads_back_exactly(src: &dyn Source) {
    let current = unrelated_current();
    let (f, r) = check_bounded(src.fetcher(), &current, "before publishing").await;
    expect_none(r, "before publishing");

    let bytes = payload("a", PAYLOAD_LEN);
    let sha = sha256_hex(&bytes);
    src.publish(&bytes, Some(&sha));
    let (_f, r) = check_bounded(f, &current, "after publishing").await;
    let mut first = expect_some(r, "after publishing, same fetcher");
    assert_release_of(
        &mut first,
        &bytes,
        Some(&sha),
        "after publishing, same fetcher",
    )
    .await;

    let (_f, r) = check_bounded(src.fetcher(), &current, "fresh fetcher").await;
    let mut second = expect_some(r, "after publishing, fresh fetcher");
    assert_release_of(&mut second, &bytes, Some(&sha), "fresh fetcher").await;
    assert_eq!(
        first.identity, second.identity,
        "two fetchers name the same published release differently"
    );
}

/// A release published without a checksum still reads back exactly; if the fetcher states a
/// sha256 anyway, it is the true one.
pub async fn release_without_checksum_reads_back_exactly(src: &dyn Source) {
    let bytes = payload("no-checksum", PAYLOAD_LEN);
    src.publish(&bytes, None);
    let (_f, r) = check_bounded(src.fetcher(), &unrelated_current(), "no checksum").await;
    let mut release = expect_some(r, "published without a checksum");
    assert_release_of(&mut release, &bytes, None, "published without a checksum").await;
}

/// What is installed is not offered: not to a fresh fetcher told only the installed hash (a
/// restarted master), nor to the fetcher that found it once it is installed. Where the source can
/// tell, deciding that transfers none of the release's body.
pub async fn installed_release_is_not_offered(src: &dyn Source) {
    let bytes = payload("installed", PAYLOAD_LEN);
    let sha = sha256_hex(&bytes);
    src.publish(&bytes, Some(&sha));

    let before = src.bytes_served();
    let (_f, r) = check_bounded(
        src.fetcher(),
        &installed(&sha, None),
        "fresh fetcher, release installed",
    )
    .await;
    expect_none(r, "a fresh fetcher told the published release is installed");
    assert_no_body_sent(src, before, "a fresh fetcher, release installed");

    let (f, r) = check_bounded(src.fetcher(), &unrelated_current(), "finding it").await;
    let mut release = expect_some(r, "finding the release before it is installed");
    assert_release_of(&mut release, &bytes, Some(&sha), "finding the release").await;
    let identity = release.identity.clone();
    drop(release);

    let before = src.bytes_served();
    let (_f, r) = check_bounded(f, &installed(&sha, Some(&identity)), "after install").await;
    expect_none(r, "the same fetcher after the release was installed");
    assert_no_body_sent(src, before, "the same fetcher after install");
}

/// A release the pipeline refused after reading it (it crashed in its test run, say) is not
/// offered again while it stays published, and deciding that transfers none of its body; a new
/// release is offered as usual.
pub async fn refused_release_is_not_downloaded_again(src: &dyn Source) {
    let bytes = payload("refused", PAYLOAD_LEN);
    let sha = sha256_hex(&bytes);
    src.publish(&bytes, Some(&sha));
    let (f, r) = check_bounded(src.fetcher(), &unrelated_current(), "finding it").await;
    let mut release = expect_some(r, "finding the release to refuse");
    assert_release_of(&mut release, &bytes, Some(&sha), "finding the release").await;
    let mut refused = unrelated_current();
    refused.rejected.push(Current::rejection_key(
        &release.identity,
        release.sha256.as_deref(),
        release.signature.as_deref(),
    ));
    drop(release);

    let before = src.bytes_served();
    let (f, r) = check_bounded(f, &refused, "after refusing it").await;
    expect_none(r, "the same fetcher after the pipeline refused the release");
    let (f, r) = check_bounded(f, &refused, "polling again").await;
    expect_none(r, "polling again while the refused release stays published");
    assert_no_body_sent(src, before, "polls after the release was refused");

    let next = payload("after-refused", PAYLOAD_LEN);
    let next_sha = sha256_hex(&next);
    src.publish(&next, Some(&next_sha));
    let (_f, r) = check_bounded(f, &refused, "a new release after a refused one").await;
    let mut release = expect_some(r, "a new release after a refused one");
    assert_release_of(&mut release, &next, Some(&next_sha), "the new release").await;
}

/// A remote release published without a checksum, while the pipeline requires one, is not
/// downloaded: the pipeline would refuse it unread. The fetcher offers it without sending its
/// body (or does not offer it), and once the pipeline refused it, later polls neither offer it
/// nor send its body. Not applicable to a local source (a missing checksum is fine there) nor
/// when something else vouches for the release (a signature).
pub async fn unvouched_release_is_not_downloaded(src: &dyn Source) {
    let bytes = payload("unvouched", PAYLOAD_LEN);
    src.publish(&bytes, None);
    let strict = Current {
        requires_checksum: true,
        ..unrelated_current()
    };
    let before = src.bytes_served();
    let (f, r) = check_bounded(src.fetcher(), &strict, "no checksum, one required").await;
    let mut refused = strict.clone();
    match r {
        Ok(None) => {}
        Ok(Some(release)) => {
            // Only the crate's File fetcher can be local (it alone carries a `LocalFile`).
            assert!(
                !(release.origin == Origin::Local && release.local_file.is_some()),
                "a local release needs no download to be refused: name \
                 unvouched_release_is_not_downloaded as not_applicable instead of letting it pass"
            );
            assert!(
                release.sha256.is_none() && release.signature.is_none(),
                "no checksum was published, yet the release is vouched for: {release:?}"
            );
            refused
                .rejected
                .push(Current::rejection_key(&release.identity, None, None));
        }
        Err(e) => panic!("no checksum, one required: {e}"),
    }
    assert_no_body_sent(src, before, "offering a release without a checksum");
    let (f, r) = check_bounded(f, &refused, "after the pipeline refused it").await;
    expect_none(
        r,
        "polling after the pipeline refused the release for no checksum",
    );
    let (_f, r) = check_bounded(f, &refused, "polling again").await;
    expect_none(
        r,
        "polling again while the unvouched release stays published",
    );
    assert_no_body_sent(
        src,
        before,
        "polls after the release was refused for no checksum",
    );
}

fn assert_no_body_sent(src: &dyn Source, before: Option<u64>, what: &str) {
    let after = counted(src, src.bytes_served(), &format!("{what}: body bytes sent"));
    if let (Some(before), Some(after)) = (before, after) {
        assert_eq!(
            after - before,
            0,
            "{what}: the source sent {} body bytes to decide there is nothing new",
            after - before
        );
    }
}

/// Publishing the very same bytes again is not a new release: nothing when it is installed, and
/// when it is not, at most the same release under the same identity (so that the pipeline's
/// memory of a rejected release holds).
pub async fn republished_identical_bytes_are_not_a_new_release(src: &dyn Source) {
    let bytes = payload("same", PAYLOAD_LEN);
    let sha = sha256_hex(&bytes);
    src.publish(&bytes, Some(&sha));
    let (f, r) = check_bounded(src.fetcher(), &unrelated_current(), "first publication").await;
    let mut first = expect_some(r, "first publication");
    assert_release_of(&mut first, &bytes, Some(&sha), "first publication").await;

    src.publish(&bytes, Some(&sha));
    let now_installed = installed(&sha, Some(&first.identity));
    let (f, r) = check_bounded(f, &now_installed, "republished, installed").await;
    expect_none(r, "the same bytes republished while installed");

    let requests = counted(src, src.requests_served(), "requests made by a poll");
    src.publish(&bytes, Some(&sha));
    let (_f, r) = check_bounded(f, &unrelated_current(), "republished, not installed").await;
    match r {
        Ok(None) => {}
        Ok(Some(mut again)) => {
            assert_eq!(
                again.identity, first.identity,
                "the same bytes republished came back under another identity"
            );
            assert_release_of(&mut again, &bytes, Some(&sha), "republished").await;
        }
        Err(e) => panic!("the same bytes republished, not installed: {e}"),
    }
    if let (Some(a), Some(b)) = (requests, src.requests_served()) {
        // A poll that asks nothing cannot know whether the release changed.
        assert!(
            b > a,
            "the poll after republishing made no request to the source: it answered from memory"
        );
    }
}

/// `value`, or `None` after saying on stderr why the source cannot count it (and failing when it
/// gives no reason): a count the check needs is never skipped silently.
fn counted(src: &dyn Source, value: Option<u64>, what: &str) -> Option<u64> {
    if value.is_some() {
        return value;
    }
    let Some(reason) = src.uncounted_because() else {
        panic!(
            "{what}: the source cannot count them and does not say why \
             (Source::uncounted_because): the check would pass without checking"
        );
    };
    let test = std::thread::current()
        .name()
        .unwrap_or("a check")
        .to_string();
    let line = format!("NOT COUNTED {test}: {what}: {reason}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    None
}

/// New bytes after an install are a new release with a new identity and their own body.
pub async fn new_bytes_are_a_new_release(src: &dyn Source) {
    let a = payload("v1", PAYLOAD_LEN);
    let sha_a = sha256_hex(&a);
    src.publish(&a, Some(&sha_a));
    let (f, r) = check_bounded(src.fetcher(), &unrelated_current(), "v1").await;
    let mut r1 = expect_some(r, "v1");
    assert_release_of(&mut r1, &a, Some(&sha_a), "v1").await;

    let b = payload("v2", PAYLOAD_LEN + 17);
    let sha_b = sha256_hex(&b);
    src.publish(&b, Some(&sha_b));
    let (_f, r) = check_bounded(f, &installed(&sha_a, Some(&r1.identity)), "v2").await;
    let mut r2 = expect_some(r, "v2 published over the installed v1");
    assert_ne!(
        r2.identity, r1.identity,
        "v2 has the identity of v1: a rejected v1 would keep v2 out"
    );
    assert_release_of(&mut r2, &b, Some(&sha_b), "v2").await;
}

/// A published checksum that does not match the file is passed on as published: the pipeline,
/// not the fetcher, rejects the release, and it can only do so if the fetcher does not replace
/// the checksum with one it computed.
pub async fn checksum_mismatch_is_surfaced(src: &dyn Source) {
    let bytes = payload("mismatch", PAYLOAD_LEN);
    let wrong = sha256_hex(b"another build altogether");
    src.publish(&bytes, Some(&wrong));
    let (_f, r) = check_bounded(src.fetcher(), &unrelated_current(), "wrong checksum").await;
    match r {
        Ok(Some(mut release)) => {
            assert_release_of(
                &mut release,
                &bytes,
                Some(&wrong),
                "a release with a wrong checksum",
            )
            .await
        }
        Ok(None) => panic!("a release with a wrong checksum was not offered at all"),
        // Refusing it outright is acceptable too, if the error says where.
        Err(e) => assert_names_source(src, &e, "a release with a wrong checksum"),
    }
}

/// A removed release is no release (not an error), and a release published afterwards is found.
pub async fn removed_release_is_no_release(src: &dyn Source) {
    let a = payload("to-remove", PAYLOAD_LEN);
    src.publish(&a, Some(&sha256_hex(&a)));
    let (f, r) = check_bounded(src.fetcher(), &unrelated_current(), "before removal").await;
    drop(expect_some(r, "before removal"));

    src.remove();
    let (f, r) = check_bounded(f, &unrelated_current(), "after removal").await;
    expect_none(r, "after the release was removed");

    let b = payload("after-removal", PAYLOAD_LEN);
    let sha_b = sha256_hex(&b);
    src.publish(&b, Some(&sha_b));
    let (_f, r) = check_bounded(f, &unrelated_current(), "published after removal").await;
    let mut release = expect_some(r, "published after removal");
    assert_release_of(&mut release, &b, Some(&sha_b), "published after removal").await;
}

/// A release dropped unread (the pipeline gave up on it) leaves the fetcher usable.
pub async fn dropped_release_leaves_the_fetcher_usable(src: &dyn Source) {
    let a = payload("dropped", PAYLOAD_LEN);
    src.publish(&a, Some(&sha256_hex(&a)));
    let (f, r) = check_bounded(src.fetcher(), &unrelated_current(), "to drop").await;
    drop(expect_some(r, "the release to drop unread"));

    let b = payload("after-drop", PAYLOAD_LEN);
    let sha_b = sha256_hex(&b);
    src.publish(&b, Some(&sha_b));
    let (_f, r) = check_bounded(f, &unrelated_current(), "after a dropped release").await;
    let mut release = expect_some(r, "after a dropped release");
    assert_release_of(&mut release, &b, Some(&sha_b), "after a dropped release").await;
}

/// A transfer cut short is detectable: the check fails, or reading the body fails, or the
/// release announces the full size (the pipeline then reports it as truncated). A body that just
/// ends early with nothing saying so would be installed as a partial binary if no checksum were
/// published.
pub async fn truncated_transfer_is_detectable(src: &dyn Source) {
    let bytes = payload("truncated", PAYLOAD_LEN);
    let claimed = bytes.len() as u64 + 64 * 1024;
    assert!(
        src.publish_truncated(&bytes, claimed),
        "the source cannot cut a transfer short: name truncated_transfer_is_detectable as \
         not_applicable (with the reason) instead of letting it pass"
    );
    let (_f, r) = check_bounded(src.fetcher(), &unrelated_current(), "truncated").await;
    let mut release = match r {
        Err(e) => return assert_names_source(src, &e, "a truncated transfer"),
        Ok(None) => panic!("a truncated release was not offered and no error was reported"),
        Ok(Some(r)) => r,
    };
    match read_body(&mut release, claimed as usize).await {
        Err(_) => {}
        Ok(body) => {
            assert!(
                (body.len() as u64) < claimed,
                "the truncated release read {} bytes, more than the {} sent",
                body.len(),
                bytes.len()
            );
            assert_eq!(
                release.size_hint,
                Some(claimed),
                "the transfer ended after {} of {claimed} announced bytes, yet the body ended \
                 cleanly and the release does not announce the full size",
                body.len()
            );
        }
    }
}

fn assert_names_source(src: &dyn Source, e: &FetchError, what: &str) {
    let msg = e.to_string();
    let locator = src.locator();
    assert!(
        msg.contains(&locator),
        "{what}: the error does not name the source ({locator:?}): {msg}"
    );
}

/// Each fault the backend can express makes `check()` return an error naming the source (never
/// a panic, never a release with a broken body), or for "not found" possibly no release; and
/// once the fault clears, the same fetcher finds the release.
pub async fn source_errors_are_reported_and_recovered_from(src: &dyn Source) {
    let mut fetcher = src.fetcher();
    let mut applied = Vec::new();
    for kind in [
        Failure::NotFound,
        Failure::ServerError,
        Failure::Refused,
        Failure::Slow,
    ] {
        let bytes = payload(&format!("fault-{kind:?}"), PAYLOAD_LEN);
        let sha = sha256_hex(&bytes);
        src.publish(&bytes, Some(&sha));
        if !src.fail_next(kind) {
            continue;
        }
        applied.push(kind);
        let what = format!("{kind:?}");
        let (f, r) = check_bounded(fetcher, &unrelated_current(), &what).await;
        match r {
            Err(e) => assert_names_source(src, &e, &what),
            // 404 is also how a source says "nothing published".
            Ok(None) if kind == Failure::NotFound => {}
            Ok(None) => panic!("{what}: the fault went unreported (no release, no error)"),
            Ok(Some(mut r)) => {
                // Only acceptable if the fault hit nothing this release needs: then it must be
                // whole.
                assert_release_of(&mut r, &bytes, Some(&sha), &what).await;
            }
        }
        src.clear_faults();
        let (f, r) = check_bounded(f, &unrelated_current(), &format!("{what}, cleared")).await;
        let mut release = expect_some(r, &format!("after the {what} fault cleared"));
        assert_release_of(
            &mut release,
            &bytes,
            Some(&sha),
            &format!("{what}, cleared"),
        )
        .await;
        fetcher = f;
    }
    assert!(
        !applied.is_empty(),
        "the source injected none of the faults: name source_errors_are_reported_and_recovered_from \
         as not_applicable (with the reason) instead of letting it pass"
    );
    eprintln!("source_errors_are_reported_and_recovered_from: exercised {applied:?}");
}

/// Every check of the suite, in the order the macro defines them. A backend's invocation of
/// [`fetcher_conformance_tests!`] runs each one, or names it as not applicable with a reason.
pub const ALL_CHECKS: [&str; 13] = [
    "nothing_published_is_no_release",
    "published_release_reads_back_exactly",
    "release_without_checksum_reads_back_exactly",
    "installed_release_is_not_offered",
    "refused_release_is_not_downloaded_again",
    "unvouched_release_is_not_downloaded",
    "republished_identical_bytes_are_not_a_new_release",
    "new_bytes_are_a_new_release",
    "checksum_mismatch_is_surfaced",
    "removed_release_is_no_release",
    "dropped_release_leaves_the_fetcher_usable",
    "truncated_transfer_is_detectable",
    "source_errors_are_reported_and_recovered_from",
];

/// Defines one `#[tokio::test]` per conformance check, each with a fresh source built by `$make`
/// (an expression, evaluated inside the test's async body).
///
/// - `optional: $make`: `$make` is an `Option` of a source, and `None` skips the checks (for a
///   source that needs an outside server; the source says why, see [`skip::skip_without`]).
/// - `; not_applicable { check: "why", ... }` after the source: those checks are defined as
///   `#[ignore = "why"]`, so `cargo test` lists them as ignored with the reason instead of
///   passing them. A check the backend does not name here must apply in full: a capability it
///   needs and the source lacks fails it.
///
/// ```ignore
/// upshift_fetcher_conformance::fetcher_conformance_tests!(FileSource::new(); not_applicable {
///     truncated_transfer_is_detectable: "a local file has no announced length but its own",
/// });
/// ```
#[macro_export]
macro_rules! fetcher_conformance_tests {
    (optional: $make:expr $(; not_applicable { $($na:ident : $why:literal),* $(,)? })?) => {
        $crate::__conformance_tests!(($) { let Some(source) = $make else { return }; source };
            { $($($na : $why),*)? });
    };
    ($make:expr $(; not_applicable { $($na:ident : $why:literal),* $(,)? })?) => {
        $crate::__conformance_tests!(($) { $make }; { $($($na : $why),*)? });
    };
}

/// The body of [`fetcher_conformance_tests!`]: a local macro per invocation decides, check by
/// check, whether it is run or ignored with its reason (`$d` is a `$` for the local macro).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    (($d:tt) $make:block; { $($na:ident : $why:literal),* }) => {
        macro_rules! __conformance_test {
            $(
                ($na) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    #[ignore = $why]
                    async fn $na() {}
                };
            )*
            ($d check:ident) => {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $d check() {
                    let source = $make;
                    $crate::$d check(&source).await;
                }
            };
        }
        __conformance_test!(nothing_published_is_no_release);
        __conformance_test!(published_release_reads_back_exactly);
        __conformance_test!(release_without_checksum_reads_back_exactly);
        __conformance_test!(installed_release_is_not_offered);
        __conformance_test!(refused_release_is_not_downloaded_again);
        __conformance_test!(unvouched_release_is_not_downloaded);
        __conformance_test!(republished_identical_bytes_are_not_a_new_release);
        __conformance_test!(new_bytes_are_a_new_release);
        __conformance_test!(checksum_mismatch_is_surfaced);
        __conformance_test!(removed_release_is_no_release);
        __conformance_test!(dropped_release_leaves_the_fetcher_usable);
        __conformance_test!(truncated_transfer_is_detectable);
        __conformance_test!(source_errors_are_reported_and_recovered_from);

        /// Every check not applicable here is one of the suite's: a misspelt name would
        /// otherwise run the check it meant to excuse, or excuse nothing.
        #[test]
        fn not_applicable_names_are_checks_of_the_suite() {
            let names: &[&str] = &[$(stringify!($na)),*];
            for name in names {
                assert!(
                    $crate::ALL_CHECKS.contains(&name),
                    "{name} is not a check of the conformance suite"
                );
            }
        }
    };
}
