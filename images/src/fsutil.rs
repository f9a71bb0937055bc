//! File helpers: atomic replacement, folder fsync, capped reads, random names, parallel hashing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use govbox_provisioning::HashAlgorithm;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{PackageError, Result};
use crate::signature::hex;

/// Read size when hashing files.
const HASH_CHUNK: usize = 4 << 20;

/// `n` random bytes as hex, for temporary names.
pub(crate) fn random_hex(n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| PackageError::io("making a temporary name", "", io::Error::other("the system RNG failed")))?;
    Ok(hex(&b))
}

/// Makes renames and creations in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| PackageError::io("opening folder to sync", dir, e))?;
    match d.sync_all() {
        // Some file systems cannot fsync a folder; that is not our failure to report.
        Err(e) if e.kind() == io::ErrorKind::InvalidInput || e.kind() == io::ErrorKind::Unsupported => Ok(()),
        r => r.map_err(|e| PackageError::io("syncing folder", dir, e)),
    }
}

/// A file written under a temporary name beside `dest` and renamed over it on
/// [`AtomicFile::commit`]; dropped uncommitted, it is removed.
#[derive(Debug)]
pub(crate) struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    pub(crate) fn create(dest: &Path, mode: u32) -> Result<Self> {
        let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", random_hex(8)?));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| PackageError::io("creating temporary file", &tmp, e))?;
        Ok(Self { tmp, dest: dest.to_path_buf(), file: Some(file) })
    }

    pub(crate) fn file(&mut self) -> Result<&mut File> {
        let tmp = &self.tmp;
        self.file.as_mut().ok_or_else(|| PackageError::io("writing", tmp, io::Error::other("already committed")))
    }

    pub(crate) fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// fsync, rename over the destination, fsync the folder.
    pub(crate) fn commit(mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            f.sync_all().map_err(|e| PackageError::io("syncing", &self.tmp, e))?;
        }
        fs::rename(&self.tmp, &self.dest).map_err(|e| PackageError::io("renaming into place", &self.dest, e))?;
        let dir = self.dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_dir(dir)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Replaces `dest` with `bytes` atomically.
pub(crate) fn write_atomic(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = AtomicFile::create(dest, mode)?;
    let tmp = f.tmp_path().to_path_buf();
    f.file()?.write_all(bytes).map_err(|e| PackageError::io("writing", &tmp, e))?;
    f.commit()
}

/// Reads a whole file of at most `limit` bytes.
pub(crate) fn read_capped(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(|e| PackageError::io(format!("reading {what}"), path, e))?;
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf).map_err(|e| PackageError::io(format!("reading {what}"), path, e))?;
    if buf.len() as u64 > limit {
        return Err(PackageError::CorruptStore {
            path: path.to_path_buf(),
            reason: format!("{what} is larger than its {limit}-byte limit"),
        });
    }
    Ok(buf)
}

/// Size and hex digest (SHA-256 or SM3, the manifest's `hash`) of a file.
pub(crate) type FileDigest = (u64, String);

/// A byte range of one of the files given to [`hash_pieces`]: `len` bytes from `offset`, or
/// everything from `offset` to the end of the file when `len` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Index into the files.
    pub(crate) file: usize,
    /// First byte.
    pub(crate) offset: u64,
    /// Bytes, or `None` for the rest of the file.
    pub(crate) len: Option<u64>,
}

impl Piece {
    /// The whole of file `file`.
    pub(crate) fn whole(file: usize) -> Self {
        Piece { file, offset: 0, len: None }
    }

    /// File `file` of `size` bytes in pieces of `chunk` bytes; the last runs to the end of the
    /// file, so that bytes beyond `size` change its digest and its length.
    pub(crate) fn chunks(file: usize, size: u64, chunk: u64) -> impl Iterator<Item = Piece> {
        let n = size.div_ceil(chunk.max(1));
        (0..n).map(move |i| Piece { file, offset: i * chunk, len: (i + 1 < n).then_some(chunk) })
    }
}

