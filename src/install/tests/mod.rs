//! Tests of the install pipeline against real files and processes.

mod alloc;
mod bounds;
mod delta;
mod local;
mod replace;
mod stage;
mod testrun;

use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, ReadBuf};

use crate::fetch::{Format, Origin, Release};

/// A fresh directory, removed with its contents on drop (also used by `release::disk`'s tests).
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "upshift-install-{tag}-{}-{}",
            std::process::id(),
            super::random_hex()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// The directory's entries, sorted, by name.
    pub(super) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Writes an executable file.
    pub(crate) fn exe(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A release of `body` with its checksum and no signature. Declared local, yet without a
/// [`LocalFile`](crate::fetch::LocalFile) it counts as remote, which the checksum satisfies.
pub(super) fn release(body: Vec<u8>, format: Format) -> Release {
    Release {
        identity: "test".into(),
        sha256: Some(sha256_hex(&body)),
        signature: None,
        size_hint: Some(body.len() as u64),
        format,
        origin: Origin::Local,
        body: Box::new(std::io::Cursor::new(body)),
        local_file: None,
        delta: None,
        rollout_percent: None,
        version: None,
        source: None,
    }
}

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub(super) fn targz(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, mode, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

pub(super) fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in entries {
        let opts = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(0o755);
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// An endless-looking body produced on demand: proves staging streams rather than buffers.
pub(super) struct Generated {
    pub(super) left: u64,
    pub(super) state: u64,
}

impl Generated {
    pub(super) fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.left as usize);
        for b in &mut buf[..n] {
            self.state = self.state.wrapping_mul(6364136223846793005).wrapping_add(1);
            *b = (self.state >> 56) as u8;
        }
        self.left -= n as u64;
        n
    }
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.fill(buf.initialize_unfilled());
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

#[test]
fn random_hex_is_128_bits_and_differs() {
    let a = super::random_hex();
    let b = super::random_hex();
    assert_eq!(a.len(), 32);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);
}

#[test]
fn the_stages_can_run_on_a_multithreaded_runtime() {
    fn assert_send<T: Send>(_: &T) {}
    let dir = TempDir::new("send");
    let target = dir.exe("app", b"old");
    let opts = super::StageOptions::default();
    let staging = super::stage(release(b"new".to_vec(), Format::Raw), &target, &opts);
    assert_send(&staging);
    let running = super::test_run(&target, &[], std::time::Duration::from_secs(1), Some(1));
    assert_send(&running);
}
