//! The `hello` example upgrades itself end to end from a real nginx: `hello --url <nginx>/hello`
//! runs as a master from a copy in a temp dir; a new build (the same binary with bytes appended,
//! so a distinct sha256) is published with its `.sha256` the way a release pipeline does (the
//! checksum first, then the file, each written atomically), and the master must download, verify,
//! test-run and install it and hand over to a generation 2 worker, while a client polling `GET /`
//! every 20 ms sees no failure. A release whose checksum does not match is refused and generation
//! 1 keeps serving; once upgraded, an unchanged release costs one `304` per poll.

mod common;

use std::time::{Duration, Instant};

use common::{sha256_hex, Hit, Nginx};
use upshift_testkit::hello::{hello_binary, new_build, Hello};
use upshift_testkit::upgrade::{self, Upgrade};

/// From publishing to generation 2 answering.
const UPGRADE: Duration = Duration::from_secs(20);
/// The master's log filter when the test counts its polls: the pipeline's `checking` events are
/// at debug level.
const POLLS_LOG: &str = "info,upshift::master::updater=debug";
/// What the pipeline logs at the start of every poll.
const CHECKING: &str = "event=checking ";

fn start(nginx: &Nginx, rust_log: &str) -> Hello {
    Hello::start(
        &hello_binary(),
        &[
            "--url".to_string(),
            nginx.url("hello"),
            // nginx on 127.0.0.1 speaks plain http, which needs the opt-in without a key.
            "--allow-insecure-transport".to_string(),
        ],
        &[],
        rust_log,
    )
}

/// `hello --url http://…` without a minisign key and without `--allow-insecure-transport`
/// refuses to start: it exits with a configuration error that names the URL and both fixes,
/// before serving anything. (Today's code started and polled the plain URL.)
#[test]
fn a_plain_http_url_is_refused_at_startup_without_the_opt_in() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let url = nginx.url("hello");
    let (status, stderr) = upshift_testkit::startup::run_to_exit(
        &hello_binary(),
        &["--url".to_string(), url.clone()],
        &[],
        Duration::from_secs(20),
    );
    assert!(!status.success(), "hello started: {status}\n{stderr}");
    for needed in [
        url.as_str(),
        "plain http",
        "https://",
        "minisign",
        "allow_insecure_transport(true)",
    ] {
        assert!(stderr.contains(needed), "{needed:?} not in:\n{stderr}");
    }
    let hits = nginx.settled_hits();
    assert!(hits.is_empty(), "the refused URL was requested: {hits:?}");
}

/// Publishes as a release pipeline does: the checksum first, then the file, each atomically
/// (temp file and rename) under nginx's root.
fn publish(nginx: &Nginx, bytes: &[u8], sha256: &str) {
    nginx.put("hello.sha256", format!("{sha256}  hello\n").as_bytes());
    nginx.put("hello", bytes);
}

/// Publishes `release` (with its correct checksum) to the master `hello` serves generation 1 of,
/// and asserts the upgrade (the test kit's check), generation 2 answering within [`UPGRADE`].
fn upgrade_to(hello: &mut Hello, nginx: &Nginx, release: &[u8]) -> Upgrade {
    upgrade::upgrade_to(hello, release, UPGRADE, "nginx", || {
        let sha256 = sha256_hex(release);
        publish(nginx, release, &sha256);
        Some(format!("sha256:{sha256}"))
    })
}

#[test]
fn hello_upgrades_itself_from_nginx() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let mut hello = start(&nginx, "info");
    let current = std::fs::read(hello_binary()).expect("read the hello binary");
    let v2 = new_build(&current, "v2");
    let up = upgrade_to(&mut hello, &nginx, &v2);
    assert!(up.took <= UPGRADE, "{:?}", up.took);
    assert!(up.publishing <= up.took);
    assert_eq!((up.before.generation, up.after.generation), (1, 2));
}

#[test]
fn hello_rejects_a_bad_release_from_nginx() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let mut hello = start(&nginx, "info");
    let current = std::fs::read(hello.exe()).expect("read the installed binary");
    let bad = new_build(&current, "bad");
    let wrong = sha256_hex(b"the checksum of some other file");
    upgrade::rejected(&mut hello, &current, UPGRADE, "nginx", || {
        publish(&nginx, &bad, &wrong);
        format!("sha256:{wrong}")
    });
}

