//! The `footprint` report: tables, breakdown, verdict and raw numbers.

use std::fmt::Write as _;

use super::{Big, RunResult, Setup, Snapshot};
use crate::opts::Opts;
use crate::procfs::{mib, slope};
use crate::release::mb_per_s;
use crate::report::{yes, Report, Status, Table, OTHERS_NOTE};
use crate::stats::{ms, summary};

/// Issue 14: at or below overseer's master, measured idle on this machine at 4,236–4,316 KiB.
const RSS_TARGET_KIB: u64 = 4_316;
/// Issue 14: what the master alone adds to the machine, at most 1.5 MiB.
const USS_TARGET_KIB: u64 = 1_536;
const PEAK_TARGET_KIB: u64 = 16 * 1024;
/// Overseer's idle figure: 20 ms of CPU per 30 s.
const OVERSEER_MS_PER_30S: f64 = 20.0;

fn mib_f(kib: f64) -> String {
    format!("{:.2} MiB", kib / 1024.0)
}

fn kib_s(v: f64) -> String {
    format!("{v:+.1} KiB")
}

/// ms of CPU per 30 s.
fn per30(cpu_s: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        cpu_s * 1e3 * 30.0 / secs
    } else {
        f64::NAN
    }
}

fn growth_per_upgrade(x: &RunResult) -> f64 {
    if x.upgrades_done == 0 {
        return f64::NAN;
    }
    (x.after.rss as f64 - x.idle.rss as f64) / x.upgrades_done as f64
}

/// The slope of RSS over the second half of the upgrades, KiB per upgrade: past any warm-up.
fn late_slope(x: &RunResult) -> Option<f64> {
    let half = x.trend.len() / 2;
    let (xs, ys): (Vec<f64>, Vec<f64>) = x.trend[half..]
        .iter()
        .map(|(k, r)| (*k as f64, *r as f64))
        .unzip();
    slope(&xs, &ys)
}

