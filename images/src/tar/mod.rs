//! Our own POSIX ustar (IEEE 1003.1-1988) reader and writer, for regular files only.
//!
//! The reader accepts exactly what a package may hold: 512-byte ustar headers with a valid
//! checksum, regular-file members (typeflag `0` or NUL) with UTF-8 names of at most 255 bytes
//! (the `prefix` field carries the part above 100 bytes), data padded with zeros to a block, and
//! the end-of-archive marker of two zero blocks, optionally followed by zero padding up to one
//! 10 KiB tar record. Links, devices, folders, FIFOs, pax and GNU extension headers are refused
//! by name. Sizes at or above 8 GiB use the base-256 size encoding that GNU tar, libarchive and
//! Go's archive/tar all read, since a model file may be larger than ustar's octal field allows.
//!
//! The reader works over [`BufRead`] so that member data can be hashed straight out of the
//! reader's buffer, without a copy.

use std::io::{self, BufRead};

use crate::error::PackageError;
use crate::path::{MANIFEST_NAME, PackagePath, SIGNATURES_NAME};

mod write;

pub use write::{TarWriter, header_block};

/// The tar block size.
pub const BLOCK: u64 = 512;
/// Zero padding accepted after the end-of-archive marker: the rest of one 20-block record.
const MAX_END_PADDING: u64 = 18 * BLOCK;

/// What a member is, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberName {
    /// `govbox-manifest.json`.
    Manifest,
    /// `govbox-manifest.sig`.
    Signatures,
    /// A payload file.
    Payload(PackagePath),
}

impl MemberName {
    /// The name as stored.
    pub fn as_str(&self) -> &str {
        match self {
            MemberName::Manifest => MANIFEST_NAME,
            MemberName::Signatures => SIGNATURES_NAME,
            MemberName::Payload(p) => p.as_str(),
        }
    }
}

/// A regular-file member header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name.
    pub name: MemberName,
    /// Its data size in bytes.
    pub size: u64,
}

/// Why reading the archive failed; turned into a [`PackageError`] once the package's label is known.
#[derive(Debug)]
pub enum TarError {
    /// The underlying reader failed.
    Io(io::Error),
    /// The archive ended inside `member` (or before the end marker).
    Truncated(String),
    /// A header is malformed.
    Malformed {
        /// `member 'x'` or `header at byte N`.
        at: String,
        /// Why.
        reason: String,
    },
    /// A member that is not a regular file.
    Unsupported {
        /// Its name, lossily decoded.
        member: String,
        /// What it is.
        kind: &'static str,
    },
    /// An unsafe or non-UTF-8 member name.
    InvalidPath {
        /// The name, lossily decoded.
        member: String,
        /// Why.
        reason: String,
    },
    /// Non-zero bytes (or too much padding) after the end-of-archive marker.
    Trailing(u64),
}

impl TarError {
    /// The error for a package called `package`.
    pub fn into_package(self, package: &str) -> PackageError {
        let package = package.to_string();
        match self {
            TarError::Io(source) if source.kind() == io::ErrorKind::UnexpectedEof => {
                PackageError::Truncated { package, member: "end of archive".into() }
            }
            TarError::Io(source) => PackageError::Read { package, source },
            TarError::Truncated(member) => PackageError::Truncated { package, member },
            TarError::Malformed { at, reason } => PackageError::MalformedTar { package, at, reason },
            TarError::Unsupported { member, kind } => {
                PackageError::UnsupportedMember { package, member, kind: kind.to_string() }
            }
            TarError::InvalidPath { member, reason } => PackageError::InvalidPath { package, member, reason },
            TarError::Trailing(offset) => {
                PackageError::TrailingData { package, member: "end of archive".into(), offset }
            }
        }
    }
}

/// Reads members one by one from a ustar stream.
#[derive(Debug)]
pub struct TarReader<R> {
    inner: R,
    offset: u64,
    remaining: u64,
    padding: u64,
    member: String,
}

