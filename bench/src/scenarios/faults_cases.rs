//! The `faults` cases, one function each. Every case starts its own server in its own
//! directory, injects one fault against the real processes, and records what happened and the
//! checks that decide pass or fail (see [`Outcome`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Ctx, Outcome};
use crate::hello::{log_first, log_lines, Server};
use crate::prober::Prober;
use crate::procs::wait_for;
use crate::release::binary_is;
use crate::sysfault::{KillOnEvent, Tmpfs, IN_CLOSE_WRITE, IN_CREATE, IN_OPEN};
use crate::{procs, release};

/// How long a case waits for an upgrade, a rollback or a retry to show.
const VERDICT: Duration = Duration::from_secs(60);
/// How long the workers of a SIGKILLed master get to drain and exit (parent-death signal).
const ORPHAN_WAIT: Duration = Duration::from_secs(10);

fn start(ctx: &Ctx, dir: &Path, exe: &Path, args: &[String], tag: &str) -> Result<Server, String> {
    let log = ctx.tmp.path().join(format!(
        "{}-{tag}.log",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    Server::start(exe, args, &log)
}

/// After the master was SIGKILLed: workers gone, binary whole, then a fresh master from the same
/// path sweeps the leftovers and installs the release it was given again.
fn after_master_death(
    ctx: &Ctx,
    o: &mut Outcome,
    mut server: Server,
    dir: &Path,
    args: &[String],
    (old, new): (&str, &str),
    new_build: &str,
) -> Result<(), String> {
    let app = dir.join("app");
    let left = procs::still_running_from(dir, ORPHAN_WAIT);
    o.check(
        format!("no orphan: processes left {ORPHAN_WAIT:?} after the master's death: {left:?}"),
        left.is_empty(),
    );
    server.stop();
    let state = binary_is(&app, old, new);
    o.check(
        format!("binary on disk whole: {state}"),
        state == "old" || state == "new",
    );
    o.note(format!(
        "temp files right after the kill: {:?}",
        release::leftover_temps(dir, "app")
    ));
    let mut again = start(ctx, dir, &app, args, "restart")?;
    let prober = Prober::start(again.addr, ctx.probe)?;
    let served = again.greet_until(VERDICT, |g| g.build == new_build);
    // At least a second of probes, also when the new build served from the start.
    std::thread::sleep(Duration::from_secs(1));
    let probe = prober.finish();
    let left = release::leftover_temps(dir, "app");
    o.check(
        format!("no temp file after the next start and its install: {left:?}"),
        left.is_empty(),
    );
    let state = binary_is(&app, old, new);
    o.check(
        format!(
            "next master installed the release again: {} serves, binary is {state}",
            served.as_ref().map_or("nobody", |g| g.build.as_str())
        ),
        served.is_some_and(|g| g.build == new_build) && state == "new",
    );
    o.probes(&probe, "restarted master's life", None);
    if let Some(l) = log_first(&again.log, "removed a leftover") {
        o.note(format!("next master: {l}"));
    }
    let stopped = again.stop();
    o.check(
        format!("nothing left after the stop: {:?}", stopped.leftovers),
        stopped.leftovers.is_empty(),
    );
    Ok(())
}

/// A case directory with `app` = the old hello build.
fn hello_dir(ctx: &Ctx, name: &str) -> Result<(PathBuf, PathBuf), String> {
    let dir = ctx.tmp.sub(&format!("run{}-{name}", ctx.run))?;
    let app = dir.join("app");
    std::fs::copy(&ctx.hello[0], &app).map_err(|e| format!("copying the old build: {e}"))?;
    Ok((dir, app))
}

pub(super) fn kill_master_mid_download(ctx: &mut Ctx) -> Result<Outcome, String> {
    let mut o = Outcome::new("SIGKILL the master mid-download (HTTP, nginx limit_rate)");
    let (dir, app) = hello_dir(ctx, "kill-download")?;
    let rel = format!("slow/r{}-kd/app", ctx.run);
    let args = vec![
        "--url".into(),
        ctx.nginx.url(&rel),
        "--allow-insecure-transport".into(),
        "--interval".into(),
        "1".into(),
    ];
    let server = start(ctx, &dir, &app, &args, "first")?;
    let prober = Prober::start(server.addr, ctx.probe)?;
    ctx.nginx.publish(&rel, &ctx.hello[1], &ctx.sha[1])?;
    let size = std::fs::metadata(&ctx.hello[1]).map_or(0, |m| m.len());
    let got = wait_for(VERDICT, || {
        release::staged_bytes(&dir, "app").filter(|&n| n >= size / 4)
    });
    let probe = prober.finish();
    procs::signal(server.master_pid(), libc::SIGKILL).map_err(|e| e.to_string())?;
    o.how = format!(
        "`--url` on nginx's `/slow/` ({}); SIGKILL when the staged temp file held {} of {} bytes",
        ctx.slow_rate,
        got.map_or("?".into(), |n| n.to_string()),
        size
    );
    o.check("the download was caught in progress", got.is_some());
    o.probes(&probe, "before the kill", None);
    let pair = (ctx.sha[0].as_str(), ctx.sha[1].as_str());
    after_master_death(ctx, &mut o, server, &dir, &args, pair, "ft-2")?;
    Ok(o)
}

/// Where [`kill_master_mid_install`] strikes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum At {
    /// The staged file is closed after writing: staging is done, the test-run not begun.
    Staged,
    /// The staged file is opened again after that: the test-run's exec.
    TestRun,
    /// `app.prev-<random>.tmp` is linked: inside the install, before its renames.
    PrevLink,
}

/// SIGKILL of the master at an install step seen by inotify.
pub(super) fn kill_master_mid_install(ctx: &mut Ctx, at: At) -> Result<Outcome, String> {
    let mut o = Outcome::new(match at {
        At::Staged => "SIGKILL the master between stage and rename (staging done, before the test-run)",
        At::TestRun => "SIGKILL the master between stage and rename (at the test-run's exec)",
        At::PrevLink => {
            "SIGKILL the master inside the install (as `app.prev-*.tmp` is linked, before the renames)"
        }
    });
    let name = match at {
        At::Staged => "kill-staged",
        At::TestRun => "kill-testrun",
        At::PrevLink => "kill-prev",
    };
    let (dir, app) = hello_dir(ctx, name)?;
    let next = ctx.tmp.path().join(format!("run{}-{name}.next", ctx.run));
    let args = vec!["--watch".into(), next.display().to_string()];
    let server = start(ctx, &dir, &app, &args, "first")?;
    let prober = Prober::start(server.addr, ctx.probe)?;
    let staged = |n: &str| n.starts_with(".app.upshift-");
    let (mask, hit): (u32, EventFilter) = match at {
        At::PrevLink => (
            IN_CREATE,
            Box::new(|n, _| n.starts_with("app.prev-") && n.ends_with(".tmp")),
        ),
        At::Staged => (
            IN_CLOSE_WRITE,
            Box::new(move |n, m| m & IN_CLOSE_WRITE != 0 && staged(n)),
        ),
        At::TestRun => {
            let written = std::sync::atomic::AtomicBool::new(false);
            (
                IN_CLOSE_WRITE | IN_OPEN,
                Box::new(move |n, m| {
                    use std::sync::atomic::Ordering::SeqCst;
                    if !staged(n) {
                        return false;
                    }
                    if m & IN_CLOSE_WRITE != 0 {
                        written.store(true, SeqCst);
                        return false;
                    }
                    m & IN_OPEN != 0 && written.load(SeqCst)
                }),
            )
        }
    };
    let killer = KillOnEvent::start(&dir, server.master_pid(), mask, hit)?;
    let published = release::publish_by_rename(&ctx.hello[1], &next)?;
    let fired = wait_for(VERDICT, || killer.fired());
    drop(killer);
    let probe = prober.finish();
    o.how = match at {
        At::PrevLink => {
            "inotify IN_CREATE of `app.prev-*.tmp` in the binary's directory → SIGKILL".into()
        }
        At::Staged => "inotify IN_CLOSE_WRITE of the staged `.app.upshift-*.tmp` (staging done; \
                       the test-run, ≥ 5 ms, comes before any rename) → SIGKILL"
            .into(),
        At::TestRun => "inotify IN_OPEN of the staged file after its IN_CLOSE_WRITE: the \
                        test-run's execve → SIGKILL"
            .into(),
    };
    o.check("the kill fired at that step", fired.is_some());
    let Some(fired) = fired else {
        return Ok(o);
    };
    o.note(format!(
        "SIGKILL sent {:.1} ms after the publish, on event {:#x} for {}",
        (fired.at - published).as_secs_f64() * 1e3,
        fired.mask,
        fired.name
    ));
    o.probes(&probe, "before the kill", Some(fired.at));
    let pair = (ctx.sha[0].as_str(), ctx.sha[1].as_str());
    after_master_death(ctx, &mut o, server, &dir, &args, pair, "ft-2")?;
    Ok(o)
}

/// Which inotify events (file name, mask) fire the kill.
type EventFilter = Box<dyn Fn(&str, u32) -> bool + Send>;

/// A fixture server watching `<case>.next`, with a starts file; returns it and its paths.
fn fixture_server(
    ctx: &Ctx,
    name: &str,
    extra: &[&str],
) -> Result<(Server, PathBuf, PathBuf, PathBuf), String> {
    let dir = ctx.tmp.sub(&format!("run{}-{name}", ctx.run))?;
    let app = dir.join("app");
    std::fs::copy(&ctx.fixture, &app).map_err(|e| format!("copying the fixture: {e}"))?;
    let next = ctx.tmp.path().join(format!("run{}-{name}.next", ctx.run));
    let starts = ctx.tmp.path().join(format!("run{}-{name}.starts", ctx.run));
    let mut args: Vec<String> = vec![
        "--watch".into(),
        next.display().to_string(),
        "--starts-file".into(),
        starts.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let server = start(ctx, &dir, &app, &args, "fixture")?;
    Ok((server, dir, next, starts))
}

/// Common end of the worker cases: the old binary restored, the old build serving, the release
/// rolled back, nothing stray.
fn rolled_back(o: &mut Outcome, server: &mut Server, dir: &Path, old: &str, new: &str) {
    let line = wait_for(VERDICT, || log_first(&server.log, "rolled back: "));
    o.check(
        format!(
            "rolled back: {}",
            line.as_deref().unwrap_or("no rollback logged")
        ),
        line.is_some(),
    );
    let back = server.greet_until(VERDICT, |g| g.build == "base");
    let state = binary_is(&dir.join("app"), old, new);
    o.check(
        format!(
            "old build serves ({}) and the binary on disk is {state}",
            back.as_ref()
                .map_or("nobody".into(), |g| format!("pid {}", g.pid))
        ),
        back.is_some() && state == "old",
    );
    o.check("master alive", server.master_alive());
    std::thread::sleep(Duration::from_secs(2));
    let stray = procs::strays(dir, server.master_pid());
    o.check(
        format!("no orphan or stray process: {stray:?}"),
        stray.is_empty(),
    );
    let left = release::leftover_temps(dir, "app");
    o.check(format!("no temp file: {left:?}"), left.is_empty());
}

pub(super) fn kill_worker_before_ready(ctx: &mut Ctx) -> Result<Outcome, String> {
    let mut o = Outcome::new("SIGKILL the new worker before it is ready");
    let (mut server, dir, next, starts) =
        fixture_server(ctx, "worker-early", &["--ready-timeout-ms", "20000"])?;
    let first = server.greet()?;
    let prober = Prober::start(server.addr, ctx.probe)?;
    let rel = ctx.tmp.path().join(format!("run{}-slow-ready", ctx.run));
    release::stamped_fixture(&ctx.fixture, &rel, "v2:slow-ready 8000")?;
    let (new_sha, _) = release::sha256(&rel)?;
    release::publish_by_rename(&rel, &next)?;
    // The fixture appends `<pid> <generation> <behavior>` as each worker's first act.
    let early = wait_for(VERDICT, || {
        let text = std::fs::read_to_string(&starts).ok()?;
        text.lines().find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 3 && w[1] == "2" && w[2].starts_with("SlowReady"))
                .then(|| w[0].parse::<u32>().ok())
                .flatten()
        })
    });
    o.how =
        "release stamped `slow-ready 8000` (the fixture sleeps 8 s before serving); its worker \
             found in the fixture's starts file and SIGKILLed during that sleep"
            .into();
    let Some(pid) = early else {
        o.check("the new worker was seen starting", false);
        return Ok(o);
    };
    // Only the first worker has logged `worker ready`: generation 2 is still starting.
    let was_starting = log_lines(&server.log, "worker ready").len() == 1;
    procs::signal(pid, libc::SIGKILL).map_err(|e| format!("SIGKILL {pid}: {e}"))?;
    o.check(
        format!("worker {pid} killed before it was ready"),
        was_starting,
    );
    rolled_back(&mut o, &mut server, &dir, &ctx.fixture_sha, &new_sha);
    let probe = prober.finish();
    o.probes(&probe, "throughout", None);
    o.check(
        format!(
            "the old worker {} never stopped serving: {}",
            first.pid,
            probe.sequence()
        ),
        probe.seen.iter().all(|s| s.pid == first.pid),
    );
    Ok(o)
}

