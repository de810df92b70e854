//! A real nginx on 127.0.0.1, started as a child process from a generated configuration in a
//! private temp dir (pid file, logs, temp paths, document roots all inside it), killed by PID on
//! drop.
//!
//! Two servers (two origins): the main one on `port`, serving `www/`, and `alt_port`, serving
//! `www-alt/`, for cross-origin redirects. The access log records, per request, the port, method,
//! URI, status, `$body_bytes_sent`, whether `Authorization` / `X-Api-Key` arrived (never their
//! values) and the `If-None-Match` / `If-Modified-Since` sent.
//!
//! Faults are marker files under `faults/`, tested by `if (-f …)` on every request: `faults/500`
//! answers 500, `faults/404` answers 404, `faults/truncate<uri>` proxies that URI to the
//! truncating upstream (the HTTP fetcher's tests run it). [`Nginx::stop`] / [`Nginx::restart`] refuse
//! connections, [`Nginx::pause`] / [`Nginx::resume`] (SIGSTOP / SIGCONT) stall them: the kernel
//! still accepts, nothing answers.
//!
//! Locations of the main server:
//! - `/private/`: 401 unless `Authorization: Bearer s3cret-token`; `/private/away` redirects (302)
//!   to the alt server's `/landing`, `/private/same` to `/private/app`.
//! - `/limited/`: 429 with `Retry-After: 7`; `/busy/`: 503 without `Retry-After`; `/loop`
//!   redirects to itself.
//! - `/slow/`: served at 10 KB/s.
//! - `/gets-only/`: 403 to `HEAD`, as a URL presigned for `GET` answers.
//! - `/typed/`: everything as `application/zip`.

use std::fs;
use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::procs::ChildGuard;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The URI prefix of the harness's own requests (see [`Nginx::settled_hits`]).
const SYNC: &str = "/__sync/";

/// The token `/private/` wants.
pub const TOKEN: &str = "Bearer s3cret-token";

/// One access-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub port: u16,
    pub method: String,
    pub uri: String,
    pub status: u16,
    pub body_bytes: u64,
    pub authorization: bool,
    pub api_key: bool,
    /// `If-None-Match` as sent, `None` when absent.
    pub if_none_match: Option<String>,
    /// `If-Modified-Since` as sent, `None` when absent.
    pub if_modified_since: Option<String>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Options {
    /// The port of an upstream that `faults/truncate<uri>` proxies to.
    pub upstream: Option<u16>,
    /// Also listen with TLS (a self-signed certificate for 127.0.0.1, made with `openssl`).
    pub tls: bool,
}

pub struct Nginx {
    dir: PathBuf,
    pub port: u16,
    pub alt_port: u16,
    pub tls_port: Option<u16>,
    child: Mutex<Option<ChildGuard>>,
}

/// The nginx binary: `/usr/sbin/nginx` where Debian puts it, else `nginx` on the `PATH`.
pub fn binary() -> PathBuf {
    let sbin = Path::new("/usr/sbin/nginx");
    match sbin.exists() {
        true => sbin.to_path_buf(),
        false => PathBuf::from("nginx"),
    }
}

/// A port that was free a moment ago (nginx binds it next; a lost race is retried).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

fn temp_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "upshift-http-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Writes `path` through a temporary name and a rename, creating parent directories.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {tmp:?}: {e}"));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

pub fn remove_if_present(path: &Path) {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => panic!("remove {}: {e}", path.display()),
        _ => {}
    }
}

/// Whether an nginx binary is here to run; if not, the calling test is reported as skipped
/// (or fails, under `scripts/test`).
pub fn nginx_or_skip() -> bool {
    let runs = Command::new(binary())
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !runs {
        crate::skip::skip_without("nginx", "apt-get install nginx-light", None);
    }
    runs
}

impl Nginx {
    pub fn start() -> Nginx {
        Nginx::start_with(Options::default())
    }

