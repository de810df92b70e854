//! The crafted archives of the security review (issue 11), written as a stream so that a bomb
//! that inflates to a gigabyte costs its writer no memory. Used by the install pipeline's unit
//! tests, its end-to-end bounds test and the bench's `bombs` scenario.

use std::io::{self, Write};

/// One crafted archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bomb {
    /// A `.tar.gz` whose PAX extended header inflates to `inflated` bytes.
    PaxHeader,
    /// A `.tar.gz` whose GNU long name inflates to `inflated` bytes.
    LongName,
    /// A `.tar.gz` of 1 MiB non-executable entries adding up to `inflated` bytes, then the
    /// executable.
    SkippedEntries,
    /// A well-formed `.tar.gz` followed by a second gzip member of `inflated` zero bytes.
    TrailingGzip,
    /// A `.zip` whose only entry starts like an ELF file and inflates to `inflated` bytes.
    Zip,
}

impl Bomb {
    pub const ALL: [Bomb; 5] = [
        Bomb::PaxHeader,
        Bomb::LongName,
        Bomb::SkippedEntries,
        Bomb::TrailingGzip,
        Bomb::Zip,
    ];

    /// A short name, for reports and file names.
    pub fn name(self) -> &'static str {
        match self {
            Bomb::PaxHeader => "pax-header",
            Bomb::LongName => "gnu-long-name",
            Bomb::SkippedEntries => "skipped-entries",
            Bomb::TrailingGzip => "gzip-trailing-data",
            Bomb::Zip => "zip-bomb",
        }
    }

    /// The extension a fetcher recognises the format by.
    pub fn extension(self) -> &'static str {
        match self {
            Bomb::Zip => "zip",
            _ => "tar.gz",
        }
    }

    /// Writes the archive to `out`: the bomb inflating to `inflated` bytes, and `exe` as the
    /// archive's executable (after the bomb, where there is one).
    pub fn write(self, inflated: u64, exe: &[u8], out: impl Write) -> io::Result<()> {
        if self == Bomb::Zip {
            return zip_bomb(inflated, out);
        }
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::best());
        match self {
            Bomb::PaxHeader => {
                gz.write_all(&header("./PaxHeaders/app", b'x', inflated, 0o644))?;
                // One record, `"<len> comment=<value>\n"`, `inflated` bytes long in all.
                write!(gz, "{inflated} comment=")?;
                repeat(
                    &mut gz,
                    b'a',
                    inflated - inflated.to_string().len() as u64 - 10,
                )?;
                gz.write_all(b"\n")?;
                pad(&mut gz, inflated)?;
            }
            Bomb::LongName => {
                gz.write_all(&header("././@LongLink", b'L', inflated, 0o644))?;
                repeat(&mut gz, b'a', inflated)?;
                pad(&mut gz, inflated)?;
            }
            Bomb::SkippedEntries => {
                const EACH: u64 = 1 << 20;
                for i in 0..inflated.div_ceil(EACH) {
                    gz.write_all(&header(&format!("junk/{i}"), b'0', EACH, 0o644))?;
                    repeat(&mut gz, 0, EACH)?;
                }
            }
            Bomb::TrailingGzip | Bomb::Zip => {}
        }
        gz.write_all(&header("app", b'0', exe.len() as u64, 0o755))?;
        gz.write_all(exe)?;
        pad(&mut gz, exe.len() as u64)?;
        gz.write_all(&[0; 1024])?;
        let out = gz.finish()?;
        if self == Bomb::TrailingGzip {
            let mut second = flate2::write::GzEncoder::new(out, flate2::Compression::best());
            repeat(&mut second, 0, inflated)?;
            second.finish()?;
        }
        Ok(())
    }
}

fn repeat(out: &mut impl Write, byte: u8, mut n: u64) -> io::Result<()> {
    let chunk = [byte; 64 * 1024];
    while n > 0 {
        let k = n.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..k])?;
        n -= k as u64;
    }
    Ok(())
}

fn pad(out: &mut impl Write, size: u64) -> io::Result<()> {
    let rest = (512 - size % 512) % 512;
    out.write_all(&[0; 512][..rest as usize])
}

/// A POSIX ustar header.
pub fn header(name: &str, kind: u8, size: u64, mode: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    let name = name.as_bytes();
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    octal(&mut h[148..155], sum);
    h
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

/// A zip of one deflated entry, `app`: ELF magic then zeros, `inflated` bytes in all.
fn zip_bomb(inflated: u64, mut out: impl Write) -> io::Result<()> {
    let mut crc = flate2::Crc::new();
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let magic = b"\x7fELF";
    deflate.write_all(magic)?;
    crc.update(magic);
    let zeros = [0u8; 64 * 1024];
    let mut left = inflated.saturating_sub(4);
    while left > 0 {
        let k = left.min(zeros.len() as u64) as usize;
        deflate.write_all(&zeros[..k])?;
        crc.update(&zeros[..k]);
        left -= k as u64;
    }
    let data = deflate.finish()?;
    let sizes = |v: &mut Vec<u8>| {
        v.extend_from_slice(&crc.sum().to_le_bytes());
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(&(inflated.min(u64::from(u32::MAX)) as u32).to_le_bytes());
    };
    let name = b"app";
    let mut local = Vec::new();
    local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    local.extend_from_slice(&[20, 0, 0, 0, 8, 0, 0, 0, 0, 0]);
    sizes(&mut local);
    local.extend_from_slice(&(name.len() as u16).to_le_bytes());
    local.extend_from_slice(&0u16.to_le_bytes());
    local.extend_from_slice(name);
    out.write_all(&local)?;
    out.write_all(&data)?;
    let mut central = Vec::new();
    central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    central.extend_from_slice(&[20, 3, 20, 0, 0, 0, 8, 0, 0, 0, 0, 0]);
    sizes(&mut central);
    central.extend_from_slice(&(name.len() as u16).to_le_bytes());
    central.extend_from_slice(&[0; 8]);
    central.extend_from_slice(&(0o100755u32 << 16).to_le_bytes());
    central.extend_from_slice(&0u32.to_le_bytes());
    central.extend_from_slice(name);
    let mut end = Vec::new();
    end.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    end.extend_from_slice(&[0, 0, 0, 0, 1, 0, 1, 0]);
    end.extend_from_slice(&(central.len() as u32).to_le_bytes());
    end.extend_from_slice(&((local.len() + data.len()) as u32).to_le_bytes());
    end.extend_from_slice(&0u16.to_le_bytes());
    out.write_all(&central)?;
    out.write_all(&end)
}
