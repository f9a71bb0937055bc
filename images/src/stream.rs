//! The two ways verification reads a package.
//!
//! [`BlockReader`] reads the manifest and signature members without reading a byte past them:
//! it never reads across a 512-byte block boundary, so when the signature member is done nothing
//! of the payload has been read. [`Prefetch`] then reads the payload in large chunks on its own
//! thread while the caller hashes the previous chunk, so that reading and hashing overlap and
//! every byte is read exactly once.

use std::io::{self, BufRead, Read};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::Scope;

use crate::tar::BLOCK;

/// A [`BufRead`] that never reads past the end of the current 512-byte block.
#[derive(Debug)]
pub(crate) struct BlockReader<R> {
    inner: R,
    buf: [u8; BLOCK as usize],
    pos: usize,
    len: usize,
    read: u64,
}

impl<R: Read> BlockReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self { inner, buf: [0; BLOCK as usize], pos: 0, len: 0, read: 0 }
    }

    /// The inner reader, when every byte read from it has been consumed.
    pub(crate) fn into_inner(self) -> Option<R> {
        (self.pos == self.len).then_some(self.inner)
    }
}

impl<R: Read> Read for BlockReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let buf = self.fill_buf()?;
            let n = buf.len().min(out.len());
            out[..n].copy_from_slice(&buf[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for BlockReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.len {
            let want = (BLOCK - self.read % BLOCK) as usize;
            let n = loop {
                match self.inner.read(&mut self.buf[..want]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => break r?,
                }
            };
            self.read += n as u64;
            self.pos = 0;
            self.len = n;
        }
        Ok(&self.buf[self.pos..self.len])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.len);
    }
}

/// Chunks read ahead: enough to keep the reader busy while one chunk is hashed.
const DEPTH: usize = 3;

/// A [`BufRead`] fed by a reader thread with chunks of `chunk` bytes.
pub(crate) struct Prefetch {
    rx: Receiver<io::Result<Vec<u8>>>,
    back: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    failed: Option<io::Error>,
}

impl Prefetch {
    /// Starts reading `inner` on a thread of `scope`.
    pub(crate) fn spawn<'scope, 'env, R: Read + Send + 'scope>(
        scope: &'scope Scope<'scope, 'env>,
        mut inner: R,
        chunk: usize,
    ) -> Self {
        let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(DEPTH);
        let (back, free) = sync_channel::<Vec<u8>>(DEPTH + 2);
        for _ in 0..DEPTH + 1 {
            // The channel holds DEPTH + 2, so these never block and never fail.
            let _ = back.try_send(Vec::with_capacity(chunk));
        }
        scope.spawn(move || {
            // Each loop takes a free buffer, fills it completely (or to the end of the input)
            // and hands it over. A dropped consumer ends the loop through a failed recv or send.
            while let Ok(mut buf) = free.recv() {
                buf.clear();
                // `read_to_end` reads into the spare capacity without zero-filling it first.
                let result = (&mut inner).take(chunk as u64).read_to_end(&mut buf);
                let done = buf.len() < chunk;
                match result {
                    Ok(_) if tx.send(Ok(buf)).is_ok() && !done => {}
                    Ok(_) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
        });
        Self { rx, back, cur: Vec::new(), pos: 0, failed: None }
    }
}

impl BufRead for Prefetch {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Some(e) = &self.failed {
            return Err(io::Error::new(e.kind(), e.to_string()));
        }
        if self.pos == self.cur.len() {
            let next = match self.rx.recv() {
                Ok(Ok(buf)) => buf,
                Ok(Err(e)) => {
                    let err = io::Error::new(e.kind(), e.to_string());
                    self.failed = Some(e);
                    return Err(err);
                }
                // The reader thread has finished: end of input.
                Err(_) => Vec::new(),
            };
            let old = std::mem::replace(&mut self.cur, next);
            self.pos = 0;
            if old.capacity() > 0 {
                let _ = self.back.try_send(old);
            }
        }
        Ok(&self.cur[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.cur.len());
    }
}

impl Read for Prefetch {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let buf = self.fill_buf()?;
            let n = buf.len().min(out.len());
            out[..n].copy_from_slice(&buf[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn block_reader_stops_at_block_boundaries() {
        let data: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
        let mut src = &data[..];
        let mut r = BlockReader::new(&mut src);
        let mut head = [0u8; 700];
        r.read_exact(&mut head).unwrap();
        let mut pad = [0u8; 324];
        r.read_exact(&mut pad).unwrap();
        assert!(r.into_inner().is_some());
        // Exactly two blocks were taken from the source.
        assert_eq!(src.len(), 2000 - 1024);
    }

    #[test]
    fn prefetch_yields_every_byte_once_in_order() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let got = std::thread::scope(|s| {
            let mut p = Prefetch::spawn(s, &data[..], 4096);
            let mut out = Vec::new();
            p.read_to_end(&mut out).unwrap();
            out
        });
        assert_eq!(got, data);
        // A consumer that stops early does not hang the scope.
        std::thread::scope(|s| {
            let mut p = Prefetch::spawn(s, &data[..], 1024);
            let mut one = [0u8; 10];
            p.read_exact(&mut one).unwrap();
        });
    }
}
