//! A background thread that writes and fsyncs extracted files, so that writing a member
//! overlaps hashing it: import then costs about what the slower of the two costs.
//!
//! A closed file is not fsynced at once but kept open until [`FileWriter::finish`] (up to
//! [`MAX_UNSYNCED`] of them), so that the kernel writes it back while the next file is written,
//! instead of the pipeline stalling on every fsync.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::error::{PackageError, Result};

/// Closed files kept open for their final fsync; beyond this the oldest is synced at once.
const MAX_UNSYNCED: usize = 64;

enum Job {
    Create(PathBuf),
    Data(Vec<u8>),
    Close,
}

/// Writes files in order on its own thread; see the module documentation.
pub(crate) struct FileWriter {
    jobs: Option<SyncSender<Job>>,
    free: Receiver<Vec<u8>>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl FileWriter {
    /// A writer with `buffers` chunk buffers of `chunk` bytes in flight at most.
    pub(crate) fn spawn(buffers: usize, chunk: usize) -> Self {
        let (jobs, rx) = sync_channel::<Job>(buffers + 2);
        let (free_tx, free) = sync_channel::<Vec<u8>>(buffers);
        for _ in 0..buffers {
            // The channel holds `buffers`, so these never block and never fail.
            let _ = free_tx.try_send(Vec::with_capacity(chunk));
        }
        let handle = std::thread::spawn(move || {
            let mut current: Option<(File, PathBuf)> = None;
            let mut unsynced: std::collections::VecDeque<(File, PathBuf)> = Default::default();
            let sync = |(f, path): (File, PathBuf)| f.sync_all().map_err(|e| PackageError::io("syncing", &path, e));
            for job in rx {
                match job {
                    Job::Create(path) => {
                        let f = OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o644)
                            .open(&path)
                            .map_err(|e| PackageError::io("creating", &path, e))?;
                        current = Some((f, path));
                    }
                    Job::Data(buf) => {
                        if let Some((f, path)) = &mut current {
                            f.write_all(&buf).map_err(|e| PackageError::io("writing", path.as_path(), e))?;
                        }
                        let _ = free_tx.try_send(buf);
                    }
                    Job::Close => {
                        unsynced.extend(current.take());
                        if unsynced.len() > MAX_UNSYNCED {
                            unsynced.pop_front().map(sync).transpose()?;
                        }
                    }
                }
            }
            unsynced.into_iter().try_for_each(sync)
        });
        Self { jobs: Some(jobs), free, handle: Some(handle) }
    }

    /// The writer thread's error, once it has stopped early.
    fn failure(&mut self) -> PackageError {
        self.jobs = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            _ => PackageError::io("writing", "staging folder", std::io::Error::other("the writer thread stopped")),
        }
    }

    fn send(&mut self, job: Job) -> Result<()> {
        match &self.jobs {
            Some(tx) if tx.send(job).is_ok() => Ok(()),
            _ => Err(self.failure()),
        }
    }

    /// Starts a new file (created with mode 0644; it must not exist).
    pub(crate) fn create(&mut self, path: PathBuf) -> Result<()> {
        self.send(Job::Create(path))
    }

    /// Queues a copy of `data` for the current file.
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<()> {
        let Ok(mut buf) = self.free.recv() else { return Err(self.failure()) };
        buf.clear();
        buf.extend_from_slice(data);
        self.send(Job::Data(buf))
    }

    /// Closes the current file (it is fsynced by [`FileWriter::finish`] at the latest).
    pub(crate) fn close(&mut self) -> Result<()> {
        self.send(Job::Close)
    }

    /// Waits until everything queued is written and every file is fsynced.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.jobs = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(self.failure()),
        }
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        // Stop and wait, so that nothing is written into a folder after it is removed.
        self.jobs = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn writes_in_order_and_reports_the_first_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = FileWriter::spawn(2, 8);
        w.create(dir.path().join("a")).unwrap();
        for chunk in [&b"hello "[..], b"world", b"!"] {
            w.write(chunk).unwrap();
        }
        w.close().unwrap();
        w.finish().unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"hello world!");

        let mut w = FileWriter::spawn(1, 8);
        let missing = dir.path().join("no/such/folder/b");
        // The failure surfaces on a later call or at the latest in `finish`.
        let later = w.create(missing).and_then(|()| w.write(b"x")).and_then(|()| w.write(b"y"));
        let err = match later {
            Err(e) => e,
            Ok(()) => w.finish().unwrap_err(),
        };
        assert!(err.to_string().contains("no/such/folder/b"), "{err}");
    }
}
