//! `fleet`: what a fleet of upshift hosts costs its release server (issue 16, part 3).
//!
//! `--hosts` hosts (default 1,000) per group are simulated in this process as tokio tasks
//! (`fleet_hosts.rs`), each with its own instance of a real fetcher (`upshift-http`,
//! `upshift-s3`, `upshift-github`) polled through `Fetcher::check` as the master's poll loop
//! polls. The release servers are real (`fleet_origins.rs`): nginx serving a directory, s3s-fs,
//! the GitHub fixture; what they served is counted at the origin (nginx's access log, a counting
//! proxy in front of s3s-fs, the fixture's request log), not by the hosts.
//!
//! Two phases:
//!
//! 1. **Idle fleet and thundering herd** (`--idle` seconds per origin, origins started
//!    `--stagger` seconds apart): per origin, a group whose first checks are spread over one
//!    `--interval` ("spread": a fleet that has been running for a while; its steady state is the
//!    idle figure) and a group whose first checks are all at the same instant ("herd": hosts
//!    started together; the master does not jitter its first check). Nothing new is published.
//!    Beside them, for GitHub, a group without a token against a fixture with GitHub's
//!    unauthenticated limit (60 an hour; the window shortened to `--gh-window` so that its reset
//!    falls within the run), while the groups with a token run against GitHub's authenticated
//!    limit (5,000 an hour).
//! 2. **A release**, per origin in turn: a fleet polling every `--release-interval` takes a new
//!    release (a real `hello` build, ~22 MiB) in a staged rollout, 5 % → 25 % → 100 % raised
//!    every `--rollout-step` seconds: through the rollout document for HTTP
//!    (`HttpFetcher::rollout_url`), the host-side percentage for S3 and GitHub (as
//!    `Upgrader::rollout_percent` changed by the operator). GitHub's limit is not enforced here
//!    (the rollout's timings would stop at it); the requests that would spend it are counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::Scenario;
use crate::builds::{build_github_fixture, build_hello, TempDir};
use crate::machine::CpuWindow;
use crate::opts::{OptSpec, Opts};
use crate::originlog::{unix, Hit};
use crate::report::Report;
use crate::{procfs, procs, release};

#[path = "fleet_hosts.rs"]
mod hosts;
#[path = "fleet_origins.rs"]
mod origins;
#[path = "fleet_report.rs"]
mod report;

use hosts::{Fleet, Host, HostLog};
use origins::{DeltaFiles, Kind, Origin, FIRST_VERSION, PUBLISHER_TOKEN};

pub static SPEC: Scenario = Scenario {
    name: "fleet",
    summary: "a simulated fleet (1,000 hosts, real fetchers, in-process) against nginx, s3s-fs \
              and the GitHub fixture, counted at the origin: idle cost, a staged release, the \
              thundering herd, GitHub rate limits",
    options: &OPTIONS,
    run,
};

static OPTIONS: [OptSpec; 13] = [
    OptSpec {
        name: "--runs",
        value: Some("N"),
        default: Some("1"),
        help: "repetitions (fleet is one long run: 1 only)",
    },
    OptSpec {
        name: "--hosts",
        value: Some("N"),
        default: Some("1000"),
        help: "hosts per group",
    },
    OptSpec {
        name: "--interval",
        value: Some("SECS"),
        default: Some("60"),
        help: "poll interval of the idle and herd groups",
    },
    OptSpec {
        name: "--idle",
        value: Some("SECS"),
        default: Some("240"),
        help: "how long each origin's idle and herd groups run",
    },
    OptSpec {
        name: "--stagger",
        value: Some("SECS|0"),
        default: Some("20"),
        help: "between the origins' starts in the idle phase, so that their herds do not meet",
    },
    OptSpec {
        name: "--release-interval",
        value: Some("SECS"),
        default: Some("10"),
        help: "poll interval during the release (shortened to keep the run short)",
    },
    OptSpec {
        name: "--rollout-step",
        value: Some("SECS"),
        default: Some("15"),
        help: "between the rollout's steps (5 % → 25 % → 100 %)",
    },
    OptSpec {
        name: "--settle",
        value: Some("SECS"),
        default: Some("30"),
        help: "after the 100 % step, stop waiting once no host has downloaded for this long",
    },
    OptSpec {
        name: "--release-limit",
        value: Some("SECS"),
        default: Some("200"),
        help: "after the 100 % step, stop waiting for the release after this long in any case",
    },
    OptSpec {
        name: "--gh-window",
        value: Some("N"),
        default: Some("120"),
        help: "the unauthenticated GitHub limit's window in seconds (GitHub's: 3600), so that a \
               reset is seen",
    },
    OptSpec {
        name: "--origins",
        value: Some("LIST"),
        default: Some("http,s3,github"),
        help: "which origins, comma-separated",
    },
    OptSpec {
        name: "--phases",
        value: Some("LIST"),
        default: Some("idle,release"),
        help: "which phases, comma-separated (idle includes the herd and the rate limits)",
    },
    OptSpec {
        name: "--quick",
        value: None,
        default: None,
        help: "for development: 100 hosts, 10 s interval, 40 s idle, 5 s stagger, 5 s release \
               interval, 10 s steps, 15 s settle, 60 s release limit, 20 s GitHub window",
    },
];

