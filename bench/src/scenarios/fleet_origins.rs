//! The release servers of the `fleet` scenario, each counting at the origin what it served:
//!
//! - **HTTP**: nginx serving a directory (`nginx.rs`), counted by its access log (`$status`,
//!   `$bytes_sent`, `$body_bytes_sent`, `$request_time`).
//! - **S3**: s3s-fs, which logs no requests: counted by the counting proxy of the S3 tests
//!   (`upshift_testkit::s3::proxy`) on loopback in front of it, on a runtime of its own. The
//!   hosts talk to the proxy; the operator publishes to s3s-fs directly.
//! - **GitHub**: the GitHub REST fixture (`fixtures/github`), counted by its own request log
//!   (`/_fixture/log`: origin, status, body bytes, arrival and end times). Its rate limit is one
//!   counter per fixture process, as GitHub keeps one per token or, unauthenticated, per IP
//!   address: a fleet behind one token (or one NAT address) shares it.
//!
//! Each group of hosts has its own release path (`<group>/app`, repository `fleet/<group>`), so
//! that one server can serve several groups and its log still tells them apart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use upshift::fetch::{Current, Fetcher, TrustPolicy};
use upshift_testkit::s3::proxy::Proxy;
use upshift_testkit::servers::github;

use super::hosts::Fleet;
use crate::nginx::Nginx;
use crate::originlog::{self, Hit};
use crate::procs::Guard;
use crate::s3::{self, S3sFs};

const BUCKET: &str = "releases";
/// The version every host runs at the start (GitHub tags `v1.0.0`); releases count up from it.
pub const FIRST_VERSION: &str = "1.0.0";
/// Room for every host's keep-alive connection, and then some.
const NGINX_CONNECTIONS: u32 = 16_384;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Http,
    S3,
    Github,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::S3 => "s3",
            Kind::Github => "github",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Http, Kind::S3, Kind::Github]
            .into_iter()
            .find(|k| k.name() == s)
    }

    /// The fetcher and the server, and how the server is counted.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Http => "HTTP: `HttpFetcher` → nginx (counted by its access log)",
            Kind::S3 => "S3: `S3Fetcher` → s3s-fs (counted by a proxy in front of it)",
            Kind::Github => "GitHub: `GithubFetcher` → the GitHub fixture (counted by its log)",
        }
    }
}

/// The GitHub fixture as a child of the harness (stopped by pid), its API origin and data
/// directory.
struct Fixture {
    guard: Guard,
    api: String,
    api_addr: SocketAddr,
    data: PathBuf,
    dir: PathBuf,
}

enum Server {
    Http(Nginx),
    S3 {
        server: S3sFs,
        proxy: Proxy,
    },
    Github {
        fixture: Fixture,
        token: Option<String>,
    },
}

pub struct Origin {
    pub kind: Kind,
    server: Server,
}

impl Origin {
    pub fn http(dir: &Path) -> Result<Origin, String> {
        Ok(Origin {
            kind: Kind::Http,
            server: Server::Http(Nginx::start_with(dir, "1m", NGINX_CONNECTIONS)?),
        })
    }

    /// s3s-fs with its bucket, and the counting proxy on `proxy_rt`.
    pub fn s3(dir: &Path, proxy_rt: &tokio::runtime::Handle) -> Result<Origin, String> {
        let server = S3sFs::start(dir)?;
        server.create_bucket(BUCKET)?;
        // The object path only matters to the proxy's fault injection, which is not used.
        let proxy = Proxy::start(proxy_rt.clone(), server.addr, BUCKET, "app");
        Ok(Origin {
            kind: Kind::S3,
            server: Server::S3 { server, proxy },
        })
    }

