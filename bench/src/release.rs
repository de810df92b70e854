//! Making releases and checking what an upgrade left on disk: sha256 (by `sha256sum`, which is
//! also the throughput reference), padded and stamped copies of a build, and the pipeline's
//! temporary files beside the binary.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::procs::Guard;

/// Runs `cmd` (guarded) to its end and returns its stdout; `Err` if it fails or takes longer
/// than `limit`.
pub fn run_capture(cmd: &mut Command, name: &str, limit: Duration) -> Result<String, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut g = Guard::spawn(cmd, name, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let mut err = String::new();
    // Small outputs: reading to EOF before waiting cannot fill a pipe the other way.
    if let Some(o) = g.child_mut().stdout.as_mut() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(e) = g.child_mut().stderr.as_mut() {
        let _ = e.read_to_string(&mut err);
    }
    match g.wait_for(limit) {
        Some(st) if st.success() => Ok(out),
        Some(st) => Err(format!("{name} exited with {st}: {}", err.trim())),
        None => Err(format!("{name} did not finish within {limit:?}")),
    }
}

/// Hex sha256 of a file, and how long `sha256sum` took.
pub fn sha256(path: &Path) -> Result<(String, Duration), String> {
    let started = Instant::now();
    let out = run_capture(
        Command::new("sha256sum").arg(path),
        "sha256sum",
        Duration::from_secs(120),
    )?;
    let took = started.elapsed();
    let hex = out
        .split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .ok_or_else(|| format!("sha256sum printed {out:?}"))?;
    Ok((hex.to_string(), took))
}

/// Writes `src` followed by `pad` pseudo-random bytes and then `trailer` to `dest` (mode 0755).
/// Bytes after an ELF executable's last segment are never loaded, so the copy runs exactly like
/// `src`; random (incompressible) padding keeps an archive of it as large as the file.
pub fn padded_copy(src: &Path, dest: &Path, pad: u64, trailer: &[u8]) -> Result<(), String> {
    let ctx = |e: std::io::Error| format!("writing {}: {e}", dest.display());
    let body = std::fs::read(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(dest)
        .map_err(ctx)?;
    f.write_all(&body).map_err(ctx)?;
    // xorshift64*: fast, and seeded by the destination so two paddings differ.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ dest.as_os_str().len() as u64;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = pad;
    while left > 0 {
        for word in chunk.chunks_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).map_err(ctx)?;
        left -= n as u64;
    }
    f.write_all(trailer).map_err(ctx)?;
    f.sync_all().map_err(ctx)
}

/// A fixture release: a copy of the fixture with the stamp `UPSHIFT-TEST-BUILD:<stamp>\n`
/// appended (see `examples/fixture.rs`: `id` or `id:behavior`, such as `v2:slow-ready 4000`).
pub fn stamped_fixture(fixture: &Path, dest: &Path, stamp: &str) -> Result<(), String> {
    padded_copy(
        fixture,
        dest,
        0,
        format!("UPSHIFT-TEST-BUILD:{stamp}\n").as_bytes(),
    )
}

/// Release `k` of a series that alternates between `images` (builds with distinct `BUILD_ID`s):
/// `images[k % len]` with a trailer naming `k`. Bytes after an ELF file's last segment are never
/// loaded, so it runs as that build, yet every release is a binary the master has not seen (the
/// File fetcher and the master's re-exec compare by sha256), and consecutive releases answer
/// with different BUILD_IDs.
pub fn numbered(images: &[Vec<u8>], k: u64) -> Vec<u8> {
    let Some(image) = images.get((k % images.len().max(1) as u64) as usize) else {
        return Vec::new();
    };
    let mut bytes = image.clone();
    bytes.extend_from_slice(format!("\nupshift-bench release {k}\n").as_bytes());
    bytes
}

/// Writes `bytes` to `path` as an executable (mode 0755).
pub fn write_exe(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// Publishes `src` at `dest` as a deploy does: copy to `<dest>.tmp`, then rename over `dest`.
pub fn publish_by_rename(src: &Path, dest: &Path) -> Result<Instant, String> {
    let tmp = dest.with_file_name(format!(
        "{}.tmp",
        dest.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::copy(src, &tmp).map_err(|e| format!("copying to {}: {e}", tmp.display()))?;
    let at = Instant::now();
    std::fs::rename(&tmp, dest).map_err(|e| format!("renaming to {}: {e}", dest.display()))?;
    Ok(at)
}

/// Sets `path`'s mtime to now + `ahead`: "touching" a published release so the File fetcher
/// looks at it again.
pub fn touch(path: &Path, ahead: Duration) -> Result<(), String> {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_modified(std::time::SystemTime::now() + ahead)
        .map_err(|e| format!("touching {}: {e}", path.display()))
}

/// The upgrade pipeline's temporary files beside binary `name` in `dir`: staged releases
/// (`.<name>.upshift-<pid>-<random>.tmp`), `.prev` temps (`<name>.prev-<random>.tmp`, and
/// `<name>.prev.tmp` of earlier versions), rollback, link-flip and state-file temps.
pub fn leftover_temps(dir: &Path, name: &str) -> Vec<String> {
    let staged = format!(".{name}.upshift-");
    let temps = ["rollback-", "prev-", "link-", "upshift-state."].map(|t| format!("{name}.{t}"));
    let prev_tmp = format!("{name}.prev.tmp");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| {
                    n.starts_with(&staged)
                        || *n == prev_tmp
                        || (n.ends_with(".tmp") && temps.iter().any(|t| n.starts_with(t)))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Bytes the state file beside binary `name` in `dir` (`<name>.upshift-state`) occupies on
/// disk, 0 when there is none: the one file a refused or postponed release may leave.
pub fn state_file_blocks(dir: &Path, name: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir.join(format!("{name}.upshift-state"))).map_or(0, |m| m.blocks() * 512)
}

/// The size of the largest staged release in `dir` (a download in progress), if any.
pub fn staged_bytes(dir: &Path, name: &str) -> Option<u64> {
    let staged = format!(".{name}.upshift-");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&staged))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .max()
}

/// `12.3 MB/s` from bytes and seconds (MB = 10^6 bytes, as `dd` and download tools print).
pub fn mb_per_s(bytes: u64, secs: f64) -> String {
    if secs > 0.0 {
        format!("{:.0} MB/s", bytes as f64 / 1e6 / secs)
    } else {
        "–".into()
    }
}

/// `old`, `new`, or what else the binary is.
pub fn binary_is(app: &Path, old: &str, new: &str) -> String {
    match sha256(app) {
        Ok((s, _)) if s == old => "old".into(),
        Ok((s, _)) if s == new => "new".into(),
        Ok((s, _)) => format!("NEITHER (sha256 {})", &s[..16]),
        Err(e) => format!("unreadable: {e}"),
    }
}