/// The settings in effect (`--quick` replaces the others).
pub struct Settings {
    pub hosts: usize,
    pub interval: Duration,
    pub idle: Duration,
    pub stagger: Duration,
    pub release_interval: Duration,
    pub step: Duration,
    pub settle: Duration,
    pub limit: Duration,
    pub gh_window: u64,
    pub origins: Vec<Kind>,
    pub idle_phase: bool,
    pub release_phase: bool,
    pub quick: bool,
}

impl Settings {
    fn from(opts: &Opts) -> Result<Settings, String> {
        let mut origins = Vec::new();
        for name in opts.str("--origins").unwrap_or("").split(',') {
            let k = Kind::parse(name.trim())
                .ok_or_else(|| format!("--origins: {name:?} is not http, s3 or github"))?;
            if !origins.contains(&k) {
                origins.push(k);
            }
        }
        let phases: Vec<&str> = opts
            .str("--phases")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .collect();
        if let Some(p) = phases.iter().find(|p| !matches!(**p, "idle" | "release")) {
            return Err(format!("--phases: {p:?} is not idle or release"));
        }
        let (idle_phase, release_phase) = (phases.contains(&"idle"), phases.contains(&"release"));
        let secs = Duration::from_secs;
        let quick = opts.flag("--quick");
        let s = match quick {
            true => Settings {
                hosts: 100,
                interval: secs(10),
                idle: secs(40),
                stagger: secs(5),
                release_interval: secs(5),
                step: secs(10),
                settle: secs(15),
                limit: secs(60),
                gh_window: 20,
                origins,
                idle_phase,
                release_phase,
                quick,
            },
            false => Settings {
                hosts: opts.count("--hosts")? as usize,
                interval: opts.secs("--interval")?,
                idle: opts.secs("--idle")?,
                stagger: opts.secs_or_zero("--stagger")?,
                release_interval: opts.secs("--release-interval")?,
                step: opts.secs("--rollout-step")?,
                settle: opts.secs("--settle")?,
                limit: opts.secs("--release-limit")?,
                gh_window: opts.count("--gh-window")?,
                origins,
                idle_phase,
                release_phase,
                quick,
            },
        };
        Ok(s)
    }

    fn has(&self, k: Kind) -> bool {
        self.origins.contains(&k)
    }
}

/// One group of hosts, run to its end, and what its origin served it.
pub struct GroupRun {
    pub kind: Kind,
    pub group: &'static str,
    pub hosts: usize,
    pub interval: Duration,
    /// Unix seconds: the group's clock (its first checks are at `start`, or spread after it)
    /// and when it was stopped.
    pub start: f64,
    pub end: f64,
    pub logs: Vec<HostLog>,
    /// The group's requests at the origin.
    pub hits: Vec<Hit>,
    /// Of those, the GETs of the release file (whole or cut short).
    pub bodies: Vec<Hit>,
    /// Of those, the ones that spent GitHub's rate limit.
    pub quota: u64,
    /// The most downloads in progress at once, as the hosts counted them.
    pub peak_downloading: usize,
}

/// The release phase of one origin.
pub struct ReleaseRun {
    pub run: GroupRun,
    /// Unix seconds when the publish began and when it was done (what the server serves).
    pub publish_began: f64,
    pub published: f64,
    /// `(unix seconds, percent)`: the rollout's steps.
    pub steps: Vec<(f64, f64)>,
    pub size: u64,
    pub cpu: PhaseCpu,
}

/// Where the CPU went during a phase (averages, in CPUs).
#[derive(Clone, Copy, Debug, Default)]
pub struct PhaseCpu {
    pub secs: f64,
    /// The harness: every simulated host, and the S3 proxy.
    pub harness: f64,
    /// The release servers.
    pub servers: f64,
    /// Everything else on the machine (the other engineers' builds).
    pub others: f64,
}

