//! [`Upgrader`]: the builder a program configures in `main`, ending in [`Upgrader::run`] or
//! [`Upgrader::run_async`].

use std::future::Future;
use std::time::Duration;

use nix::sys::signal::Signal;

use std::sync::Arc;

use crate::env::{self, WorkerEnv};
use crate::error::Error;
use crate::events::{ReleaseInfo, UpgradeEvent};
use crate::fetch::Fetcher;
use crate::install::StageOptions;
use crate::listener::ListenAddr;
use crate::master::{EventHook, PipelineConfig, UpdateSettings, VetoHook};
use crate::release::BUILD_TARGET;
use crate::state::State;
use crate::unix_socket::UnixSocketOptions;

/// What the master does when the serving worker exits on its own (no restart under way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPolicy {
    /// Start a new worker after an exponential backoff ([`Upgrader::restart_backoff`]). A worker
    /// that exits with status 0 on its own is taken as a deliberate stop: the master exits 0.
    Restart,
    /// Exit the master with the worker's status, as overseer does; leave restarts to a supervisor.
    Exit,
}

/// Where an installed release's file goes. See [`Upgrader::install_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstallMode {
    /// Replace the file the invoked path resolves to *now* (resolved again before every
    /// install), keeping symlinks as they are. The default.
    #[default]
    InPlace,
    /// For release-directory layouts (`bin/app -> ../releases/v1/app`): the invoked path must be a
    /// symlink to a file in a directory of its own. A new release is written to a new directory
    /// beside that one (`releases/<release>/app`) and the symlink is flipped to it atomically;
    /// a rollback flips it back. Files of earlier releases are never modified.
    ReleaseDirectories,
}

/// Configures and starts upshift. Everything before [`run`](Self::run) executes in the master
/// **and** in every worker (both are the same program); keep it to configuration.
///
/// ```no_run
/// use std::time::Duration;
///
/// fn main() -> Result<(), upshift::Error> {
///     upshift::Upgrader::new()
///         .listen("127.0.0.1:8080")
///         .drain_timeout(Duration::from_secs(10))
///         .run(|state| {
///             // in the worker: serve on state's listeners, call state.ready(), drain on state.shutdown()
///             # drop(state);
///         })
/// }
/// ```
pub struct Upgrader {
    pub(crate) addrs: Vec<(String, String)>,
    /// Mode and owner of the Unix socket files the master binds: set in `unix_socket.rs`.
    pub(crate) unix_socket: UnixSocketOptions,
    pub(crate) restart_signal: Signal,
    pub(crate) ready_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_draining: usize,
    pub(crate) crash_policy: CrashPolicy,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) disabled: bool,
    pub(crate) probation: Duration,
    fetchers: Vec<Box<dyn Fetcher>>,
    on_event: Option<EventHook>,
    veto: Option<VetoHook>,
    test_run_timeout: Duration,
    max_release_bytes: u64,
    download_deadline: Duration,
    allow_unverified_remote: bool,
    allow_insecure_transport: bool,
    public_keys: Vec<String>,
    version: Option<String>,
    product: Option<String>,
    target: Option<String>,
    install_mode: InstallMode,
    /// Staged rollout, hold, pin and jitter: set in `rollout.rs`.
    pub(crate) fleet: crate::rollout::FleetOptions,
    build_id: Option<String>,
    master_reexec: bool,
}

impl std::fmt::Debug for Upgrader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrader")
            .field("addrs", &self.addrs)
            .field("restart_signal", &self.restart_signal)
            .field("ready_timeout", &self.ready_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field(
                "fetchers",
                &self
                    .fetchers
                    .iter()
                    .map(|f| f.name().to_string())
                    .collect::<Vec<_>>(),
            )
            .field("probation", &self.probation)
            .finish_non_exhaustive()
    }
}

impl Default for Upgrader {
    fn default() -> Self {
        Self::new()
    }
}