/// The access log's lines from `start` on.
fn since(hits: &[Hit], start: usize) -> Vec<Hit> {
    hits.get(start..).unwrap_or_default().to_vec()
}

/// Waits for the start of a poll and for its request to be done (a poll is one small request on
/// loopback; the next one is 0.3 s away); the polls and the access log lines so far.
fn between_polls(hello: &Hello, nginx: &Nginx) -> (usize, usize) {
    let seen = hello.log_lines(CHECKING).len();
    if !hello.wait_log_count(CHECKING, seen, Duration::from_secs(5)) {
        hello.fail("the master stopped polling");
    }
    std::thread::sleep(Duration::from_millis(100));
    (hello.log_lines(CHECKING).len(), nginx.settled_hits().len())
}

#[test]
fn unchanged_release_costs_one_request_and_no_body() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let mut hello = start(&nginx, POLLS_LOG);
    let current = std::fs::read(hello_binary()).expect("read the hello binary");
    let v2 = new_build(&current, "v2-unchanged");
    upgrade_to(&mut hello, &nginx, &v2);

    // The checksum was written moments before it was served, so its validators are not trusted
    // until it is a second old: the first polls after the upgrade may fetch it again.
    let upgraded = nginx.settled_hits().len();
    let deadline = Instant::now() + Duration::from_secs(10);
    let settled_after = loop {
        let hits = since(&nginx.settled_hits(), upgraded);
        if hits
            .iter()
            .any(|h| h.uri == "/hello.sha256" && h.status == 304)
        {
            break hits.len();
        }
        if Instant::now() >= deadline {
            hello.fail(format!(
                "no poll was answered 304 within 10 s of the upgrade: {hits:#?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    let (checks_a, hits_a) = between_polls(&hello, &nginx);
    std::thread::sleep(Duration::from_secs(2));
    let (checks_b, hits_b) = between_polls(&hello, &nginx);
    let polls = checks_b - checks_a;
    let hits = since(&nginx.settled_hits(), hits_a);
    let hits = &hits[..hits_b - hits_a];
    eprintln!(
        "UNCHANGED via nginx: {settled_after} request(s) before the first 304; then {polls} polls \
         in ~2 s made {} requests: {:?}",
        hits.len(),
        hits.iter()
            .map(|h| format!("{} {} {} {}B", h.method, h.uri, h.status, h.body_bytes))
            .collect::<Vec<_>>()
    );
    assert!(
        polls >= 4,
        "{polls} polls in 2 s at a 0.3 s interval: is the master polling?"
    );
    assert_eq!(
        hits.len(),
        polls,
        "{polls} polls made {} requests: {hits:#?}",
        hits.len()
    );
    for h in hits {
        assert_eq!(
            (h.method.as_str(), h.uri.as_str(), h.status, h.body_bytes),
            ("GET", "/hello.sha256", 304, 0),
            "an unchanged poll: {h:?}"
        );
        assert!(
            h.if_none_match.is_some() && h.if_modified_since.is_some(),
            "an unchanged poll was not conditional: {h:?}"
        );
    }
    assert!(hello.is_running());
    assert_eq!(hello.greeting().generation, 2);
    // Without a key, the master said once, at startup, what the checksum does not protect:
    // not on each of the many polls above, nor again after the upgrade.
    let warned = hello.log_lines("no minisign key configured");
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(
        warned[0].contains("WARN")
            && warned[0].contains(&nginx.url("hello"))
            && warned[0].contains("does not stop whoever controls the release origin"),
        "{warned:#?}"
    );
}

/// Publishing over an earlier release in the documented order (the checksum first, then the
/// file) leaves a window in which nginx serves the new checksum with the old file: for a release
/// of a few hundred MB, written in about a second, a poll every 0.3 s lands in it. That poll's
/// download does not match the checksum, but its bytes are the installed binary: the updater
/// must not remember the refusal (the release would be lost for good once the file arrives under
/// the same identity), and the fetcher must look at the file again on the next poll even though
/// the checksum is unchanged since.
///
/// Here the poll is made to land in the window: the file is written only after that poll.
#[test]
fn a_poll_between_the_checksum_and_the_file_does_not_lose_the_release() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let current = std::fs::read(hello_binary()).expect("read the hello binary");
    publish(&nginx, &current, &sha256_hex(&current));
    // At debug level the log says why the release is not tried again.
    let hello = start(&nginx, POLLS_LOG);
    let before = hello.greeting();

    let v2 = new_build(&current, "v2-window");
    let sha256 = sha256_hex(&v2);
    nginx.put("hello.sha256", format!("{sha256}  hello\n").as_bytes());
    let retried = "the source still serves the installed binary under the new checksum";
    if hello.wait_log(retried, UPGRADE).is_none() {
        hello.fail(format!(
            "no poll saw the new checksum with the old file: expected {retried:?}"
        ));
    }
    nginx.put("hello", &v2);
    let t0 = Instant::now();
    match hello.wait_greeting(UPGRADE, |g| g.pid != before.pid) {
        Some(g) if g.generation == 2 && hello.installed() == v2 => {
            eprintln!(
                "WINDOW via nginx: generation 2 answered {:?} after the file",
                t0.elapsed()
            )
        }
        Some(g) => hello.fail(format!("after the file was published, {g:?} answers")),
        None => hello.fail(format!(
            "the release sha256:{sha256} was not installed within {UPGRADE:?} of its file being \
             published, after one poll saw its checksum with the previous file"
        )),
    }
}

/// Writes `bytes` over `www/hello` in place, as an upload that is not atomic does: its checksum
/// first (atomically), then the file truncated and written in two halves. The second half waits
/// until a poll has read the half-written file (at least `min_pause`, at most `max_pause`): on a
/// loaded machine the master may be busy with the previous release for several poll intervals,
/// and a fixed pause then tests nothing. Returns the access log's length when the first half was
/// written and when the pause ended.
fn publish_in_place(
    nginx: &Nginx,
    bytes: &[u8],
    min_pause: Duration,
    max_pause: Duration,
) -> (usize, usize) {
    use std::io::Write;
    nginx.put(
        "hello.sha256",
        format!("{}  hello\n", sha256_hex(bytes)).as_bytes(),
    );
    let path = nginx.www().join("hello");
    let mut file = std::fs::File::create(&path).expect("open the published file");
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    file.write_all(first).expect("write the first half");
    let started = nginx.settled_hits().len();
    let t0 = Instant::now();
    std::thread::sleep(min_pause);
    while t0.elapsed() < max_pause && partial_reads(nginx, started, usize::MAX) == 0 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let paused = nginx.settled_hits().len();
    file.write_all(rest).expect("write the second half");
    (started, paused)
}

/// Polls that read a body of `/hello` among the access log's entries `from..to`.
fn partial_reads(nginx: &Nginx, from: usize, to: usize) -> usize {
    let hits = nginx.settled_hits();
    let to = to.min(hits.len());
    hits.get(from..to).map_or(0, |h| {
        h.iter()
            .filter(|h| h.uri == "/hello" && h.status == 200 && h.body_bytes > 0)
            .count()
    })
}

/// A release uploaded in place (checksum first, then the file written in two parts, several poll
/// intervals apart) is read half-written by a poll and refused as a checksum mismatch; once the
/// upload completes the source serves other bytes, and the release must be tried again and
/// installed. Twice in a row.
#[test]
fn a_release_uploaded_in_place_is_installed_once_the_upload_completes() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let current = std::fs::read(hello_binary()).expect("read the hello binary");
    publish(&nginx, &current, &sha256_hex(&current));
    let hello = start(&nginx, POLLS_LOG);
    for (generation, tag) in [(2, "v2-in-place"), (3, "v3-in-place")] {
        let before = hello.greeting();
        let build = new_build(&current, tag);
        let (started, paused) = publish_in_place(
            &nginx,
            &build,
            Duration::from_secs(2),
            Duration::from_secs(30),
        );
        let t0 = Instant::now();
        let partial_reads = partial_reads(&nginx, started, paused);
        if partial_reads == 0 {
            hello.fail(format!(
                "no poll read {tag} while it was half written: the test did not test anything"
            ));
        }
        match hello.wait_greeting(UPGRADE, |g| g.pid != before.pid) {
            Some(g) if g.generation == generation && hello.installed() == build => eprintln!(
                "IN PLACE via nginx: {tag} read half-written {partial_reads} time(s), serving \
                 {:?} after its upload completed",
                t0.elapsed()
            ),
            Some(g) => hello.fail(format!("after {tag} was uploaded, {g:?} answers")),
            None => hello.fail(format!(
                "{tag} was not installed within {UPGRADE:?} of its upload completing (a poll \
                 had read it half-written)"
            )),
        }
    }
}

/// Lets the master poll for 4 s after a refusal; the requests for the release in that time and
/// the whole access log. Fails unless it kept polling.
fn polls_after_refusal(hello: &Hello, nginx: &Nginx) -> (usize, Vec<Hit>) {
    let from = nginx.settled_hits().len();
    std::thread::sleep(Duration::from_secs(4));
    let hits = nginx.settled_hits();
    let polls = since(&hits, from)
        .iter()
        .filter(|h| h.uri.starts_with("/hello"))
        .count();
    if polls < 5 {
        hello.fail(format!(
            "only {polls} requests in the 4 s after the refusal"
        ));
    }
    (polls, hits)
}

/// A release published without any checksum is refused without its body: over many polls nginx
/// sends none of the file's bytes, and the refusal is logged once (a reminder says "is still
/// refused", not "rejected").
#[test]
fn a_release_without_a_checksum_is_refused_without_downloading_it() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let mut hello = start(&nginx, "info");
    let before = hello.greeting();
    let current = hello.installed();
    nginx.put("hello", &new_build(&current, "no-checksum"));
    let Some(line) = hello.wait_log(" rejected: ", UPGRADE) else {
        hello.fail(format!("the release was not rejected within {UPGRADE:?}"))
    };
    if !line.contains("checksum") {
        hello.fail(format!(
            "the rejection does not say there is no checksum: {line}"
        ));
    }
    let (polls, hits) = polls_after_refusal(&hello, &nginx);
    let sent: Vec<&Hit> = hits
        .iter()
        .filter(|h| h.uri == "/hello" && h.status / 100 == 2 && h.body_bytes > 0)
        .collect();
    if !sent.is_empty() {
        hello.fail(format!(
            "nginx sent the refused release's bytes: {sent:#?} ({} requests in all)",
            hits.len()
        ));
    }
    hello.assert_refused_once(polls, &before, &current);
}

