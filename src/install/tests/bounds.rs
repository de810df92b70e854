//! The crafted archives of the security review (issue 11): each is refused, and unpacking it
//! never holds more than [`HELD`] bytes, whatever the archive claims or inflates to.

use std::fs::File;
use std::future::Future;
use std::io::Write;

use tokio::sync::mpsc;

use super::alloc::peak_during;
use super::{targz, TempDir};
use crate::fetch::Format;
use crate::install::unpack::{self, BinaryWriter, ChannelReader, Unpacked};
use crate::install::InstallError;
use upshift_testkit::crafted::{header, Bomb};

/// The size cap of the review's proof of concept.
const MAX: u64 = 4 << 20;
/// The most unpacking may hold allocated at once (decoder state and buffers: about 150 KiB).
const HELD: usize = 1 << 20;
const EXE: &[u8] = b"#!/bin/sh\necho crafted\n";

/// Unpacks `archive` on this thread (so that its allocations are counted) into a file in `dir`.
fn unpack_here(
    dir: &TempDir,
    archive: &[u8],
    format: Format,
    limit: u64,
) -> (Result<Unpacked, InstallError>, usize) {
    // Archives here are small: what they inflate to is the point.
    assert!(archive.len() < 512 << 10, "{} bytes", archive.len());
    let chunks: Vec<Vec<u8>> = archive.chunks(64 << 10).map(<[u8]>::to_vec).collect();
    let (tx, rx) = mpsc::channel(chunks.len() + 1);
    for chunk in chunks {
        tx.try_send(chunk).unwrap();
    }
    drop(tx);
    let path = dir.path().join("out");
    let file = File::create(&path).unwrap();
    let writer = BinaryWriter::new(file, path, true, limit);
    peak_during(|| unpack::unpack(format, ChannelReader::new(rx), writer))
}

fn crafted(bomb: Bomb, inflated: u64) -> Vec<u8> {
    let mut out = Vec::new();
    bomb.write(inflated, EXE, &mut out).unwrap();
    out
}

fn refused(bomb: Bomb, inflated: u64, format: Format) -> (InstallError, usize) {
    let dir = TempDir::new("bounds");
    let archive = crafted(bomb, inflated);
    match unpack_here(&dir, &archive, format, MAX) {
        (Ok(u), _) => panic!("{} was unpacked ({} bytes)", bomb.name(), u.bytes),
        (Err(e), peak) => (e, peak),
    }
}

fn targz_any() -> Format {
    Format::TarGz { binary: None }
}

#[test]
fn a_huge_pax_header_is_refused_without_being_read() {
    let (err, peak) = refused(Bomb::PaxHeader, 64 << 20, targz_any());
    let msg = err.to_string();
    assert!(matches!(err, InstallError::Unpack(_)), "{msg}");
    assert!(msg.contains("PAX extended header of entry 1"), "{msg}");
    assert!(msg.contains("67108864 bytes, more than the 65536"), "{msg}");
    assert!(peak < HELD, "held {peak} bytes");
}

#[test]
fn a_huge_gnu_long_name_is_refused_without_being_read() {
    let (err, peak) = refused(Bomb::LongName, 64 << 20, targz_any());
    let msg = err.to_string();
    assert!(msg.contains("GNU long name of entry 1"), "{msg}");
    assert!(msg.contains("more than the 65536"), "{msg}");
    assert!(peak < HELD, "held {peak} bytes");
}

#[test]
fn skipped_entries_count_against_the_limit() {
    let (err, peak) = refused(Bomb::SkippedEntries, 16 << 20, targz_any());
    assert!(
        matches!(err, InstallError::TooLarge { what, limit: MAX } if what.contains("decompressed release")),
        "{err}"
    );
    assert!(peak < HELD, "held {peak} bytes");
    // The same archive under the limit unpacks: skipping is counted, not forbidden.
    let dir = TempDir::new("bounds-ok");
    let archive = crafted(Bomb::SkippedEntries, 2 << 20);
    let (ok, _) = unpack_here(&dir, &archive, targz_any(), MAX);
    assert_eq!(ok.map(|u| u.bytes).ok(), Some(EXE.len() as u64));
}

#[test]
fn gzip_data_after_the_tar_end_counts_against_the_limit() {
    let (err, peak) = refused(Bomb::TrailingGzip, 64 << 20, targz_any());
    assert!(
        matches!(err, InstallError::TooLarge { what, .. } if what.contains("trailing data")),
        "{err}"
    );
    assert!(peak < HELD, "held {peak} bytes");
    // A small second member (some tools append one) is read and accepted.
    let dir = TempDir::new("bounds-trail");
    let archive = crafted(Bomb::TrailingGzip, 4096);
    let (ok, _) = unpack_here(&dir, &archive, targz_any(), MAX);
    assert_eq!(ok.map(|u| u.bytes).ok(), Some(EXE.len() as u64));
}

#[test]
fn a_zip_bomb_stops_at_the_limit() {
    let (err, peak) = refused(Bomb::Zip, 64 << 20, Format::Zip { binary: None });
    assert!(
        matches!(err, InstallError::TooLarge { limit: MAX, .. }),
        "{err}"
    );
    assert!(peak < HELD, "held {peak} bytes");
}