    /// [`Nginx::start`], or `None` (the test reported as skipped) where nginx is not installed.
    pub fn start_or_skip() -> Option<Nginx> {
        nginx_or_skip().then(Nginx::start)
    }

    pub fn start_with(opts: Options) -> Nginx {
        let dir = temp_dir();
        for sub in ["www", "www-alt", "faults", "tmp"] {
            fs::create_dir_all(dir.join(sub)).expect("create the nginx dirs");
        }
        if opts.tls {
            make_certificate(&dir);
        }
        let mut nginx = Nginx {
            dir,
            port: 0,
            alt_port: 0,
            tls_port: None,
            child: Mutex::new(None),
        };
        let mut last_error = String::new();
        for _ in 0..5 {
            nginx.port = free_port();
            nginx.alt_port = free_port();
            nginx.tls_port = opts.tls.then(free_port);
            if nginx.port == nginx.alt_port || Some(nginx.port) == nginx.tls_port {
                continue;
            }
            fs::write(nginx.dir.join("nginx.conf"), nginx.config(opts)).expect("write nginx.conf");
            match nginx.spawn() {
                Ok(()) => return nginx,
                Err(e) => last_error = e, // most likely a port taken meanwhile: new ports
            }
        }
        panic!("nginx did not start: {last_error}")
    }