pub(super) fn kill_worker_after_ready(ctx: &mut Ctx) -> Result<Outcome, String> {
    let mut o = Outcome::new("SIGKILL the new worker after it is ready (probation)");
    let (mut server, dir, next, _) =
        fixture_server(ctx, "worker-late", &["--probation-ms", "8000"])?;
    let prober = Prober::start(server.addr, ctx.probe)?;
    let rel = ctx.tmp.path().join(format!("run{}-v2", ctx.run));
    release::stamped_fixture(&ctx.fixture, &rel, "v2")?;
    let (new_sha, _) = release::sha256(&rel)?;
    release::publish_by_rename(&rel, &next)?;
    let v2 = server.greet_until(VERDICT, |g| g.build == "v2");
    o.how =
        "release stamped `v2` (behaves); once it answers, within its 8 s probation, SIGKILL".into();
    let Some(v2) = v2.filter(|g| g.build == "v2") else {
        o.check("the new build served", false);
        return Ok(o);
    };
    procs::signal(v2.pid, libc::SIGKILL).map_err(|e| format!("SIGKILL {}: {e}", v2.pid))?;
    rolled_back(&mut o, &mut server, &dir, &ctx.fixture_sha, &new_sha);
    let probe = prober.finish();
    // A probe in flight on the killed process is lost with it; new connections wait in the
    // master's listen backlog for the rollback's worker.
    o.check(
        format!(
            "at most the probe in flight on the killed worker failed: {} of {} (longest gap {} \
             ms, the rollback's restart); served {}",
            probe.failures,
            probe.probes,
            probe.longest_gap.as_millis(),
            probe.sequence()
        ),
        probe.failures <= 1,
    );
    Ok(o)
}

