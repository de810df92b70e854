//! A real S3 server on 127.0.0.1 for the S3 fetcher: s3s-fs (it checks SigV4), started from the
//! harness's temporary directory, and a minimal SigV4 client that publishes releases to it with
//! one `PUT` each, the sha256 in `x-amz-meta-sha256` (one of the ways the S3 fetcher accepts, and
//! the only one that publishes object and checksum in a single atomic request).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use upshift_testkit::servers::s3s_fs;

use crate::procs::Guard;

pub const ACCESS_KEY: &str = "upshift-bench-access-key";
pub const SECRET_KEY: &str = "upshift-bench-secret-key-0123456789";
pub const REGION: &str = "us-east-1";

/// s3s-fs serving `<dir>/root`, its output in `<dir>/s3s-fs.log`; stopped by pid when dropped.
pub struct S3sFs {
    guard: Guard,
    pub addr: SocketAddr,
}

impl S3sFs {
    pub fn start(dir: &Path) -> Result<S3sFs, String> {
        let root = dir.join("root");
        std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
        let bin = s3s_fs::find()
            .ok_or_else(|| format!("s3s-fs not found: install it with `{}`", s3s_fs::INSTALL))?;
        let mut cmd = s3s_fs::command(&bin, &root, ACCESS_KEY, SECRET_KEY);
        let mut guard =
            Guard::spawn(&mut cmd, "s3s-fs", Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let stdout = guard
            .child_mut()
            .stdout
            .take()
            .ok_or("s3s-fs has no stdout pipe")?;
        // Its output goes to the log, read to the end so that it never blocks on a full pipe.
        let log_path = dir.join("s3s-fs.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let addr = s3s_fs::read_address(stdout, Some(log))
            .map_err(|e| format!("{e} (see {})", log_path.display()))?;
        Ok(S3sFs { guard, addr })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Creates `bucket` (PUT /bucket).
    pub fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        let req = self.signed_put(&format!("/{bucket}"), &[], Vec::new(), SystemTime::now());
        req.send().map(|_| ())
    }

    /// A signed `PUT /bucket/key` of `body` with user metadata `x-amz-meta-sha256`, ready to
    /// send: hashing and signing (tens of ms for a large build) happen before the timed part.
    pub fn prepare_release(&self, bucket: &str, key: &str, body: Vec<u8>) -> Put {
        let sha = hex::encode(Sha256::digest(&body));
        self.signed_put(
            &format!("/{bucket}/{key}"),
            &[("x-amz-meta-sha256", sha)],
            body,
            SystemTime::now(),
        )
    }

    fn signed_put(
        &self,
        path: &str,
        meta: &[(&str, String)],
        body: Vec<u8>,
        now: SystemTime,
    ) -> Put {
        let (amz_date, day) = amz_dates(now);
        let payload = hex::encode(Sha256::digest(&body));
        let host = self.addr.to_string();
        let mut headers: Vec<(String, String)> = vec![
            ("host".into(), host),
            ("x-amz-content-sha256".into(), payload.clone()),
            ("x-amz-date".into(), amz_date.clone()),
        ];
        headers.extend(meta.iter().map(|(k, v)| (k.to_string(), v.clone())));
        headers.sort();
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        let signed = signed.join(";");
        let canonical = format!(
            "PUT\n{}\n\n{canonical_headers}\n{signed}\n{payload}",
            uri_encode(path)
        );
        let scope = format!("{day}/{REGION}/s3/aws4_request");
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let mut key = hmac(format!("AWS4{SECRET_KEY}").as_bytes(), day.as_bytes());
        for part in [REGION, "s3", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
        let mut head = format!("PUT {} HTTP/1.1\r\n", uri_encode(path));
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "authorization: AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, \
             SignedHeaders={signed}, Signature={signature}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            body.len()
        ));
        Put {
            addr: self.addr,
            path: path.to_string(),
            head,
            body,
        }
    }
}

/// A signed request, to be sent once (SigV4 signatures are valid for 15 minutes).
pub struct Put {
    addr: SocketAddr,
    path: String,
    head: String,
    body: Vec<u8>,
}

impl Put {
    /// Sends it and waits for the answer; returns how long that took. Once this returns, the
    /// object is what the server serves.
    pub fn send(&self) -> Result<Duration, String> {
        let started = Instant::now();
        let ctx = |e: std::io::Error| format!("PUT {} to s3s-fs at {}: {e}", self.path, self.addr);
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).map_err(ctx)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(ctx)?;
        s.write_all(self.head.as_bytes()).map_err(ctx)?;
        s.write_all(&self.body).map_err(ctx)?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).map_err(ctx)?;
        let took = started.elapsed();
        let text = String::from_utf8_lossy(&answer);
        let status = text.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            return Err(format!("PUT {}: s3s-fs answered {text:?}", self.path));
        }
        Ok(took)
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return Vec::new();
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// SigV4's URI encoding of a path: everything but unreserved characters and `/`.
fn uri_encode(path: &str) -> String {
    path.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `20261124T153000Z` and `20261124` (UTC).
fn amz_dates(t: SystemTime) -> (String, String) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let ((y, m, d), rem) = crate::report::civil(secs);
    let day = format!("{y:04}{m:02}{d:02}");
    let time = format!(
        "{day}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    (time, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_encoding() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_527_328);
        assert_eq!(
            amz_dates(t),
            ("20261124T133528Z".to_string(), "20261124".to_string())
        );
        assert_eq!(uri_encode("/releases/my app"), "/releases/my%20app");
    }

    #[test]
    fn signing_key_matches_the_aws_example() {
        // AWS's documented derivation example (secret wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY,
        // 20120215, us-east-1, iam).
        let mut key = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20120215");
        for part in ["us-east-1", "iam", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        assert_eq!(
            hex::encode(key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }
}
