//! The `fleet` report: the idle cost, the release, the thundering herd and GitHub's rate limits,
//! every request and byte as the origin counted it.

use std::fmt::Write as _;

use super::hosts::{time_until, Body, HostLog};
use super::origins::Kind;
use super::{GroupRun, Outcome, PhaseCpu, ReleaseRun};
use crate::originlog::{peak_concurrency, per_second, Hit, Tally};
use crate::report::{Report, Status, Table};
use crate::stats::{self, bytes, int};

/// Issue 16's idle targets, for 1,000 hosts polling every 60 s.
const TARGET_RPS: f64 = 20.0;
const TARGET_HOSTS: usize = 1000;
const TARGET_INTERVAL_SECS: u64 = 60;

pub fn render(command: &str, o: &Outcome) -> Report {
    let s = &o.settings;
    let mut r = Report::new(
        &format!(
            "fleet: {} simulated hosts per group against nginx, s3s-fs and the GitHub fixture, \
             counted at the origin",
            int(s.hosts as f64)
        ),
        command,
    );
    r.para(&format!(
        "Hosts: tokio tasks in the harness, each with its own instance of the real fetcher \
         (`upshift_http::HttpFetcher`, `upshift_s3::S3Fetcher`, `upshift_github::GithubFetcher`) \
         called through `Fetcher::check(&Current)` as the master's poll loop calls it \
         (`src/master/updater.rs`): first check at once, then the interval ± 10 % (the default \
         `poll_jitter`), `Fetcher::deferred` and the release dropped unread outside the rollout \
         (`upshift::rollout::in_rollout`), `FetchError::RateLimited(wait)` waited out without \
         jitter (at most an hour), other errors backed off (2 s, 4 s, … 10 min). A host that takes \
         a release reads and hashes its body, then names the new sha256, identity and version in \
         its `Current`; the master's test run, install and restart are not simulated. Origins: \
         nginx counted by its access log (`$status`, `$bytes_sent`, `$body_bytes_sent`, \
         `$request_time`); s3s-fs, which logs no requests, counted by a small counting HTTP \
         proxy on loopback in front of it (the S3 tests' `upshift_testkit::s3::proxy`, on its own \
         2-thread runtime in the harness: the hosts talk to the proxy); the GitHub fixture \
         counted by its own request log (`/_fixture/log`: status, body bytes, arrival and end). \
         Release file: {}.{}{}",
        o.release_what,
        if o.light_roots {
            " The hosts' HTTP clients load a single CA certificate instead of the system's \
             bundle when they are built (`SSL_CERT_FILE`; every origin is plain http on \
             loopback): 1,000 real hosts load theirs on their own CPUs, the harness would load \
             them one after another and stretch a herd over seconds."
        } else {
            ""
        },
        if s.quick {
            " **--quick**: a development run, not the issue's fleet."
        } else {
            ""
        }
    ));
    r.para(&format!(
        "Settings in effect: {} hosts per group; idle and herd groups poll every {} s for {} s \
         each, origins started {} s apart; the release groups poll every {} s, rollout steps \
         {} s apart, at most {} s after the last step; the unauthenticated GitHub window {} s; \
         origins: {}.",
        int(s.hosts as f64),
        s.interval.as_secs_f64(),
        s.idle.as_secs_f64(),
        s.stagger.as_secs_f64(),
        s.release_interval.as_secs_f64(),
        s.step.as_secs_f64(),
        s.limit.as_secs_f64(),
        s.gh_window,
        s.origins
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", "),
    ));
    r.para(&format!(
        "**Provisional**: the harness, the servers and {} simulated hosts share this machine's \
         CPUs with other work (two other engineers build here). CPU during the idle phase: \
         {}; during the releases: {}.",
        int(
            (s.hosts * (2 * s.origins.len() + usize::from(s.origins.contains(&Kind::Github))))
                as f64
        ),
        cpu_line(&o.idle_cpu),
        o.releases
            .iter()
            .map(|x| format!("{}: {}", x.run.kind.name(), cpu_line(&x.cpu)))
            .collect::<Vec<_>>()
            .join("; ")
    ));

    if s.idle_phase {
        idle_section(&mut r, o);
    }
    if s.release_phase {
        release_section(&mut r, o);
    }
    if s.idle_phase {
        herd_section(&mut r, o);
        rate_limit_section(&mut r, o);
    }
    raw_section(&mut r, o);
    r
}

