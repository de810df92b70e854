//! The GitHub fixture server (the test kit's) as the tests' real source, and publishing into its
//! data dir.

#![allow(dead_code)] // each test crate uses part of this

pub mod setup;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[allow(unused_imports)]
pub use upshift_testkit::hello::{self, Scratch as TestDir};
#[allow(unused_imports)]
pub use upshift_testkit::servers::github::{http, http_full, Fixture, Logged};

/// Lower-case hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A repository in the fixture's data dir, published into by writing files.
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn new(data: &Path, owner: &str, repo: &str) -> Repo {
        let dir = data.join(owner).join(repo).join("releases");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Repo { dir }
    }

    pub fn tag_dir(&self, tag: &str) -> PathBuf {
        let d = self.dir.join(tag);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        d
    }

    /// Writes `release.json` for `tag`.
    pub fn meta(&self, tag: &str, json: serde_json::Value) {
        write_atomically(
            &self.tag_dir(tag).join("release.json"),
            json.to_string().as_bytes(),
        );
    }

    /// Writes an asset (or marker) file of `tag`, atomically.
    pub fn file(&self, tag: &str, name: &str, bytes: &[u8]) {
        write_atomically(&self.tag_dir(tag).join(name), bytes);
    }

    pub fn remove_file(&self, tag: &str, name: &str) {
        remove_if_present(&self.dir.join(tag).join(name));
    }

    /// Publishes a whole release at once: its files are written into a dot directory (which the
    /// fixture ignores) and that is renamed to `tag`, so that no request ever sees the release
    /// with only some of its assets. `tag` must not be published yet.
    pub fn publish(&self, tag: &str, files: &[(&str, &[u8])]) {
        let staging = self.dir.join(format!(".{tag}.publishing"));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", staging.display()));
        for (name, bytes) in files {
            let path = staging.join(name);
            std::fs::write(&path, bytes)
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
        let target = self.dir.join(tag);
        assert!(!target.exists(), "release {tag} is published already");
        std::fs::rename(&staging, &target)
            .unwrap_or_else(|e| panic!("rename to {}: {e}", target.display()));
    }

    pub fn remove_all(&self) {
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Writes `.<name>.tmp` (a dot file, which the fixture ignores) and renames it into place.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

pub fn remove_if_present(path: &Path) {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            panic!("remove {}: {e}", path.display())
        }
        _ => {}
    }
}