pub struct Outcome {
    pub settings: Settings,
    pub idle: Vec<GroupRun>,
    pub idle_cpu: PhaseCpu,
    pub releases: Vec<ReleaseRun>,
    pub release_size: u64,
    /// What the release file is.
    pub release_what: String,
    /// Whether the hosts' TLS roots were cut down to one certificate ([`light_tls_roots`]).
    pub light_roots: bool,
}

fn run(opts: &Opts) -> Result<Report, String> {
    if opts.count("--runs")? != 1 {
        return Err("fleet is one long run: --runs must be 1".into());
    }
    let s = Settings::from(opts)?;
    let tmp = TempDir::new(opts.flag("--keep"))?;
    let builds_dir = tmp.sub("builds")?;
    // Two real builds that differ by their BUILD_ID: what every host runs, and what it is
    // released to (the deltas scenario's smallest kind of change).
    let hello = build_hello(
        &["fleet".to_string(), "fleet-next".to_string()],
        &builds_dir,
    )?;
    let fixture = match s.has(Kind::Github) {
        true => Some(build_github_fixture(&builds_dir)?),
        false => None,
    };
    // Release k: the next build with a trailer naming k (never loaded: it runs as the build), so
    // each is a distinct file of the build's size. 0 is what every host runs at the start: the
    // first build, with its own trailer.
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let images = [read(&hello[0])?, read(&hello[1])?];
    let releases_dir = tmp.sub("releases")?;
    let files: Vec<PathBuf> = (0..=s.origins.len() as u64)
        .map(|k| {
            let dir = releases_dir.join(k.to_string());
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            // Named `hello`: upshift-publish names the GitHub asset after it.
            let path = dir.join("hello");
            let image = &images[usize::from(k > 0)];
            release::write_exe(&path, &release::numbered(std::slice::from_ref(image), k))?;
            Ok(path)
        })
        .collect::<Result<_, String>>()?;
    raise_fd_limit();
    let light_roots = light_tls_roots(tmp.path());
    let hosts_rt = runtime(2, "fleet-host")?;
    let proxy_rt = runtime(2, "fleet-proxy")?;
    let outcome = hosts_rt.block_on(simulate(
        s,
        &tmp,
        fixture.as_deref(),
        &files,
        proxy_rt.handle(),
    ));
    // The hosts' tasks go with their runtime (a failed run leaves some behind).
    hosts_rt.shutdown_timeout(Duration::from_secs(5));
    proxy_rt.shutdown_timeout(Duration::from_secs(5));
    let mut outcome = outcome?;
    outcome.light_roots = light_roots;
    outcome.release_what = format!(
        "the `hello` example (BUILD_ID=fleet-next, a real build; the hosts run BUILD_ID=fleet) \
         with a trailer naming the release, {} bytes ({:.1} MiB)",
        outcome.release_size,
        outcome.release_size as f64 / 1048576.0
    );
    Ok(report::render(&super::command(&SPEC, opts), &outcome))
}

fn runtime(threads: usize, name: &str) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| format!("starting a tokio runtime: {e}"))
}

/// Every host holds a connection or two: lift the soft limit on open files to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Every host's HTTP client loads the system's CA roots when it is built, at its first check
/// (rustls-native-certs: `SSL_CERT_FILE`, `SSL_CERT_DIR`, else the system bundle). A real host
/// does that on its own CPU; 1,000 of them in the harness would stretch a herd over seconds of
/// the harness's two threads. Every origin here is plain http on loopback and no root is ever
/// used, so this process's roots are cut down to one certificate (the first of the system
/// bundle; some TLS stacks refuse an empty set). Done before any runtime thread exists.
fn light_tls_roots(dir: &Path) -> bool {
    let bundle = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let Ok(text) = std::fs::read_to_string(&bundle) else {
        return false;
    };
    const END: &str = "-----END CERTIFICATE-----";
    let (Some(begin), Some(end)) = (text.find("-----BEGIN CERTIFICATE-----"), text.find(END))
    else {
        return false;
    };
    let one = dir.join("one-root.pem");
    if begin > end || std::fs::write(&one, format!("{}\n", &text[begin..end + END.len()])).is_err()
    {
        return false;
    }
    std::env::set_var("SSL_CERT_FILE", &one);
    std::env::remove_var("SSL_CERT_DIR");
    true
}

fn now() -> f64 {
    unix(SystemTime::now())
}