#[test]
fn a_gzip_bomb_of_concatenated_members_stops_at_the_limit() {
    let dir = TempDir::new("bounds-gz");
    let mut archive = super::gzip(&vec![0; 1 << 20]);
    for _ in 0..15 {
        archive.extend_from_slice(&super::gzip(&vec![0; 1 << 20]));
    }
    let (res, peak) = unpack_here(&dir, &archive, Format::Gzip, MAX);
    let err = res.err().expect("refused");
    assert!(matches!(err, InstallError::TooLarge { .. }), "{err}");
    assert!(peak < HELD, "held {peak} bytes");
}

#[test]
fn many_long_names_cost_no_memory_and_the_error_lists_twenty() {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut gz = gz;
    for i in 0..400 {
        let name = format!("{i:04}-{}", "n".repeat(8 << 10));
        gz.write_all(&header("././@LongLink", b'L', name.len() as u64, 0o644))
            .unwrap();
        gz.write_all(name.as_bytes()).unwrap();
        gz.write_all(&vec![0; (512 - name.len() % 512) % 512])
            .unwrap();
        gz.write_all(&header("x", b'0', 0, 0o644)).unwrap();
    }
    gz.write_all(&[0; 1024]).unwrap();
    let archive = gz.finish().unwrap();
    let dir = TempDir::new("bounds-names");
    let (res, peak) = unpack_here(&dir, &archive, targz_any(), MAX);
    let msg = res.err().expect("no executable").to_string();
    assert!(msg.contains("and 380 more"), "{}", &msg[..200]);
    assert!(
        msg.contains("0019-nnn") && !msg.contains("0020-nnn"),
        "{}",
        &msg[..200]
    );
    assert!(msg.len() < 20 * 210 + 400, "{} bytes of message", msg.len());
    // 400 names of 8 KiB: 3.2 MB if they were kept.
    assert!(peak < HELD, "held {peak} bytes");
}

#[test]
fn long_paths_in_gnu_ustar_and_pax_form_are_found_by_name() {
    let long = format!("{}/app", "dir".repeat(60));
    // GNU: the tar crate writes a `././@LongLink` entry.
    let archive = targz(&[(long.as_str(), 0o755, EXE)]);
    assert_found(&archive, &long);

    // POSIX ustar: the path split into prefix and name.
    let prefixed = format!("{}/{}/app", "a".repeat(90), "b".repeat(50));
    let mut header = tar::Header::new_ustar();
    header.set_path(&prefixed).unwrap();
    header.set_size(EXE.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    assert_found(&tar_gz(|b| b.append(&header, EXE).unwrap()), &prefixed);

    // PAX: a `path` record overrides the header's name.
    let archive = tar_gz(|b| {
        b.append_pax_extensions([("path", long.as_bytes())])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_path("short").unwrap();
        header.set_size(EXE.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        b.append(&header, EXE).unwrap();
    });
    assert_found(&archive, &long);
}

#[test]
fn a_corrupt_header_is_an_unpack_error() {
    let mut block = header("app", b'0', 3, 0o755);
    block[0] = b'b';
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&block).unwrap();
    let archive = gz.finish().unwrap();
    let dir = TempDir::new("bounds-sum");
    let (res, _) = unpack_here(&dir, &archive, targz_any(), MAX);
    let msg = res.err().expect("refused").to_string();
    assert!(
        msg.contains("entry 1 of the .tar.gz archive has a bad header: checksum"),
        "{msg}"
    );
}

fn tar_gz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    let tar = b.into_inner().unwrap();
    super::gzip(&tar)
}

fn assert_found(archive: &[u8], name: &str) {
    let dir = TempDir::new("bounds-name");
    let format = Format::TarGz {
        binary: Some(name.to_string()),
    };
    let (res, _) = unpack_here(&dir, archive, format, MAX);
    match res {
        Ok(u) => assert_eq!(u.bytes, EXE.len() as u64),
        Err(e) => panic!("{name}: {e}"),
    }
    assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), EXE);
}

/// A body that sends one byte every `every`, forever: under any stall timer, never done.
struct Trickle {
    every: std::time::Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let every = self.every;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        std::task::ready!(timer.as_mut().poll(cx));
        self.timer = None;
        buf.put_slice(b"x");
        std::task::Poll::Ready(Ok(()))
    }
}

#[test]
fn a_trickling_download_is_cut_at_the_deadline_and_is_not_the_releases_fault() {
    let dir = TempDir::new("deadline");
    let target = dir.exe("app", b"the running binary");
    let mut rel = super::release(Vec::new(), Format::Raw);
    rel.size_hint = None;
    rel.body = Box::new(Trickle {
        every: std::time::Duration::from_millis(20),
        timer: None,
    });
    let opts = crate::install::StageOptions {
        deadline: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let err = super::rt()
        .block_on(crate::install::stage(rel, &target, &opts))
        .expect_err("cut");
    let took = started.elapsed();
    assert!(
        matches!(err, InstallError::DeadlineExceeded { received, .. } if received > 5),
        "{err}"
    );
    assert!(
        err.to_string().contains("did not finish within 500ms"),
        "{err}"
    );
    assert!(took < std::time::Duration::from_secs(3), "{took:?}");
    assert!(!err.is_release_fault());
    assert_eq!(crate::release::model::refusal_kind(&err), None);
    assert_eq!(dir.names(), ["app"], "the partial download is removed");
}
