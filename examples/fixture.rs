//! A test server for upshift's integration tests (`tests/process_model.rs`, `tests/zero_downtime.rs`).
//!
//! It uses the synchronous [`upshift::Upgrader::run`] from a plain `fn main` and builds its own tokio
//! runtime inside `prog`. Each worker reads `--behavior-file` once at start, so a test can make the
//! *next* worker misbehave by rewriting the file before sending SIGUSR2 to the master.
//!
//! ```text
//! fixture --listen 127.0.0.1:8080 [--listen /tmp/s.sock] [--behavior-file PATH]
//!         [--ready-timeout-ms N] [--drain-timeout-ms N] [--backoff-ms N] [--starts-file PATH]
//!         [--watch PATH] [--probation-ms N] [--test-run-timeout-ms N] [--minisign-pubkey FILE]
//!         [--install-mode in-place|release-dirs] [--veto-all] [--exec-log PATH]
//!         [--stream ADDR] [--max-release-bytes N] [--download-deadline-ms N]
//!         [--test-run-fds PATH]
//! ```
//!
//! `--stream ADDR` adds a fetcher reading releases streamed over raw TCP from `ADDR` (see
//! `fixture_stream.rs`; no HTTP fetcher, so testing the core builds none). `--max-release-bytes` and `--download-deadline-ms` set
//! [`upshift::Upgrader::max_release_bytes`] and [`upshift::Upgrader::download_deadline`].
//!
//! `--install-mode release-dirs` installs releases as [`upshift::InstallMode::ReleaseDirectories`].
//! `--veto-all` adds a `pre_upgrade` hook that refuses every release ("vetoed by the test").
//! `--exec-log PATH`: every process started from this binary (master, worker, a candidate's
//! test-run) appends `<build> <pid>` to PATH before anything else, so a test can tell which
//! builds were ever executed.
//! `--test-run-fds PATH`: a candidate's test-run writes its open descriptors to PATH (as `/fds`
//! lists them) before answering the handshake, so a test can see what a test-run inherits.
//!
//! With `--starts-file`, each worker appends `<pid> <generation> <behavior>` to that file as its
//! first act, so a test can count workers that lived too briefly to be seen in `/proc`.
//!
//! Behaviors (file content, trimmed; a missing file means `ok`):
//! `ok`, `exit` (exit 3 before ready), `never-ready`, `crash-after-ready MS` (abort MS ms after
//! ready), `slow-ready MS` (sleep MS before serving). A stamp's behavior may also be
//! `also-listen=ADDR` (this build listens on ADDR too: a release that changes the configuration),
//! `only-first-listen` (it listens on the first `--listen` only) or `old-upshift` (it does not say it reads the master's handover document, as a build of an
//! older upshift would not).
//!
//! Routes: `/` (`fixture pid <pid> gen <generation> exe <current_exe>`), `/sleep?ms=N`, `/env`
//! (names of visible `UPSHIFT_*` variables), `/fds` (`<fd> cloexec=<0|1> <target>` per open descriptor),
//! `/master` (the build the master runs, as it last told this worker), `/enabled`, `/hups` and `/usr1s` (how many SIGHUP / SIGUSR1 this worker received from
//! `State::signals`; with `--no-signal-stream` it does not listen, and both stay 0),
//! `/orphan?n=N&ms=M` (leaves N `sleep` processes of M ms behind: each is started in the background
//! by an `sh` that exits at once, so it is re-parented to PID 1 or the nearest subreaper).

#[path = "fixture_stream.rs"]
mod stream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::routing::get;
use axum::Router;

const USAGE: &str =
    "usage: fixture --listen ADDR [--listen ADDR ...] [--behavior-file PATH] [--watch PATH] \
[--ready-timeout-ms N] [--drain-timeout-ms N] [--backoff-ms N] [--starts-file PATH] \
[--probation-ms N] [--test-run-timeout-ms N] [--minisign-pubkey FILE] \
[--install-mode in-place|release-dirs] [--veto-all] [--exec-log PATH] [--version V] \
[--product NAME] [--stream ADDR] [--max-release-bytes N] [--download-deadline-ms N] \
[--test-run-fds PATH] [--no-signal-stream]";