fn sha256_of(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Sleeps until Unix time `t`, returning early with `Err` if the harness is interrupted.
async fn sleep_until(t: f64) -> Result<(), String> {
    loop {
        procs::check()?;
        let left = t - now();
        if left <= 0.0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs_f64(left.min(0.1))).await;
    }
}

async fn simulate(
    s: Settings,
    tmp: &TempDir,
    fixture: Option<&Path>,
    files: &[PathBuf],
    proxy_rt: &tokio::runtime::Handle,
) -> Result<Outcome, String> {
    let initial = &files[0];
    let initial_sha = sha256_of(initial)?;
    let fixture_bin = || fixture.ok_or("the GitHub fixture was not built");
    let token = PUBLISHER_TOKEN.to_string();
    let mut origins = Vec::new();
    for kind in &s.origins {
        let o = match kind {
            Kind::Http => Origin::http(&tmp.sub("nginx")?)?,
            Kind::S3 => Origin::s3(&tmp.sub("s3")?, proxy_rt)?,
            // GitHub's authenticated limit: 5,000 requests an hour per token.
            Kind::Github => Origin::github(
                fixture_bin()?,
                &tmp.sub("github-token")?,
                &[
                    "--token".into(),
                    token.clone(),
                    "--rate-limit".into(),
                    "5000".into(),
                ],
                Some(&token),
            )?,
        };
        for group in ["spread", "herd"] {
            o.publish_initial(group, initial)?;
        }
        origins.push(o);
    }
    // GitHub's unauthenticated limit: 60 an hour per IP address (the whole fleet behind one).
    let anon = match s.has(Kind::Github) && s.idle_phase {
        true => {
            let args = [
                "--rate-limit".to_string(),
                "60".into(),
                "--rate-window".into(),
                s.gh_window.to_string(),
            ];
            let o = Origin::github(fixture_bin()?, &tmp.sub("github-anon")?, &args, None)?;
            o.publish_initial("anon", initial)?;
            Some(o)
        }
        false => None,
    };
    // The HTTP fetcher does not trust validators of a file modified in the second it was served.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let (idle, idle_cpu) = match s.idle_phase {
        true => {
            eprintln!(
                "upshift-bench: fleet: idle phase, {} hosts per group, {} s",
                s.hosts,
                (s.idle + s.stagger * (s.origins.len().max(1) as u32 - 1)).as_secs()
            );
            let pids: Vec<u32> = origins
                .iter()
                .chain(anon.as_ref())
                .filter_map(Origin::pid)
                .collect();
            let cpu = CpuMeter::start(&pids);
            let idle = idle_phase(&s, &origins, anon.as_ref(), &initial_sha).await?;
            (idle, cpu.finish())
        }
        false => (Vec::new(), PhaseCpu::default()),
    };
    drop(anon);

    let mut releases = Vec::new();
    let releasing = origins.iter().filter(|_| s.release_phase);
    for (k, origin) in releasing.enumerate() {
        procs::check()?;
        // GitHub: a fixture whose limit is not enforced (see the module documentation).
        let own = match origin.kind {
            Kind::Github => Some(Origin::github(
                fixture_bin()?,
                &tmp.sub("github-release")?,
                &["--token".into(), token.clone()],
                Some(&token),
            )?),
            _ => None,
        };
        let origin = own.as_ref().unwrap_or(origin);
        origin.publish_initial("rollout", initial)?;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        eprintln!(
            "upshift-bench: fleet: release through {}",
            origin.kind.name()
        );
        let cpu = CpuMeter::start(&origin.pid().into_iter().collect::<Vec<_>>());
        let mut r = release_phase(&s, origin, initial, &initial_sha, &files[k + 1], k).await?;
        r.cpu = cpu.finish();
        releases.push(r);
    }
    let release_size = std::fs::metadata(&files[1]).map_or(0, |m| m.len());
    Ok(Outcome {
        settings: s,
        idle,
        idle_cpu,
        releases,
        release_size,
        release_what: String::new(),
        light_roots: false,
    })
}