    fn config(&self, opts: Options) -> String {
        let dir = self.dir.display();
        let truncate = match opts.upstream {
            Some(up) => {
                format!("if (-f {dir}/faults/truncate$uri) {{ proxy_pass http://127.0.0.1:{up}; }}")
            }
            None => String::new(),
        };
        let faults = format!(
            "if (-f {dir}/faults/500) {{ return 500; }}\n            \
             if (-f {dir}/faults/404) {{ return 404; }}"
        );
        let port = self.port;
        let tls = match self.tls_port {
            Some(p) => format!(
                "server {{
        listen 127.0.0.1:{p} ssl;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        root {dir}/www;
        location = /downgrade {{ return 302 http://127.0.0.1:{port}/app; }}
    }}"
            ),
            None => String::new(),
        };
        format!(
            r#"{head}
    types {{ application/gzip gz; application/zip zip; }}
    if_modified_since exact;
    keepalive_timeout 30s;
    map $http_authorization $has_authorization {{ "" no; default yes; }}
    map $http_x_api_key $has_api_key {{ "" no; default yes; }}
    log_format upshift '$server_port\t$request_method\t$request_uri\t$status\t$body_bytes_sent\t$has_authorization\t$has_api_key\t$http_if_none_match\t$http_if_modified_since';
    access_log {dir}/access.log upshift;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
        location / {{
            {faults}
            {truncate}
        }}
        location /private/ {{
            if ($http_authorization != "{TOKEN}") {{ return 401; }}
        }}
        location = /private/away {{
            if ($http_authorization != "{TOKEN}") {{ return 401; }}
            return 302 http://127.0.0.1:{alt}/landing;
        }}
        location = /private/same {{
            if ($http_authorization != "{TOKEN}") {{ return 401; }}
            return 302 /private/app;
        }}
        location /limited/ {{
            add_header Retry-After 7 always;
            return 429;
        }}
        location /busy/ {{ return 503; }}
        location /gets-only/ {{
            if ($request_method = HEAD) {{ return 403; }}
        }}
        location = /loop {{ return 302 /loop; }}
        location /slow/ {{ limit_rate 10k; }}
        location /typed/ {{
            types {{ }}
            default_type application/zip;
        }}
    }}
    server {{
        listen 127.0.0.1:{alt};
        root {dir}/www-alt;
    }}
    {tls}
}}
"#,
            head = config_head(&self.dir),
            port = self.port,
            alt = self.alt_port,
        )
    }

    fn spawn(&self) -> Result<(), String> {
        let child = command(&self.dir).spawn().map_err(|e| {
            format!(
                "cannot run {}: {e} (install nginx-light)",
                binary().display()
            )
        })?;
        *self.child.lock().expect("child lock") = Some(ChildGuard::new(child));
        let ports: Vec<u16> = [Some(self.port), Some(self.alt_port), self.tls_port]
            .into_iter()
            .flatten()
            .collect();
        let ready = wait_ready(&self.dir, &ports, || self.try_wait());
        if ready.is_err() {
            self.kill();
        }
        ready
    }

    fn try_wait(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.child.lock().expect("child lock");
        let status = guard.as_mut().and_then(ChildGuard::try_wait);
        if status.is_some() {
            *guard = None;
        }
        status
    }

    fn kill(&self) {
        // Dropping the guard SIGKILLs, which ends a stopped process too.
        drop(self.child.lock().expect("child lock").take());
    }

    fn signal(&self, sig: libc::c_int) {
        let guard = self.child.lock().expect("child lock");
        let pid = guard
            .as_ref()
            .and_then(ChildGuard::pid)
            .expect("nginx is not running");
        // SAFETY: kill(2) on the PID of our own child, which we have not reaped.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// Stops nginx: connections to its ports are refused until [`Nginx::restart`].
    pub fn stop(&self) {
        self.kill();
    }

    /// Starts nginx again on the same ports.
    pub fn restart(&self) {
        if self.child.lock().expect("child lock").is_none() {
            self.spawn()
                .unwrap_or_else(|e| panic!("restarting nginx: {e}"));
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.lock().expect("child lock").is_some()
    }

    /// Freezes nginx (SIGSTOP): connections are accepted by the kernel, nothing answers.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    pub fn alt_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.alt_port)
    }

    pub fn tls_url(&self, path: &str) -> String {
        let port = self.tls_port.expect("started without TLS");
        format!("https://127.0.0.1:{port}/{path}")
    }

    pub fn www(&self) -> PathBuf {
        self.dir.join("www")
    }

    pub fn alt_www(&self) -> PathBuf {
        self.dir.join("www-alt")
    }

    /// Publishes `bytes` at `www/<rel>`, atomically.
    pub fn put(&self, rel: &str, bytes: &[u8]) {
        write_atomically(&self.www().join(rel), bytes);
    }

    /// Publishes `bytes` at `www/<rel>` with an mtime well in the past, so that nginx's validators
    /// for it are reliable (the fetcher does not trust validators of a file modified in the
    /// second it was served).
    pub fn put_settled(&self, rel: &str, bytes: &[u8]) {
        let path = self.www().join(rel);
        write_atomically(&path, bytes);
        let ago = SystemTime::now() - Duration::from_secs(30);
        fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(ago))
            .unwrap_or_else(|e| panic!("backdating {}: {e}", path.display()));
    }

    pub fn put_alt(&self, rel: &str, bytes: &[u8]) {
        write_atomically(&self.alt_www().join(rel), bytes);
    }

    pub fn delete(&self, rel: &str) {
        remove_if_present(&self.www().join(rel));
    }

    /// Creates (`on`) or removes the marker `faults/<name>`.
    pub fn fault(&self, name: &str, on: bool) {
        let marker = self.dir.join("faults").join(name);
        match on {
            true => write_atomically(&marker, b"on\n"),
            false => remove_if_present(&marker),
        }
    }

    /// The access log so far (without the harness's own `/__sync/` requests).
    pub fn hits(&self) -> Vec<Hit> {
        let text = fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        text.lines()
            .filter_map(parse_hit)
            .filter(|h| !h.uri.starts_with(SYNC))
            .collect()
    }

    /// The access log including every request answered so far. nginx logs a request once it has
    /// sent the last byte, which may be after the client has it; so this sends a request of its
    /// own and waits for its line: nginx (one process) handled and logged the earlier ones first.
    /// Without a running nginx, it waits a moment instead.
    pub fn settled_hits(&self) -> Vec<Hit> {
        static N: AtomicU64 = AtomicU64::new(0);
        let uri = format!("{SYNC}{}", N.fetch_add(1, Ordering::Relaxed));
        if !self.is_running() || !self.sync_request(&uri) {
            std::thread::sleep(Duration::from_millis(200));
            return self.hits();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
            let synced = text.lines().filter_map(parse_hit).any(|h| h.uri == uri);
            if synced || Instant::now() > deadline {
                return self.hits();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `GET <uri>` over a connection of its own; whether nginx answered.
    fn sync_request(&self, uri: &str) -> bool {
        use std::io::{Read, Write};
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET {uri} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        let mut answer = Vec::new();
        conn.write_all(request.as_bytes()).is_ok() && conn.read_to_end(&mut answer).is_ok()
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

fn parse_hit(line: &str) -> Option<Hit> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() != 9 {
        return None;
    }
    let header = |s: &str| (s != "-").then(|| s.to_string());
    Some(Hit {
        port: f[0].parse().ok()?,
        method: f[1].to_string(),
        uri: f[2].to_string(),
        status: f[3].parse().ok()?,
        body_bytes: f[4].parse().ok()?,
        authorization: f[5] == "yes",
        api_key: f[6] == "yes",
        if_none_match: header(f[7]),
        if_modified_since: header(f[8]),
    })
}

/// A self-signed certificate for 127.0.0.1 (`cert.pem`, `key.pem` in `dir`).
fn make_certificate(dir: &Path) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// nginx with TLS too, or `None` (the test is skipped, saying why) without the `openssl` command
/// to make its certificate.
pub fn start_tls() -> Option<Nginx> {
    if !nginx_or_skip() {
        return None;
    }
    if !have_openssl() {
        // CI installs openssl: there, a skip would hide that no TLS handshake was tested.
        crate::skip::skip_without(
            "openssl (to make a test certificate)",
            "apt-get install openssl",
            Some("UPSHIFT_REQUIRE_OPENSSL"),
        );
        return None;
    }
    Some(Nginx::start_with(Options {
        upstream: None,
        tls: true,
    }))
}

/// Whether the `openssl` command is there to make a test certificate.
pub fn have_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The head of an nginx configuration living in `dir`: in the foreground without a master
/// process (the PID its launcher holds is the one that serves), its pid file, error log and temp
/// paths inside `dir` (whose `tmp/` must exist), and the opening of the `http` block with the
/// settings every harness wants. The caller adds its servers and closes the block.
///
/// ```
/// let conf = upshift_testkit::servers::nginx::config_head(std::path::Path::new("/t"));
/// assert!(conf.contains("pid /t/nginx.pid;") && conf.ends_with("etag on;"));
/// ```
pub fn config_head(dir: &Path) -> String {
    config_head_with(dir, 256)
}

/// [`config_head`] with room for `connections` simultaneous connections (a simulated fleet keeps
/// one open per host).
pub fn config_head_with(dir: &Path, connections: u32) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections {connections}; }}
http {{
    default_type application/octet-stream;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    sendfile on;
    etag on;"
    )
}

/// `nginx` run on `<dir>/nginx.conf` with `dir` as its prefix and `<dir>/error.log` as its
/// startup log, standard streams closed.
pub fn command(dir: &Path) -> Command {
    let d = dir.display().to_string();
    let mut cmd = Command::new(binary());
    cmd.args(["-p", &format!("{d}/"), "-c", &format!("{d}/nginx.conf")])
        .args(["-e", &format!("{d}/error.log")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Waits (at most 10 s) until every one of `ports` on 127.0.0.1 accepts a connection; an error
/// with the end of `<dir>/error.log` if `exited` reports the process gone first.
pub fn wait_ready(
    dir: &Path,
    ports: &[u16],
    mut exited: impl FnMut() -> Option<std::process::ExitStatus>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = exited() {
            let log = fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            return Err(format!("nginx exited with {status}: {log}"));
        }
        if ports
            .iter()
            .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("nginx did not answer within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
