use super::*;

use proptest::prelude::*;

/// Real machine code: the first `len` bytes of this test binary.
fn real_build(len: usize) -> Vec<u8> {
    let exe = std::env::current_exe().unwrap();
    let mut bytes = std::fs::read(exe).unwrap();
    bytes.truncate(len);
    bytes
}

/// `base` as a next build might differ from it: a few bytes changed, a run inserted (every
/// later address shifts), a run removed, and new bytes appended.
fn next_build(base: &[u8]) -> Vec<u8> {
    let mut new = base.to_vec();
    let n = new.len();
    for i in (0..n).step_by(4099) {
        new[i] ^= 0x5a;
    }
    new.splice(
        n / 3..n / 3,
        b"a new function's code".iter().copied().cycle().take(3000),
    );
    new.drain(n / 2..n / 2 + 1000);
    new.extend_from_slice(b"trailing data of the new build");
    new
}

fn make_patch(base: &[u8], new: &[u8]) -> Vec<u8> {
    let mut patch = Vec::new();
    let n = make(base, new, &mut patch).unwrap();
    assert_eq!(n, patch.len() as u64);
    patch
}

fn apply_all(base: &[u8], patch: &[u8], max_out: u64) -> Result<Vec<u8>, DeltaError> {
    let mut out = Vec::new();
    let n = apply(base, &mut &patch[..], &mut out, max_out)?;
    assert_eq!(n, out.len() as u64);
    Ok(out)
}

#[test]
fn a_patch_between_two_builds_rebuilds_the_new_one_byte_for_byte() {
    let base = real_build(4 << 20);
    let new = next_build(&base);
    let patch = make_patch(&base, &new);
    assert!(
        patch.len() < new.len() / 50,
        "{} bytes for {}",
        patch.len(),
        new.len()
    );
    assert!(apply_all(&base, &patch, new.len() as u64).unwrap() == new);
}

#[test]
fn empty_builds_round_trip() {
    let base = real_build(1000);
    for (b, n) in [
        (&[][..], &base[..]),
        (&base[..], &[][..]),
        (&[][..], &[][..]),
    ] {
        let patch = make_patch(b, n);
        assert_eq!(apply_all(b, &patch, 1 << 20).unwrap(), n);
    }
}