/// Starts `hosts` hosts of `group` polling `origin`: host `i`'s first check `first(i)` seconds
/// after Unix time `start`.
fn spawn_group(
    origin: &Origin,
    group: &'static str,
    hosts: usize,
    interval: Duration,
    running: Running<'_>,
    start: f64,
    mut first: impl FnMut(usize) -> f64,
) -> Result<(Arc<Fleet>, Vec<tokio::task::JoinHandle<HostLog>>), String> {
    let Running {
        sha256: sha,
        image: base,
    } = running;
    let fleet = Fleet::new();
    let mut handles = Vec::with_capacity(hosts);
    for i in 0..hosts {
        let host = Host {
            name: format!("{}-{group}-{i:05}", origin.kind.name()),
            // Every other host looks for patches: one release measures both ways.
            fetcher: origin.fetcher(group, interval, i % 2 == 0)?,
            current: origin.current(sha),
            base: base.clone(),
            first: Duration::from_secs_f64((start + first(i) - now()).max(0.0)),
        };
        handles.push(tokio::spawn(hosts::run(host, fleet.clone())));
    }
    Ok((fleet, handles))
}

async fn join(handles: Vec<tokio::task::JoinHandle<HostLog>>) -> Result<Vec<HostLog>, String> {
    let mut logs = Vec::with_capacity(handles.len());
    for h in handles {
        logs.push(
            h.await
                .map_err(|e| format!("a simulated host failed: {e}"))?,
        );
    }
    Ok(logs)
}

/// The build every host of a group runs: its sha256, and its bytes (which patches apply to).
#[derive(Clone, Copy)]
struct Running<'a> {
    sha256: &'a str,
    image: &'a Arc<Vec<u8>>,
}

/// A random offset in `[0, interval)` for each host: a fleet whose polls are spread.
fn spread(interval: Duration, salt: &str) -> impl FnMut(usize) -> f64 {
    let mut rng = hosts::seed(salt);
    move |_| hosts::uniform(&mut rng) * interval.as_secs_f64()
}

struct Planned<'a> {
    origin: &'a Origin,
    group: &'static str,
    start: f64,
    end: f64,
    fleet: Arc<Fleet>,
    handles: Vec<tokio::task::JoinHandle<HostLog>>,
}

async fn idle_phase(
    s: &Settings,
    origins: &[Origin],
    anon: Option<&Origin>,
    sha: &str,
) -> Result<Vec<GroupRun>, String> {
    // A moment for the spawning: every group's clock starts after it.
    let t0 = now() + 2.0 + s.hosts as f64 * 1e-3;
    // Nothing new is published while idle: no host applies a patch, and needs no image.
    let no_image = Arc::new(Vec::new());
    let running = |sha256| Running {
        sha256,
        image: &no_image,
    };
    let idle = s.idle.as_secs_f64();
    let mut plans: Vec<Planned> = Vec::new();
    for (i, origin) in origins.iter().enumerate() {
        let start = t0 + s.stagger.as_secs_f64() * i as f64;
        for group in ["spread", "herd"] {
            let first: Box<dyn FnMut(usize) -> f64> = match group {
                "herd" => Box::new(|_| 0.0),
                _ => Box::new(spread(s.interval, group)),
            };
            let (fleet, handles) = spawn_group(
                origin,
                group,
                s.hosts,
                s.interval,
                running(sha),
                start,
                first,
            )?;
            plans.push(Planned {
                origin,
                group,
                start,
                end: start + idle,
                fleet,
                handles,
            });
        }
    }
    if let Some(origin) = anon {
        let first = spread(s.interval, "anon");
        let (fleet, handles) =
            spawn_group(origin, "anon", s.hosts, s.interval, running(sha), t0, first)?;
        plans.push(Planned {
            origin,
            group: "anon",
            start: t0,
            end: t0 + idle,
            fleet,
            handles,
        });
    }
    plans.sort_by(|a, b| a.end.total_cmp(&b.end));
    for p in &plans {
        sleep_until(p.end).await?;
        p.fleet.stop();
    }
    let mut runs = Vec::new();
    let mut logs = Vec::new();
    for p in &mut plans {
        logs.push(join(std::mem::take(&mut p.handles)).await?);
    }
    // nginx logs a request when it ends: give the last ones a moment.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut served: Vec<(*const Origin, Vec<Hit>)> = Vec::new();
    for (p, logs) in plans.iter().zip(logs) {
        let key = p.origin as *const Origin;
        if !served.iter().any(|(k, _)| *k == key) {
            served.push((key, p.origin.hits()?));
        }
        let all = served
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, h)| h.as_slice())
            .unwrap_or_default();
        runs.push(group_run(
            p.origin, p.group, s.interval, p.start, p.end, logs, all, &p.fleet,
        ));
    }
    Ok(runs)
}

