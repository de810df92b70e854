//! The README's demo: an axum server that upgrades itself without dropping a request.
//!
//! ```text
//! cargo run --example hello -- --listen 127.0.0.1:8080
//! curl localhost:8080/            # hello from dev pid 12345 gen 1
//! curl localhost:8080/master      # dev: the BUILD_ID of the build the master runs
//! kill -USR2 <master pid>         # restart from the binary on disk, zero failed requests
//! kill -TERM <master pid>         # drain and exit
//! ```
//!
//! `BUILD_ID` is read at compile time (`BUILD_ID=v2 cargo build --example hello`), so two builds
//! are told apart by their answer. It is also the build id the master hands to its workers:
//! `GET /master` answers the master's (`unknown` when the master named none).
//!
//! `--url`, `--github` and `--s3` need the remote fetchers, which take most of the build time:
//! `cargo build --release --example hello --features remote-fetchers`. Without the feature they
//! are still accepted, and refused with that command.

use std::time::Duration;

use axum::extract::Query;
use axum::routing::get;
use axum::Router;

const BUILD_ID: &str = match option_env!("BUILD_ID") {
    Some(id) => id,
    None => "dev",
};

const USAGE: &str = "usage: hello [--listen ADDR]... [--watch PATH] [--url URL]
             [--github OWNER/REPO [--github-api URL]] [--s3 s3://BUCKET/KEY [--s3-endpoint URL]]
             [--interval SECS] [--drain-timeout SECS] [--ready-timeout SECS] [--probation SECS]
             [--rollout PERCENT] [--host-name NAME] [--minisign-key FILE]
             [--allow-insecure-transport] [--unix-mode OCTAL]

  --listen ADDR          host:port or a Unix socket path; repeatable (default 127.0.0.1:8080)
  --unix-mode OCTAL      the permission bits of the Unix socket files bound (e.g. 660)
  --watch PATH           upgrade when a new build is copied to PATH (PATH.sha256 is checked if present)
  --url URL              upgrade from an HTTP(S) URL (checksum from URL.sha256, signature URL.minisig)
  --github OWNER/REPO    upgrade from GitHub releases newer than this build (GITHUB_TOKEN if set)
  --github-api URL       the GitHub API base (GitHub Enterprise, a local fixture)
  --s3 s3://BUCKET/KEY   upgrade from an S3 object (credentials from the standard AWS chain)
  --s3-endpoint URL      a custom S3 endpoint (MinIO, R2, Ceph, a local s3s-fs), path-style
  --interval SECS        how often fetchers poll (default: each fetcher's own; --watch reacts at once)
  --drain-timeout SECS   how long an old worker may drain before SIGKILL (default 30)
  --ready-timeout SECS   how long a new worker may take to become ready (default 30)
  --probation SECS       how long a new release's worker must keep running before the release
                         counts as good; dying sooner rolls it back (default 10)
  --rollout PERCENT      share of the fleet taking a release that sets none itself (default 100)
  --host-name NAME       this host's name in staged rollouts (default: the machine's host name)
  --minisign-key FILE    a minisign public key (minisign.pub): every release must be signed by it,
                         for product \"hello\" (the binary's file name), this platform's target and
                         a version above this build's (upshift-publish --sign writes all three);
                         repeatable: a signature by any of the keys verifies (key rotation)
  --allow-insecure-transport
                         accept plain http:// for --url, --github-api and --s3-endpoint without a
                         minisign key (loopback test servers only: on a network, anyone on the
                         path could replace the release and its checksum)

Routes: GET / answers \"hello from <BUILD_ID> pid <worker pid> gen <n>\", GET /sleep?ms=N the same
after N ms, GET /master the BUILD_ID of the build the master runs (\"unknown\" if it names none).

Signals to the master: SIGUSR2 restarts from the binary on disk, SIGTERM/SIGINT drain and exit;
SIGHUP, SIGUSR1 and SIGWINCH are passed to the serving worker, which logs them.
UPSHIFT_HOLD=1, or a file <hello>.hold beside the binary, holds upgrades from the sources above.
--url, --github and --s3 need a build with the remote fetchers:
  cargo build --release --example hello --features remote-fetchers";

struct Args {
    listen: Vec<String>,
    watch: Option<String>,
    url: Option<String>,
    github: Option<String>,
    github_api: Option<String>,
    s3: Option<String>,
    s3_endpoint: Option<String>,
    interval: Option<Duration>,
    drain_timeout: Option<Duration>,
    ready_timeout: Option<Duration>,
    probation: Option<Duration>,
    rollout: Option<f64>,
    host_name: Option<String>,
    minisign_keys: Vec<String>,
    allow_insecure_transport: bool,
    unix_mode: Option<u32>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: Vec::new(),
        watch: None,
        url: None,
        github: None,
        github_api: None,
        s3: None,
        s3_endpoint: None,
        interval: None,
        drain_timeout: None,
        ready_timeout: None,
        probation: None,
        rollout: None,
        host_name: None,
        minisign_keys: Vec::new(),
        allow_insecure_transport: false,
        unix_mode: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen.push(value()?),
            "--watch" => args.watch = Some(value()?),
            "--url" => args.url = Some(value()?),
            "--github" => args.github = Some(value()?),
            "--github-api" => args.github_api = Some(value()?),
            "--s3" => args.s3 = Some(value()?),
            "--s3-endpoint" => args.s3_endpoint = Some(value()?),
            "--interval" => args.interval = Some(secs(&value()?)?),
            "--drain-timeout" => args.drain_timeout = Some(secs(&value()?)?),
            "--ready-timeout" => args.ready_timeout = Some(secs(&value()?)?),
            "--probation" => args.probation = Some(secs(&value()?)?),
            "--rollout" => args.rollout = Some(percent(&value()?)?),
            "--host-name" => args.host_name = Some(value()?),
            "--minisign-key" => args.minisign_keys.push(value()?),
            "--allow-insecure-transport" => args.allow_insecure_transport = true,
            "--unix-mode" => {
                let v = value()?;
                let mode = u32::from_str_radix(&v, 8)
                    .map_err(|_| format!("--unix-mode: {v:?} is not an octal mode"))?;
                args.unix_mode = Some(mode);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.github_api.is_some() && args.github.is_none() {
        return Err("--github-api needs --github".into());
    }
    if args.s3_endpoint.is_some() && args.s3.is_none() {
        return Err("--s3-endpoint needs --s3".into());
    }
    if args.listen.is_empty() {
        args.listen.push("127.0.0.1:8080".into());
    }
    Ok(args)
}

fn secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

fn percent(s: &str) -> Result<f64, String> {
    upshift::rollout::parse_percent(s).map_err(|e| format!("--rollout: {e}"))
}

/// One fetcher per source flag; each polls on its own, and their upgrades never overlap.
fn add_fetchers(mut upgrader: upshift::Upgrader, args: &Args) -> Result<upshift::Upgrader, String> {
    if let Some(path) = &args.watch {
        let mut watch = upshift::fetch::FileFetcher::new(path);
        if let Some(interval) = args.interval {
            watch = watch.poll_interval(interval);
        }
        upgrader = upgrader.fetcher(watch);
    }
    if args.url.is_some() || args.github.is_some() || args.s3.is_some() {
        upgrader = add_remote_fetchers(upgrader, args)?;
    }
    Ok(upgrader)
}

/// `--url`, `--github`, `--s3`: the fetchers that reach the network.
#[cfg(feature = "remote-fetchers")]
fn add_remote_fetchers(
    mut upgrader: upshift::Upgrader,
    args: &Args,
) -> Result<upshift::Upgrader, String> {
    if let Some(url) = &args.url {
        let mut http =
            upshift_http::HttpFetcher::new(url.as_str()).map_err(|e| format!("--url: {e}"))?;
        if let Some(interval) = args.interval {
            http = http.interval(interval);
        }
        upgrader = upgrader.fetcher(http);
    }
    if let Some(repo) = &args.github {
        let mut github =
            upshift_github::GithubFetcher::new(repo).map_err(|e| format!("--github: {e}"))?;
        if let Some(api) = &args.github_api {
            github = github.api_base(api);
        }
        if let Some(interval) = args.interval {
            github = github.interval(interval);
        }
        upgrader = upgrader.fetcher(github);
    }
    if let Some(url) = &args.s3 {
        let mut s3 = upshift_s3::S3Fetcher::from_url(url).map_err(|e| format!("--s3: {e}"))?;
        if let Some(endpoint) = &args.s3_endpoint {
            s3 = s3.endpoint(endpoint);
        }
        if let Some(interval) = args.interval {
            s3 = s3.interval(interval);
        }
        upgrader = upgrader.fetcher(s3);
    }
    Ok(upgrader)
}

#[cfg(not(feature = "remote-fetchers"))]
fn add_remote_fetchers(_: upshift::Upgrader, _: &Args) -> Result<upshift::Upgrader, String> {
    Err(
        "--url, --github and --s3 need the remote fetchers, which this build leaves out: build \
         it with `cargo build --release --example hello --features remote-fetchers`"
            .into(),
    )
}

#[derive(serde::Deserialize)]
struct SleepQuery {
    ms: Option<u64>,
}

fn greeting(generation: u64) -> String {
    format!(
        "hello from {BUILD_ID} pid {} gen {generation}\n",
        std::process::id()
    )
}

fn master_build_line(build: Option<String>) -> String {
    format!("{}\n", build.as_deref().unwrap_or("unknown"))
}

// A plain `main`: the process that starts first becomes upshift's master, which runs on a
// current-thread runtime of its own; the multi-thread runtime serving requests is built in the
// worker only (inside `prog`), so the master carries no idle worker threads and the test run of
// a new build answers before any runtime exists.
fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("hello: {msg}");
            }
            eprintln!("{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };

    // The running version, against which GitHub release tags are compared (never a downgrade).
    let mut upgrader = upshift::Upgrader::new()
        .version(env!("CARGO_PKG_VERSION"))
        .build_id(BUILD_ID);
    for addr in &args.listen {
        upgrader = upgrader.listen(addr);
    }
    if let Some(mode) = args.unix_mode {
        upgrader = upgrader.listen_unix_mode(mode);
    }
    if let Some(d) = args.drain_timeout {
        upgrader = upgrader.drain_timeout(d);
    }
    if let Some(d) = args.ready_timeout {
        upgrader = upgrader.ready_timeout(d);
    }
    if let Some(d) = args.probation {
        upgrader = upgrader.probation(d);
    }
    if let Some(p) = args.rollout {
        upgrader = upgrader.rollout_percent(p);
    }
    if let Some(name) = &args.host_name {
        upgrader = upgrader.host_name(name);
    }
    for path in &args.minisign_keys {
        match std::fs::read_to_string(path) {
            Ok(key) => upgrader = upgrader.minisign_public_key(key),
            Err(e) => {
                eprintln!("hello: --minisign-key: cannot read {path}: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    upgrader = upgrader.allow_insecure_transport(args.allow_insecure_transport);
    match add_fetchers(upgrader, &args) {
        Ok(u) => upgrader = u,
        Err(msg) => {
            eprintln!("hello: {msg}");
            return std::process::ExitCode::from(2);
        }
    }

    let served = upgrader.run(|mut state| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let generation = state.generation();
            // A handle rather than `state`, which `serve` borrows: the master may re-execute
            // into a new build while this worker serves, so it is read at every request.
            let lifecycle = state.lifecycle();
            let app = Router::new()
                .route("/", get(move || async move { greeting(generation) }))
                .route(
                    "/sleep",
                    get(move |Query(q): Query<SleepQuery>| async move {
                        tokio::time::sleep(Duration::from_millis(q.ms.unwrap_or(0))).await;
                        greeting(generation)
                    }),
                )
                .route(
                    "/master",
                    get(move || {
                        let line = master_build_line(lifecycle.master_build());
                        async move { line }
                    }),
                );
            // SIGHUP, SIGUSR1, SIGWINCH sent to the master arrive here (where a real server would
            // reopen its log files); a program that does not listen has them ignored, not fatal.
            let mut signals = state.signals();
            tokio::spawn(async move {
                while let Some(sig) = signals.recv().await {
                    tracing::info!(%sig, generation, "hello got {sig}");
                }
            });
            tracing::info!(build = BUILD_ID, generation, "hello serving");
            upshift::http::serve(&mut state, app).await
        })
    });

    match served {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "serving failed");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!(error = %e, "upshift could not start");
            std::process::ExitCode::FAILURE
        }
    }
}