/// Hashes `files` on up to `threads` threads, calling `progress(done, total)` on this thread,
/// where `total` is the sum of `expected_total`. Results come back in input order.
pub(crate) fn hash_files(
    hash: HashAlgorithm,
    files: &[PathBuf],
    expected_total: u64,
    threads: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Vec<io::Result<FileDigest>> {
    let pieces: Vec<Piece> = (0..files.len()).map(Piece::whole).collect();
    hash_pieces(hash, files, &pieces, expected_total, threads, progress)
}

/// Hashes `pieces` of `files` on up to `threads` threads, each taking the next piece as it
/// finishes one and reading it through a handle of its own (so that the kernel's read-ahead
/// follows each reader), and calls `progress(done, expected_total)` on this thread. Each result
/// is the bytes read (fewer than asked where the file ends early) and their digest, in input
/// order.
pub(crate) fn hash_pieces(
    hash: HashAlgorithm,
    files: &[PathBuf],
    pieces: &[Piece],
    expected_total: u64,
    threads: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Vec<io::Result<FileDigest>> {
    let next = AtomicUsize::new(0);
    let workers = threads.clamp(1, pieces.len().max(1));
    let (tx, rx) = mpsc::channel::<u64>();
    let mut results: Vec<Option<io::Result<FileDigest>>> = (0..pieces.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let tx = tx.clone();
                let next = &next;
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut buf = vec![0u8; HASH_CHUNK];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(piece) = pieces.get(i) else { break };
                        let r = match files.get(piece.file) {
                            Some(path) => hash_piece(hash, path, *piece, &mut buf, &tx),
                            None => Err(io::Error::other("internal: a piece names no file")),
                        };
                        out.push((i, r));
                    }
                    out
                })
            })
            .collect();
        drop(tx);
        let mut done = 0;
        progress(0, expected_total);
        for n in rx {
            done += n;
            progress(done, expected_total);
        }
        for h in handles {
            // A worker only panics on a bug; its pieces then count as failed reads.
            for (i, r) in h.join().unwrap_or_default() {
                results[i] = Some(r);
            }
        }
    });
    results.into_iter().map(|r| r.unwrap_or_else(|| Err(io::Error::other("the hashing thread failed")))).collect()
}

fn hash_piece(
    hash: HashAlgorithm,
    path: &Path,
    piece: Piece,
    buf: &mut [u8],
    tx: &mpsc::Sender<u64>,
) -> io::Result<FileDigest> {
    let mut f = File::open(path)?;
    if piece.offset > 0 {
        f.seek(SeekFrom::Start(piece.offset))?;
    }
    let mut ctx = hash.hasher();
    let mut size = 0u64;
    loop {
        let want =
            piece.len.map_or(buf.len(), |len| usize::try_from(len - size).map_or(buf.len(), |l| l.min(buf.len())));
        if want == 0 {
            break;
        }
        let n = match f.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        ctx.update(&buf[..n]);
        size += n as u64;
        let _ = tx.send(n as u64);
    }
    Ok((size, hex(&ctx.finish())))
}

/// Worker threads for hashing: the cores, at most 8 (beyond that the disk is the limit).
pub(crate) fn hash_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hash_files_matches_ring_and_reports_progress() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for (i, len) in [0usize, 1, 5_000_000].iter().enumerate() {
            let p = dir.path().join(format!("f{i}"));
            fs::write(&p, vec![i as u8; *len]).unwrap();
            paths.push(p);
        }
        paths.push(dir.path().join("missing"));
        let mut last = (0, 0);
        let r = hash_files(HashAlgorithm::Sha256, &paths, 5_000_001, 3, &mut |d, t| last = (d, t));
        assert_eq!(last, (5_000_001, 5_000_001));
        let want = hex(ring::digest::digest(&ring::digest::SHA256, &vec![2u8; 5_000_000]).as_ref());
        assert_eq!(r[2].as_ref().unwrap(), &(5_000_000, want));
        assert_eq!(r[0].as_ref().unwrap().0, 0);
        assert!(r[3].is_err());
    }

    #[test]
    fn pieces_cover_the_file_and_the_last_runs_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let bytes: Vec<u8> = (0..10_000_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&p, &bytes).unwrap();
        let chunk = 3_000_000;
        let pieces: Vec<Piece> = Piece::chunks(0, 9_500_000, chunk).collect();
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces[3], Piece { file: 0, offset: 9_000_000, len: None });
        let mut last = (0, 0);
        let r = hash_pieces(HashAlgorithm::Sm3, std::slice::from_ref(&p), &pieces, 10_000_000, 2, &mut |d, t| {
            last = (d, t)
        });
        assert_eq!(last, (10_000_000, 10_000_000));
        let sm3 = |b: &[u8]| hex(&HashAlgorithm::Sm3.digest(b));
        for (i, r) in r.iter().enumerate() {
            let from = i * chunk as usize;
            let to = if i == 3 { bytes.len() } else { from + chunk as usize };
            assert_eq!(r.as_ref().unwrap(), &((to - from) as u64, sm3(&bytes[from..to])), "piece {i}");
        }
    }

    #[test]
    fn atomic_file_is_removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        {
            let mut f = AtomicFile::create(&dest, 0o644).unwrap();
            f.file().unwrap().write_all(b"x").unwrap();
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomic(&dest, b"y", 0o644).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"y");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