    /// The fixture (`bin`) with `args` (`--rate-limit 60`, `--token T`); the hosts present
    /// `token` if given.
    pub fn github(
        bin: &Path,
        dir: &Path,
        args: &[String],
        token: Option<&str>,
    ) -> Result<Origin, String> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let log = dir.join("fixture.log");
        let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = github::command(bin, &data, args);
        cmd.stderr(Stdio::from(stderr));
        let mut guard = Guard::spawn(&mut cmd, "upshift-github-fixture", Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let stdout = guard
            .child_mut()
            .stdout
            .take()
            .ok_or("the fixture has no stdout pipe")?;
        let [api, _objects, _uploads] = github::read_origins(stdout)?;
        let api_addr = api
            .trim_start_matches("http://")
            .parse()
            .map_err(|e| format!("the fixture's API origin {api}: {e}"))?;
        Ok(Origin {
            kind: Kind::Github,
            server: Server::Github {
                fixture: Fixture {
                    guard,
                    api,
                    api_addr,
                    data,
                    dir: dir.to_path_buf(),
                },
                token: token.map(str::to_string),
            },
        })
    }

    /// The server's pid (for its CPU time).
    pub fn pid(&self) -> Option<u32> {
        match &self.server {
            Server::Http(n) => n.pid(),
            Server::S3 { server, .. } => Some(server.pid()),
            Server::Github { fixture, .. } => Some(fixture.guard.pid()),
        }
    }

    /// Publishes `file` as what every host of `group` runs at the start, before any host polls.
    pub fn publish_initial(&self, group: &str, file: &Path) -> Result<(), String> {
        match &self.server {
            Server::Github { fixture, .. } => {
                // Written in the fixture's data layout, not through the API: setting the stage
                // spends none of the rate limit the hosts are measured against.
                let dir = fixture
                    .data
                    .join(format!("fleet/{group}/releases/v{FIRST_VERSION}"));
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let asset = dir.join(asset_name());
                std::fs::hard_link(file, &asset)
                    .or_else(|_| std::fs::copy(file, &asset).map(|_| ()))
                    .map_err(|e| format!("{}: {e}", asset.display()))
            }
            _ => self.publish_now(group, file, "app"),
        }
    }

    /// Publishes `file` as release `version` for `group` the way users do: nginx's directory
    /// gets `app.sha256` then `app`, each by a rename (`Nginx::publish`); S3 gets one signed PUT
    /// with `x-amz-meta-sha256` (`S3sFs::prepare_release`); GitHub gets `upshift-publish
    /// --github fleet/<group> --tag v<version>` (a draft release, the asset and its `.sha256`
    /// uploaded, then published), run in-process.
    ///
    /// With `delta`, the patch from `delta.base` goes first, the way `upshift-publish
    /// --delta-from` publishes it: nginx's directory and S3 get the patch made beforehand
    /// (`delta.patch`, under [`upshift::delta::patch_name`], with its own `.sha256` /
    /// `x-amz-meta-sha256`); GitHub gets `--delta-from` on the same `upshift-publish` run.
    pub async fn publish(
        &self,
        group: &str,
        file: &Path,
        version: &str,
        delta: Option<&DeltaFiles>,
    ) -> Result<(), String> {
        match &self.server {
            Server::Github { fixture, .. } => {
                fixture
                    .publish(group, file, version, delta.map(|d| d.base.as_path()))
                    .await
            }
            _ => {
                if let Some(d) = delta {
                    let name = upshift::delta::patch_name("app", &d.base_sha256);
                    self.publish_now(group, &d.patch, &name)?;
                }
                self.publish_now(group, file, "app")
            }
        }
    }

    /// Publishes `file` as `<group>/<name>` with its sha256 beside it (nginx) or in its metadata
    /// (S3).
    fn publish_now(&self, group: &str, file: &Path, name: &str) -> Result<(), String> {
        let key = format!("{group}/{name}");
        let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        match &self.server {
            Server::Http(n) => n.publish(&key, file, &hex::encode(Sha256::digest(&bytes))),
            Server::S3 { server, .. } => {
                server.prepare_release(BUCKET, &key, bytes).send().map(drop)
            }
            Server::Github { .. } => Err("GitHub releases are published asynchronously".into()),
        }
    }