#[derive(Debug, Default)]
struct Args {
    listen: Vec<String>,
    behavior_file: Option<PathBuf>,
    ready_timeout_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    backoff_ms: Option<u64>,
    starts_file: Option<PathBuf>,
    watch: Option<PathBuf>,
    probation_ms: Option<u64>,
    test_run_timeout_ms: Option<u64>,
    /// A `minisign.pub` file (or a bare base64 key): releases must be signed by it.
    minisign_pubkey: Option<PathBuf>,
    install_mode: Option<upshift::InstallMode>,
    veto_all: bool,
    /// Do not listen on `State::signals`: forwarded signals are then upshift's to ignore.
    no_signal_stream: bool,
    /// The running version: the version floor signed releases are held against.
    version: Option<String>,
    /// The product signed releases must name (default: the binary's file name).
    product: Option<String>,
    stream: Option<String>,
    max_release_bytes: Option<u64>,
    download_deadline_ms: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| -> Result<u64, String> {
            v.parse()
                .map_err(|_| format!("{flag}: {v:?} is not a number of milliseconds"))
        };
        match flag.as_str() {
            "--listen" => args.listen.push(value()?),
            "--behavior-file" => args.behavior_file = Some(PathBuf::from(value()?)),
            "--ready-timeout-ms" => args.ready_timeout_ms = Some(number(value()?)?),
            "--drain-timeout-ms" => args.drain_timeout_ms = Some(number(value()?)?),
            "--backoff-ms" => args.backoff_ms = Some(number(value()?)?),
            "--starts-file" => args.starts_file = Some(PathBuf::from(value()?)),
            "--watch" => args.watch = Some(PathBuf::from(value()?)),
            "--probation-ms" => args.probation_ms = Some(number(value()?)?),
            "--test-run-timeout-ms" => args.test_run_timeout_ms = Some(number(value()?)?),
            "--minisign-pubkey" => args.minisign_pubkey = Some(PathBuf::from(value()?)),
            "--install-mode" => {
                args.install_mode = Some(match value()?.as_str() {
                    "in-place" => upshift::InstallMode::InPlace,
                    "release-dirs" => upshift::InstallMode::ReleaseDirectories,
                    other => return Err(format!("--install-mode: unknown mode {other:?}")),
                })
            }
            "--veto-all" => args.veto_all = true,
            "--no-signal-stream" => args.no_signal_stream = true,
            "--version" => args.version = Some(value()?),
            "--product" => args.product = Some(value()?),
            "--stream" => args.stream = Some(value()?),
            "--max-release-bytes" => args.max_release_bytes = Some(number(value()?)?),
            "--download-deadline-ms" => args.download_deadline_ms = Some(number(value()?)?),
            // Acted on before parsing, by `log_exec` and `log_test_run_fds`.
            "--exec-log" | "--test-run-fds" => drop(value()?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.listen.is_empty() {
        return Err(format!("at least one --listen is required\n{USAGE}"));
    }
    Ok(args)
}

/// What this worker does, read once from the behavior file at its start.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Behavior {
    Ok,
    Exit,
    NeverReady,
    CrashAfterReady(u64),
    SlowReady(u64),
}

fn read_behavior(path: Option<&PathBuf>) -> Behavior {
    let Some(path) = path else {
        return Behavior::Ok;
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Behavior::Ok,
        Err(e) => {
            tracing::warn!(
                "fixture: cannot read behavior file {}: {e}; behaving ok",
                path.display()
            );
            return Behavior::Ok;
        }
    };
    parse_behavior(&text)
}

fn parse_behavior(text: &str) -> Behavior {
    let text = text.trim();
    let mut words = text.split_whitespace();
    let word = words.next().unwrap_or("ok");
    let ms = || {
        words
            .clone()
            .next()
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0)
    };
    match word {
        "ok" => Behavior::Ok,
        "exit" => Behavior::Exit,
        "never-ready" => Behavior::NeverReady,
        "crash-after-ready" => Behavior::CrashAfterReady(ms()),
        "slow-ready" => Behavior::SlowReady(ms()),
        other => {
            tracing::warn!("fixture: unknown behavior {other:?}; behaving ok");
            Behavior::Ok
        }
    }
}

/// Marks a build for the release tests: appended to a copy of this binary as
/// `UPSHIFT-TEST-BUILD:<id>[:<behavior>]\n`. Trailing bytes do not change how an ELF file loads,
/// so each stamp makes a distinct release of the same program, and a release can carry its own
/// misbehaviour while the binary it replaces behaves.
const STAMP_MARK: &[u8] = b"UPSHIFT-TEST-BUILD:";