pub(super) fn sigstop_during_drain(ctx: &mut Ctx) -> Result<Outcome, String> {
    let mut o = Outcome::new("SIGSTOP the old worker during its drain");
    let (dir, app) = hello_dir(ctx, "sigstop")?;
    let drain = Duration::from_secs(3);
    let args = vec!["--drain-timeout".into(), drain.as_secs().to_string()];
    let mut server = start(ctx, &dir, &app, &args, "hello")?;
    // An idle keep-alive connection to the old worker: its drain waits out the 1 s idle grace,
    // which leaves time to freeze it mid-drain.
    let (old, keep) = crate::httpget::keep_alive(server.addr)?;
    let prober = Prober::start(server.addr, ctx.probe)?;
    procs::signal(server.master_pid(), libc::SIGUSR2).map_err(|e| e.to_string())?;
    let newer = wait_for(Duration::from_secs(20), || {
        server.greet().ok().filter(|g| g.pid != old)
    });
    let stopped_at = Instant::now();
    procs::signal(old, libc::SIGSTOP).map_err(|e| format!("SIGSTOP {old}: {e}"))?;
    // The stop takes effect when the process next runs in the kernel: give it 200 ms.
    let frozen = |s: Option<char>| matches!(s, Some('T') | Some('t'));
    let state = wait_for(Duration::from_millis(200), || {
        let s = procs::state_and_ppid(old).map(|(s, _)| s);
        frozen(s).then_some(s)
    })
    .unwrap_or_else(|| procs::state_and_ppid(old).map(|(s, _)| s));
    o.how = format!(
        "`--drain-timeout {}`; an idle keep-alive connection held on the old worker; SIGUSR2; \
         SIGSTOP to the old worker the moment the new one answered",
        drain.as_secs()
    );
    o.check(
        format!(
            "old worker {old} frozen mid-drain (state {})",
            state.map_or("gone".into(), |c| c.to_string())
        ),
        frozen(state),
    );
    let gone = wait_for(drain + Duration::from_secs(10), || {
        procs::state_and_ppid(old).is_none().then(Instant::now)
    });
    drop(keep);
    let after = gone.map(|t| t - stopped_at);
    let killed = log_first(&server.log, "still draining after");
    o.check(
        format!(
            "SIGKILLed at the drain timeout: gone {} after the SIGSTOP; master: {}",
            after.map_or("never".into(), |d| format!("{} ms", d.as_millis())),
            killed.as_deref().unwrap_or("no drain-timeout line")
        ),
        killed.is_some() && after.is_some_and(|d| d <= drain + Duration::from_secs(2)),
    );
    let now = server.greet().ok();
    o.check(
        format!(
            "new worker serving: {}",
            now.as_ref().map_or("nobody".into(), |g| format!(
                "pid {} gen {}",
                g.pid, g.generation
            ))
        ),
        newer.is_some() && now.is_some_and(|g| g.pid != old),
    );
    let probe = prober.finish();
    o.probes(&probe, "throughout", None);
    let stray = procs::strays(&dir, server.master_pid());
    o.check(format!("no stray process: {stray:?}"), stray.is_empty());
    let stopped = server.stop();
    o.check(
        format!("nothing left after the stop: {:?}", stopped.leftovers),
        stopped.leftovers.is_empty(),
    );
    Ok(o)
}

