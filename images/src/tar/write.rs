//! The ustar writer: regular files only, deterministic headers (mode 0644, owner 0, time 0).

use std::io::{self, Write};

use super::{BLOCK, checksum};

/// The largest size the 11-digit octal field holds; larger sizes are written in base-256.
const MAX_OCTAL_SIZE: u64 = 0o777_7777_7777;

pub(crate) fn put_octal(h: &mut [u8], value: u64) {
    // `len - 1` octal digits, zero-filled, then NUL.
    let digits = h.len() - 1;
    let s = format!("{value:0digits$o}");
    h[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    h[digits] = 0;
}

/// A ustar header block for `name` (raw bytes, so that tests can write hostile names) with
/// `size` and `typeflag`. Names over 100 bytes are split into `prefix` and `name` at a `/`.
pub fn header_block(name: &[u8], size: u64, typeflag: u8) -> Result<[u8; 512], String> {
    let mut h = [0u8; 512];
    let (prefix, base) = if name.len() <= 100 {
        (&name[..0], name)
    } else {
        let split = name
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b == b'/' && i <= 155 && name.len() - i - 1 <= 100 && i + 1 < name.len())
            .map(|(i, _)| i)
            .next()
            .ok_or_else(|| format!("the name is {} bytes and has no '/' that splits it for ustar", name.len()))?;
        (&name[..split], &name[split + 1..])
    };
    h[..base.len()].copy_from_slice(base);
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    put_octal(&mut h[100..108], 0o644);
    put_octal(&mut h[108..116], 0);
    put_octal(&mut h[116..124], 0);
    if size <= MAX_OCTAL_SIZE {
        put_octal(&mut h[124..136], size);
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    put_octal(&mut h[136..148], 0);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    put_octal(&mut h[329..337], 0);
    put_octal(&mut h[337..345], 0);
    let sum = checksum(&h);
    put_octal(&mut h[148..155], sum);
    h[155] = b' ';
    Ok(h)
}

/// Writes a ustar archive of regular files, member by member.
#[derive(Debug)]
pub struct TarWriter<W> {
    inner: W,
    written: u64,
    pending: u64,
}

impl<W: Write> TarWriter<W> {
    /// A writer at the start of an archive.
    pub fn new(inner: W) -> Self {
        Self { inner, written: 0, pending: 0 }
    }

    /// Archive bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Starts a member of `size` bytes; its data follows through [`TarWriter::write_data`].
    pub fn begin(&mut self, name: &str, size: u64) -> io::Result<()> {
        self.raw_header(&header_block(name.as_bytes(), size, b'0').map_err(io::Error::other)?, size)
    }

    /// Writes a prepared header block (tests write hostile ones).
    pub fn raw_header(&mut self, block: &[u8; 512], size: u64) -> io::Result<()> {
        if self.pending != 0 {
            return Err(io::Error::other("the previous member's data is incomplete"));
        }
        self.inner.write_all(block)?;
        self.written += BLOCK;
        self.pending = size;
        Ok(())
    }

    /// Writes data of the current member; after its last byte the block padding follows.
    pub fn write_data(&mut self, data: &[u8]) -> io::Result<()> {
        if data.len() as u64 > self.pending {
            return Err(io::Error::other("more data than the member's declared size"));
        }
        self.inner.write_all(data)?;
        self.written += data.len() as u64;
        self.pending -= data.len() as u64;
        if self.pending == 0 {
            let pad = ((BLOCK - self.written % BLOCK) % BLOCK) as usize;
            self.inner.write_all(&[0u8; 512][..pad])?;
            self.written += pad as u64;
        }
        Ok(())
    }

    /// Writes a whole member.
    pub fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        self.begin(name, data.len() as u64)?;
        self.write_data(data)
    }

    /// Writes the end-of-archive marker and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if self.pending != 0 {
            return Err(io::Error::other("the last member's data is incomplete"));
        }
        self.inner.write_all(&[0u8; 1024])?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}