fn cpu_line(c: &PhaseCpu) -> String {
    format!(
        "harness {:.2}, servers {:.2}, others {:.2} CPUs over {:.0} s",
        c.harness, c.servers, c.others, c.secs
    )
}

fn group<'a>(runs: &'a [GroupRun], kind: Kind, name: &str) -> Option<&'a GroupRun> {
    runs.iter().find(|g| g.kind == kind && g.group == name)
}

fn hits_between(g: &GroupRun, from: f64, to: f64) -> Vec<&Hit> {
    g.hits
        .iter()
        .filter(|h| h.start >= from && h.start < to)
        .collect()
}

/// Requests per 1 s bucket over the group's run.
fn series(g: &GroupRun) -> Vec<u32> {
    per_second(&g.hits, g.start, (g.end - g.start).ceil().max(0.0) as usize)
}

fn peak(v: &[u32]) -> u32 {
    v.iter().copied().max().unwrap_or(0)
}

/// Where a group's steady state begins: one interval after its start, or when the last host's
/// first check ended if that is later (a first check that builds its client can run late).
fn steady_from(g: &GroupRun) -> f64 {
    let last_first = g
        .logs
        .iter()
        .filter_map(|l| l.first_check.map(|f| f.1))
        .fold(f64::MIN, f64::max);
    last_first.max(g.start + g.interval.as_secs_f64())
}

fn secs(v: f64) -> String {
    format!("{v:.1} s")
}

fn idle_section(r: &mut Report, o: &Outcome) {
    let s = &o.settings;
    r.heading("1. Idle fleet: nothing new published");
    r.para(&format!(
        "The \"spread\" group: {} hosts polling every {} s (± 10 %), their first checks spread \
         over one interval, as in a fleet that has run for a while. Steady state: from the end of \
         the last host's first check (at least one interval after the group's start) to the \
         group's end, about {} s; the first checks (a fetcher that remembers nothing) are shown \
         apart. Target (issue 16): under {TARGET_RPS} requests/s and 0 body bytes at the origin \
         for {} hosts polling every {} s.",
        int(s.hosts as f64),
        s.interval.as_secs_f64(),
        (s.idle.as_secs_f64() - s.interval.as_secs_f64()).max(0.0),
        int(TARGET_HOSTS as f64),
        TARGET_INTERVAL_SECS,
    ));
    let mut t = Table::new(&[
        "origin",
        "steady: requests",
        "req/s mean / peak 1 s",
        "body bytes",
        "bytes sent (headers incl.)",
        "per host per hour",
        "answers",
        "before the steady state: requests, body bytes",
    ]);
    let at_target = s.hosts == TARGET_HOSTS && s.interval.as_secs() == TARGET_INTERVAL_SECS;
    for kind in &s.origins {
        let Some(g) = group(&o.idle, *kind, "spread") else {
            continue;
        };
        let from = steady_from(g);
        let steady = hits_between(g, from, g.end);
        let tally = Tally::of(steady.iter().copied());
        let len = (g.end - from).max(1e-3);
        let rps = tally.requests as f64 / len;
        let per_second = per_second(steady.iter().copied(), from, len.floor() as usize);
        let per_host_hour = |v: f64| v / g.hosts.max(1) as f64 * 3600.0 / len;
        let first = Tally::of(hits_between(g, g.start, from));
        t.row(vec![
            kind.label().to_string(),
            int(tally.requests as f64),
            format!("**{rps:.2}** / {}", peak(&per_second)),
            format!("**{}**", int(tally.body_bytes as f64)),
            tally.bytes_sent.map_or("–".into(), |b| bytes(b as f64)),
            format!(
                "{:.1} requests, {} body",
                per_host_hour(tally.requests as f64),
                bytes(per_host_hour(tally.body_bytes as f64))
            ),
            tally.statuses(),
            format!(
                "{}, {}",
                int(first.requests as f64),
                bytes(first.body_bytes as f64)
            ),
        ]);
        let met = rps < TARGET_RPS && tally.body_bytes == 0;
        r.verdict(
            &format!(
                "{}: idle fleet of {} hosts polling every {} s, under {TARGET_RPS} requests/s \
                 and 0 body bytes at the origin (issue 16)",
                kind.name(),
                int(TARGET_HOSTS as f64),
                TARGET_INTERVAL_SECS
            ),
            format!(
                "{rps:.2} requests/s, {} body bytes over {len:.0} s of steady state ({} hosts, {} s \
                 interval)",
                int(tally.body_bytes as f64),
                int(g.hosts as f64),
                g.interval.as_secs_f64()
            ),
            match at_target {
                true => Status::met_if(met),
                false => Status::NoTarget,
            },
        );
    }
    r.highlight("fleet: idle cost at the origin (steady state)", &t);
}