/// With `--minisign-key`, a correctly signed release of an older version (a replay of a build
/// with a known hole, say) is refused before its body is read, and remembered: over many polls
/// nginx sends the body at most once (the first poll's GET, dropped unread), and the refusal is
/// logged once.
#[test]
fn a_replayed_older_signed_release_is_refused_and_not_downloaded_again() {
    let Some(nginx) = Nginx::start_or_skip() else {
        return;
    };
    let key = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
    let pub_file = nginx.www().join("..").join("minisign.pub");
    std::fs::write(&pub_file, key.pk.to_box().unwrap().into_string()).unwrap();
    let mut hello = Hello::start(
        &hello_binary(),
        &[
            "--url".to_string(),
            nginx.url("hello"),
            "--minisign-key".to_string(),
            pub_file.display().to_string(),
        ],
        &[],
        "info",
    );
    let before = hello.greeting();
    let current = hello.installed();
    let old = new_build(&current, "replayed-0.0.9");
    let sha = sha256_hex(&old);
    let meta = upshift::release::SignedMetadata {
        product: "hello".into(),
        version: "0.0.9".into(),
        target: upshift::release::BUILD_TARGET.into(),
        sha256: sha.clone(),
        base: None,
    };
    let comment = meta.to_trusted_comment(1_764_770_000, "hello").unwrap();
    let sig = minisign::sign(
        Some(&key.pk),
        &key.sk,
        std::io::Cursor::new(&old),
        Some(&comment),
        None,
    )
    .unwrap()
    .into_string();
    nginx.put("hello.minisig", sig.as_bytes());
    publish(&nginx, &old, &sha);
    let Some(line) = hello.wait_log(" rejected: ", UPGRADE) else {
        hello.fail(format!("the replay was not rejected within {UPGRADE:?}"))
    };
    if !line.contains("0.0.9 is not newer than 0.1.0") {
        hello.fail(format!("the rejection does not name the floor: {line}"));
    }
    let (polls, hits) = polls_after_refusal(&hello, &nginx);
    let bodies: Vec<&Hit> = hits
        .iter()
        .filter(|h| h.uri == "/hello" && h.status / 100 == 2 && h.method == "GET")
        .collect();
    if bodies.len() > 1 {
        hello.fail(format!(
            "the refused release was requested {} times: {bodies:#?}",
            bodies.len()
        ));
    }
    hello.assert_refused_once(polls, &before, &current);
}
