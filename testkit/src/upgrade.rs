//! "Upgrade hello to this release": the end-to-end check every release source runs (the HTTP,
//! S3 and GitHub fetchers' tests, and the publisher's), written once. The caller publishes its
//! way; the check asserts what an upgrade must look like from outside.

use std::time::{Duration, Instant};

use crate::hello::{proc_stat, Greeting, Hello, PollReport, Poller};

/// Between two requests of the polling client.
pub const CLIENT_PAUSE: Duration = Duration::from_millis(20);

/// What an upgrade looked like.
#[derive(Debug)]
pub struct Upgrade {
    /// Generation 1, answering before publishing.
    pub before: Greeting,
    /// Generation 2, the first new worker to answer.
    pub after: Greeting,
    /// From the start of publishing to generation 2 answering.
    pub took: Duration,
    /// How long publishing itself took.
    pub publishing: Duration,
    /// What the polling client saw (no failure, by then).
    pub report: PollReport,
}

/// Publishes `release` with `publish` (which returns the release's identity as the master logs
/// it, `sha256:<hex>`, an ETag or a tag, or `None` if the caller checks the log itself) to the
/// master `hello` serves generation 1 of, and asserts the upgrade: a new worker answers as
/// generation 2 of the same build id within `bound`, as a child of the same master; the master
/// logs the release as serving; the old worker goes away; the binary on disk is `release` byte for
/// byte; and a client polling `GET /` all along saw no failure, only those two workers. `via`
/// names the source in the summary line printed at the end.
pub fn upgrade_to(
    hello: &mut Hello,
    release: &[u8],
    bound: Duration,
    via: &str,
    publish: impl FnOnce() -> Option<String>,
) -> Upgrade {
    let master = hello.pid();
    let before = hello.greeting();
    assert_eq!(before.generation, 1, "before publishing: {before:?}");
    assert_ne!(before.pid, master, "the master itself answers");

    let poller = Poller::start(hello.addr, CLIENT_PAUSE);
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let identity = publish();
    let publishing = t0.elapsed();
    let what = identity.as_deref().unwrap_or("the release");
    let Some(after) = hello.wait_greeting(bound, |g| g.pid != before.pid) else {
        hello.fail(format!(
            "no new worker answered within {bound:?} of publishing {what} ({} bytes)",
            release.len()
        ))
    };
    let took = t0.elapsed();

    if let Some(identity) = &identity {
        let serving = format!("release {identity} is serving (generation 2)");
        if hello.wait_log(&serving, Duration::from_secs(5)).is_none() {
            hello.fail(format!("the master did not log {serving:?}"));
        }
    }
    if after.generation != 2 || after.build_id != before.build_id {
        hello.fail(format!(
            "after the upgrade {after:?} answers, expected generation 2 of the same build id as {before:?}"
        ));
    }
    if !hello.is_running() || hello.pid() != master {
        hello.fail(format!(
            "the master (pid {master}) did not survive the upgrade"
        ));
    }
    if proc_stat(after.pid).map(|s| s.ppid) != Some(master) {
        hello.fail(format!(
            "the new worker {} is not the child of the master {master}",
            after.pid
        ));
    }
    // The client keeps polling while the old worker drains.
    let deadline = Instant::now() + Duration::from_secs(15);
    while crate::procs::is_alive(before.pid) {
        if Instant::now() >= deadline {
            hello.fail(format!(
                "the old worker {} was still alive 15 s after the upgrade",
                before.pid
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let report = poller.finish();

    if !report.failures.is_empty() {
        let failures: Vec<String> = report
            .failures
            .iter()
            .map(|(at, e)| {
                format!(
                    "{:?} after publishing: {e}",
                    at.saturating_duration_since(t0)
                )
            })
            .collect();
        hello.fail(format!(
            "{} of {} requests failed during the upgrade: {failures:#?}",
            failures.len(),
            failures.len() + report.answers.len()
        ));
    }
    let workers = report.workers();
    if workers != [(before.pid, 1), (after.pid, 2)] {
        hello.fail(format!(
            "the polling client saw these (pid, generation) answer: {workers:?}, expected \
             [({}, 1), ({}, 2)]",
            before.pid, after.pid
        ));
    }
    let installed = hello.installed();
    if installed != release {
        hello.fail(format!(
            "{} is not the published release: {} bytes, expected {} bytes",
            hello.exe().display(),
            installed.len(),
            release.len()
        ));
    }
    let children = hello.live_children();
    if children != [after.pid] {
        hello.fail(format!(
            "the master's children are {children:?}, expected only {}",
            after.pid
        ));
    }
    eprintln!(
        "UPGRADE via {via}: published {} bytes in {publishing:?}; generation 2 (pid {}) answered \
         {took:?} after publishing began; {} requests by the client, {} connections, 0 failed",
        release.len(),
        after.pid,
        report.answers.len(),
        report.connections
    );
    Upgrade {
        before,
        after,
        took,
        publishing,
        report,
    }
}

/// What a refused release looked like.
#[derive(Debug)]
pub struct Rejection {
    /// Generation 1, which kept serving.
    pub before: Greeting,
    /// The master's log line saying why it refused.
    pub line: String,
    /// From the start of publishing to that line.
    pub took: Duration,
    /// Greetings in the 2 s after it.
    pub since_rejection: usize,
}

/// Publishes a release with a checksum that does not match it with `publish` (which returns the
/// release's identity as the master logs it) to the master `hello` serves generation 1 of, and
/// asserts the refusal: `release <identity> rejected: checksum mismatch` logged once within
/// `bound`, no release serving, generation 1 still answering every request of a polling client
/// (at least 20 in the 2 s after), the same master with the same one child, the binary on disk
/// unchanged (`current`) with nothing left beside it.
pub fn rejected(
    hello: &mut Hello,
    current: &[u8],
    bound: Duration,
    via: &str,
    publish: impl FnOnce() -> String,
) -> Rejection {
    let master = hello.pid();
    let before = hello.greeting();
    let poller = Poller::start(hello.addr, CLIENT_PAUSE);
    let t0 = Instant::now();
    let identity = publish();
    let rejected = format!("release {identity} rejected: checksum mismatch");
    let Some(line) = hello.wait_log(&rejected, bound) else {
        hello.fail(format!(
            "the master did not log {rejected:?} within {bound:?}"
        ))
    };
    let took = t0.elapsed();
    let rejected_at = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let report = poller.finish();

    if !report.failures.is_empty() {
        hello.fail(format!(
            "requests failed around the rejection: {:#?}",
            report.failures
        ));
    }
    let since_rejection = report
        .answers
        .iter()
        .filter(|(at, _)| *at >= rejected_at)
        .count();
    assert!(
        since_rejection >= 20,
        "only {since_rejection} answers in the 2 s after the rejection"
    );
    assert_eq!(
        report.workers(),
        [(before.pid, 1)],
        "who answered while the bad release was published"
    );
    assert_eq!(hello.greeting(), before);
    assert!(hello.is_running(), "the master exited");
    assert_eq!(hello.pid(), master);
    assert_eq!(hello.live_children(), [before.pid], "the master's children");
    assert!(
        hello.installed() == current,
        "the binary on disk changed after a rejected release"
    );
    assert_eq!(
        hello.bin_dir_entries(),
        ["hello", "hello.upshift-lock", "hello.upshift-state"],
        "left next to the binary after the rejection"
    );
    let log = hello.log();
    if log.contains(" is serving (")
        || log.lines().filter(|l| l.contains(" rejected: ")).count() != 1
    {
        hello.fail("expected exactly one rejection and no release serving");
    }
    eprintln!(
        "REJECTED via {via} {took:?} after publishing: {}; generation 1 (pid {}) answered {} \
         requests in the next 2 s, 0 failed",
        line.trim(),
        before.pid,
        since_rejection
    );
    Rejection {
        before,
        line,
        took,
        since_rejection,
    }
}