fn release_section(r: &mut Report, o: &Outcome) {
    let s = &o.settings;
    r.heading("2. A release in a staged rollout (5 % → 25 % → 100 %)");
    r.para(&format!(
        "Per origin, a fresh group of {} hosts polling every {} s (± 10 %, shortened from the \
         default to keep the run short), first checks spread over one interval. Once each host \
         has checked once, the operator sets the rollout to 5 % and publishes a release ({}); \
         25 % {} s after the publish, 100 % {} s after it; then the run waits for every host, \
         at most {} s, and stops early once no host has downloaded for {} s. Rollout: HTTP through the document beside the release (`app.rollout`, read \
         by `HttpFetcher::rollout_url`), S3 and GitHub through the host-side percentage \
         (`Upgrader::rollout_percent`) changed by the operator. Times are from the end of the \
         publish to the last byte of each host's download. Counted at the origin: every request \
         of the group from the publish to the end. GitHub's rate limit is not enforced in this \
         phase; what would spend it is counted (below).",
        int(s.hosts as f64),
        s.release_interval.as_secs_f64(),
        o.release_what,
        s.step.as_secs_f64(),
        2.0 * s.step.as_secs_f64(),
        s.limit.as_secs_f64(),
        s.settle.as_secs_f64(),
    ));
    r.para(
        "\"Cut short\": a host outside the rollout is offered the release with its transfer \
         already open (the fetcher returns a `Release` whose body is a stream); the master \
         drops it unread, which closes the connection. What the origin had sent by then is \
         counted here: bytes no host uses, on every poll of every host left out. How many \
         bytes one such transfer carries depends on how long it stays open and on the socket \
         buffers: on loopback, with large buffers and a busy harness, more than over a real \
         network, so the byte figure is an upper bound; the count of transfers is not.",
    );
    r.para(
        "Deltas: every other host's fetcher looks for patches (`deltas(true)`, the default), the \
         others' do not (`deltas(false)`), so one release measures both. The release is \
         published with a patch from the build every host runs (the next build differs by its \
         BUILD_ID; `upshift::delta::make`, or `upshift-publish --delta-from` for GitHub). A host \
         with deltas reads the patch, checks its sha256, applies it to its build with upshift's \
         codec and checks the result against the release's sha256, as the master's pipeline \
         does (`fleet_hosts.rs`, `download`); a patch that fails is counted and the full \
         release read. Bytes per host are what the hosts received (host side); the origin's \
         totals cover both halves. A host with deltas that is outside the rollout costs no \
         transfer: with a patch found, the fetcher leaves the full release unrequested.",
    );
    let mut t = Table::new(&[
        "origin",
        "hosts that took it",
        "requests at the origin",
        "body bytes at the origin (both halves)",
        "of which whole downloads",
        "of which cut short (hosts outside the rollout)",
        "without deltas: hosts, received per host",
        "with deltas: hosts, received per host (patch failed)",
        "50 % / 99 % / 100 % of hosts took it after",
        "downloads at once, peak: origin / hosts",
    ]);
    let mut detail = Table::new(&["origin", "answers at the origin", "hosts' side"]);
    for x in &o.releases {
        let g = &x.run;
        let window = hits_between(g, x.publish_began, g.end + 1.0);
        let tally = Tally::of(window.iter().copied());
        let bodies: Vec<&Hit> = g
            .bodies
            .iter()
            .filter(|h| h.start >= x.publish_began)
            .collect();
        let whole: Vec<&&Hit> = bodies.iter().filter(|h| h.body_bytes >= x.size).collect();
        let cut: Vec<&&Hit> = bodies.iter().filter(|h| h.body_bytes < x.size).collect();
        let sum = |v: &[&&Hit]| v.iter().map(|h| h.body_bytes).sum::<u64>();
        let took: Vec<f64> = g
            .logs
            .iter()
            .filter_map(|l| l.took.as_ref())
            .map(|t| t.finished)
            .collect();
        let received = |kind: Body| {
            let took: Vec<u64> = g
                .logs
                .iter()
                .filter_map(|l| l.took.as_ref().filter(|t| t.body == kind).map(|t| t.bytes))
                .collect();
            let per_host = took.iter().sum::<u64>() as f64 / took.len().max(1) as f64;
            (took.len(), per_host)
        };
        let (full, full_each) = received(Body::Full);
        let (patched, patch_each) = received(Body::Delta);
        let delta_failed: u32 = g.logs.iter().map(|l| l.delta_failed).sum();
        let until = |p: f64| {
            time_until(&took, g.hosts, p, x.published).map_or("not within the run".into(), secs)
        };
        t.row(vec![
            g.kind.name().to_string(),
            format!("{} of {}", int(took.len() as f64), int(g.hosts as f64)),
            int(tally.requests as f64),
            format!("**{}**", bytes(tally.body_bytes as f64)),
            format!("{} × {}", int(whole.len() as f64), bytes(x.size as f64)),
            format!(
                "{} in {} transfers",
                bytes(sum(&cut) as f64),
                int(cut.len() as f64)
            ),
            format!("{}, {}", int(full as f64), bytes(full_each)),
            format!(
                "{}, {} ({})",
                int(patched as f64),
                bytes(patch_each),
                int(f64::from(delta_failed))
            ),
            format!("{} / {} / {}", until(50.0), until(99.0), until(100.0)),
            format!(
                "{} / {}",
                peak_concurrency(bodies.iter().copied()),
                g.peak_downloading
            ),
        ]);
        detail.row(vec![
            g.kind.name().to_string(),
            tally.statuses(),
            hosts_side(&g.logs, g.kind, x),
        ]);
    }
    r.highlight("fleet: per release, without and with deltas", &t);
    r.table(&detail);
    let mut sched = String::new();
    for x in &o.releases {
        let _ = write!(
            sched,
            "{}: publish took {:.2} s; steps at {}. ",
            x.run.kind.name(),
            x.published - x.publish_began,
            x.steps
                .iter()
                .map(|(at, p)| format!("{p} % at +{:.1} s", at - x.published))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    r.para(sched.trim_end());
    for x in &o.releases {
        r.verdict(
            &format!("{}: a staged release reaches every host", x.run.kind.name()),
            {
                let took = x.run.logs.iter().filter(|l| l.took.is_some()).count();
                format!("{} of {} hosts", int(took as f64), int(x.run.hosts as f64))
            },
            Status::NoTarget,
        );
    }
}

/// What the hosts of a release group did, in a line.
fn hosts_side(logs: &[HostLog], kind: Kind, x: &ReleaseRun) -> String {
    let sum = |f: fn(&HostLog) -> u64| logs.iter().map(f).sum::<u64>();
    let mut s = format!(
        "{} checks, {} releases offered, {} set aside outside the rollout, {} check errors, {} \
         rate limited, {} cut downloads, {} sha256 mismatches; {} received",
        int(sum(|l| u64::from(l.checks)) as f64),
        int(sum(|l| u64::from(l.offered)) as f64),
        int(sum(|l| u64::from(l.deferred)) as f64),
        int(sum(|l| u64::from(l.errors)) as f64),
        int(sum(|l| u64::from(l.rate_limited)) as f64),
        int(sum(|l| u64::from(l.downloads_failed)) as f64),
        int(sum(|l| u64::from(l.mismatched)) as f64),
        bytes(sum(|l| l.received) as f64),
    );
    let took: Vec<_> = logs.iter().filter_map(|l| l.took.as_ref()).collect();
    let secs_each: Vec<f64> = took.iter().map(|t| t.finished - t.offered).collect();
    let _ = write!(
        s,
        "; each download, check to last byte: median {} / p90 {} / max {}, {} read by the hosts \
         that took it",
        stats::median(&secs_each).map_or("–".into(), secs),
        stats::percentile(&secs_each, 90.0).map_or("–".into(), secs),
        stats::max(&secs_each).map_or("–".into(), secs),
        bytes(took.iter().map(|t| t.bytes).sum::<u64>() as f64),
    );
    if let Some(e) = logs.iter().find_map(|l| l.first_error.as_deref()) {
        let _ = write!(s, "; first error: {}", truncate(e, 160));
    }
    if kind == Kind::Github {
        let len = (x.run.end - x.publish_began).max(1e-3);
        let _ = write!(
            s,
            "; API requests that spend the token's rate limit: {} in {len:.0} s ({} an hour; \
             GitHub allows 5,000)",
            int(x.run.quota as f64),
            int(x.run.quota as f64 * 3600.0 / len)
        );
    }
    s
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn herd_section(r: &mut Report, o: &Outcome) {
    let s = &o.settings;
    r.heading("3. Thundering herd: hosts started together");
    r.para(&format!(
        "What the master does: its poll loop does not jitter the first check (`src/master/\
         updater.rs`: `delay = Duration::ZERO`, \"the first check is at once\"); the jitter (± 10 \
         %) applies to each wait after a check. So a fleet started together (a deploy, a \
         restarted cluster) checks together: the \"herd\" group, {} hosts whose first checks are \
         due at the same instant. Against it, the \"spread\" group: first checks spread over one \
         interval, which is what a jittered first check would give. Each wave of the herd \
         widens only by the jitter of the waits: after k intervals the spread is about ± 6 s × \
         √k (for 60 s), so it takes tens of minutes to flatten. Origins started {} s apart so \
         that their herds do not meet in the harness.",
        int(s.hosts as f64),
        s.stagger.as_secs_f64()
    ));
    let mut t = Table::new(&[
        "origin",
        "group",
        "peak requests in 1 s",
        "99 % of first checks reached the origin within",
        "peak 1 s bucket, minute by minute",
        "first minute, requests per 5 s",
    ]);
    for kind in &s.origins {
        for name in ["herd", "spread"] {
            let Some(g) = group(&o.idle, *kind, name) else {
                continue;
            };
            let v = series(g);
            let waves: Vec<f64> =
                hits_between(g, g.start, g.start + g.interval.as_secs_f64() * 0.5)
                    .iter()
                    .map(|h| h.start - g.start)
                    .collect();
            let first_wave = match name {
                "herd" => stats::percentile(&waves, 99.0).map_or("–".into(), secs),
                _ => "(spread by design)".into(),
            };
            let minutes: Vec<String> = v.chunks(60).map(|c| peak(c).to_string()).collect();
            let five: Vec<String> = v
                .iter()
                .take(60)
                .collect::<Vec<_>>()
                .chunks(5)
                .map(|c| c.iter().copied().sum::<u32>().to_string())
                .collect();
            t.row(vec![
                kind.name().to_string(),
                name.to_string(),
                format!("**{}**", peak(&v)),
                first_wave,
                minutes.join(" / "),
                five.join(" "),
            ]);
        }
    }
    r.highlight("fleet: thundering herd at the origin", &t);
    // How fast the harness itself let the herd go: a real fleet does this on N machines.
    let mut launch = String::new();
    for kind in &s.origins {
        if let Some(g) = group(&o.idle, *kind, "herd") {
            let began: Vec<f64> = g
                .logs
                .iter()
                .filter_map(|l| l.first_check.map(|f| f.0))
                .collect();
            let ended: Vec<f64> = g
                .logs
                .iter()
                .filter_map(|l| l.first_check.map(|f| f.1))
                .collect();
            let span = |v: &[f64]| {
                stats::max(v)
                    .zip(stats::min(v))
                    .map_or("–".into(), |(hi, lo)| secs(hi - lo))
            };
            let _ = write!(
                launch,
                "{}: the harness began the herd's {} first checks within {} and they all ended \
                 within {} of the group's start. ",
                kind.name(),
                int(began.len() as f64),
                span(&began),
                stats::max(&ended).map_or("–".into(), |e| secs(e - g.start)),
            );
        }
    }
    r.para(&format!(
        "Simulation limit: the hosts share the harness's 2 threads, so a herd leaves the harness \
         more slowly than {} machines would send it; the peaks above are lower bounds. {}",
        int(s.hosts as f64),
        launch.trim_end()
    ));
}

fn rate_limit_section(r: &mut Report, o: &Outcome) {
    let s = &o.settings;
    if !s.origins.contains(&Kind::Github) {
        return;
    }
    r.heading("4. GitHub rate limits");
    r.para(&format!(
        "How the fixture limits (as GitHub documents): one counter per fixture process, as GitHub \
         keeps one per token (authenticated) or per IP address (unauthenticated), so a fleet \
         behind one token or one NAT address shares it; a `304` answered to a request with a token \
         spends nothing; past the limit, `403` with `x-ratelimit-remaining: 0` and \
         `x-ratelimit-reset`, which the fetcher turns into `FetchError::RateLimited` until the \
         reset. With a token: GitHub's 5,000 an hour, the \"spread\" and \"herd\" groups. Without: \
         60 per window, the window shortened from GitHub's 3,600 s to {} s so that a reset falls \
         within the run (the \"anon\" group, polling every {} s, spread).",
        s.gh_window,
        s.interval.as_secs_f64()
    ));
    let mut t = Table::new(&[
        "fleet",
        "requests at the fixture",
        "rate-limited answers (403/429)",
        "requests that spent the limit",
        "hosts told `RateLimited` (times)",
        "waits asked: min / median / max",
        "hosts with a successful check",
        "peak 1 s bucket (at)",
    ]);
    let groups: Vec<&GroupRun> = o.idle.iter().filter(|g| g.kind == Kind::Github).collect();
    for g in groups {
        let limited = g
            .hits
            .iter()
            .filter(|h| matches!(h.status, 403 | 429))
            .count();
        let told = g.logs.iter().filter(|l| l.rate_limited > 0).count();
        let times: u32 = g.logs.iter().map(|l| l.rate_limited).sum();
        let waits: Vec<f64> = g.logs.iter().flat_map(|l| l.rate_waits.clone()).collect();
        let ok = g
            .logs
            .iter()
            .filter(|l| l.checks > l.errors + l.rate_limited)
            .count();
        let v = series(g);
        let (at, top) = v
            .iter()
            .enumerate()
            .max_by_key(|(_, n)| **n)
            .map_or((0, 0), |(i, n)| (i, *n));
        t.row(vec![
            match g.group {
                "anon" => "without a token (60 per window)".into(),
                other => format!("with a token (5,000 an hour): {other}"),
            },
            int(g.hits.len() as f64),
            format!("**{}**", int(limited as f64)),
            int(g.quota as f64),
            format!("{} ({})", int(told as f64), int(f64::from(times))),
            format!(
                "{} / {} / {}",
                stats::min(&waits).map_or("–".into(), secs),
                stats::median(&waits).map_or("–".into(), secs),
                stats::max(&waits).map_or("–".into(), secs)
            ),
            format!("{} of {}", int(ok as f64), int(g.hosts as f64)),
            format!("{top} (+{at} s)"),
        ]);
    }
    r.table(&t);
    r.para(
        "What the hosts do: a host told `RateLimited` waits exactly until the reset the fixture \
         announced, without jitter (`src/master/backoff.rs`, `rate_limit_wait`), so every limited \
         host comes back in the same second: the peak bucket above sits at a reset of the window. \
         Without a token a fleet of this size spends a window's 60 requests in its first seconds \
         of polling; after that a host gets a check through only when it is among the first 60 \
         after a reset.",
    );
}

fn raw_section(r: &mut Report, o: &Outcome) {
    r.heading("Raw numbers");
    let mut lines = Vec::new();
    for g in o.idle.iter().chain(o.releases.iter().map(|x| &x.run)) {
        let t = Tally::of(&g.hits);
        let sum = |f: fn(&HostLog) -> u64| g.logs.iter().map(f).sum::<u64>();
        lines.push(format!(
            "origin={} group={} hosts={} interval_s={} start={:.3} end={:.3} requests={} \
             body_bytes={} bytes_sent={} checks={} offered={} deferred={} errors={} \
             rate_limited={} took={} downloads_failed={} mismatched={} received={} quota={} \
             peak_downloading_hosts={} peak_downloading_origin={}",
            g.kind.name(),
            g.group,
            g.hosts,
            g.interval.as_secs_f64(),
            g.start,
            g.end,
            t.requests,
            t.body_bytes,
            t.bytes_sent.map_or("-".into(), |b| b.to_string()),
            sum(|l| u64::from(l.checks)),
            sum(|l| u64::from(l.offered)),
            sum(|l| u64::from(l.deferred)),
            sum(|l| u64::from(l.errors)),
            sum(|l| u64::from(l.rate_limited)),
            g.logs.iter().filter(|l| l.took.is_some()).count(),
            sum(|l| u64::from(l.downloads_failed)),
            sum(|l| u64::from(l.mismatched)),
            sum(|l| l.received),
            g.quota,
            g.peak_downloading,
            peak_concurrency(&g.bodies),
        ));
        let v = series(g);
        lines.push(format!(
            "  requests per 1 s from start: {}",
            v.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
        ));
        lines.push(format!("  answers: {}", t.statuses()));
    }
    for x in &o.releases {
        let mut took: Vec<f64> = x
            .run
            .logs
            .iter()
            .filter_map(|l| l.took.as_ref())
            .map(|t| t.finished - x.published)
            .collect();
        took.sort_by(f64::total_cmp);
        lines.push(format!(
            "origin={} published={:.3} publish_s={:.3} size={} steps={}",
            x.run.kind.name(),
            x.published,
            x.published - x.publish_began,
            x.size,
            x.steps
                .iter()
                .map(|(at, p)| format!("{p}@{:.1}", at - x.published))
                .collect::<Vec<_>>()
                .join(",")
        ));
        lines.push(format!(
            "  took after publish (s, sorted): {}",
            took.iter()
                .map(|t| format!("{t:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    r.raw(&lines);
}