fn field(h: &[u8; 512], at: usize, len: usize) -> &[u8] {
    let f = &h[at..at + len];
    let end = f.iter().position(|&b| b == 0).unwrap_or(len);
    &f[..end]
}

fn parse_octal(f: &[u8]) -> Option<u64> {
    let s = f.iter().position(|&b| b != b' ').map_or(&f[..0], |i| &f[i..]);
    let end = s.iter().position(|&b| b == 0 || b == b' ').unwrap_or(s.len());
    let (digits, rest) = s.split_at(end);
    if digits.is_empty() || !rest.iter().all(|&b| b == 0 || b == b' ') {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| match b {
        b'0'..=b'7' => acc.checked_mul(8)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

fn parse_size(f: &[u8]) -> Option<u64> {
    match f.first() {
        // Base-256: a positive number has the top bit set and the sign bit clear.
        Some(0x80) => f[1..].iter().try_fold(0u64, |acc, &b| acc.checked_mul(256).map(|a| a | u64::from(b))),
        Some(b) if b & 0x80 != 0 => None,
        _ => parse_octal(f),
    }
}

pub(crate) fn checksum(h: &[u8; 512]) -> u64 {
    h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) }).sum()
}

fn type_name(flag: u8) -> Option<&'static str> {
    Some(match flag {
        b'0' | 0 => return None,
        b'1' => "hard link",
        b'2' => "symbolic link",
        b'3' => "character device",
        b'4' => "block device",
        b'5' => "folder",
        b'6' => "FIFO",
        b'7' => "contiguous file",
        b'x' | b'g' => "pax extended header",
        b'L' | b'K' => "GNU long name",
        _ => "unknown type",
    })
}

impl<R: BufRead> TarReader<R> {
    /// A reader at the start of an archive.
    pub fn new(inner: R) -> Self {
        Self::resume(inner, 0)
    }

    /// A reader that continues at block-aligned `offset` of an archive (after a reader that
    /// stopped between members).
    pub fn resume(inner: R, offset: u64) -> Self {
        Self { inner, offset, remaining: 0, padding: 0, member: String::new() }
    }

    /// Archive bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the current member's data and padding are all read.
    pub fn between_members(&self) -> bool {
        self.remaining == 0 && self.padding == 0
    }

