//! `deltas`: the size, cost and memory of delta releases (issue 16) with upshift's codec (a
//! bidiff patch in a zstd stream, `upshift::delta`) against zstd's own patch mode
//! (`--patch-from`: the old build as a raw-content reference prefix, long-distance matching, a
//! window covering old and new, level 19).
//!
//! Three pairs of real `hello` builds: (a) two builds that differ only by `BUILD_ID`; (b) the
//! second of them and a build of a scratch copy of the workspace with one string changed in
//! `examples/hello/hello.rs`; (c) the same and a build of a scratch copy in which one dependency
//! is a patch version older (`cargo update -p tracing-subscriber --precise <one older>`). (b) and
//! (c) keep (a)'s second `BUILD_ID`, so each pair differs by its change alone. The scratch copies
//! build into the workspace's target directory, where only what they change is rebuilt.
//!
//! For each pair: the full release, its `.tar.gz` (a tar of it, gzip -9, as `upshift-publish
//! --archive tar.gz` writes it), and per codec the patch's size, the time to make it (in this
//! process) and to apply it (`--runs` times, each in a child process: this binary again, with
//! the old build mapped, as the master maps it), the child's peak RSS (VmHWM) and its file-backed
//! part (RssFile at the end: the mapped old build and the binary's own pages), and that the result
//! is the new build byte for byte. zstd's patch is applied two ways: streaming (what
//! `Decoder::with_ref_prefix` does: the decoder holds min(window, output) on the heap) and
//! decoded in one call into the output file mapped shared (no window buffer; the output's pages
//! are then file-backed and resident instead).

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::Scenario;
use crate::builds::{build_hello, build_hello_at, scratch_copy, TempDir};
use crate::opts::{OptSpec, Opts};
use crate::procfs;
use crate::procs::Guard;
use crate::report::{Report, Status, Table};
use crate::stats::{self, ms};

pub static SPEC: Scenario = Scenario {
    name: "deltas",
    summary: "delta releases: patch size, time and memory of upshift's codec (bidiff + zstd) \
              vs zstd --patch-from, on real hello builds (BUILD_ID, one-line, dependency bump)",
    options: &OPTIONS,
    run,
};

static OPTIONS: [OptSpec; 1] = [OptSpec {
    name: "--runs",
    value: Some("N"),
    default: Some("3"),
    help: "applications of each patch (each in a fresh child process)",
}];

/// The first argument that makes this binary the applying child instead of the harness.
pub const CHILD: &str = "__deltas-apply";

/// The one-line change of pair (b), in `examples/hello/hello.rs`.
const LINE_FROM: &str = "\"hello from {BUILD_ID} pid";
const LINE_TO: &str = "\"hi from {BUILD_ID} pid";

/// The dependency pair (c) moves one patch version back (only `hello` and it are rebuilt).
const BUMPED: &str = "tracing-subscriber";

/// Issue 16's targets.
const SIZE_TARGET: f64 = 0.10;
const MEMORY_TARGET_KIB: u64 = 16 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Codec {
    Bidiff,
    ZstdStream,
    ZstdMapped,
}

impl Codec {
    fn arg(self) -> &'static str {
        match self {
            Codec::Bidiff => "bidiff",
            Codec::ZstdStream => "zstd-stream",
            Codec::ZstdMapped => "zstd-mapped",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Codec::Bidiff => "**bidiff + zstd** (upshift::delta)",
            Codec::ZstdStream => "zstd --patch-from, streaming decoder",
            Codec::ZstdMapped => "zstd --patch-from, one call into the mapped output",
        }
    }

    fn from_arg(s: &str) -> Option<Codec> {
        [Codec::Bidiff, Codec::ZstdStream, Codec::ZstdMapped]
            .into_iter()
            .find(|c| c.arg() == s)
    }
}

struct Pair {
    key: &'static str,
    what: String,
    old: PathBuf,
    new: PathBuf,
}

