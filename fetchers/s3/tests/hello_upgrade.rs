//! The `hello` example upgrades itself end to end from a real S3 server (s3s-fs, SigV4 checked):
//! `hello --s3 s3://releases/myapp/linux/myapp --s3-endpoint <proxy>` runs as a master from a copy
//! in a temp dir, with its credentials from the standard AWS chain (environment variables only:
//! no profile files, no instance metadata). The endpoint is the test bed's counting proxy in front
//! of s3s-fs. A new build (the same binary with bytes appended, so a distinct sha256) is published
//! with its `.sha256` sidecar the way a release pipeline does, and the master must download,
//! verify, test-run and install it and hand over to a generation 2 worker, while a client polling
//! `GET /` every 20 ms sees no failure. A release whose checksum does not match is refused and
//! generation 1 keeps serving; once upgraded, an unchanged object costs one `HEAD` per poll.

mod common;

use std::time::Duration;

use common::proxy::Exchange;
use common::{Bed, Vouch, BUCKET, KEY};
use upshift_fetcher_conformance::sha256_hex;
use upshift_testkit::hello::{hello_binary, new_build, Hello};
use upshift_testkit::upgrade::{self, Upgrade};

/// From publishing to generation 2 answering. Alone, about 4 s for a debug build of `hello`
/// (270 MB: the two PUTs take 2.5 s, the download and hash 1.4 s); with the three tests of this
/// file at once on two cores, up to 14 s.
const UPGRADE: Duration = Duration::from_secs(30);
/// The master's log filter when the test counts its polls: the pipeline's `checking` events are
/// at debug level.
const POLLS_LOG: &str = "info,upshift::master::updater=debug";
/// What the pipeline logs at the start of every poll.
const CHECKING: &str = "event=checking ";

fn start(bed: &Bed, rust_log: &str) -> Hello {
    common::start_hello(&bed.endpoint(), rust_log)
}

/// The object's ETag without quotes: the release's identity in the master's log.
fn etag(bed: &Bed) -> String {
    let req = bed.publisher.head_object().bucket(BUCKET).key(KEY);
    let out = bed
        .block(async move { req.send().await })
        .unwrap_or_else(|e| panic!("HEAD {KEY}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
    out.e_tag()
        .expect("s3s-fs sends an ETag")
        .trim_matches('"')
        .to_string()
}

/// Publishes `release` with its correct sha256 in the sidecar object (written first) to the
/// master `hello` serves generation 1 of, and asserts the upgrade (the test kit's check),
/// generation 2 answering within [`UPGRADE`]. The master names the release by its ETag.
fn upgrade_to(hello: &mut Hello, bed: &Bed, release: &[u8]) -> Upgrade {
    upgrade::upgrade_to(hello, release, UPGRADE, "s3s-fs", || {
        bed.publish(release, Some(&sha256_hex(release)), Vouch::Sidecar);
        Some(etag(bed))
    })
}

/// Starts from the running build published (as after a deploy), then publishes a new one.
#[test]
fn hello_upgrades_itself_from_s3() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let current = std::fs::read(hello_binary()).expect("read the hello binary");
    bed.publish(&current, Some(&sha256_hex(&current)), Vouch::Sidecar);
    let mut hello = start(&bed, "info");
    // The first poll finds the published object to be the running binary.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(hello.greeting().generation, 1);

    let v2 = new_build(&current, "v2");
    let up = upgrade_to(&mut hello, &bed, &v2);
    assert!(up.took <= UPGRADE, "{:?}", up.took);
    assert!(up.publishing <= up.took);
    assert_eq!((up.before.generation, up.after.generation), (1, 2));
}

#[test]
fn hello_rejects_a_bad_release_from_s3() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let mut hello = start(&bed, "info");
    let current = std::fs::read(hello.exe()).expect("read the installed binary");
    let bad = new_build(&current, "bad");
    let wrong = sha256_hex(b"the checksum of some other file");
    upgrade::rejected(&mut hello, &current, UPGRADE, "s3s-fs", || {
        bed.publish(&bad, Some(&wrong), Vouch::Sidecar);
        etag(&bed)
    });
    let body = bed.proxy.release_body_bytes();
    assert_eq!(
        body,
        bad.len() as u64,
        "body bytes of the release's GETs: a refused release is downloaded once, and not again \
         while neither it nor its checksum changes"
    );
    eprintln!("REJECTED via s3s-fs: {body} release body bytes in all");
}