/// The stamp at the end of this executable: build id (`base` when unstamped) and behavior.
fn read_stamp() -> (String, Option<String>) {
    use std::io::{Read, Seek, SeekFrom};
    let tail = std::env::current_exe()
        .and_then(std::fs::File::open)
        .and_then(|mut f| {
            let len = f.metadata()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(512)))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            Ok(buf)
        });
    let Ok(tail) = tail else {
        return ("base".into(), None);
    };
    let Some(at) = tail
        .windows(STAMP_MARK.len())
        .rposition(|w| w == STAMP_MARK)
    else {
        return ("base".into(), None);
    };
    let stamp = String::from_utf8_lossy(&tail[at + STAMP_MARK.len()..]);
    let stamp = stamp.trim_end();
    match stamp.split_once(':') {
        Some((id, behavior)) => (id.to_string(), Some(behavior.to_string())),
        None => (stamp.to_string(), None),
    }
}

/// With `--exec-log PATH` anywhere in the arguments, appends `<build> <pid>` to PATH. Read from
/// the raw arguments so that it runs before anything else, the test-run of a candidate included.
fn log_exec(build: &str) {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.find(|a| a == "--exec-log").and_then(|_| args.next()) else {
        return;
    };
    let line = format!("{build} {}\n", std::process::id());
    if let Err(e) = append_line(std::path::Path::new(&path), &line) {
        eprintln!("fixture: cannot append to {path}: {e}");
    }
}

/// In a test-run with `--test-run-fds PATH`: writes this process's open descriptors to PATH, first
/// thing, before `Upgrader::run` answers the handshake and exits.
fn log_test_run_fds() {
    if std::env::var_os("UPSHIFT_TEST_RUN_TOKEN").is_none() {
        return;
    }
    let mut args = std::env::args().skip(1);
    let Some(path) = args
        .find(|a| a == "--test-run-fds")
        .and_then(|_| args.next())
    else {
        return;
    };
    if let Err(e) = std::fs::write(&path, open_fds()) {
        eprintln!("fixture: cannot write {path}: {e}");
    }
}

fn append_line(path: &std::path::Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(line.as_bytes())
}