/// One application, as the child reports it.
#[derive(Clone, Copy, Default)]
struct Applied {
    secs: f64,
    start_rss_kib: u64,
    hwm_kib: u64,
    file_kib: u64,
    anon_kib: u64,
}

struct Row {
    pair: &'static str,
    codec: Codec,
    full: u64,
    targz: u64,
    patch: u64,
    make_secs: Option<f64>,
    applied: Vec<Applied>,
    identical: bool,
}

fn run(opts: &Opts) -> Result<Report, String> {
    let runs = opts.count("--runs")?.max(1);
    let tmp = TempDir::new(opts.flag("--keep"))?;
    let builds = tmp.sub("builds")?;
    let ids = ["delta-1".to_string(), "delta-2".to_string()];
    let built = build_hello(&ids, &builds)?;
    let (first, second) = (built[0].clone(), built[1].clone());

    let line = tmp.sub("scratch-line")?;
    scratch_copy(&line)?;
    let hello_rs = line.join("examples/hello/hello.rs");
    let text = std::fs::read_to_string(&hello_rs).map_err(|e| format!("{e}"))?;
    if !text.contains(LINE_FROM) {
        return Err(format!(
            "{} no longer has {LINE_FROM:?}: update the deltas scenario's one-line change",
            hello_rs.display()
        ));
    }
    std::fs::write(&hello_rs, text.replacen(LINE_FROM, LINE_TO, 1)).map_err(|e| e.to_string())?;
    let line_build = builds.join("delta-2-line");
    build_hello_at(
        &line,
        "delta-2",
        &line_build,
        "hello BUILD_ID=delta-2, one line changed",
    )?;

    let dep = tmp.sub("scratch-dep")?;
    scratch_copy(&dep)?;
    let (from_v, to_v) = downgrade(&dep, BUMPED)?;
    let dep_build = builds.join("delta-2-dep");
    build_hello_at(
        &dep,
        "delta-2",
        &dep_build,
        &format!("hello BUILD_ID=delta-2, {BUMPED} {to_v}"),
    )?;

    let pairs = [
        Pair {
            key: "a",
            what: "BUILD_ID only (delta-1 → delta-2)".into(),
            old: first,
            new: second.clone(),
        },
        Pair {
            key: "b",
            what: format!("one line: `{LINE_FROM}…` → `{LINE_TO}…` in examples/hello/hello.rs"),
            old: second.clone(),
            new: line_build,
        },
        Pair {
            key: "c",
            what: format!(
                "a dependency's patch version: {BUMPED} {from_v} → {to_v} (`cargo update -p \
                 {BUMPED} --precise {to_v}`)"
            ),
            old: second,
            new: dep_build,
        },
    ];
    let work = tmp.sub("patches")?;
    let mut rows = Vec::new();
    for pair in &pairs {
        rows.extend(measure(pair, &work, runs)?);
    }
    Ok(render(opts, runs, &pairs, &rows))
}