/// Disk full: the binary's directory is a tmpfs with room for the binary and 4 MiB more.
pub(super) fn disk_full(ctx: &mut Ctx, http: bool) -> Result<Outcome, String> {
    let mut o = Outcome::new(if http {
        "Disk full (HTTP fetcher): binary's directory on a small tmpfs"
    } else {
        "Disk full (File fetcher): binary's directory on a small tmpfs"
    });
    let name = if http { "full-http" } else { "full-file" };
    let dir = ctx.tmp.sub(&format!("run{}-{name}", ctx.run))?;
    let size = std::fs::metadata(&ctx.hello[0]).map_or(0, |m| m.len());
    let fs = Tmpfs::mount(&dir, size + (4 << 20))?;
    let app = dir.join("app");
    std::fs::copy(&ctx.hello[0], &app).map_err(|e| format!("copying to the tmpfs: {e}"))?;
    let free_before = fs.free_bytes();
    let next = ctx.tmp.path().join(format!("run{}-{name}.next", ctx.run));
    let rel = format!("r{}-full/app", ctx.run);
    let args: Vec<String> = match http {
        true => vec![
            "--url".into(),
            ctx.nginx.url(&rel),
            "--allow-insecure-transport".into(),
            "--interval".into(),
            "1".into(),
        ],
        false => vec!["--watch".into(), next.display().to_string()],
    };
    let mut server = start(ctx, &dir, &app, &args, "hello")?;
    let prober = Prober::start(server.addr, ctx.probe)?;
    match http {
        true => ctx.nginx.publish(&rel, &ctx.hello[1], &ctx.sha[1])?,
        false => release::publish_by_rename(&ctx.hello[1], &next).map(|_| ())?,
    }
    o.how = format!(
        "tmpfs of {} MiB holding the {:.1} MiB binary; the release needs another {:.1} MiB; then \
         the tmpfs is grown (remount) to 3× the binary",
        (size + (4 << 20)) >> 20,
        size as f64 / 1048576.0,
        size as f64 / 1048576.0
    );
    let refused = wait_for(VERDICT, || not_installed(&server.log));
    o.check(
        format!(
            "refused: {}",
            refused.as_deref().unwrap_or("no rejection logged")
        ),
        refused
            .as_deref()
            .is_some_and(|l| l.contains("No space left")),
    );
    std::thread::sleep(Duration::from_millis(500));
    let left = release::leftover_temps(&dir, "app");
    let state = binary_is(&app, &ctx.sha[0], &ctx.sha[1]);
    let state_bytes = release::state_file_blocks(&dir, "app");
    o.check(
        format!(
            "nothing lost: binary {state}, temp files {left:?}, free space {} → {} bytes \
             ({state_bytes} of them the state file)",
            free_before.unwrap_or(0),
            fs.free_bytes().unwrap_or(0)
        ),
        state == "old"
            && left.is_empty()
            && fs.free_bytes().map(|f| f + state_bytes) == free_before,
    );
    fs.resize(size * 3)?;
    // The master backs off between attempts (2 s, 4 s, 8 s …): "on its own" is within the
    // backoff it announced last, plus 10 s for the install itself.
    let backoff = last_backoff(&server.log).unwrap_or_default();
    let own = backoff + Duration::from_secs(10);
    let auto = server.greet_until(own, |g| g.build == "ft-2");
    let auto = auto.is_some_and(|g| g.build == "ft-2");
    let mut touched = false;
    if !auto && !http {
        release::touch(&next, Duration::from_secs(5))?;
        touched = true;
    }
    let served = auto
        || server
            .greet_until(VERDICT, |g| g.build == "ft-2")
            .is_some_and(|g| g.build == "ft-2");
    o.check(
        format!(
            "retried once there was room: {}",
            match (auto, touched, served) {
                (true, _, _) => format!(
                    "yes, on its own (the last backoff announced was {:.1} s)",
                    backoff.as_secs_f64()
                ),
                (false, true, true) => {
                    "only after the release was touched (not on its own)".to_string()
                }
                (false, _, _) => "no".to_string(),
            }
        ),
        auto,
    );
    let probe = prober.finish();
    o.probes(&probe, "throughout", None);
    let stopped = server.stop();
    o.check(
        format!("nothing left after the stop: {:?}", stopped.leftovers),
        stopped.leftovers.is_empty(),
    );
    drop(fs);
    Ok(o)
}

