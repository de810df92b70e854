//! Bounds end to end (issue 11), with the real master: the crafted archives of the security
//! review are refused while the master's peak RSS stays under 32 MiB, and a release that trickles
//! in is cut at the download deadline; in both cases the old worker serves throughout and the
//! binary on disk is byte-identical.

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use upshift_testkit::crafted::Bomb;

/// The target for the master's peak RSS while it refuses a crafted archive.
const RSS_TARGET_KIB: u64 = 32 << 10;
/// The size cap of the review's proof of concept.
const CAP: &str = "4194304";
/// What each bomb inflates to: far beyond the cap and the target.
const INFLATED: u64 = 256 << 20;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resets the master's VmHWM to its current RSS (it is our child: same user).
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

#[test]
fn crafted_archives_are_refused_with_the_masters_peak_rss_under_32_mib() {
    let _heavy = heavy_lock();
    let mut rig = Rig::new("rb-bombs");
    rig.next = rig.path("next.tar.gz");
    rig.start(&["--max-release-bytes", CAP]);
    let expected: [(Bomb, &[&str]); 4] = [
        (
            Bomb::PaxHeader,
            &["PAX extended header of entry 1", "more than the 65536"],
        ),
        (
            Bomb::LongName,
            &["GNU long name of entry 1", "more than the 65536"],
        ),
        (
            Bomb::SkippedEntries,
            &["decompressed release", "larger than the limit of 4194304"],
        ),
        (
            Bomb::TrailingGzip,
            &["decompressed release", "larger than the limit of 4194304"],
        ),
    ];
    for (bomb, says) in expected {
        refused_within_target(&mut rig, bomb, says);
    }
    rig.assert_no_temp_files("after the crafted archives");
    drop(rig);

    let mut rig = Rig::new("rb-zip");
    rig.next = rig.path("next.zip");
    rig.start(&["--max-release-bytes", CAP]);
    refused_within_target(&mut rig, Bomb::Zip, &["larger than the limit of 4194304"]);
}

/// Publishes `bomb` to a started rig: refused (saying `says`), nothing changed, and the master's
/// peak RSS meanwhile under the target.
fn refused_within_target(rig: &mut Rig, bomb: Bomb, says: &[&str]) {
    let master = rig.m().pid();
    {
        let mut archive = Vec::new();
        bomb.write(INFLATED, b"#!/bin/sh\necho crafted\n", &mut archive)
            .unwrap();
        assert!(
            archive.len() < 2 << 20,
            "{}: {} bytes",
            bomb.name(),
            archive.len()
        );
        reset_peak(master);
        let before = status_kib(master, "VmRSS:");
        refused(rig, &archive, None, says);
        let peak = status_kib(master, "VmHWM:");
        eprintln!(
            "{}: {} bytes inflating to {INFLATED}: master RSS {before} KiB before, peak {peak} KiB",
            bomb.name(),
            archive.len()
        );
        rig.expect(
            peak < RSS_TARGET_KIB,
            format!("{}: the master's peak RSS was {peak} KiB", bomb.name()),
        );
    }
}

/// A loopback origin for the fixture's `--stream` fetcher: each connection gets the head line
/// (a checksum and `announced` bytes) and then one byte every `every`, until the client hangs up.
struct Trickler {
    port: u16,
    stop: Arc<AtomicBool>,
    bodies: Arc<AtomicU32>,
}

impl Trickler {
    fn start(announced: u64, every: Duration) -> Trickler {
        Trickler::start_dying_after(announced, every, u64::MAX)
    }

