//! The fetcher conformance suite (crate `upshift-fetcher-conformance`) against [`HttpFetcher`]
//! and a real nginx on 127.0.0.1. Publishing writes the `.sha256` sidecar, then the release, each
//! atomically, under nginx's document root. What nginx served comes from its access log.
//!
//! Faults: 404 and 500 are nginx answering so for every request (marker files), "refused" stops
//! nginx, "slow" freezes it (SIGSTOP: connections are accepted, nothing answers) while the
//! fetcher's timeout is 2 s; a truncated transfer is nginx proxying the release to a raw TCP
//! upstream that announces more bytes than it sends.

mod common;

use std::time::Duration;

use common::{nginx_or_skip, Nginx, Options, Truncating};
use upshift::fetch::Fetcher;
use upshift_fetcher_conformance::Loopback;
use upshift_fetcher_conformance::{Failure, Source};
use upshift_http::HttpFetcher;

const RELEASE: &str = "releases/app";

struct NginxSource {
    // Dropped in this order: nginx first, then its upstream.
    nginx: Nginx,
    upstream: Truncating,
}

impl NginxSource {
    fn start() -> Option<NginxSource> {
        if !nginx_or_skip() {
            return None;
        }
        let upstream = Truncating::start();
        let nginx = Nginx::start_with(Options {
            upstream: Some(upstream.port()),
            tls: false,
        });
        Some(NginxSource { nginx, upstream })
    }

    fn sidecar(&self) -> String {
        format!("{RELEASE}.sha256")
    }
}

impl Source for NginxSource {
    fn fetcher(&self) -> Box<dyn Fetcher> {
        let fetcher = HttpFetcher::new(self.nginx.url(RELEASE))
            .expect("a valid URL")
            .loopback()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2))
            .interval(Duration::from_millis(200));
        Box::new(fetcher)
    }

    fn publish(&self, bytes: &[u8], sha256: Option<&str>) {
        match sha256 {
            Some(sha) => self
                .nginx
                .put(&self.sidecar(), format!("{sha}  app\n").as_bytes()),
            None => self.nginx.delete(&self.sidecar()),
        }
        self.nginx.put(RELEASE, bytes);
    }

    fn publish_truncated(&self, bytes: &[u8], claimed_len: u64) -> bool {
        self.upstream.serve(bytes, claimed_len);
        self.publish(bytes, Some(&common::sha256_hex(bytes)));
        self.nginx.fault(&format!("truncate/{RELEASE}"), true);
        true
    }

    fn remove(&self) {
        self.nginx.delete(RELEASE);
        self.nginx.delete(&self.sidecar());
    }

    fn fail_next(&self, kind: Failure) -> bool {
        match kind {
            Failure::NotFound => self.nginx.fault("404", true),
            Failure::ServerError => self.nginx.fault("500", true),
            Failure::Refused => self.nginx.stop(),
            Failure::Slow => self.nginx.pause(),
        }
        true
    }

    fn clear_faults(&self) {
        self.nginx.fault("404", false);
        self.nginx.fault("500", false);
        match self.nginx.is_running() {
            true => self.nginx.resume(), // SIGCONT to a running process is harmless
            false => self.nginx.restart(),
        }
    }

    fn bytes_served(&self) -> Option<u64> {
        let path = format!("/{RELEASE}");
        let hits = self.nginx.settled_hits();
        Some(
            hits.iter()
                .filter(|h| h.uri == path)
                .map(|h| h.body_bytes)
                .sum(),
        )
    }

    fn requests_served(&self) -> Option<u64> {
        Some(self.nginx.settled_hits().len() as u64)
    }

    fn locator(&self) -> String {
        // Errors name the URL requested: the release's, or its sidecar's (which starts with it).
        self.nginx.url(RELEASE)
    }
}

upshift_fetcher_conformance::fetcher_conformance_tests!(optional: NginxSource::start());