/// The backoff the master announced last before trying a postponed release again
/// (`retry_in=8.2s` in its "trying the release again after a backoff" line).
fn last_backoff(log: &std::path::Path) -> Option<Duration> {
    let line = log_lines(log, "trying the release again after a backoff").pop()?;
    let value = line.split("retry_in=").nth(1)?.split_whitespace().next()?;
    let (number, unit) = match value.strip_suffix("ms") {
        Some(ms) => (ms, 1e-3),
        None => (value.strip_suffix('s')?, 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .map(|n| Duration::from_secs_f64(n * unit))
}

/// The first line saying a release was not installed: refused for good (`rejected: `) or, for a
/// fault of this machine or the transfer, postponed (`not installed this time: `).
fn not_installed(log: &std::path::Path) -> Option<String> {
    log_first(log, "rejected: ").or_else(|| log_first(log, "not installed this time: "))
}

pub(super) fn release_server_dies(ctx: &mut Ctx) -> Result<Outcome, String> {
    let mut o = Outcome::new("The release server dies mid-body (SIGKILL nginx mid-transfer)");
    let (dir, app) = hello_dir(ctx, "server-dies")?;
    let rel = format!("slow/r{}-sd/app", ctx.run);
    let args = vec![
        "--url".into(),
        ctx.nginx.url(&rel),
        "--allow-insecure-transport".into(),
        "--interval".into(),
        "1".into(),
    ];
    let mut server = start(ctx, &dir, &app, &args, "hello")?;
    let prober = Prober::start(server.addr, ctx.probe)?;
    ctx.nginx.publish(&rel, &ctx.hello[1], &ctx.sha[1])?;
    let size = std::fs::metadata(&ctx.hello[1]).map_or(0, |m| m.len());
    let got = wait_for(VERDICT, || {
        release::staged_bytes(&dir, "app").filter(|&n| n >= size / 4)
    });
    ctx.nginx.kill();
    let down = Duration::from_secs(8);
    o.how = format!(
        "`--url` on nginx's `/slow/` ({}); nginx SIGKILLed when {} of {size} bytes were staged; \
         restarted on the same port {} s later",
        ctx.slow_rate,
        got.map_or("?".into(), |n| n.to_string()),
        down.as_secs()
    );
    let refused = wait_for(Duration::from_secs(10), || not_installed(&server.log));
    o.check(
        format!(
            "clear error: {}",
            refused.as_deref().unwrap_or("none logged")
        ),
        refused.is_some(),
    );
    std::thread::sleep(down);
    let left = release::leftover_temps(&dir, "app");
    let state = binary_is(&app, &ctx.sha[0], &ctx.sha[1]);
    let retries = log_lines(&server.log, "retrying in");
    o.check(
        format!(
            "while the server was down: binary {state}, temp files {left:?}, {} failed checks \
             ({})",
            retries.len(),
            retries
                .iter()
                .filter_map(|l| l.rsplit("retrying in ").next())
                .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        state == "old" && left.is_empty() && !retries.is_empty(),
    );
    ctx.nginx.restart()?;
    let served = server.greet_until(VERDICT + VERDICT, |g| g.build == "ft-2");
    o.check(
        "retried after the server came back: the release was installed and serves",
        served.is_some_and(|g| g.build == "ft-2"),
    );
    let probe = prober.finish();
    o.probes(&probe, "throughout", None);
    let left = release::leftover_temps(&dir, "app");
    o.check(
        format!("no temp file at the end: {left:?}"),
        left.is_empty(),
    );
    let stopped = server.stop();
    o.check(
        format!("nothing left after the stop: {:?}", stopped.leftovers),
        stopped.leftovers.is_empty(),
    );
    Ok(o)
}