fn main() -> ExitCode {
    log_test_run_fds();
    let (build, stamped_behavior) = read_stamp();
    log_exec(&build);
    // Before `run`, so it also fails upshift's test-run: a release that cannot even start.
    if stamped_behavior.as_deref() == Some("exit-at-start") {
        eprintln!("fixture: stamped exit-at-start");
        return ExitCode::from(4);
    }

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("fixture: {msg}");
            return ExitCode::from(2);
        }
    };

    // The stamp names this build to upshift, so that `/master` tells which build the master runs.
    let mut upgrader = upshift::Upgrader::new().build_id(build.clone());
    // A release that drops every listener but the first from the configuration.
    let listens = match stamped_behavior.as_deref() {
        Some("only-first-listen") => &args.listen[..1],
        _ => &args.listen[..],
    };
    for addr in listens {
        upgrader = upgrader.listen(addr.clone());
    }
    // A release that changes the configuration: it listens on one more address.
    if let Some(extra) = (stamped_behavior.as_deref()).and_then(|b| b.strip_prefix("also-listen="))
    {
        upgrader = upgrader.listen(extra.to_string());
    }
    // A build of an upshift that predates the master's re-exec: asked whether it can read the
    // master's handover document, it does not answer.
    if stamped_behavior.as_deref() == Some("old-upshift") {
        std::env::remove_var("UPSHIFT_TEST_RUN_HANDOVER");
    }
    if let Some(ms) = args.ready_timeout_ms {
        upgrader = upgrader.ready_timeout(Duration::from_millis(ms));
    }
    if let Some(ms) = args.drain_timeout_ms {
        upgrader = upgrader.drain_timeout(Duration::from_millis(ms));
    }
    if let Some(path) = &args.watch {
        upgrader = upgrader.fetcher(upshift::fetch::FileFetcher::new(path));
    }
    if let Some(addr) = &args.stream {
        upgrader = upgrader.fetcher(stream::StreamFetcher::new(addr));
    }
    if let Some(bytes) = args.max_release_bytes {
        upgrader = upgrader.max_release_bytes(bytes);
    }
    if let Some(ms) = args.download_deadline_ms {
        upgrader = upgrader.download_deadline(Duration::from_millis(ms));
    }
    if let Some(ms) = args.probation_ms {
        upgrader = upgrader.probation(Duration::from_millis(ms));
    }
    if let Some(ms) = args.test_run_timeout_ms {
        upgrader = upgrader.test_run_timeout(Duration::from_millis(ms));
    }
    if let Some(path) = &args.minisign_pubkey {
        match std::fs::read_to_string(path) {
            Ok(text) => upgrader = upgrader.minisign_public_key(text),
            Err(e) => {
                eprintln!("fixture: cannot read {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    if let Some(mode) = args.install_mode {
        upgrader = upgrader.install_mode(mode);
    }
    if let Some(version) = &args.version {
        upgrader = upgrader.version(version.clone());
    }
    if let Some(product) = &args.product {
        upgrader = upgrader.product(product.clone());
    }
    if args.veto_all {
        upgrader = upgrader.pre_upgrade(|_| Err("vetoed by the test".to_string()));
    }
    if let Some(ms) = args.backoff_ms {
        upgrader =
            upgrader.restart_backoff(Duration::from_millis(ms), Duration::from_millis(ms * 20));
    }

    let (behavior_file, starts_file) = (args.behavior_file.clone(), args.starts_file.clone());
    let no_signal_stream = args.no_signal_stream;
    match upgrader.run(move |state| worker(state, behavior_file, starts_file, no_signal_stream)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("fixture: {e}");
            ExitCode::from(1)
        }
    }
}

/// Shared by the route handlers.
struct Info {
    pid: u32,
    generation: u64,
    build: String,
    exe: String,
    enabled: bool,
    hups: AtomicU64,
    usr1s: AtomicU64,
    lifecycle: upshift::Lifecycle,
}

impl Info {
    fn body(&self) -> String {
        format!(
            "fixture pid {} gen {} build {} exe {}\n",
            self.pid, self.generation, self.build, self.exe
        )
    }
}

#[derive(serde::Deserialize)]
struct SleepQuery {
    ms: u64,
}

#[derive(serde::Deserialize)]
struct OrphanQuery {
    n: Option<u32>,
    ms: u64,
}

/// The double fork of a program that daemonizes a helper: `sh` backgrounds `sleep` and exits, and
/// this worker reaps the `sh`. The `sleep`s are nobody's children any more.
async fn orphan(Query(q): Query<OrphanQuery>) -> String {
    let n = q.n.unwrap_or(1);
    let secs = format!("{}.{:03}", q.ms / 1000, q.ms % 1000);
    let left = tokio::task::spawn_blocking(move || {
        let mut left = 0;
        for _ in 0..n {
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("sleep {secs} & exit 0"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            if matches!(status, Ok(s) if s.success()) {
                left += 1;
            }
        }
        left
    })
    .await
    .unwrap_or(0);
    format!("orphaned {left}\n")
}

/// `prog`: runs in each worker (or in-process when upshift is disabled). Returns the exit code.
fn worker(
    mut state: upshift::State,
    behavior_file: Option<PathBuf>,
    starts_file: Option<PathBuf>,
    no_signal_stream: bool,
) -> u8 {
    let (build, stamped_behavior) = read_stamp();
    let behavior = match stamped_behavior {
        Some(text) => parse_behavior(&text),
        None => read_behavior(behavior_file.as_ref()),
    };
    if let Some(path) = starts_file {
        let line = format!(
            "{} {} {:?}\n",
            std::process::id(),
            state.generation(),
            behavior
        );
        if let Err(e) = append_line(&path, &line) {
            tracing::warn!("fixture: cannot append to {}: {e}", path.display());
        }
    }
    let info = Arc::new(Info {
        pid: std::process::id(),
        generation: state.generation(),
        build,
        exe: std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        enabled: state.is_enabled(),
        hups: AtomicU64::new(0),
        usr1s: AtomicU64::new(0),
        lifecycle: state.lifecycle(),
    });
    tracing::info!(
        pid = info.pid,
        generation = info.generation,
        ?behavior,
        "fixture worker starting"
    );

    if behavior == Behavior::Exit {
        tracing::info!("fixture: behavior exit: exiting with 3 before ready");
        return 3;
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fixture: cannot build a tokio runtime: {e}");
            return 1;
        }
    };

    runtime.block_on(async move {
        match behavior {
            Behavior::NeverReady => {
                tracing::info!(
                    "fixture: behavior never-ready: waiting for shutdown without serving"
                );
                state.shutdown().await;
                tracing::info!("fixture: never-ready worker told to shut down");
                return 0;
            }
            Behavior::SlowReady(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Behavior::CrashAfterReady(ms) => {
                let lifecycle = state.lifecycle();
                tokio::spawn(async move {
                    while !lifecycle.is_ready() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    tracing::info!("fixture: behavior crash-after-ready: aborting");
                    // No core file: the crash is the point, not its post-mortem.
                    let no_core = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    // SAFETY: setrlimit reads the struct we pass; no other requirements.
                    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
                    std::process::abort();
                });
            }
            Behavior::Ok | Behavior::Exit => {}
        }

        if !no_signal_stream {
            count_signals(info.clone(), state.signals());
        }

        let app = routes(info.clone());
        match upshift::http::serve(&mut state, app).await {
            Ok(()) => {
                tracing::info!(pid = info.pid, "fixture worker drained");
                0
            }
            Err(e) => {
                tracing::error!("fixture: serve failed: {e}");
                1
            }
        }
    })
}

/// Counts SIGHUP and SIGUSR1 (which the master forwards) for `/hups` and `/usr1s`, from the
/// worker's signal stream.
fn count_signals(info: Arc<Info>, mut signals: upshift::Signals) {
    tokio::spawn(async move {
        while let Some(sig) = signals.recv().await {
            let counter = match sig {
                upshift::Signal::SIGHUP => &info.hups,
                upshift::Signal::SIGUSR1 => &info.usr1s,
                _ => continue,
            };
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            tracing::info!(pid = info.pid, %sig, n, "fixture: got a forwarded signal");
        }
    });
}

fn routes(info: Arc<Info>) -> Router {
    let root = {
        let info = info.clone();
        move || {
            let info = info.clone();
            async move { info.body() }
        }
    };
    let sleep = {
        let info = info.clone();
        move |Query(q): Query<SleepQuery>| {
            let info = info.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(q.ms)).await;
                info.body()
            }
        }
    };
    let enabled = {
        let info = info.clone();
        move || {
            let info = info.clone();
            async move { info.enabled.to_string() }
        }
    };
    let hups = {
        let info = info.clone();
        move || {
            let info = info.clone();
            async move { info.hups.load(Ordering::SeqCst).to_string() }
        }
    };
    let usr1s = {
        let info = info.clone();
        move || {
            let info = info.clone();
            async move { info.usr1s.load(Ordering::SeqCst).to_string() }
        }
    };
    let master = {
        let info = info.clone();
        move || {
            let info = info.clone();
            async move {
                let build = info.lifecycle.master_build();
                format!("{}\n", build.as_deref().unwrap_or("unknown"))
            }
        }
    };
    Router::new()
        .route("/", get(root))
        .route("/master", get(master))
        .route("/sleep", get(sleep))
        .route("/env", get(|| async { upshift_env_names() }))
        .route("/fds", get(|| async { open_fds() }))
        .route("/enabled", get(enabled))
        .route("/hups", get(hups))
        .route("/usr1s", get(usr1s))
        .route("/orphan", get(orphan))
}

/// The names of the `UPSHIFT_*` variables visible in this process, one per line.
fn upshift_env_names() -> String {
    let mut out = String::new();
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("UPSHIFT_") {
            out.push_str(&name);
            out.push('\n');
        }
    }
    out
}

/// One line per open descriptor: `<fd> cloexec=<0|1> <link target>`. The descriptor used to list
/// `/proc/self/fd` is closed before the flags are read, so it does not appear.
fn open_fds() -> String {
    let mut fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect(),
        Err(e) => return format!("error reading /proc/self/fd: {e}\n"),
    };
    fds.sort_unstable();
    let mut out = String::new();
    for fd in fds {
        // SAFETY: F_GETFD only queries the descriptor's flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            continue; // the directory's own descriptor, closed by now
        }
        let cloexec = u8::from(flags & libc::FD_CLOEXEC != 0);
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        out.push_str(&format!("{fd} cloexec={cloexec} {target}\n"));
    }
    out
}