    /// The operator sets the rollout of `group` to `percent`: the rollout document beside the
    /// HTTP release (`app.rollout`, which `HttpFetcher::rollout_url` reads), or the host-side
    /// percentage (`Upgrader::rollout_percent`) for fetchers whose source carries none.
    pub fn set_rollout(&self, group: &str, percent: f64, fleet: &Fleet) -> Result<(), String> {
        match &self.server {
            Server::Http(n) => n.put_text(
                &format!("{group}/app.rollout"),
                &format!("rollout: {percent}\n"),
            ),
            _ => {
                fleet.set_percent(percent);
                Ok(())
            }
        }
    }

    /// A host's fetcher for `group`, polling every `interval`, as `hello` would configure it
    /// (plain http allowed: these are loopback servers).
    pub fn fetcher(
        &self,
        group: &str,
        interval: Duration,
        deltas: bool,
    ) -> Result<Box<dyn Fetcher>, String> {
        let e = |e: upshift::fetch::FetchError| format!("{}: {e}", self.kind.name());
        let mut f: Box<dyn Fetcher> = match &self.server {
            Server::Http(n) => Box::new(
                upshift_http::HttpFetcher::new(n.url(&format!("{group}/app")))
                    .map_err(e)?
                    .rollout_url("app.rollout")
                    .deltas(deltas)
                    .interval(interval),
            ),
            Server::S3 { proxy, .. } => Box::new(
                upshift_s3::S3Fetcher::new(BUCKET, format!("{group}/app"))
                    .endpoint(proxy.url())
                    .region(s3::REGION)
                    .credentials(s3::ACCESS_KEY, s3::SECRET_KEY, None)
                    .deltas(deltas)
                    .interval(interval),
            ),
            Server::Github { fixture, token } => {
                let mut g = upshift_github::GithubFetcher::new(&format!("fleet/{group}"))
                    .map_err(e)?
                    .api_base(fixture.api.clone())
                    .deltas(deltas)
                    .interval(interval);
                if let Some(t) = token {
                    g = g.token(t.clone());
                }
                Box::new(g)
            }
        };
        let policy = TrustPolicy {
            allow_insecure_transport: true,
            ..TrustPolicy::default()
        };
        f.apply_policy(&policy).map_err(e)?;
        Ok(f)
    }

    /// What a host that runs the build with sha256 `sha256` tells its fetcher: nothing installed
    /// by upshift yet, a checksum required for remote releases (the master's default) and, for
    /// GitHub, the running version as the floor.
    pub fn current(&self, sha256: &str) -> Current {
        Current {
            sha256: sha256.to_string(),
            identity: None,
            version: (self.kind == Kind::Github).then(|| FIRST_VERSION.to_string()),
            rejected: Vec::new(),
            requires_checksum: true,
        }
    }

    /// Every request the origin served the hosts so far. The operator publishes to nginx's
    /// directory and to s3s-fs directly; to the GitHub fixture through its API, whose requests
    /// (`upshift-publish`'s, not the fetcher's `User-Agent`) are left out, as is its uploads
    /// origin.
    pub fn hits(&self) -> Result<Vec<Hit>, String> {
        match &self.server {
            Server::Http(n) => Ok(originlog::read_nginx(&n.access_log())),
            Server::S3 { proxy, .. } => {
                Ok(proxy.log().iter().map(originlog::from_exchange).collect())
            }
            Server::Github { fixture, .. } => {
                let reply =
                    crate::httpget::get(fixture.api_addr, "/_fixture/log", Duration::from_secs(60))
                        .map_err(|e| format!("reading the fixture's log: {e}"))?;
                Ok(reply
                    .body
                    .lines()
                    .filter_map(originlog::parse_fixture)
                    .filter(|h| h.origin != "uploads" && h.agent.starts_with("upshift-github/"))
                    .collect())
            }
        }
    }

