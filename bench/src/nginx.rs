//! A real nginx on 127.0.0.1 serving releases to the HTTP fetcher, from a configuration written
//! into a directory of the harness's temporary directory (pid file, logs and temp paths too).
//! It runs in the foreground without a master process, so the pid the harness holds is the one
//! that serves: SIGKILL to it is "the release server died", mid-body if need be.
//!
//! Locations: `/` at full speed; `/slow/` (same files, `www/slow/`) throttled with `limit_rate`.
//!
//! The access log (`access.log`) is the origin's own count of what it served, one tab-separated
//! line a request: `$msec` (when it ended), `$request_time`, `$status`, `$request_method`,
//! `$uri`, `$bytes_sent` (headers included) and `$body_bytes_sent` (see [`crate::originlog`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use upshift_testkit::servers::nginx;

use crate::procs::Guard;

pub struct Nginx {
    dir: PathBuf,
    pub port: u16,
    guard: Option<Guard>,
}

impl Nginx {
    /// Starts nginx serving `<dir>/www`, with `/slow/` limited to `slow_rate` (nginx syntax:
    /// `2m` is 2 MB/s).
    pub fn start(dir: &Path, slow_rate: &str) -> Result<Nginx, String> {
        Nginx::start_with(dir, slow_rate, 256)
    }

    /// Like [`Nginx::start`], with room for `connections` simultaneous connections.
    pub fn start_with(dir: &Path, slow_rate: &str, connections: u32) -> Result<Nginx, String> {
        for sub in ["www/slow", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("creating {}: {e}", dir.join(sub).display()))?;
        }
        let mut last = String::new();
        for _ in 0..3 {
            let port = crate::hello::free_port()?;
            std::fs::write(
                dir.join("nginx.conf"),
                config(dir, port, slow_rate, connections),
            )
            .map_err(|e| format!("writing nginx.conf: {e}"))?;
            let mut n = Nginx {
                dir: dir.to_path_buf(),
                port,
                guard: None,
            };
            match n.spawn() {
                Ok(()) => return Ok(n),
                Err(e) => last = e, // most likely the port was taken meanwhile
            }
        }
        Err(last)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let guard = Guard::spawn(
            &mut nginx::command(&self.dir),
            "nginx",
            Duration::from_secs(5),
        )
        .map_err(|e| format!("{e} (nginx is the Debian package nginx-light)"))?;
        self.guard = Some(guard);
        let ready = nginx::wait_ready(&self.dir, &[self.port], || {
            self.guard.as_mut().and_then(|g| g.try_wait())
        });
        if ready.is_err() {
            // Exited (then reaped), or not answering: either way, not ours to keep.
            self.kill();
        }
        ready
    }

    /// SIGKILL: connections in progress are cut, new ones refused until [`Nginx::restart`].
    pub fn kill(&mut self) {
        if let Some(mut g) = self.guard.take() {
            let _ = crate::procs::signal(g.pid(), libc::SIGKILL);
            g.wait_for(Duration::from_secs(5));
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) -> Result<(), String> {
        if self.guard.is_none() {
            self.spawn()?;
        }
        Ok(())
    }

    /// The serving process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.guard.as_ref().map(Guard::pid)
    }

    pub fn url(&self, rel: &str) -> String {
        format!("http://127.0.0.1:{}/{rel}", self.port)
    }

    pub fn www(&self) -> PathBuf {
        self.dir.join("www")
    }

    pub fn access_log(&self) -> PathBuf {
        self.dir.join("access.log")
    }

    /// Writes `text` at `www/<rel>` through a temporary name and a rename (a rollout document).
    pub fn put_text(&self, rel: &str, text: &str) -> Result<(), String> {
        let dest = self.www().join(rel);
        let tmp = dest.with_extension("part");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &dest))
            .map_err(|e| format!("publishing {}: {e}", dest.display()))
    }

    /// Publishes a release at `www/<rel>`: `<rel>.sha256` first, then the file, each through a
    /// temporary name and a rename, as a deploy does. The file is hard-linked when it can be
    /// (no 200 MB copy), else copied.
    pub fn publish(&self, rel: &str, file: &Path, sha256: &str) -> Result<(), String> {
        let dest = self.www().join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let side = dest.with_file_name(format!("{name}.sha256"));
        let side_tmp = dest.with_file_name(format!("{name}.sha256.part"));
        std::fs::write(&side_tmp, format!("{sha256}  {name}\n"))
            .and_then(|()| std::fs::rename(&side_tmp, &side))
            .map_err(|e| format!("publishing {}: {e}", side.display()))?;
        let tmp = dest.with_file_name(format!("{name}.part"));
        let _ = std::fs::remove_file(&tmp);
        std::fs::hard_link(file, &tmp)
            .or_else(|_| std::fs::copy(file, &tmp).map(|_| ()))
            .and_then(|()| std::fs::rename(&tmp, &dest))
            .map_err(|e| format!("publishing {}: {e}", dest.display()))
    }
}

fn config(dir: &Path, port: u16, slow_rate: &str, connections: u32) -> String {
    let d = dir.display();
    let head = nginx::config_head_with(dir, connections);
    format!(
        r#"{head}
    log_format counting '$msec\t$request_time\t$status\t$request_method\t$uri\t$bytes_sent\t$body_bytes_sent';
    access_log {d}/access.log counting;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        location /slow/ {{ limit_rate {slow_rate}; }}
    }}
}}
"#
    )
}