    /// The underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn read_block(&mut self, what: &str) -> Result<Option<[u8; 512]>, TarError> {
        let mut block = [0u8; 512];
        let mut got = 0;
        while got < block.len() {
            let buf = self.inner.fill_buf().map_err(TarError::Io)?;
            if buf.is_empty() {
                if got == 0 {
                    return Ok(None);
                }
                return Err(TarError::Truncated(what.to_string()));
            }
            let n = buf.len().min(block.len() - got);
            block[got..got + n].copy_from_slice(&buf[..n]);
            self.inner.consume(n);
            got += n;
        }
        self.offset += BLOCK;
        Ok(Some(block))
    }

    /// The next member's header, or `None` at a well-formed end of archive.
    ///
    /// Any unread data of the current member is skipped first.
    pub fn next_member(&mut self) -> Result<Option<Member>, TarError> {
        self.read_data(|_| Ok::<(), TarError>(()))?;
        let at = self.offset;
        let Some(h) = self.read_block("end of archive")? else {
            return Err(TarError::Truncated("end of archive".into()));
        };
        if h.iter().all(|&b| b == 0) {
            self.read_end()?;
            return Ok(None);
        }
        let malformed =
            |reason: &str| TarError::Malformed { at: format!("header at byte {at}"), reason: reason.into() };
        let stored = parse_octal(&h[148..156]).ok_or_else(|| malformed("the checksum field is not octal"))?;
        if stored != checksum(&h) {
            return Err(malformed("header checksum mismatch"));
        }
        match (&h[257..263], &h[263..265]) {
            (b"ustar\0", b"00") => {}
            (b"ustar ", b" \0") => return Err(malformed("GNU tar header; packages are POSIX ustar")),
            _ => return Err(malformed("no POSIX ustar magic")),
        }
        let (prefix, base) = (field(&h, 345, 155), field(&h, 0, 100));
        let raw: Vec<u8> = if prefix.is_empty() { base.to_vec() } else { [prefix, b"/", base].concat() };
        let lossy = String::from_utf8_lossy(&raw).into_owned();
        if let Some(kind) = type_name(h[156]) {
            return Err(TarError::Unsupported { member: lossy, kind });
        }
        let size = parse_size(&h[124..136]).ok_or_else(|| TarError::Malformed {
            at: format!("member '{lossy}'"),
            reason: "the size field is not a number".into(),
        })?;
        let name = match raw.as_slice() {
            b if b == MANIFEST_NAME.as_bytes() => MemberName::Manifest,
            b if b == SIGNATURES_NAME.as_bytes() => MemberName::Signatures,
            b => MemberName::Payload(
                PackagePath::from_bytes(b).map_err(|reason| TarError::InvalidPath { member: lossy.clone(), reason })?,
            ),
        };
        self.remaining = size;
        self.padding = (BLOCK - size % BLOCK) % BLOCK;
        self.member = lossy;
        Ok(Some(Member { name, size }))
    }

    /// After the first zero block: the second one, then nothing but a record's zero padding.
    fn read_end(&mut self) -> Result<(), TarError> {
        match self.read_block("end of archive")? {
            Some(b) if b.iter().all(|&x| x == 0) => {}
            Some(_) => {
                return Err(TarError::Malformed {
                    at: format!("header at byte {}", self.offset - BLOCK),
                    reason: "a single zero block inside the archive".into(),
                });
            }
            None => return Err(TarError::Truncated("end of archive".into())),
        }
        let end = self.offset;
        loop {
            let buf = self.inner.fill_buf().map_err(TarError::Io)?;
            if buf.is_empty() {
                return Ok(());
            }
            if let Some(i) = buf.iter().position(|&b| b != 0) {
                return Err(TarError::Trailing(self.offset + i as u64));
            }
            let n = buf.len();
            self.inner.consume(n);
            self.offset += n as u64;
            if self.offset - end > MAX_END_PADDING {
                return Err(TarError::Trailing(end + MAX_END_PADDING));
            }
        }
    }

    /// Streams the rest of the current member's data to `f`, in chunks borrowed from the
    /// reader's buffer, then checks its zero padding.
    pub fn read_data<E: From<TarError>>(&mut self, mut f: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        while self.remaining > 0 {
            let buf = self.inner.fill_buf().map_err(TarError::Io)?;
            if buf.is_empty() {
                return Err(TarError::Truncated(self.member.clone()).into());
            }
            let n = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
            f(&buf[..n])?;
            self.inner.consume(n);
            self.remaining -= n as u64;
            self.offset += n as u64;
        }
        while self.padding > 0 {
            let buf = self.inner.fill_buf().map_err(TarError::Io)?;
            if buf.is_empty() {
                return Err(TarError::Truncated(self.member.clone()).into());
            }
            let n = usize::try_from(self.padding).map_or(buf.len(), |p| p.min(buf.len()));
            if buf[..n].iter().any(|&b| b != 0) {
                return Err(TarError::Malformed {
                    at: format!("member '{}'", self.member),
                    reason: "non-zero bytes in the padding after the data".into(),
                }
                .into());
            }
            self.inner.consume(n);
            self.padding -= n as u64;
            self.offset += n as u64;
        }
        Ok(())
    }

    /// Reads the whole current member (callers cap its size first).
    pub fn read_to_vec(&mut self) -> Result<Vec<u8>, TarError> {
        let mut out = Vec::with_capacity(usize::try_from(self.remaining).unwrap_or(0));
        self.read_data(|c| {
            out.extend_from_slice(c);
            Ok::<(), TarError>(())
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::write::put_octal;
    use super::*;

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new());
        for (n, d) in members {
            w.append(n, d).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, TarError> {
        let mut r = TarReader::new(bytes);
        let mut out = Vec::new();
        while let Some(m) = r.next_member()? {
            out.push((m.name.as_str().to_string(), r.read_to_vec()?));
        }
        Ok(out)
    }

    #[test]
    fn round_trips_members_and_long_names() {
        let long = format!("{}/{}", "d".repeat(150), "f".repeat(100));
        let bytes = archive(&[("a.txt", b"hello"), ("empty", b""), (&long, &[7u8; 1000])]);
        assert_eq!(bytes.len() % 512, 0);
        let got = read_all(&bytes).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], ("a.txt".to_string(), b"hello".to_vec()));
        assert_eq!(got[1].1.len(), 0);
        assert_eq!(got[2].0, long);
        // Record padding after the end marker is accepted; anything else is not.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0u8; 8192]);
        assert!(read_all(&padded).is_ok());
        padded.push(1);
        assert!(matches!(read_all(&padded), Err(TarError::Trailing(_))));
        let mut much = bytes.clone();
        much.extend_from_slice(&vec![0u8; 20 * 512]);
        assert!(matches!(read_all(&much), Err(TarError::Trailing(_))));
    }

    #[test]
    fn base256_size_round_trips() {
        let h = header_block(b"big", 9 << 30, b'0').unwrap();
        assert_eq!(parse_size(&h[124..136]), Some(9 << 30));
        let h = header_block(b"small", 12345, b'0').unwrap();
        assert_eq!(parse_size(&h[124..136]), Some(12345));
    }

    #[test]
    fn refuses_non_regular_members_by_name() {
        for (flag, kind) in [(b'1', "hard link"), (b'2', "symbolic link"), (b'3', "character device"), (b'5', "folder")]
        {
            let mut w = TarWriter::new(Vec::new());
            w.raw_header(&header_block(b"evil", 0, flag).unwrap(), 0).unwrap();
            let bytes = w.finish().unwrap();
            match read_all(&bytes) {
                Err(TarError::Unsupported { member, kind: k }) => assert_eq!((member.as_str(), k), ("evil", kind)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn refuses_bad_checksum_truncation_bad_names_and_gnu_headers() {
        let bytes = archive(&[("a", b"data")]);
        let mut bad = bytes.clone();
        bad[0] = b'b';
        assert!(matches!(read_all(&bad), Err(TarError::Malformed { .. })));
        for cut in [100, 512, 515, 1024, bytes.len() - 1] {
            assert!(read_all(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut w = TarWriter::new(Vec::new());
        w.raw_header(&header_block(b"../x", 0, b'0').unwrap(), 0).unwrap();
        assert!(matches!(read_all(&w.finish().unwrap()), Err(TarError::InvalidPath { .. })));
        let mut gnu = header_block(b"a", 0, b'0').unwrap();
        gnu[257..265].copy_from_slice(b"ustar  \0");
        gnu[148..156].fill(b' ');
        let sum = checksum(&gnu);
        put_octal(&mut gnu[148..155], sum);
        let mut w = TarWriter::new(Vec::new());
        w.raw_header(&gnu, 0).unwrap();
        let err = read_all(&w.finish().unwrap()).unwrap_err();
        assert!(matches!(&err, TarError::Malformed { reason, .. } if reason.contains("GNU")), "{err:?}");
    }

    #[test]
    fn reads_archives_written_by_system_tar_in_ustar_format() {
        let Ok(out) = std::process::Command::new("tar").arg("--version").output() else { return };
        if !out.status.success() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.bin"), vec![3u8; 700]).unwrap();
        let tarball = dir.path().join("t.tar");
        let ok = std::process::Command::new("tar")
            .args(["--format=ustar", "-cf"])
            .arg(&tarball)
            .arg("-C")
            .arg(dir.path())
            .arg("x.bin")
            .status()
            .unwrap();
        assert!(ok.success());
        let got = read_all(&std::fs::read(&tarball).unwrap()).unwrap();
        assert_eq!(got, vec![("x.bin".to_string(), vec![3u8; 700])]);
    }
}