/// The validated configuration the master works from.
#[derive(Debug)]
pub(crate) struct MasterConfig {
    pub(crate) addrs: Vec<(String, ListenAddr)>,
    pub(crate) unix_socket: UnixSocketOptions,
    pub(crate) restart_signal: Signal,
    pub(crate) ready_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) max_draining: usize,
    pub(crate) crash_policy: CrashPolicy,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) probation: Duration,
    pub(crate) updates: Option<crate::master::UpdateSettings>,
    /// This build's label ([`Upgrader::build_id`]), validated; workers learn it as the master's.
    pub(crate) build_id: Option<String>,
    /// [`Upgrader::master_reexec`].
    pub(crate) master_reexec: bool,
    /// [`Upgrader::test_run_timeout`]: a release's test run, and the check before a re-exec.
    pub(crate) test_run_timeout: Duration,
}

enum Role {
    Worker(WorkerEnv),
    Disabled(String),
    Master,
    /// A master re-executed in place: the value names the handover document's descriptor.
    Reexecuted(String),
}

impl Upgrader {
    /// Defaults: restart on SIGUSR2, ready timeout 30 s, drain timeout 30 s, at most 4 workers
    /// draining at once, crashed workers restarted with backoff from 100 ms to 30 s.
    pub fn new() -> Self {
        Upgrader {
            addrs: Vec::new(),
            unix_socket: UnixSocketOptions::default(),
            restart_signal: Signal::SIGUSR2,
            ready_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            max_draining: 4,
            crash_policy: CrashPolicy::Restart,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            disabled: false,
            probation: Duration::from_secs(10),
            fetchers: Vec::new(),
            on_event: None,
            veto: None,
            test_run_timeout: Duration::from_secs(10),
            max_release_bytes: 1 << 30,
            download_deadline: crate::install::DEFAULT_DOWNLOAD_DEADLINE,
            allow_unverified_remote: false,
            allow_insecure_transport: false,
            public_keys: Vec::new(),
            version: None,
            product: None,
            target: None,
            install_mode: InstallMode::InPlace,
            fleet: crate::rollout::FleetOptions::default(),
            build_id: None,
            master_reexec: true,
        }
    }

