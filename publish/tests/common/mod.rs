//! What every publisher test needs: the real `upshift-publish` binary run as a process (bounded
//! in time, killed by PID), release payloads, minisign keys, and a way to read a release back
//! through a real fetcher.

#![allow(dead_code)] // each test crate uses part of this

pub mod github;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use upshift::fetch::{Current, Fetcher, Format};

pub use upshift_testkit::hello::Scratch;

/// How long one run of the tool may take (a debug build uploading a debug `hello`).
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Lower-case hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A release payload of `len` bytes that starts like an ELF executable (so it can be zipped),
/// distinct per `tag`, and incompressible.
pub fn payload(tag: &str, len: usize) -> Vec<u8> {
    let mut out = b"\x7fELF\x02\x01\x01\x00".to_vec();
    let mut block = Sha256::digest(tag.as_bytes());
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate(len);
    out
}

/// One finished run of the tool.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Fails the test with the output unless the run succeeded.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "upshift-publish failed: {self:#?}");
        self
    }

    /// Fails the test unless the run failed with `code` and `needle` in its stderr.
    #[track_caller]
    pub fn fails_with(self, code: i32, needle: &str) -> Run {
        assert_eq!(self.code, Some(code), "unexpected status: {self:#?}");
        assert!(
            self.stderr.contains(needle),
            "stderr does not say {needle:?}: {self:#?}"
        );
        self
    }

    /// The sha256 the report says was published.
    #[track_caller]
    pub fn sha256(&self) -> String {
        self.field("sha256")
    }

    /// The value of a report line `  <key> <value>`.
    #[track_caller]
    pub fn field(&self, key: &str) -> String {
        self.stdout
            .lines()
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                (parts.next() == Some(key)).then(|| parts.collect::<Vec<_>>().join(" "))
            })
            .unwrap_or_else(|| panic!("no {key:?} line in the report: {self:#?}"))
    }
}

/// Runs `upshift-publish args…` with only `PATH`, a private `HOME` and `env` in its environment
/// (no GITHUB_TOKEN, AWS or minisign variables leak in from the test's own), killing it by PID
/// if it runs past the limit.
pub fn publish(args: &[&str], env: &[(&str, &str)]) -> Run {
    let home = Scratch::new("publish-home");
    let mut child = Command::new(env!("CARGO_BIN_EXE_upshift-publish"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        // Never probe the EC2 metadata address from a test.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn upshift-publish");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for upshift-publish") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("upshift-publish {args:?} ran past {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    }
}

/// Writes `bytes` to `dir/name` (mode 0755) and returns the path.
pub fn write_binary(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A minisign key pair in `dir`: the secret key file (encrypted with `password`, if any) and
/// the public key (base64).
pub fn keypair(dir: &Path, password: Option<&str>) -> (PathBuf, String) {
    let mut pk_box = Vec::new();
    let mut sk_box = Vec::new();
    let kp = match password {
        Some(p) => minisign::KeyPair::generate_and_write_encrypted_keypair(
            &mut pk_box,
            &mut sk_box,
            None,
            Some(p.to_string()),
        )
        .expect("encrypted key pair"),
        None => {
            let kp = minisign::KeyPair::generate_unencrypted_keypair().expect("key pair");
            sk_box = kp.sk.to_box(None).expect("box").to_string().into_bytes();
            kp
        }
    };
    let path = dir.join(match password {
        Some(_) => "encrypted.key",
        None => "minisign.key",
    });
    std::fs::write(&path, sk_box).expect("write the secret key");
    (path, kp.pk.to_base64())
}

/// Checks a detached signature as upshift's install pipeline does (minisign-verify).
#[track_caller]
pub fn assert_verifies(public_key: &str, signature: &str, bytes: &[u8]) {
    let pk = minisign_verify::PublicKey::from_base64(public_key).expect("public key");
    let sig = minisign_verify::Signature::decode(signature).expect("signature");
    pk.verify(bytes, &sig, false)
        .unwrap_or_else(|e| panic!("the signature does not verify: {e}"));
    // What a master with this key requires: the metadata, bound to exactly these bytes.
    let meta = upshift::release::SignedMetadata::from_trusted_comment(sig.trusted_comment())
        .unwrap_or_else(|e| panic!("{e}: {}", sig.trusted_comment()));
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
    assert_eq!(
        meta.sha256, sha,
        "the signed sha256 is not the published file's"
    );
    assert!(
        upshift::release::parse_version(&meta.version).is_some(),
        "{meta:?}"
    );
}

/// A release as a fetcher offered it, its body read to the end.
#[derive(Debug)]
pub struct Fetched {
    pub identity: String,
    pub sha256: Option<String>,
    pub signature: Option<String>,
    pub format: Format,
    pub bytes: Vec<u8>,
}

/// What the install pipeline knows before its first upgrade: a binary that is none of ours,
/// with a version floor (`None`: the lowest, 0.0.1; the GitHub fetcher needs one).
pub fn fresh_current(version: Option<&str>) -> Current {
    Current {
        sha256: "0".repeat(64),
        version: Some(version.unwrap_or("0.0.1").to_string()),
        ..Default::default()
    }
}

/// One check of `fetcher`, bounded; `None` if it offers nothing.
pub async fn fetch(fetcher: &mut dyn Fetcher, current: &Current) -> Option<Fetched> {
    let bounded = Duration::from_secs(60);
    let checked = tokio::time::timeout(bounded, fetcher.check(current))
        .await
        .unwrap_or_else(|_| panic!("{}: no answer within {bounded:?}", fetcher.name()));
    let mut release = checked.unwrap_or_else(|e| panic!("{}: {e}", fetcher.name()))?;
    let mut bytes = Vec::new();
    tokio::time::timeout(bounded, release.body.read_to_end(&mut bytes))
        .await
        .unwrap_or_else(|_| panic!("{}: body not read within {bounded:?}", fetcher.name()))
        .unwrap_or_else(|e| panic!("{}: reading the body: {e}", fetcher.name()));
    Some(Fetched {
        identity: release.identity,
        sha256: release.sha256,
        signature: release.signature,
        format: release.format,
        bytes,
    })
}

/// One check of `fetcher`, which must offer exactly `bytes`, vouched for by `sha256` and signed
/// by the key of `public_key`; the release.
pub async fn fetch_signed(
    fetcher: &mut dyn Fetcher,
    bytes: &[u8],
    sha256: &str,
    public_key: &str,
) -> Fetched {
    let got = fetch(fetcher, &fresh_current(None))
        .await
        .unwrap_or_else(|| panic!("{} offered no release", fetcher.name()));
    assert!(got.bytes == bytes, "{} offered other bytes", fetcher.name());
    assert_eq!(got.sha256.as_deref(), Some(sha256));
    let signature = got.signature.as_deref().expect("signed");
    assert_verifies(public_key, signature, &got.bytes);
    got
}

/// The only file in a `.tar.gz`, as upshift's installer reads it: (path, mode, bytes).
pub fn untar(archive: &[u8]) -> (String, u32, Vec<u8>) {
    let gz = flate2::read::MultiGzDecoder::new(archive);
    let mut tar = tar::Archive::new(gz);
    let mut entries = tar.entries().expect("tar entries");
    let mut entry = entries.next().expect("one entry").expect("entry");
    let path = entry.path().expect("path").to_string_lossy().into_owned();
    let mode = entry.header().mode().expect("mode");
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).expect("entry bytes");
    drop(entry);
    assert!(entries.next().is_none(), "more than one entry");
    (path, mode, bytes)
}

/// Names in a directory, sorted (dot files included).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
