//! Release servers for the network fetchers, with what `hello` needs to poll them and how a
//! release is published to them: nginx serving a directory (`hello --url`) and s3s-fs
//! (`hello --s3 --s3-endpoint`). Each is stopped by pid when dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::nginx::Nginx;
use crate::s3::{self, Put, S3sFs};

const BUCKET: &str = "releases";
const KEY: &str = "app";

pub enum Origin {
    Http(Nginx),
    S3(S3sFs),
}

/// A release ready to publish: written (HTTP) or hashed and signed (S3) ahead of its slot, so
/// that publishing is only the visible step.
pub enum Prepared {
    Http { file: PathBuf, sha256: String },
    S3(Put),
}

impl Origin {
    /// nginx serving `<dir>/www`, with `initial` (the running binary) already published, so
    /// that the first poll finds nothing new.
    pub fn http(dir: &Path, initial: &Path) -> Result<Origin, String> {
        let nginx = Nginx::start(dir, "1m")?;
        let bytes = std::fs::read(initial).map_err(|e| format!("{}: {e}", initial.display()))?;
        nginx.publish(KEY, initial, &hex::encode(Sha256::digest(&bytes)))?;
        Ok(Origin::Http(nginx))
    }

    /// s3s-fs with bucket `releases` and `initial` already published as `releases/app`.
    pub fn s3(dir: &Path, initial: &Path) -> Result<Origin, String> {
        let server = S3sFs::start(dir)?;
        server.create_bucket(BUCKET)?;
        let bytes = std::fs::read(initial).map_err(|e| format!("{}: {e}", initial.display()))?;
        server.prepare_release(BUCKET, KEY, bytes).send()?;
        Ok(Origin::S3(server))
    }

    /// `hello`'s flags for this source, polling every `interval`.
    pub fn hello_args(&self, interval: Duration) -> Vec<String> {
        let mut args = match self {
            Origin::Http(n) => vec!["--url".into(), n.url(KEY)],
            Origin::S3(s) => vec![
                "--s3".into(),
                format!("s3://{BUCKET}/{KEY}"),
                "--s3-endpoint".into(),
                s.url(),
            ],
        };
        args.extend(["--interval".into(), interval.as_secs_f64().to_string()]);
        // Both origins are loopback servers speaking plain http: the opt-in (no key here).
        args.push("--allow-insecure-transport".into());
        args
    }

    /// The environment `hello` needs: for S3, credentials for the standard AWS chain and empty
    /// profile files in `dir` (the chain must not read the user's own, and a missing file would
    /// make the SDK warn on every start).
    pub fn env(&self, dir: &Path) -> Result<Vec<(String, String)>, String> {
        let Origin::S3(_) = self else {
            return Ok(Vec::new());
        };
        let mut env: Vec<(String, String)> = [
            ("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY),
            ("AWS_REGION", s3::REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, name) in [
            ("AWS_CONFIG_FILE", "aws-config"),
            ("AWS_SHARED_CREDENTIALS_FILE", "aws-credentials"),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, "").map_err(|e| format!("{}: {e}", path.display()))?;
            env.push((k.to_string(), path.display().to_string()));
        }
        Ok(env)
    }

    /// Prepares `bytes` as the next release; `scratch` is a file name the HTTP release is
    /// written to first.
    pub fn prepare(&self, bytes: Vec<u8>, scratch: &Path) -> Result<Prepared, String> {
        match self {
            Origin::Http(_) => {
                std::fs::write(scratch, &bytes)
                    .map_err(|e| format!("writing {}: {e}", scratch.display()))?;
                Ok(Prepared::Http {
                    file: scratch.to_path_buf(),
                    sha256: hex::encode(Sha256::digest(&bytes)),
                })
            }
            Origin::S3(s) => Ok(Prepared::S3(s.prepare_release(BUCKET, KEY, bytes))),
        }
    }

    /// Publishes a prepared release: HTTP writes `app.sha256` then `app`, each by a rename; S3
    /// sends the PUT. Returns the instant it became what the server serves (the second rename;
    /// the PUT's answer) and, for S3, how long the upload took.
    pub fn publish(&self, p: Prepared) -> Result<(Instant, Option<Duration>), String> {
        match (self, p) {
            (Origin::Http(n), Prepared::Http { file, sha256 }) => {
                n.publish(KEY, &file, &sha256)?;
                let at = Instant::now();
                let _ = std::fs::remove_file(&file);
                Ok((at, None))
            }
            (Origin::S3(_), Prepared::S3(put)) => {
                let took = put.send()?;
                Ok((Instant::now(), Some(took)))
            }
            _ => Err("a release prepared for another kind of server".into()),
        }
    }
}