    /// Closes each connection after `dies_after` body bytes, as a server that dies mid-download.
    fn start_dying_after(announced: u64, every: Duration, dies_after: u64) -> Trickler {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let bodies = Arc::new(AtomicU32::new(0));
        let (stop2, bodies2) = (stop.clone(), bodies.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (stop3, bodies3) = (stop2.clone(), bodies2.clone());
                        std::thread::spawn(move || {
                            serve(conn, (announced, dies_after), every, &stop3, &bodies3);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Trickler { port, stop, bodies }
    }
}

impl Drop for Trickler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    mut conn: TcpStream,
    (announced, dies_after): (u64, u64),
    every: Duration,
    stop: &AtomicBool,
    bodies: &AtomicU32,
) {
    conn.set_nonblocking(false).unwrap();
    if writeln!(conn, "{} {announced}", "ab".repeat(32)).is_err() {
        return;
    }
    bodies.fetch_add(1, Ordering::Relaxed);
    // The first bytes look like an executable; the rest never comes in time.
    let mut sent = 0u64;
    let _ = conn.write_all(b"\x7fELF");
    sent += 4;
    while sent < announced.min(dies_after) && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(every);
        if conn.write_all(b"x").is_err() {
            return;
        }
        sent += 1;
    }
}

#[test]
fn a_trickling_origin_is_cut_at_the_download_deadline_while_the_old_worker_serves() {
    let _heavy = heavy_lock();
    let origin = Trickler::start(1 << 20, Duration::from_millis(50));
    let addr = format!("127.0.0.1:{}", origin.port);
    let mut rig = Rig::new("rb-slow");
    rig.start(&["--stream", &addr, "--download-deadline-ms", "3000"]);
    let traffic = rig.watch();
    let started = Instant::now();
    let line = rig.wait_log("did not finish within 3s", VERDICT);
    let took = started.elapsed();
    rig.expect(
        origin.bodies.load(Ordering::Relaxed) >= 1,
        "the release body was never asked for",
    );
    rig.expect(
        line.contains("not installed this time") && line.contains("it will be tried again"),
        format!("the verdict: {line}"),
    );
    // Cut at the deadline (the stream fetcher has no timer of its own).
    rig.expect(
        took >= Duration::from_secs(3) && took < Duration::from_secs(30),
        format!("cut after {took:?}"),
    );
    // As `assert_untouched`, but for temp files: the release is not at fault, so it is
    // downloaded again after a backoff, and the retry has its own temp file by then.
    std::thread::sleep(HOLD);
    let seen = traffic.stop();
    let why = "after the slow download was cut";
    rig.assert_master_alive(why);
    rig.assert_only_base_served(&seen, why);
    rig.assert_app_is_original(why);
    rig.wait_log("trying the release again after a backoff", VERDICT);
}

/// A server that dies mid-download is the network's fault, not the release's: the log says the
/// download failed and will be retried (never "rejected"), nothing is remembered as refused, and
/// the release is downloaded again after a backoff while the old worker serves.
#[test]
fn an_origin_dying_mid_download_is_a_failed_download_retried_not_a_rejected_release() {
    let _heavy = heavy_lock();
    let origin = Trickler::start_dying_after(1 << 20, Duration::from_millis(1), 2_000);
    let addr = format!("127.0.0.1:{}", origin.port);
    let mut rig = Rig::new("rb-dies");
    rig.start(&["--stream", &addr]);
    let traffic = rig.watch();
    let line = rig.wait_log("not installed this time", VERDICT);
    rig.expect(
        line.contains("the download failed") || line.contains("the transfer was cut short"),
        format!("the verdict names the cut transfer: {line}"),
    );
    rig.expect(
        line.contains("it will be tried again"),
        format!("the verdict says it is retried: {line}"),
    );
    rig.wait_log("trying the release again after a backoff", VERDICT);
    let retried = wait_until(Duration::from_secs(20), || {
        origin.bodies.load(Ordering::Relaxed) >= 2
    });
    rig.expect(
        retried,
        "the release was not downloaded again after the backoff",
    );
    let log = rig.m().log_contents();
    rig.expect(
        !log.contains(" rejected"),
        "a cut transfer was reported as a rejected release",
    );
    std::thread::sleep(HOLD);
    let seen = traffic.stop();
    let why = "after the origin died mid-download";
    rig.assert_master_alive(why);
    rig.assert_only_base_served(&seen, why);
    rig.assert_app_is_original(why);
}