    /// Adds a listener: `host:port` for TCP, or a path containing `/` for a Unix socket. Its name
    /// (see [`State::take_listener`]) is the address as written. Call once per address. A Unix
    /// socket path where another process accepts fails to bind like a TCP port in use; a stale
    /// socket file is replaced (see [`ListenAddr::Unix`]); its mode and owner are set with
    /// [`listen_unix_mode`](Self::listen_unix_mode) and
    /// [`listen_unix_owner`](Self::listen_unix_owner).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        let addr = addr.into();
        self.addrs.push((addr.clone(), addr));
        self
    }

    /// Adds a listener under a name of your choice, to find it with [`State::take_listener`].
    pub fn listen_named(mut self, name: impl Into<String>, addr: impl Into<String>) -> Self {
        self.addrs.push((name.into(), addr.into()));
        self
    }

    /// The signal that makes the master restart from the binary on disk (default SIGUSR2).
    pub fn restart_signal(mut self, signal: Signal) -> Self {
        self.restart_signal = signal;
        self
    }

    /// How long a new worker has to call [`State::ready`] before it is killed and the previous
    /// worker keeps serving (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How long a worker told to drain may take before it is killed with SIGKILL (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How many old workers may drain at once (default 4). A restart asked for while that many
    /// drain waits until one has exited; it is never dropped.
    pub fn max_draining(mut self, max: usize) -> Self {
        self.max_draining = max.max(1);
        self
    }

    /// What to do when the serving worker exits on its own (default [`CrashPolicy::Restart`]).
    pub fn crash_policy(mut self, policy: CrashPolicy) -> Self {
        self.crash_policy = policy;
        self
    }

    /// The backoff between restarts of a crashing worker: doubles from `min` up to `max`, and
    /// starts again from `min` once a worker has served for 10 s.
    pub fn restart_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }

    /// How long a worker started for a new release must keep running after it became ready
    /// before the release counts as good (default 10 s). A worker that exits within it has the
    /// previous binary restored and started again.
    pub fn probation(mut self, window: Duration) -> Self {
        self.probation = window;
        self
    }

    /// Adds a release source; the master polls it and installs what it finds (see
    /// [`fetch`](crate::fetch)). Several fetchers may be added; their upgrades never overlap.
    ///
    /// ```no_run
    /// upshift::Upgrader::new()
    ///     .listen("127.0.0.1:8080")
    ///     .fetcher(upshift::fetch::FileFetcher::new("/srv/app/next"))
    ///     .run(|state| {
    ///         // serve on state's listeners
    ///         # drop(state);
    ///     })?;
    /// # Ok::<(), upshift::Error>(())
    /// ```
    pub fn fetcher(mut self, fetcher: impl Fetcher + 'static) -> Self {
        self.fetchers.push(Box::new(fetcher));
        self
    }

    /// Called in the master with every [`UpgradeEvent`] (checking, downloading, test-running,
    /// installing, handing off, upgraded, rejected, rolled back). Keep it quick: it runs on the
    /// master's event loop.
    pub fn on_event(mut self, hook: impl Fn(&UpgradeEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(hook));
        self
    }

    /// Called in the master for a release that passed every check, just before it is installed;
    /// an `Err` vetoes it (the reason is logged and the release is remembered as rejected).
    pub fn pre_upgrade(
        mut self,
        hook: impl Fn(&ReleaseInfo) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.veto = Some(Arc::new(hook));
        self
    }

    /// How long the test-run of a new binary may take (default 10 s).
    pub fn test_run_timeout(mut self, timeout: Duration) -> Self {
        self.test_run_timeout = timeout;
        self
    }

    /// The largest release accepted, downloaded or unpacked (default 1 GiB).
    pub fn max_release_bytes(mut self, bytes: u64) -> Self {
        self.max_release_bytes = bytes;
        self
    }

    /// The longest one download may take, from the first byte asked for to the last (default
    /// 30 min: a 1 GiB release at 600 KB/s). Fetchers cut a stalled transfer on their own; this
    /// cuts one that trickles, since only one upgrade runs at a time. A download cut here is
    /// reported ([`InstallError::DeadlineExceeded`](crate::InstallError::DeadlineExceeded)),
    /// the running version keeps serving, and the release is tried again after a backoff. A
    /// fetcher's own total timeout (the HTTP fetcher's `timeout`, 5 min by default) applies too:
    /// the shorter one wins.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let upgrader = upshift::Upgrader::new().download_deadline(Duration::from_secs(600));
    /// ```
    pub fn download_deadline(mut self, deadline: Duration) -> Self {
        self.download_deadline = deadline;
        self
    }

    /// Accepts releases fetched over the network without a checksum. Off by default: a remote
    /// release must come with a sha256 (or a signature check must be configured).
    pub fn allow_unverified_remote(mut self, allow: bool) -> Self {
        self.allow_unverified_remote = allow;
        self
    }

    /// Allows fetchers to use plain (non-TLS) transport — `http://` release URLs, S3 endpoints,
    /// GitHub API bases — without a minisign key. Off by default: without a key, the checksum
    /// comes over the same channel as the binary, so whoever is on the path can replace both.
    /// Meant for loopback test servers; with [`minisign_public_key`](Self::minisign_public_key)
    /// set it is not needed. A redirect from `https://` to `http://` is never followed.
    ///
    /// ```no_run
    /// let upgrader = upshift::Upgrader::new().allow_insecure_transport(true);
    /// ```
    pub fn allow_insecure_transport(mut self, allow: bool) -> Self {
        self.allow_insecure_transport = allow;
        self
    }

    /// Requires every release to carry a minisign signature by this public key (the base64 key,
    /// or the text of a `minisign.pub` file). Unsigned or badly signed releases are refused.
    ///
    /// Call it again to trust several keys at once — a signature by any of them verifies — which
    /// is how a key is rotated without a flag day (see `SECURITY.md`).
    ///
    /// ```no_run
    /// # let (old_pub, new_pub) = ("RWQ...old", "RWQ...new");
    /// // Both keys verify while the fleet moves from the old one to the new one.
    /// let upgrader = upshift::Upgrader::new()
    ///     .minisign_public_key(old_pub)
    ///     .minisign_public_key(new_pub);
    /// ```
    pub fn minisign_public_key(mut self, key: impl Into<String>) -> Self {
        self.public_keys.push(key.into());
        self
    }

    /// The running program's version: usually `.version(env!("CARGO_PKG_VERSION"))`.
    ///
    /// It is part of the **version floor**, with the highest version this host ever installed
    /// (kept in `<binary>.upshift-state`, so it survives restarts): a release whose version is at
    /// or below the floor is never installed, and fetchers that know versions (GitHub tags) do
    /// not offer it. A library cannot read your crate's version, so nothing is assumed: the GitHub
    /// fetcher reports an error until a floor is known from here, from
    /// `GithubFetcher::current_version`, or from an earlier install.
    ///
    /// ```no_run
    /// let upgrader = upshift::Upgrader::new().version(env!("CARGO_PKG_VERSION"));
    /// ```
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// The product name a signed release must carry (see
    /// [`SignedMetadata`](crate::release::SignedMetadata)); default: the file name of the binary
    /// as invoked (`/srv/app/bin/billing` → `billing`). With a
    /// [`minisign_public_key`](Self::minisign_public_key), a release signed for another product —
    /// another service signed with the same key — is refused before it is downloaded.
    ///
    /// ```no_run
    /// let upgrader = upshift::Upgrader::new().product("billing");
    /// ```
    pub fn product(mut self, name: impl Into<String>) -> Self {
        self.product = Some(name.into());
        self
    }

    /// The target triple a signed release must name; default: the triple this program was built
    /// for ([`BUILD_TARGET`](crate::release::BUILD_TARGET)). Set it to move a host to another
    /// build on purpose (from `x86_64-unknown-linux-gnu` to `x86_64-unknown-linux-musl`); the
    /// release then signed for the new triple is accepted, any other is refused.
    ///
    /// ```no_run
    /// let upgrader = upshift::Upgrader::new().target("x86_64-unknown-linux-musl");
    /// ```
    pub fn target(mut self, triple: impl Into<String>) -> Self {
        self.target = Some(triple.into());
        self
    }

    /// How a release is put in place (default [`InstallMode::InPlace`]).
    ///
    /// ```no_run
    /// // bin/app -> ../releases/v1/app: each release gets a directory, the link is flipped.
    /// let upgrader = upshift::Upgrader::new().install_mode(upshift::InstallMode::ReleaseDirectories);
    /// ```
    pub fn install_mode(mut self, mode: InstallMode) -> Self {
        self.install_mode = mode;
        self
    }

    /// Names this build: a version (`v1.4.2`), a git hash, whatever tells builds apart. The
    /// master passes its own to every worker, which reads it with [`State::master_build`]: after
    /// the master re-executes itself into a new build, that is how a worker (and an operator
    /// asking it) learns which build supervises it. One line of at most 128 bytes, printable,
    /// without surrounding spaces; anything else fails [`run`](Self::run) with
    /// [`Error::Config`].
    ///
    /// ```no_run
    /// let upgrader = upshift::Upgrader::new().build_id(env!("CARGO_PKG_VERSION"));
    /// ```
    pub fn build_id(mut self, label: impl Into<String>) -> Self {
        self.build_id = Some(label.into());
        self
    }

    /// Whether the master re-executes itself into a new build once it has proven itself, or on
    /// the restart signal when the binary on disk is not the master's own image (default on).
    /// Off, only workers ever run new code, as with overseer.
    ///
    /// On, a release must also prove at its test run that it can take over the running master
    /// (read the state the master hands to its new image); one that cannot is refused
    /// ([`InstallError::HandoverIncompatible`](crate::InstallError::HandoverIncompatible)).
    ///
    /// ```no_run
    /// // The master keeps the code it started with; releases reach the workers only.
    /// let upgrader = upshift::Upgrader::new().master_reexec(false);
    /// ```
    pub fn master_reexec(mut self, enabled: bool) -> Self {
        self.master_reexec = enabled;
        self
    }

    /// Runs `prog` in-process without a master (as when [`UPSHIFT_DISABLE`](crate::DISABLE_ENV)
    /// is set): listeners are bound locally and upgrades are off.
    pub fn disabled(mut self, disabled: bool) -> Self {
        self.disabled = disabled;
        self
    }

    /// Starts upshift, for a plain `fn main` (use [`run_async`](Self::run_async) inside a tokio
    /// runtime).
    ///
    /// - In the **master** (the first process) this binds the listeners, starts and supervises
    ///   workers, and never returns: the process exits with the last worker's status.
    /// - In a **worker** it runs `prog` with the inherited listeners and returns what `prog` returns.
    /// - **Disabled** (not Unix, [`disabled`](Self::disabled), or `UPSHIFT_DISABLE=1`), it binds
    ///   locally and runs `prog` in this process.
    ///
    /// Call it before starting threads that read the environment: a worker removes upshift's
    /// variables from its environment before `prog` runs, and the master removes systemd's
    /// `NOTIFY_SOCKET` and `LISTEN_*` (it notifies systemd and adopts passed sockets itself; see
    /// `docs/systemd.md`).
    ///
    /// # Errors
    /// Invalid configuration, a listen address that cannot be bound, or a malformed worker
    /// environment.
    pub fn run<F, R>(self, prog: F) -> Result<R, Error>
    where
        F: FnOnce(State) -> R,
    {
        crate::install::answer_test_run_if_asked(|| self.check_master_config());
        match self.role()? {
            Role::Worker(env) => Ok(prog(crate::worker::adopt(env)?)),
            Role::Disabled(reason) => Ok(prog(crate::worker::local(
                &self.parse_addrs()?,
                &self.unix_socket,
                reason,
            )?)),
            Role::Master => {
                let code = crate::master::run_blocking(self.into_master_config()?)?;
                std::process::exit(code)
            }
            Role::Reexecuted(fd) => {
                std::process::exit(crate::master::run_adopting(self.into_master_config(), &fd))
            }
        }
    }

    /// Starts upshift from inside a tokio runtime (`#[tokio::main]`); see [`run`](Self::run).
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() -> Result<(), upshift::Error> {
    ///     upshift::Upgrader::new()
    ///         .listen("127.0.0.1:8080")
    ///         .run_async(|mut state| async move {
    ///             let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
    ///             upshift::http::serve(&mut state, app).await
    ///         })
    ///         .await?
    ///         .map_err(|e| upshift::Error::Io { what: "serving".into(), source: e })
    /// }
    /// ```
    ///
    /// # Errors
    /// As for [`run`](Self::run).
    pub async fn run_async<F, Fut, R>(self, prog: F) -> Result<R, Error>
    where
        F: FnOnce(State) -> Fut,
        Fut: Future<Output = R>,
    {
        crate::install::answer_test_run_if_asked(|| self.check_master_config());
        match self.role()? {
            Role::Worker(env) => Ok(prog(crate::worker::adopt(env)?).await),
            Role::Disabled(reason) => Ok(prog(crate::worker::local(
                &self.parse_addrs()?,
                &self.unix_socket,
                reason,
            )?)
            .await),
            Role::Master => {
                let code = crate::master::run_on_own_thread(self.into_master_config()?).await?;
                std::process::exit(code)
            }
            Role::Reexecuted(fd) => {
                std::process::exit(crate::master::run_adopting(self.into_master_config(), &fd))
            }
        }
    }

    fn role(&self) -> Result<Role, Error> {
        if let Some(worker) = WorkerEnv::decode(|k| std::env::var(k).ok())? {
            return Ok(Role::Worker(worker));
        }
        if let Some(fd) = std::env::var_os(crate::master::handover::FD_ENV) {
            // Gone before any worker or test run could inherit it and take itself for a master.
            std::env::remove_var(crate::master::handover::FD_ENV);
            return Ok(Role::Reexecuted(fd.to_string_lossy().into_owned()));
        }
        if self.disabled {
            return Ok(Role::Disabled("disabled in the configuration".into()));
        }
        if env::disabled_by_env() {
            return Ok(Role::Disabled(format!("disabled by {}", env::DISABLE)));
        }
        if !cfg!(unix) {
            return Ok(Role::Disabled("not supported on this platform".into()));
        }
        Ok(Role::Master)
    }

    fn parse_addrs(&self) -> Result<Vec<(String, ListenAddr)>, Error> {
        if self.addrs.is_empty() {
            return Err(Error::Config(
                "no listeners: call Upgrader::listen at least once".into(),
            ));
        }
        if self.addrs.len() >= crate::fds::MAX_INHERITED_FDS {
            return Err(Error::Config(format!(
                "{} listeners configured; at most {} are supported",
                self.addrs.len(),
                crate::fds::MAX_INHERITED_FDS - 1
            )));
        }
        self.unix_socket.validate()?;
        let mut out = Vec::with_capacity(self.addrs.len());
        for (name, addr) in &self.addrs {
            if name.is_empty() || name.contains(['\n', '\0']) {
                return Err(Error::Config(format!(
                    "listener name {name:?} must be non-empty and one line"
                )));
            }
            if out.iter().any(|(n, _): &(String, ListenAddr)| n == name) {
                return Err(Error::Config(format!("two listeners are named {name:?}")));
            }
            out.push((name.clone(), addr.parse()?));
        }
        Ok(out)
    }

    fn into_master_config(mut self) -> Result<MasterConfig, Error> {
        let mut cfg = self.master_config()?;
        // Validated even without a fetcher, so that a bad setting is never a surprise later.
        let fleet = crate::rollout::Fleet::new(std::mem::take(&mut self.fleet))?;
        if !self.fetchers.is_empty() {
            let public_keys = (self.public_keys.iter())
                .map(|text| parse_public_key(text))
                .collect::<Result<Vec<_>, _>>()?;
            for (what, value) in [("product", &self.product), ("target", &self.target)] {
                if let Some(v) = value.as_deref().filter(|v| !valid_name(v)) {
                    return Err(Error::Config(format!(
                        "the {what} {v:?} must be non-empty, one line, without tabs or \
                         surrounding spaces"
                    )));
                }
            }
            let policy = crate::fetch::TrustPolicy {
                signature_required: !public_keys.is_empty(),
                allow_insecure_transport: self.allow_insecure_transport,
            };
            for fetcher in &mut self.fetchers {
                fetcher
                    .apply_policy(&policy)
                    .map_err(|e| Error::Config(format!("fetcher {}: {e}", fetcher.name())))?;
            }
            let stage = StageOptions {
                max_bytes: self.max_release_bytes,
                require_checksum_for_remote: !self.allow_unverified_remote
                    && public_keys.is_empty(),
                public_keys,
                deadline: self.download_deadline,
                // The serving worker's image is added at each release (it changes).
                delta_bases: crate::install::base_candidates(None),
            };
            cfg.updates = Some(UpdateSettings {
                fetchers: std::mem::take(&mut self.fetchers),
                pipeline: PipelineConfig {
                    stage,
                    test_run_timeout: self.test_run_timeout,
                    on_event: self.on_event.take(),
                    veto: self.veto.take(),
                    version: self.version.take(),
                    product: self.product.take(),
                    target: self
                        .target
                        .take()
                        .unwrap_or_else(|| BUILD_TARGET.to_string()),
                    install_mode: self.install_mode,
                    fleet,
                    master_reexec: cfg.master_reexec,
                },
            });
        }
        Ok(cfg)
    }

    /// What a test run checks when asked whether this build can take over the master: that its
    /// configuration loads (binding its listeners is left to the master itself).
    fn check_master_config(&self) -> Result<(), String> {
        self.master_config().map_err(|e| e.to_string())?;
        for key in &self.public_keys {
            parse_public_key(key).map_err(|e| e.to_string())?;
        }
        for (what, value) in [("product", &self.product), ("target", &self.target)] {
            if let Some(v) = value.as_deref().filter(|v| !valid_name(v)) {
                return Err(format!("the {what} {v:?} is not valid"));
            }
        }
        Ok(())
    }

    fn master_config(&self) -> Result<MasterConfig, Error> {
        if matches!(
            self.restart_signal,
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGCHLD | Signal::SIGKILL | Signal::SIGSTOP
        ) {
            return Err(Error::Config(format!(
                "{} cannot be the restart signal",
                self.restart_signal
            )));
        }
        if let Some(label) = self.build_id.as_deref().filter(|l| !valid_build_id(l)) {
            return Err(Error::Config(format!(
                "the build id {label:?} must be non-empty, one line of at most \
                 {MAX_BUILD_ID_BYTES} bytes, printable, without surrounding spaces"
            )));
        }
        Ok(MasterConfig {
            addrs: self.parse_addrs()?,
            unix_socket: self.unix_socket,
            restart_signal: self.restart_signal,
            ready_timeout: self.ready_timeout,
            drain_timeout: self.drain_timeout,
            max_draining: self.max_draining,
            crash_policy: self.crash_policy,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            probation: self.probation,
            updates: None,
            build_id: self.build_id.clone(),
            master_reexec: self.master_reexec,
            test_run_timeout: self.test_run_timeout,
        })
    }
}