/// Moves `krate` one patch version back in `root`'s Cargo.lock; returns (current, older).
fn downgrade(root: &Path, krate: &str) -> Result<(String, String), String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).map_err(|e| e.to_string())?;
    let marker = format!("name = \"{krate}\"\nversion = \"");
    let at = lock
        .find(&marker)
        .ok_or_else(|| format!("{krate} is not in Cargo.lock"))?
        + marker.len();
    let current = lock[at..].split('"').next().unwrap_or("").to_string();
    let mut parts: Vec<u64> = current.split('.').filter_map(|p| p.parse().ok()).collect();
    match parts.as_mut_slice() {
        [_, _, patch] if *patch > 0 => *patch -= 1,
        _ => {
            return Err(format!(
                "no older patch version of {krate} {current} to go to"
            ))
        }
    }
    let older = format!("{}.{}.{}", parts[0], parts[1], parts[2]);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["update", "-p", krate, "--precise", &older])
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cargo update: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo update -p {krate} --precise {older}` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((current, older))
}

fn measure(pair: &Pair, work: &Path, runs: u64) -> Result<Vec<Row>, String> {
    let old = std::fs::read(&pair.old).map_err(|e| format!("{}: {e}", pair.old.display()))?;
    let new = std::fs::read(&pair.new).map_err(|e| format!("{}: {e}", pair.new.display()))?;
    let new_sha = Sha256::digest(&new).to_vec();
    let full = new.len() as u64;
    let targz = targz_size(&pair.new)?;
    let mut rows = Vec::new();
    for codec in [Codec::Bidiff, Codec::ZstdStream, Codec::ZstdMapped] {
        crate::procs::check()?;
        let patch_path = work.join(format!("{}.{}", pair.key, codec.arg()));
        // Both zstd rows apply the same patch: made once.
        let make_secs = match codec {
            Codec::ZstdMapped => None,
            _ => {
                let started = Instant::now();
                let patch = match codec {
                    Codec::Bidiff => {
                        let mut p = Vec::new();
                        upshift::delta::make(&old, &new, &mut p).map_err(|e| e.to_string())?;
                        p
                    }
                    _ => zstd_patch_from(&old, &new)?,
                };
                let secs = started.elapsed().as_secs_f64();
                std::fs::write(&patch_path, &patch).map_err(|e| e.to_string())?;
                eprintln!(
                    "upshift-bench: deltas: ({}) {}: {} bytes in {secs:.1} s",
                    pair.key,
                    codec.arg(),
                    patch.len()
                );
                Some(secs)
            }
        };
        let patch_path = match codec {
            Codec::ZstdMapped => work.join(format!("{}.{}", pair.key, Codec::ZstdStream.arg())),
            _ => patch_path,
        };
        let patch = std::fs::metadata(&patch_path)
            .map_err(|e| e.to_string())?
            .len();
        let out = work.join(format!("{}.{}.out", pair.key, codec.arg()));
        let mut applied = Vec::new();
        let mut identical = true;
        for _ in 0..runs {
            let _ = std::fs::remove_file(&out);
            applied.push(apply_in_child(codec, &pair.old, &patch_path, &out)?);
            let got = std::fs::read(&out).map_err(|e| e.to_string())?;
            identical &= Sha256::digest(&got).to_vec() == new_sha;
        }
        let _ = std::fs::remove_file(&out);
        rows.push(Row {
            pair: pair.key,
            codec,
            full,
            targz,
            patch,
            make_secs,
            applied,
            identical,
        });
    }
    Ok(rows)
}

/// The size of `tar -c FILE | gzip -9`.
fn targz_size(path: &Path) -> Result<u64, String> {
    let dir = path.parent().ok_or("no directory")?;
    let name = path.file_name().ok_or("no file name")?;
    let tar = Command::new("tar")
        .arg("-cf")
        .arg("-")
        .arg("-C")
        .arg(dir)
        .arg(name)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("tar: {e}"))?;
    if !tar.status.success() {
        return Err(format!("tar of {} failed", path.display()));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar.stdout).map_err(|e| e.to_string())?;
    Ok(gz.finish().map_err(|e| e.to_string())?.len() as u64)
}

/// zstd's patch mode, as `zstd --patch-from=OLD -19 --long` does it: the old build as a
/// raw-content prefix, long-distance matching, a window that covers old and new.
fn zstd_patch_from(old: &[u8], new: &[u8]) -> Result<Vec<u8>, String> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let mut window_log = 10;
    while (1usize << window_log) < old.len() + new.len() {
        window_log += 1;
    }
    let err = |e| zstd::zstd_safe::get_error_name(e).to_string();
    let mut c = CCtx::create();
    for p in [
        CParameter::CompressionLevel(19),
        CParameter::WindowLog(window_log),
        CParameter::EnableLongDistanceMatching(true),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(true),
    ] {
        c.set_parameter(p).map_err(err)?;
    }
    c.set_pledged_src_size(Some(new.len() as u64))
        .map_err(err)?;
    c.ref_prefix(old).map_err(err)?;
    let mut out = vec![0u8; zstd::zstd_safe::compress_bound(new.len())];
    let n = c.compress2(&mut out[..], new).map_err(err)?;
    out.truncate(n);
    Ok(out)
}

fn apply_in_child(codec: Codec, old: &Path, patch: &Path, out: &Path) -> Result<Applied, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg(CHILD)
        .arg(codec.arg())
        .arg(old)
        .arg(patch)
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard =
        Guard::spawn(&mut cmd, "delta apply", Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(o) = guard.child_mut().stdout.as_mut() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(e) = guard.child_mut().stderr.as_mut() {
        let _ = e.read_to_string(&mut stderr);
    }
    let status = guard
        .wait_for(Duration::from_secs(300))
        .ok_or("applying a patch took over 5 minutes")?;
    if !status.success() {
        return Err(format!("applying {} failed: {stderr}", patch.display()));
    }
    let field = |k: &str| -> Result<f64, String> {
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
            .ok_or_else(|| format!("the applying child printed no {k}: {stdout:?}"))
    };
    Ok(Applied {
        secs: field("secs")?,
        start_rss_kib: field("start_rss_kib")? as u64,
        hwm_kib: field("hwm_kib")? as u64,
        file_kib: field("file_kib")? as u64,
        anon_kib: field("anon_kib")? as u64,
    })
}

/// The child: `CHILD CODEC OLD PATCH OUT`. Maps OLD, applies PATCH into OUT, prints
/// `secs= start_rss_kib= hwm_kib= file_kib= anon_kib=` (from /proc/self/status at the end).
pub fn child(args: &[String]) -> Result<String, String> {
    let [codec, old, patch, out] = args else {
        return Err(format!("usage: {CHILD} CODEC OLD PATCH OUT"));
    };
    let codec = Codec::from_arg(codec).ok_or_else(|| format!("unknown codec {codec:?}"))?;
    let me = std::process::id();
    let start_rss = procfs::status_field(me, "VmRSS").unwrap_or(0);
    let started = Instant::now();
    let base = upshift::delta::Mapped::open(Path::new(old)).map_err(|e| format!("{old}: {e}"))?;
    let patch_file = std::fs::File::open(patch).map_err(|e| format!("{patch}: {e}"))?;
    // Read and write: a shared writable mapping needs both.
    let out_file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(|e| format!("{out}: {e}"))?;
    // The memory at the end, or for the mapped decode just before the output is unmapped.
    let mut mapped_at_peak = None;
    match codec {
        Codec::Bidiff => {
            let mut w = BufWriter::with_capacity(128 << 10, out_file);
            upshift::delta::apply(
                base.as_slice(),
                &mut BufReader::new(patch_file),
                &mut w,
                u64::MAX,
            )
            .map_err(|e| e.to_string())?;
            w.flush().map_err(|e| e.to_string())?;
        }
        Codec::ZstdStream => {
            let mut d = zstd::stream::read::Decoder::with_ref_prefix(
                BufReader::new(patch_file),
                base.as_slice(),
            )
            .map_err(|e| e.to_string())?;
            d.window_log_max(31).map_err(|e| e.to_string())?;
            let mut w = BufWriter::with_capacity(128 << 10, out_file);
            std::io::copy(&mut d, &mut w).map_err(|e| e.to_string())?;
            w.flush().map_err(|e| e.to_string())?;
        }
        Codec::ZstdMapped => {
            mapped_at_peak = Some(zstd_into_mapped(base.as_slice(), patch_file, &out_file)?)
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let f = |k| procfs::status_field(me, k).unwrap_or(0);
    let (file, anon) = mapped_at_peak.unwrap_or_else(|| (f("RssFile"), f("RssAnon")));
    Ok(format!(
        "secs={secs:.4} start_rss_kib={start_rss} hwm_kib={} file_kib={file} anon_kib={anon}\n",
        f("VmHWM"),
    ))
}

/// zstd's patch decoded in one call straight into the output file, mapped shared: no window
/// buffer, the output's pages resident (and dirty) in the page cache instead. Returns RssFile
/// and RssAnon (KiB) just before the output is unmapped.
fn zstd_into_mapped(
    base: &[u8],
    mut patch: std::fs::File,
    out: &std::fs::File,
) -> Result<(u64, u64), String> {
    use std::os::fd::AsRawFd;
    let mut src = Vec::new();
    patch.read_to_end(&mut src).map_err(|e| e.to_string())?;
    let len = zstd::zstd_safe::get_frame_content_size(&src)
        .ok()
        .flatten()
        .ok_or("the zstd patch states no content size")? as usize;
    out.set_len(len as u64).map_err(|e| e.to_string())?;
    let me = std::process::id();
    let rss = || {
        let f = |k| procfs::status_field(me, k).unwrap_or(0);
        (f("RssFile"), f("RssAnon"))
    };
    if len == 0 {
        return Ok(rss());
    }
    // SAFETY: a fresh shared mapping of a file this process created and sized; unmapped below,
    // and no slice of it outlives this function.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            out.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `len` writable bytes at `ptr` until the munmap below.
    let dst = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), len) };
    let mut d = zstd::zstd_safe::DCtx::create();
    let err = |e| zstd::zstd_safe::get_error_name(e).to_string();
    let result = d
        .ref_prefix(base)
        .map_err(err)
        .and_then(|_| d.decompress(dst, &src).map_err(err));
    let at_peak = rss();
    // SAFETY: the region mapped above; `dst` is not used after this.
    unsafe { libc::munmap(ptr, len) };
    match result {
        Ok(n) if n == len => Ok(at_peak),
        Ok(n) => Err(format!("decoded {n} bytes, the frame states {len}")),
        Err(e) => Err(e),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / 1024.0 / 1024.0)
}

fn kb(bytes: u64) -> String {
    if bytes >= 1_000_000 {
        format!("{:.2} MB", bytes as f64 / 1e6)
    } else {
        format!("{:.1} KB", bytes as f64 / 1e3)
    }
}

fn kib_mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The heap and other anonymous memory at the peak: VmHWM less the file-backed pages (which only
/// grow while a patch is applied, so the end's RssFile is the peak's).
fn peak_anon(a: &Applied) -> u64 {
    a.hwm_kib.saturating_sub(a.file_kib)
}

fn render(opts: &Opts, runs: u64, pairs: &[Pair], rows: &[Row]) -> Report {
    let mut r = Report::new(
        "deltas: delta releases of hello, upshift's codec vs zstd --patch-from",
        &super::command(&SPEC, opts),
    );
    r.para(&format!(
        "Figures provisional unless the machine was idle. Pairs of real release builds of \
         `hello` (`cargo build --release --example hello --features remote-fetchers`); (b) and \
         (c) are built from scratch copies of the workspace with the same BUILD_ID as (a)'s \
         second build, so each pair differs by its change alone. **bidiff + zstd**: \
         `upshift::delta::make` (bidiff's suffix-array diff, the stream zstd -19 with a 1 MiB \
         window) and `upshift::delta::apply`. **zstd --patch-from**: the old build as zstd's \
         raw-content reference prefix, level 19, long-distance matching, window log covering \
         old + new (26 here), content size and checksum in the frame; applied by zstd's \
         streaming decoder, and by a one-call decode into the output file mapped shared. \
         Making runs in the harness; each of the {runs} application(s) per row runs in a fresh \
         child process that maps the old build (read-only, as the master will) and writes the \
         result to a file; the result is compared with the new build. Peak RSS is the child's \
         VmHWM; \"file-backed\" its RssFile at the end (the mapped old build's pages read, the \
         binary's own, and for the mapped decode the output); \"anonymous at peak\" VmHWM minus \
         that (heap, stacks); for the mapped decode both are read just before the output is \
         unmapped. The child's RSS before it started applying is in the raw numbers. The common \
         --duration/--connections/--threads options are not used."
    ));
    for pair in pairs {
        r.para(&format!("({}) {}", pair.key, pair.what));
    }
    let mut t = Table::new(&[
        "pair",
        "codec",
        "full",
        ".tar.gz",
        "patch",
        "% of full",
        "make",
        "apply (median)",
        "peak RSS",
        "file-backed",
        "anonymous at peak",
        "identical",
    ]);
    for row in rows {
        let secs: Vec<f64> = row.applied.iter().map(|a| a.secs * 1e3).collect();
        let worst = row
            .applied
            .iter()
            .max_by_key(|a| a.hwm_kib)
            .copied()
            .unwrap_or_default();
        t.row(vec![
            format!("({})", row.pair),
            row.codec.label().to_string(),
            mib(row.full),
            mib(row.targz),
            kb(row.patch),
            format!("{:.2} %", 100.0 * row.patch as f64 / row.full as f64),
            row.make_secs
                .map_or("(same patch)".into(), |s| format!("{s:.1} s")),
            stats::median(&secs).map_or("–".into(), ms),
            format!("{} MiB", kib_mib(worst.hwm_kib)),
            format!("{} MiB", kib_mib(worst.file_kib)),
            format!("{} MiB", kib_mib(peak_anon(&worst))),
            crate::report::yes(row.identical),
        ]);
    }
    r.highlight("Delta releases of hello (issue 16)", &t);

    let chosen: Vec<&Row> = rows.iter().filter(|x| x.codec == Codec::Bidiff).collect();
    if let Some(line) = chosen.iter().find(|x| x.pair == "b") {
        let share = line.patch as f64 / line.full as f64;
        r.verdict(
            "a one-line change's patch under 10 % of the full release (issue 16)",
            format!(
                "{} of {} = {:.2} % (bidiff + zstd)",
                kb(line.patch),
                mib(line.full),
                100.0 * share
            ),
            Status::met_if(share < SIZE_TARGET && line.identical),
        );
    }
    let worst_anon = chosen
        .iter()
        .flat_map(|x| x.applied.iter())
        .map(peak_anon)
        .max()
        .unwrap_or(0);
    r.verdict(
        "applying: peak RSS under 16 MiB plus the mapping's resident pages (issue 16)",
        format!(
            "at most {} MiB besides file-backed pages, for the whole applying process (bidiff + \
             zstd; the master adds its own few MiB)",
            kib_mib(worst_anon)
        ),
        Status::met_if(worst_anon < MEMORY_TARGET_KIB && chosen.iter().all(|x| x.identical)),
    );
    let stream_anon = rows
        .iter()
        .filter(|x| x.codec == Codec::ZstdStream)
        .flat_map(|x| x.applied.iter())
        .map(peak_anon)
        .max()
        .unwrap_or(0);
    r.para(&format!(
        "zstd's streaming decoder needs up to {} MiB of anonymous memory for the same patches: \
         its window buffer is min(window, output), the whole release. Decoding in one call into \
         the mapped output file avoids that buffer ({} MiB anonymous at most), but the output's \
         pages are then resident (and dirty) in the process until it is unmapped: the memory \
         moves to file-backed pages, it is not saved.",
        kib_mib(stream_anon),
        kib_mib(
            rows.iter()
                .filter(|x| x.codec == Codec::ZstdMapped)
                .flat_map(|x| x.applied.iter())
                .map(|a| a.anon_kib)
                .max()
                .unwrap_or(0)
        )
    ));

    r.heading("Raw numbers");
    let mut raw = Vec::new();
    for row in rows {
        for (i, a) in row.applied.iter().enumerate() {
            raw.push(format!(
                "pair={} codec={} run={} full_bytes={} targz_bytes={} patch_bytes={} make_s={} \
                 apply_s={:.4} start_rss_kib={} hwm_kib={} file_kib={} anon_end_kib={} \
                 identical={}",
                row.pair,
                row.codec.arg(),
                i + 1,
                row.full,
                row.targz,
                row.patch,
                row.make_secs.map_or("-".into(), |s| format!("{s:.2}")),
                a.secs,
                a.start_rss_kib,
                a.hwm_kib,
                a.file_kib,
                a.anon_kib,
                row.identical,
            ));
        }
    }
    r.raw(&raw);
    r
}