/// Waits for the start of a poll and for its requests to be done (a poll is one small request on
/// loopback; the next one is 0.3 s away); the polls and the proxy's exchanges so far.
fn between_polls(hello: &Hello, bed: &Bed) -> (usize, usize) {
    let seen = hello.log_lines(CHECKING).len();
    if !hello.wait_log_count(CHECKING, seen, Duration::from_secs(5)) {
        hello.fail("the master stopped polling");
    }
    std::thread::sleep(Duration::from_millis(100));
    (hello.log_lines(CHECKING).len(), bed.proxy.log().len())
}

#[test]
fn unchanged_release_costs_one_head_and_no_body() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let mut hello = start(&bed, POLLS_LOG);
    let current = std::fs::read(hello_binary()).expect("read the hello binary");
    let v2 = new_build(&current, "v2-unchanged");
    upgrade_to(&mut hello, &bed, &v2);

    let (checks_a, log_a) = between_polls(&hello, &bed);
    std::thread::sleep(Duration::from_secs(2));
    let (checks_b, log_b) = between_polls(&hello, &bed);
    let polls = checks_b - checks_a;
    let window: Vec<Exchange> = bed.proxy.log()[log_a..log_b].to_vec();
    let object = format!("/{BUCKET}/{KEY}");
    eprintln!(
        "UNCHANGED via s3s-fs: {polls} polls in ~2 s made {} requests: {:?}",
        window.len(),
        window
            .iter()
            .map(|e| format!("{} {} {} {}B", e.method, e.path, e.status, e.body_bytes))
            .collect::<Vec<_>>()
    );
    assert!(
        polls >= 4,
        "{polls} polls in 2 s at a 0.3 s interval: is the master polling?"
    );
    assert_eq!(
        window.len(),
        polls,
        "{polls} polls made {} requests: {window:#?}",
        window.len()
    );
    for e in &window {
        assert_eq!(
            (e.method.as_str(), e.path.as_str(), e.status, e.body_bytes),
            ("HEAD", object.as_str(), 200, 0),
            "an unchanged poll: {e:?}"
        );
    }
    assert!(hello.is_running());
    assert_eq!(hello.greeting().generation, 2);
}

/// A release published without any checksum (no S3 checksum, no metadata, no sidecar) is refused
/// without its body: over many polls the server sends none of the object's bytes, and the refusal
/// is logged once (a reminder says "is still refused", not "rejected").
#[test]
fn a_release_without_a_checksum_is_refused_without_downloading_it() {
    let Some(bed) = Bed::start_or_skip() else {
        return;
    };
    let mut hello = start(&bed, "info");
    let before = hello.greeting();
    let current = hello.installed();
    bed.publish(&new_build(&current, "no-checksum"), None, Vouch::Sidecar);
    let Some(line) = hello.wait_log(" rejected: ", UPGRADE) else {
        hello.fail(format!("the release was not rejected within {UPGRADE:?}"))
    };
    if !line.contains("checksum") {
        hello.fail(format!(
            "the rejection does not say there is no checksum: {line}"
        ));
    }
    let from = bed.proxy.log().len();
    std::thread::sleep(Duration::from_secs(4));
    let log = bed.proxy.log();
    let polls = log.len() - from;
    if polls < 5 {
        hello.fail(format!(
            "only {polls} requests in the 4 s after the refusal"
        ));
    }
    let object = format!("/{BUCKET}/{KEY}");
    let sent: Vec<&Exchange> = log
        .iter()
        .filter(|e| e.method == "GET" && e.path == object && e.status / 100 == 2)
        .filter(|e| e.body_bytes > 0)
        .collect();
    if !sent.is_empty() {
        hello.fail(format!(
            "the server sent the refused object's bytes: {sent:#?} ({} requests in all)",
            log.len()
        ));
    }
    hello.assert_refused_once(polls, &before, &current);
}