/// A product or target name as signed metadata can carry it.
fn valid_name(v: &str) -> bool {
    !v.is_empty() && v.trim() == v && !v.chars().any(char::is_control)
}

/// The longest build id, in bytes: with its prefix it fits one control line
/// ([`MAX_LINE`](crate::control::MAX_LINE)), and it stays readable in a log line.
pub(crate) const MAX_BUILD_ID_BYTES: usize = 128;

/// A build id as [`Upgrader::build_id`] accepts it, and as a worker accepts it from its master.
pub(crate) fn valid_build_id(v: &str) -> bool {
    valid_name(v) && v.len() <= MAX_BUILD_ID_BYTES
}

/// Accepts the bare base64 key or a whole `minisign.pub` file (comment line, then the key).
fn parse_public_key(text: &str) -> Result<minisign_verify::PublicKey, Error> {
    let key_line = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .unwrap_or("");
    minisign_verify::PublicKey::from_base64(key_line)
        .map_err(|e| Error::Config(format!("the minisign public key is not valid: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_missing_and_duplicate_listeners() {
        let err = Upgrader::new().master_config().unwrap_err();
        assert!(err.to_string().contains("no listeners"), "{err}");
        let err = Upgrader::new()
            .listen("127.0.0.1:1")
            .listen("127.0.0.1:1")
            .master_config()
            .unwrap_err();
        assert!(err.to_string().contains("two listeners"), "{err}");
        let err = Upgrader::new()
            .listen("nonsense")
            .master_config()
            .unwrap_err();
        assert!(err.to_string().contains("neither host:port"), "{err}");
    }

    #[test]
    fn minisign_key_is_read_bare_or_from_a_pub_file_and_rejected_when_bad() {
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let file = kp.pk.to_box().unwrap().into_string();
        let bare = kp.pk.to_base64();
        assert!(parse_public_key(&file).is_ok(), "{file}");
        assert!(parse_public_key(&bare).is_ok());
        let err = parse_public_key("not a key").unwrap_err();
        assert!(err.to_string().contains("minisign public key"), "{err}");
    }

    /// Records the policy it was handed and refuses it unless plain transport is allowed, as a
    /// fetcher with an `http://` URL does.
    struct PlainHttp(std::sync::Arc<std::sync::Mutex<Option<crate::fetch::TrustPolicy>>>);

    #[async_trait::async_trait]
    impl Fetcher for PlainHttp {
        fn name(&self) -> &str {
            "http://example.test/app"
        }
        async fn check(
            &mut self,
            _: &crate::fetch::Current,
        ) -> Result<Option<crate::fetch::Release>, crate::fetch::FetchError> {
            Ok(None)
        }
        fn apply_policy(
            &mut self,
            policy: &crate::fetch::TrustPolicy,
        ) -> Result<(), crate::fetch::FetchError> {
            *self.0.lock().unwrap() = Some(*policy);
            if policy.plain_transport_allowed() {
                Ok(())
            } else {
                Err(crate::fetch::FetchError::Source("plain http".into()))
            }
        }
    }

    #[test]
    fn every_fetcher_gets_the_trust_policy_and_can_refuse_it_at_startup() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let strict = Upgrader::new()
            .listen("127.0.0.1:1")
            .fetcher(PlainHttp(seen.clone()));
        let err = strict.into_master_config().unwrap_err();
        assert!(
            err.to_string()
                .contains("fetcher http://example.test/app: plain http"),
            "{err}"
        );
        assert_eq!(
            *seen.lock().unwrap(),
            Some(crate::fetch::TrustPolicy::default())
        );

        let opted_in = Upgrader::new()
            .listen("127.0.0.1:1")
            .allow_insecure_transport(true)
            .fetcher(PlainHttp(seen.clone()));
        assert!(opted_in.into_master_config().is_ok());

        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let signed = Upgrader::new()
            .listen("127.0.0.1:1")
            .minisign_public_key(kp.pk.to_base64())
            .fetcher(PlainHttp(seen.clone()));
        assert!(signed.into_master_config().is_ok());
        let policy = seen.lock().unwrap().unwrap();
        assert!(policy.signature_required && !policy.allow_insecure_transport);
    }

    #[test]
    fn build_id_must_be_one_printable_line_of_at_most_128_bytes() {
        let with = |label: &str| {
            Upgrader::new()
                .listen("127.0.0.1:1")
                .build_id(label)
                .master_config()
        };
        assert_eq!(with("v1.4.2").unwrap().build_id.as_deref(), Some("v1.4.2"));
        let longest = "é".repeat(64);
        assert_eq!(with(&longest).unwrap().build_id, Some(longest));
        let unnamed = Upgrader::new().listen("127.0.0.1:1").master_config();
        assert_eq!(unnamed.unwrap().build_id, None);
        let too_long = format!("{}x", "é".repeat(64));
        for bad in [
            "",
            "two\nlines",
            " v1",
            "v1 ",
            "tab\there",
            "nul\0",
            "bell\u{7}",
            &too_long,
        ] {
            let err = with(bad).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{bad:?}: {err}");
            assert!(err.to_string().contains("build id"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn master_reexec_is_on_by_default_and_reaches_the_pipeline() {
        let base = || Upgrader::new().listen("127.0.0.1:1");
        assert!(base().master_config().unwrap().master_reexec);
        assert!(
            !base()
                .master_reexec(false)
                .master_config()
                .unwrap()
                .master_reexec
        );
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        for on in [true, false] {
            let cfg = base()
                .allow_insecure_transport(true)
                .master_reexec(on)
                .fetcher(PlainHttp(seen.clone()))
                .into_master_config()
                .unwrap();
            let updates = cfg.updates.expect("a fetcher is configured");
            assert_eq!(updates.pipeline.master_reexec, on);
        }
    }

    #[test]
    fn refuses_a_restart_signal_that_means_stop() {
        let err = Upgrader::new()
            .listen("127.0.0.1:1")
            .restart_signal(Signal::SIGTERM)
            .master_config()
            .unwrap_err();
        assert!(err.to_string().contains("restart signal"), "{err}");
    }
}