#[allow(clippy::too_many_arguments)]
fn group_run(
    origin: &Origin,
    group: &'static str,
    interval: Duration,
    start: f64,
    end: f64,
    logs: Vec<HostLog>,
    all: &[Hit],
    fleet: &Fleet,
) -> GroupRun {
    let hits: Vec<Hit> = all
        .iter()
        .filter(|h| Origin::of_group(h, group))
        .cloned()
        .collect();
    let bodies = hits
        .iter()
        .filter(|h| origin.is_release_body(h, group))
        .cloned()
        .collect();
    let quota = hits.iter().filter(|h| origin.spends_quota(h)).count() as u64;
    GroupRun {
        kind: origin.kind,
        group,
        hosts: logs.len(),
        interval,
        start,
        end,
        logs,
        hits,
        bodies,
        quota,
        peak_downloading: fleet.peak_downloading(),
    }
}

async fn release_phase(
    s: &Settings,
    origin: &Origin,
    initial: &Path,
    sha: &str,
    file: &Path,
    k: usize,
) -> Result<ReleaseRun, String> {
    let group = "rollout";
    let n = s.hosts;
    let ri = s.release_interval;
    let start = now() + 1.0 + n as f64 * 1e-3;
    // The patch is made before the hosts start: publishing stays the visible step.
    let delta = DeltaFiles::make(initial, file)?;
    let base = std::fs::read(initial).map_err(|e| format!("{}: {e}", initial.display()))?;
    let base = Arc::new(base);
    let (fleet, handles) = spawn_group(
        origin,
        group,
        n,
        ri,
        Running {
            sha256: sha,
            image: &base,
        },
        start,
        spread(ri, "rollout"),
    )?;
    // Every host has polled once (its fetcher holds the installed release's validators).
    sleep_until(start + ri.as_secs_f64() * 1.5 + 1.0).await?;
    let version = format!("1.{}.0", k + 1);
    debug_assert_ne!(version, FIRST_VERSION);
    let publish_began = now();
    origin.set_rollout(group, 5.0, &fleet)?;
    origin.publish(group, file, &version, Some(&delta)).await?;
    let published = now();
    let step = s.step.as_secs_f64();
    let mut steps = vec![(published, 5.0)];
    for (i, p) in [25.0, 100.0].into_iter().enumerate() {
        sleep_until(published + step * (i + 1) as f64).await?;
        origin.set_rollout(group, p, &fleet)?;
        steps.push((now(), p));
    }
    // Until every host has it, or nobody has downloaded for `settle`, or `limit` has passed.
    let limit = now() + s.limit.as_secs_f64();
    let mut progress = (fleet.took(), now());
    while fleet.took() < n && now() < limit && now() - progress.1 < s.settle.as_secs_f64() {
        sleep_until(now() + 0.2).await?;
        if fleet.took() > progress.0 || fleet.downloading() > 0 {
            progress = (fleet.took(), now());
        }
    }
    let end = now();
    fleet.stop();
    let logs = join(handles).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = origin.hits()?;
    let size = std::fs::metadata(file).map_or(0, |m| m.len());
    Ok(ReleaseRun {
        run: group_run(origin, group, ri, start, end, logs, &all, &fleet),
        publish_began,
        published,
        steps,
        size,
        cpu: PhaseCpu::default(),
    })
}

/// CPU use over a phase: the harness (this process), the release servers (by pid), everyone else.
struct CpuMeter {
    window: CpuWindow,
    at: Instant,
    harness: f64,
    servers: Vec<(u32, f64)>,
}

impl CpuMeter {
    fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter {
            window: CpuWindow::start(),
            at: Instant::now(),
            harness: procfs::cpu_secs(std::process::id()).unwrap_or(0.0),
            servers: pids
                .iter()
                .map(|&p| (p, procfs::cpu_secs(p).unwrap_or(0.0)))
                .collect(),
        }
    }

    fn finish(&self) -> PhaseCpu {
        let secs = self.at.elapsed().as_secs_f64().max(1e-3);
        let harness = procfs::cpu_secs(std::process::id()).unwrap_or(0.0) - self.harness;
        let servers: f64 = self
            .servers
            .iter()
            .map(|(p, before)| procfs::cpu_secs(*p).map_or(0.0, |now| now - before))
            .sum();
        // The servers are not reaped yet, so the machine-wide figure counts them as "others".
        let others = (self.window.others_cpus_unrecorded() - servers / secs).max(0.0);
        crate::provenance::record_others_cpus(others);
        PhaseCpu {
            secs,
            harness: harness / secs,
            servers: servers / secs,
            others,
        }
    }
}