pub(super) fn render(opts: &Opts, setup: &Setup, upgrades: u64, results: &[RunResult]) -> Report {
    let mut r = Report::new(
        "footprint: the master's memory and CPU",
        &super::super::command(&super::SPEC, opts),
    );
    let big_mb = setup.big_bytes as f64 / 1e6;
    r.para(&format!(
        "Server: the `hello` example (release build, {}), as `<dir>/app --listen 127.0.0.1:PORT \
         --watch <dir>/next`. The master re-executes into a release that has passed its 10 s \
         probation (issue 15); the upgrades come faster than that, and after an even number of \
         them the last release is the master's own binary, so the reading after the upgrades is \
         of the image that did them (master re-execs logged before that reading: {}; with an odd \
         `--upgrades` it would be a fresh image, and the growth target is then marked missed for that; \
         `master-reexec` measures the master across re-execs). Idle figures are read after {} s without traffic. Upgrades: {upgrades} \
         File-fetcher upgrades alternating two builds (fp-b, fp-a, …; copy to `next.tmp`, rename \
         over `next`), each waited for until the new generation answers. Large release: fp-b with \
         {} MiB of random bytes appended ({:.1} MB), published to the watched path, then from a \
         fresh server polling nginx every second (`--url`, raw file and `.tar.gz`). The master's \
         VmHWM is reset (`echo 5 > /proc/PID/clear_refs`) just before each large publish and read \
         once the padded build answers. {} run(s); each is a fresh server.",
        crate::builds::sizes(&setup.builds[..1]),
        results
            .iter()
            .map(|x| x.reexecs.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        opts.str("--settle").unwrap_or("12"),
        opts.str("--pad-mib").unwrap_or("180"),
        big_mb,
        results.len(),
    ));
    r.para(
        "RSS counts every resident page the master maps, including the pages of its binary and \
         libraries that it shares with the worker (the same file in the page cache). PSS charges \
         shared pages pro rata; USS (Private_Clean + Private_Dirty) is what the master alone \
         adds to the machine: what stopping it would free.",
    );
    r.para(OTHERS_NOTE);

    r.heading("Per run");
    let mut t = Table::new(&[
        "run",
        "idle RSS / PSS / USS",
        "after upgrades RSS (upgrades)",
        "growth per upgrade",
        "idle CPU master + worker (per 30 s)",
        "peak RSS, 200 MB install: File / HTTP / .tar.gz",
        "others' CPU",
    ]);
    for x in results {
        let peak = |b: &Option<&Big>| b.map_or("–".into(), |b| mib(b.hwm));
        t.row(vec![
            x.run.to_string(),
            format!(
                "{} / {} / {}",
                mib(x.idle.rss),
                mib(x.idle.rollup.pss),
                mib(x.idle.rollup.uss)
            ),
            format!("{} ({})", mib(x.after.rss), x.upgrades_done),
            kib_s(growth_per_upgrade(x)),
            format!(
                "{} + {} = {}",
                ms(per30(x.cpu_master, x.idle_secs)),
                ms(per30(x.cpu_worker, x.idle_secs)),
                ms(per30(x.cpu_master + x.cpu_worker, x.idle_secs))
            ),
            format!(
                "{} / {} / {}",
                peak(&Some(&x.file_big)),
                peak(&Some(&x.http_big)),
                peak(&x.archive_big.as_ref())
            ),
            format!("{:.2}", x.others_cpus),
        ]);
    }
    r.table(&t);

    let summary_heading = format!("Summary: median (min–max) over {} run(s)", results.len());
    let per = |f: &dyn Fn(&RunResult) -> f64, fmt: fn(f64) -> String| {
        summary(&results.iter().map(f).collect::<Vec<_>>(), fmt)
    };
    let mut s = Table::new(&["figure", "value", "target"]);
    s.row(vec![
        "master RSS, idle (File fetcher)".into(),
        per(&|x| x.idle.rss as f64, mib_f),
        "≤ 4,316 KiB (overseer's)".into(),
    ]);
    s.row(vec![
        "master PSS / USS, idle".into(),
        format!(
            "{} / {}",
            per(&|x| x.idle.rollup.pss as f64, mib_f),
            per(&|x| x.idle.rollup.uss as f64, mib_f)
        ),
        "USS ≤ 1.5 MiB".into(),
    ]);
    s.row(vec![
        "master RSS, idle, with the HTTP fetcher (reqwest + rustls)".into(),
        per(&|x| x.http_idle.rss as f64, mib_f),
        "".into(),
    ]);
    s.row(vec![
        format!("master RSS after {upgrades} upgrades"),
        per(&|x| x.after.rss as f64, mib_f),
        "no growth".into(),
    ]);
    s.row(vec![
        "growth per upgrade: (after − idle) / upgrades".into(),
        per(&growth_per_upgrade, kib_s),
        "0".into(),
    ]);
    s.row(vec![
        "RSS slope over the second half of the upgrades".into(),
        per(&|x| late_slope(x).unwrap_or(f64::NAN), |v| {
            format!("{v:+.2} KiB/upgrade")
        }),
        "0".into(),
    ]);
    s.row(vec![
        "descriptors / threads of the master: idle → after upgrades".into(),
        results
            .iter()
            .map(|x| {
                format!(
                    "{} → {} / {} → {}",
                    x.idle.fds, x.after.fds, x.idle.threads, x.after.threads
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        "equal".into(),
    ]);
    s.row(vec![
        "idle CPU, master + worker, per 30 s".into(),
        per(&|x| per30(x.cpu_master + x.cpu_worker, x.idle_secs), ms),
        format!("overseer: {OVERSEER_MS_PER_30S:.0} ms"),
    ]);
    s.row(vec![
        "the same from schedstat (ns resolution, live threads)".into(),
        per(&|x| per30(x.cpu_sched, x.idle_secs), |v| {
            format!("{v:.2} ms")
        }),
        "".into(),
    ]);
    s.row(vec![
        "idle CPU, master alone, per 30 s".into(),
        per(&|x| per30(x.cpu_master, x.idle_secs), ms),
        "".into(),
    ]);
    type Pick = fn(&RunResult) -> Option<&Big>;
    let kinds: [(&str, Pick); 3] = [
        ("File fetcher", |x| Some(&x.file_big)),
        ("HTTP (raw)", |x| Some(&x.http_big)),
        ("HTTP (.tar.gz)", |x| x.archive_big.as_ref()),
    ];
    for (name, pick) in kinds {
        let bigs: Vec<&Big> = results.iter().filter_map(pick).collect();
        if bigs.is_empty() {
            continue;
        }
        let v = |f: &dyn Fn(&Big) -> f64, fmt: fn(f64) -> String| {
            summary(&bigs.iter().map(|b| f(b)).collect::<Vec<_>>(), fmt)
        };
        s.row(vec![
            format!("master peak RSS (VmHWM) installing {big_mb:.0} MB, {name}"),
            format!(
                "{} (5 ms sampler: {}; RSS before: {})",
                v(&|b| b.hwm as f64, mib_f),
                v(&|b| b.sampled as f64, mib_f),
                v(&|b| b.rss_before as f64, mib_f)
            ),
            "< 16 MB".into(),
        ]);
        s.row(vec![
            format!("install throughput, {name}"),
            v(
                &|b| b.secs.map_or(f64::NAN, |s| b.bytes as f64 / 1e6 / s),
                |m| format!("{m:.0} MB/s"),
            ),
            format!(
                "sha256sum: {}",
                mb_per_s(setup.big_bytes, setup.sha256sum_secs)
            ),
        ]);
    }
    r.summary_table(&summary_heading, &s);
    r.para(
        "Idle CPU: utime + stime from /proc/PID/stat count whole clock ticks (10 ms), so one \
         reading is ±10 ms over the window; the schedstat row is the same window in \
         nanoseconds. After the upgrades the master's PSS rises while its RSS barely moves: the \
         worker then runs another file (the installed release), so the pages of the original \
         binary that the master maps are no longer shared with it.",
    );
    r.para(
        "Throughput: File fetcher = publish (rename) → `staged a release`: the fetcher's settle \
         and sha256 of the file, then the kernel copy beside the binary and its fsync. HTTP = \
         `new release found` (response headers in) → `staged a release`: download, sha256 and \
         write (and gunzip + untar for the archive) in one streaming pass, then fsync. \
         `sha256sum` reads the same file from the page cache. MB = 10^6 bytes.",
    );

    phases_table(&mut r, results, opts.str("--pad-mib").unwrap_or("180"));
    breakdown(&mut r, results);
    verdict(&mut r, upgrades, results);
    raw(&mut r, setup, results);
    r
}

fn phases_table(r: &mut Report, results: &[RunResult], pad_mib: &str) {
    r.heading("Large release: where the time goes (median over runs, from the server log)");
    let mut t = Table::new(&[
        "path",
        "publish → found",
        "found → staged",
        "staged → installing (test-run)",
        "installing → worker starting",
        "worker starting → ready",
        "new build answered",
    ]);
    type Pick = fn(&RunResult) -> Option<&Big>;
    let kinds: [Pick; 3] = [
        |x| Some(&x.file_big),
        |x| Some(&x.http_big),
        |x| x.archive_big.as_ref(),
    ];
    for pick in kinds {
        let bigs: Vec<&Big> = results.iter().filter_map(pick).collect();
        let Some(first) = bigs.first() else { continue };
        let mut row = vec![first.via.to_string()];
        for i in 0..5 {
            let v: Vec<f64> = bigs.iter().filter_map(|b| b.phases[i]).collect();
            row.push(summary(&v, ms));
        }
        row.push(format!(
            "{} of {}",
            bigs.iter().filter(|b| b.served).count(),
            bigs.len()
        ));
        t.row(row);
    }
    r.table(&t);
    r.para(&format!(
        "Over HTTP, publish → found includes waiting for the next poll (every second). \"New \
         build answered\": the padded build test-ran, was installed and its worker answered \
         `hello from fp-b`: {pad_mib} MiB appended to an ELF executable do not change how it \
         runs (the loader maps only the segments the program headers name)."
    ));
}

fn breakdown(r: &mut Report, results: &[RunResult]) {
    let Some(x) = results.first() else { return };
    r.heading(&format!(
        "Why the idle RSS is what it is (run {}, from /proc/PID/smaps)",
        x.run
    ));
    let snap: &Snapshot = &x.idle;
    let after_label = format!("RSS after {} upgrades (Δ)", x.upgrades_done);
    let mut t = Table::new(&[
        "mapping",
        "RSS",
        "of which anonymous",
        "PSS",
        "mapped (virtual)",
        &after_label,
    ]);
    let after = |what: &str| {
        x.after
            .breakdown
            .iter()
            .find(|s| s.what == what)
            .map_or(0, |s| s.rss)
    };
    let delta = |a: u64, b: u64| format!("{} ({:+} KiB)", mib(b), b as i64 - a as i64);
    for s in &snap.breakdown {
        t.row(vec![
            s.what.clone(),
            mib(s.rss),
            mib(s.anon),
            mib(s.pss),
            mib(s.size),
            delta(s.rss, after(&s.what)),
        ]);
    }
    t.row(vec![
        "**total** (smaps_rollup)".into(),
        mib(snap.rollup.rss),
        mib(snap.rollup.anon),
        mib(snap.rollup.pss),
        "".into(),
        delta(snap.rollup.rss, x.after.rollup.rss),
    ]);
    r.table(&t);
    let names: Vec<String> = snap
        .names
        .iter()
        .map(|(n, c)| format!("{n} ×{c}"))
        .collect();
    r.para(&format!(
        "Threads: {} ({}). File-backed RSS {} of {}: pages of the program and its libraries that \
         the master touched, shared with the worker that runs the same file; anonymous {}.",
        snap.threads,
        names.join(", "),
        mib(snap.rollup.file_backed()),
        mib(snap.rollup.rss),
        mib(snap.rollup.anon),
    ));
    if snap.rss <= RSS_TARGET_KIB {
        return;
    }
    let kind = |prefix: &str| {
        snap.breakdown
            .iter()
            .filter(|s| s.what.starts_with(prefix))
            .fold((0, 0), |(r, a), s| (r + s.rss, a + s.anon))
    };
    let (text, _) = kind("program text");
    let (ro, ro_anon) = kind("program read-only");
    let (libs, _) = kind("shared libraries");
    let (anon, _) = kind("anonymous");
    r.para(&format!(
        "**Why the RSS target is missed.** The master is the application's own binary (the \
         stable-PID design: the first process becomes the master), and {} of its {} RSS are that \
         binary's pages: {} of code (the kernel maps code in 64 KiB runs around each page \
         touched, so everything the master ever ran, from argument parsing to binding, counts) \
         and {} of read-only data, of which {} are anonymous copies of `.data.rel.ro` that the \
         dynamic loader relocates at start (the binary is position-independent; `hello` links \
         with packed relative relocations where the toolchain allows, see its `build.rs`, which \
         took the relocation table from 1 MiB to 14 KiB and the idle RSS from 7,904 to \
         6,384 KiB when measured by hand). The C library and friends add {}, which overseer's \
         Go master does not map at all; heap, stacks and threads only {}. Those file pages are \
         shared with the worker, which is why PSS ({}) is about half the RSS, and what the \
         master alone adds to the machine (USS) is {}. Measured by hand, not by this harness: \
         the same build linked non-PIE (`cargo rustc --release --example hello --features \
         remote-fetchers -p upshift-hello -- -C link-arg=-no-pie`), read from \
         /proc/PID/smaps_rollup 15 s after a start beside the packed PIE build, had RSS \
         6,088 KiB and USS 788 KiB against 6,384 and 1,488 KiB: still above overseer's RSS, and \
         giving up the executable's address randomisation is not a trade this demo makes by \
         default. A master that execs a small separate supervisor binary would meet the target \
         by construction, at the price of the one-binary design.",
        mib(text + ro),
        mib(snap.rss),
        mib(text),
        mib(ro),
        mib(ro_anon),
        mib(libs),
        mib(anon + kind("[heap]").0 + kind("[stack]").0),
        mib(snap.rollup.pss),
        mib(snap.rollup.uss),
    ));
}

fn verdict(r: &mut Report, upgrades: u64, results: &[RunResult]) {
    r.heading("Verdict");
    let idle_max = results.iter().map(|x| x.idle.rss).max().unwrap_or(0);
    let uss_max = (results.iter().map(|x| x.idle.rollup.uss).max()).unwrap_or(0);
    let growth: Vec<f64> = results.iter().map(growth_per_upgrade).collect();
    let all_done = results.iter().all(|x| x.upgrades_done == upgrades);
    // Page-granular noise and allocator warm-up: under 1 KiB per upgrade over the whole run. A
    // reading of a re-executed image would show no growth whatever the upgrades left behind.
    let one_image = results.iter().all(|x| x.reexecs == 0);
    let no_growth = all_done && one_image && growth.iter().all(|g| *g < 1.0);
    let peaks: Vec<u64> = results
        .iter()
        .flat_map(|x| {
            [Some(&x.file_big), Some(&x.http_big), x.archive_big.as_ref()]
                .into_iter()
                .flatten()
                .map(|b| b.hwm.max(b.sampled))
        })
        .collect();
    let peak_max = peaks.iter().copied().max().unwrap_or(0);
    let cpu: Vec<f64> = results
        .iter()
        .map(|x| per30(x.cpu_master + x.cpu_worker, x.idle_secs))
        .collect();
    let cpu_max = cpu.iter().copied().fold(0.0, f64::max);
    let mut v = String::new();
    let _ = write!(
        v,
        "- Idle RSS ≤ overseer's 4,316 KiB: **{}** (highest {}).\n\
         - Idle USS ≤ 1.5 MiB: **{}** (highest {}).\n\
         - No growth over {upgrades} upgrades: **{}** (growth per upgrade {}; every upgrade \
         reached traffic: {}{}).\n\
         - Peak RSS installing the 200 MB release under 16 MB: **{}** (highest of all paths {}).\n\
         - Idle CPU of master + worker vs overseer's 20 ms per 30 s: highest {} per 30 s \
         (**{}**).",
        if idle_max <= RSS_TARGET_KIB {
            "met"
        } else {
            "missed"
        },
        mib(idle_max),
        if uss_max <= USS_TARGET_KIB {
            "met"
        } else {
            "missed"
        },
        mib(uss_max),
        if no_growth { "met" } else { "missed" },
        growth
            .iter()
            .map(|g| kib_s(*g))
            .collect::<Vec<_>>()
            .join(", "),
        yes(all_done),
        if one_image {
            ""
        } else {
            "; the master re-executed before the reading, so it is not one image's growth"
        },
        if peak_max < PEAK_TARGET_KIB && peak_max > 0 {
            "met"
        } else {
            "missed"
        },
        mib(peak_max),
        ms(cpu_max),
        if cpu_max <= OVERSEER_MS_PER_30S {
            "at or below overseer"
        } else {
            "above overseer"
        },
    );
    r.para(&v);
    r.verdict(
        "master's idle RSS at or below overseer's 4,316 KiB (issues 5, 14)",
        format!("highest {}", mib(idle_max)),
        Status::met_if(idle_max <= RSS_TARGET_KIB),
    );
    r.verdict(
        "master's idle USS ≤ 1.5 MiB (issue 14)",
        format!("highest {}", mib(uss_max)),
        Status::met_if(uss_max > 0 && uss_max <= USS_TARGET_KIB),
    );
    r.verdict(
        &format!("no growth of the master's RSS over {upgrades} upgrades (issue 5)"),
        format!(
            "growth per upgrade {}; every upgrade's build answered a request: {}{}",
            growth
                .iter()
                .map(|g| kib_s(*g))
                .collect::<Vec<_>>()
                .join(", "),
            yes(all_done),
            if one_image {
                String::new()
            } else {
                "; the master re-executed before the reading: not one image's growth".into()
            }
        ),
        Status::met_if(no_growth),
    );
    r.verdict(
        "master's peak RSS installing a 200 MB release under 16 MB (issue 5)",
        format!("highest of all paths {}", mib(peak_max)),
        Status::met_if(peak_max < PEAK_TARGET_KIB && peak_max > 0),
    );
    r.verdict(
        "idle CPU of master + worker at or below overseer's 20 ms per 30 s (issue 5)",
        format!("highest {} per 30 s", ms(cpu_max)),
        Status::met_if(cpu_max <= OVERSEER_MS_PER_30S),
    );
}

fn raw(r: &mut Report, setup: &Setup, results: &[RunResult]) {
    r.heading("Raw per-run numbers");
    let mut lines = vec![format!(
        "large_release_bytes={} sha256={} sha256sum_secs={:.3}{}",
        setup.big_bytes,
        setup.big_sha,
        setup.sha256sum_secs,
        setup
            .archive
            .as_ref()
            .map_or(String::new(), |(_, sha, n)| format!(
                " archive_bytes={n} archive_sha256={sha}"
            )),
    )];
    for x in results {
        let mut l = format!(
            "run={} idle_rss_kib={} idle_pss_kib={} idle_uss_kib={} idle_anon_kib={} \
             idle_threads={} idle_fds={} after_rss_kib={} after_pss_kib={} after_threads={} \
             after_fds={} upgrades_done={} reexecs={} cpu_master_s={:.3} cpu_worker_s={:.3} \
             cpu_sched_s={:.4} idle_secs={:.1} \
             http_idle_rss_kib={} others_cpus={:.2}",
            x.run,
            x.idle.rss,
            x.idle.rollup.pss,
            x.idle.rollup.uss,
            x.idle.rollup.anon,
            x.idle.threads,
            x.idle.fds,
            x.after.rss,
            x.after.rollup.pss,
            x.after.threads,
            x.after.fds,
            x.upgrades_done,
            x.reexecs,
            x.cpu_master,
            x.cpu_worker,
            x.cpu_sched,
            x.idle_secs,
            x.http_idle.rss,
            x.others_cpus,
        );
        l.push_str("\n  rss_kib after k upgrades:");
        for (k, rss) in &x.trend {
            if *k % 10 == 0 || *k == x.upgrades_done {
                let _ = write!(l, " {k}={rss}");
            }
        }
        for b in [Some(&x.file_big), Some(&x.http_big), x.archive_big.as_ref()]
            .into_iter()
            .flatten()
        {
            let _ = write!(
                l,
                "\n  {}: bytes={} rss_before_kib={} hwm_kib={} sampled_peak_kib={} served={} \
                 secs={} phases_ms={:?}",
                b.via,
                b.bytes,
                b.rss_before,
                b.hwm,
                b.sampled,
                b.served,
                b.secs.map_or("-".into(), |s| format!("{s:.3}")),
                b.phases
                    .iter()
                    .map(|p| p.map_or("-".into(), |v| format!("{v:.1}")))
                    .collect::<Vec<_>>(),
            );
        }
        lines.push(l);
    }
    r.raw(&lines);
}