    /// Whether `hit` was a request of `group`'s.
    pub fn of_group(hit: &Hit, group: &str) -> bool {
        hit.path.contains(&format!("/{group}/"))
    }

    /// Whether `hit` was a GET of the release file itself (the body a host downloads), whole
    /// or cut short.
    pub fn is_release_body(&self, hit: &Hit, group: &str) -> bool {
        hit.method == "GET"
            && hit.status == 200
            && match self.kind {
                Kind::Http => hit.path == format!("/{group}/app"),
                Kind::S3 => hit.path == format!("/{BUCKET}/{group}/app"),
                Kind::Github => {
                    hit.origin == "objects"
                        && hit.path.starts_with(&format!("/objects/fleet/{group}/"))
                }
            }
    }

    /// Whether `hit` spent the GitHub rate limit: an API answer that passed the limit's gate,
    /// except a `304` to a request with a token (GitHub's documented exemption).
    pub fn spends_quota(&self, hit: &Hit) -> bool {
        let Server::Github { token, .. } = &self.server else {
            return false;
        };
        hit.origin == "api"
            && !matches!(hit.status, 403 | 429)
            && !(token.is_some() && hit.status == 304)
    }
}

impl Fixture {
    async fn publish(
        &self,
        group: &str,
        file: &Path,
        version: &str,
        delta_from: Option<&Path>,
    ) -> Result<(), String> {
        let token_file = self.dir.join("publisher-token");
        std::fs::write(&token_file, PUBLISHER_TOKEN)
            .map_err(|e| format!("{}: {e}", token_file.display()))?;
        let mut args = vec![
            file.display().to_string(),
            "--github".into(),
            format!("fleet/{group}"),
            "--tag".into(),
            format!("v{version}"),
            "--github-api".into(),
            self.api.clone(),
            "--github-token-file".into(),
            token_file.display().to_string(),
            "--quiet".into(),
        ];
        if let Some(base) = delta_from {
            args.extend(["--delta-from".into(), base.display().to_string()]);
        }
        let config = match upshift_publish::cli::parse(args) {
            Ok(upshift_publish::cli::Command::Publish(c)) => c,
            Ok(_) => return Err("upshift-publish: not a publish command".into()),
            Err(e) => return Err(format!("upshift-publish: {e}")),
        };
        upshift_publish::publish(&config)
            .await
            .map(drop)
            .map_err(|e| format!("upshift-publish --github fleet/{group}: {e}"))
    }
}

/// A release's patch from the build every host runs: made once, before the release is
/// published, so that publishing stays the visible step.
pub struct DeltaFiles {
    /// The build every host runs.
    pub base: PathBuf,
    pub base_sha256: String,
    /// The patch from `base` to the release (`upshift::delta::make`).
    pub patch: PathBuf,
}

impl DeltaFiles {
    /// Makes the patch from `base` to `release` beside `release`.
    pub fn make(base: &Path, release: &Path) -> Result<DeltaFiles, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let (old, new) = (read(base)?, read(release)?);
        let mut patch = Vec::new();
        upshift::delta::make(&old, &new, &mut patch).map_err(|e| format!("making a patch: {e}"))?;
        let path = release.with_extension("patch");
        std::fs::write(&path, &patch).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(DeltaFiles {
            base: base.to_path_buf(),
            base_sha256: hex::encode(Sha256::digest(&old)),
            patch: path,
        })
    }
}

/// The token the operator publishes with, and the one hosts present where the fixture is given
/// one: a fleet shares one token, so they are the same.
pub const PUBLISHER_TOKEN: &str = "upshift-bench-fleet-token";

/// The release asset's name: it names this platform, so the GitHub fetcher picks it.
fn asset_name() -> String {
    format!("hello-{}", upshift_github::TARGET)
}