#[test]
fn a_mapped_file_is_read_in_place_and_an_empty_one_is_empty() {
    let dir = std::env::temp_dir().join(format!("upshift-delta-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app");
    let base = real_build(100_000);
    std::fs::write(&path, &base).unwrap();
    let mapped = Mapped::open(&path).unwrap();
    assert!(mapped.as_slice() == &base[..]);
    let new = next_build(&base);
    let patch = make_patch(&base, &new);
    assert!(apply_all(mapped.as_slice(), &patch, u64::MAX).unwrap() == new);
    drop(mapped);
    std::fs::write(&path, b"").unwrap();
    assert!(Mapped::open(&path).unwrap().as_slice().is_empty());
    assert!(Mapped::open(&dir.join("missing")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_output_limit_is_enforced() {
    let base = real_build(200_000);
    let new = next_build(&base);
    let patch = make_patch(&base, &new);
    let limit = new.len() as u64 - 1;
    match apply_all(&base, &patch, limit) {
        Err(e @ DeltaError::TooLarge { max }) => {
            assert_eq!(max, limit);
            assert!(e.to_string().contains("largest release"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(apply_all(&base, &patch, new.len() as u64).is_ok());
}

#[test]
fn a_cut_short_patch_is_an_error() {
    let base = real_build(200_000);
    let new = next_build(&base);
    let patch = make_patch(&base, &new);
    for cut in [
        0,
        1,
        4,
        12,
        patch.len() / 3,
        patch.len() / 2,
        patch.len() - 5,
        patch.len() - 1,
    ] {
        let err = apply_all(&base, &patch[..cut], u64::MAX).unwrap_err();
        assert!(
            matches!(err, DeltaError::Corrupt(_) | DeltaError::NotAPatch(_)),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn a_corrupt_patch_is_an_error_not_a_panic() {
    let base = real_build(200_000);
    let new = next_build(&base);
    let patch = make_patch(&base, &new);
    // Each byte flipped in turn (the zstd checksum catches what the format does not).
    for at in (0..patch.len()).step_by(97) {
        let mut bad = patch.clone();
        bad[at] ^= 0xff;
        if let Ok(out) = apply_all(&base, &bad, new.len() as u64 * 2) {
            assert!(out != new, "flipping byte {at} changed nothing");
        }
    }
    let err = apply_all(&base, b"#!/bin/sh\necho not a patch\n", u64::MAX).unwrap_err();
    assert!(matches!(err, DeltaError::NotAPatch(_)), "{err:?}");
    assert!(err.to_string().contains("full release"), "{err}");
    let err = apply_all(&base, b"", u64::MAX).unwrap_err();
    assert!(matches!(err, DeltaError::NotAPatch(_)), "{err:?}");
    // A valid zstd stream of something that is not a bidiff patch.
    let other = zstd::encode_all(&b"just some text, compressed"[..], 3).unwrap();
    let err = apply_all(&base, &other, u64::MAX).unwrap_err();
    assert!(matches!(err, DeltaError::NotAPatch(_)), "{err:?}");
    // Trailing bytes after the stream.
    let mut trailing = patch.clone();
    trailing.extend_from_slice(b"junk");
    assert!(apply_all(&base, &trailing, u64::MAX).is_err());
}

#[test]
fn a_patch_for_another_base_fails_or_gives_other_bytes() {
    let base = real_build(300_000);
    let new = next_build(&base);
    let patch = make_patch(&base, &new);
    let other = next_build(&base[1000..]);
    match apply_all(&other, &patch, u64::MAX) {
        Ok(out) => assert!(out != new),
        Err(e) => assert!(matches!(e, DeltaError::WrongBase), "{e:?}"),
    }
    // A base too short for the patch's reads.
    let err = apply_all(&base[..1000], &patch, u64::MAX).unwrap_err();
    assert!(matches!(err, DeltaError::WrongBase), "{err:?}");
    assert!(err.to_string().contains("another build"), "{err}");
}

#[test]
fn a_window_over_the_cap_is_refused_before_it_is_allocated() {
    // A valid patch whose zstd frame declares a 64 MiB window and no content size.
    let mut stream = vec![0xdf, 0xb1, 0, 0, 0, 0x10, 0, 0, 0, 3];
    stream.extend(b"abc");
    stream.push(0);
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    z.window_log(26).unwrap();
    z.include_contentsize(false).unwrap();
    z.write_all(&stream).unwrap();
    let patch = z.finish().unwrap();
    let err = apply_all(b"", &patch, u64::MAX).unwrap_err();
    assert!(matches!(err, DeltaError::WindowTooLarge), "{err:?}");
    // The same stream with an allowed window applies.
    let ok = zstd::encode_all(&stream[..], 3).unwrap();
    assert_eq!(apply_all(b"", &ok, u64::MAX).unwrap(), b"abc");
}

#[test]
fn a_decompression_bomb_of_empty_instructions_stops() {
    // Instructions that write nothing (0 old bytes, 0 new bytes, seek 0), 10 MB of them, in a
    // patch of a few hundred bytes: stopped at 2 × max_out + 1 MiB of instructions.
    let mut stream = vec![0xdf, 0xb1, 0, 0, 0, 0x10, 0, 0];
    stream.resize(8 + 10_000_000, 0);
    let bomb = zstd::encode_all(&stream[..], 3).unwrap();
    assert!(bomb.len() < 10_000);
    let err = apply_all(b"base", &bomb, 1000).unwrap_err();
    assert!(matches!(err, DeltaError::Corrupt(_)), "{err:?}");
}

#[test]
fn a_failing_source_or_sink_is_reported_as_such() {
    struct Failing;
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("connection reset"))
        }
    }
    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let err = apply(b"", &mut Failing, &mut Vec::new(), 10).unwrap_err();
    assert!(matches!(err, DeltaError::Read(_)), "{err:?}");
    assert!(err.to_string().contains("connection reset"), "{err}");
    let base = real_build(10_000);
    let patch = make_patch(&base, &next_build(&base));
    let err = apply(&base, &mut &patch[..], &mut Failing, u64::MAX).unwrap_err();
    assert!(matches!(err, DeltaError::Write(_)), "{err:?}");
}

#[test]
fn patch_names() {
    let sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let name = patch_name("app-x86_64-unknown-linux-gnu", sha);
    assert_eq!(
        name,
        "app-x86_64-unknown-linux-gnu.from-9f86d081884c7d65.bidiff.zst"
    );
    assert_eq!(patch_base_prefix(&name), Some(&sha[..16]));
    for not in [
        "app",
        "app.bidiff.zst",
        ".from-9f86d081884c7d65.bidiff.zst",
        "app.from-9f86d081884c7d6.bidiff.zst",
        "app.from-9F86D081884C7D65.bidiff.zst",
        "app.from-9f86d081884c7d65.zst",
    ] {
        assert_eq!(patch_base_prefix(not), None, "{not}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_patches_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let base = b"an old build with some bytes in it".repeat(20);
        let _ = apply_all(&base, &bytes, 1 << 20);
    }

    #[test]
    fn random_instructions_in_a_valid_stream_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        // Past zstd: the bidiff header, then random instructions.
        let mut stream = vec![0xdf, 0xb1, 0, 0, 0, 0x10, 0, 0];
        stream.extend(body);
        let patch = zstd::encode_all(&stream[..], 1).unwrap();
        let base = b"an old build with some bytes in it".repeat(20);
        let _ = apply_all(&base, &patch, 1 << 16);
    }

    #[test]
    fn damaged_real_patches_never_panic(at in 0usize..10_000, with in any::<u8>()) {
        let base = b"an old build with some bytes in it, version 1".repeat(40);
        let new = b"an old build with more bytes in it, version 2".repeat(41);
        let mut patch = make_patch(&base, &new);
        let at = at % patch.len();
        patch[at] = with;
        let _ = apply_all(&base, &patch, 1 << 16);
    }
}
