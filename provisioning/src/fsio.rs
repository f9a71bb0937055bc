//! Small helpers shared by the modules: file writes with fixed modes, capped reads, hex, randomness.
//!
//! Every file this crate writes goes through [`write_file`]: the bytes land in a temporary file in
//! the same folder, created with its final mode (so a private key is never readable by others, not
//! even for a moment, whatever the umask), fsynced, and then moved into place in one step. A reader
//! therefore sees the old file or the new one, never half of one.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{ProvisionError, Result};

/// Mode of private key files and secrets.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of public keys, certificates and the trust root.
pub const PUBLIC_FILE_MODE: u32 = 0o644;
/// Mode of every folder of the state layout.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// What [`write_file`] does when the destination already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Fail with [`ProvisionError::AlreadyExists`]; the check and the write are one atomic step.
    Refuse,
    /// Replace the file atomically.
    Replace,
}

/// Writes `bytes` to `path` with `mode`, atomically; see the module documentation.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32, overwrite: Overwrite, what: &str) -> Result<()> {
    write_file_owned(path, bytes, mode, overwrite, None, what)
}

/// As [`write_file`], and the new file belongs to `owner` (uid, gid) before it appears under its
/// name: `govbox tls renew` run as root keeps the files readable by the govbox user that owns them.
pub fn write_file_owned(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    overwrite: Overwrite,
    owner: Option<(u32, u32)>,
    what: &str,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if overwrite == Overwrite::Refuse && path.symlink_metadata().is_ok() {
        return Err(ProvisionError::AlreadyExists { what: what.to_string(), path: path.to_path_buf() });
    }
    let suffix = hex(&random_bytes::<8>("a temporary file name")?);
    let tmp = dir.join(format!(".{file_name}.{suffix}.tmp"));
    let result = write_tmp(&tmp, bytes, mode, owner, what).and_then(|()| publish(&tmp, path, overwrite, what));
    // The temporary name is gone after a successful rename; after a link, or any failure, remove it.
    let _ = fs::remove_file(&tmp);
    result?;
    sync_dir(dir);
    Ok(())
}

fn write_tmp(tmp: &Path, bytes: &[u8], mode: u32, owner: Option<(u32, u32)>, what: &str) -> Result<()> {
    let action = format!("writing {what} to temporary file");
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(|e| ProvisionError::io(&action, tmp, e))?;
    // The umask may have cleared bits of `mode` (e.g. 0644 under umask 077); set it exactly.
    f.set_permissions(Permissions::from_mode(mode)).map_err(|e| ProvisionError::io(&action, tmp, e))?;
    if let Some((uid, gid)) = owner {
        let meta = f.metadata().map_err(|e| ProvisionError::io(&action, tmp, e))?;
        if (meta.uid(), meta.gid()) != (uid, gid) {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(|e| ProvisionError::io(&action, tmp, e))?;
        }
    }
    f.write_all(bytes).map_err(|e| ProvisionError::io(&action, tmp, e))?;
    f.sync_all().map_err(|e| ProvisionError::io(&action, tmp, e))
}

fn publish(tmp: &Path, path: &Path, overwrite: Overwrite, what: &str) -> Result<()> {
    let action = format!("writing {what}");
    match overwrite {
        Overwrite::Replace => fs::rename(tmp, path).map_err(|e| ProvisionError::io(action, path, e)),
        // A hard link fails if the destination exists, which makes "refuse to overwrite" race-free.
        Overwrite::Refuse => match fs::hard_link(tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                Err(ProvisionError::AlreadyExists { what: what.to_string(), path: path.to_path_buf() })
            }
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                // A file system without hard links: fall back to check-then-rename.
                if path.symlink_metadata().is_ok() {
                    return Err(ProvisionError::AlreadyExists { what: what.to_string(), path: path.to_path_buf() });
                }
                fs::rename(tmp, path).map_err(|e| ProvisionError::io(action, path, e))
            }
            Err(e) => Err(ProvisionError::io(action, path, e)),
        },
    }
}

/// Makes a rename durable. Best effort: some file systems refuse to fsync a folder.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes `path` (a file or a link, never followed) if it exists; `what` names it in errors.
pub fn remove_if_exists(path: &Path, what: &str) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                sync_dir(dir);
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ProvisionError::io(format!("removing {what}"), path, e)),
    }
}

/// Creates `dir` (and missing parents) and sets its mode to exactly `mode`.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| ProvisionError::io("creating folder", dir, e))?;
    fs::set_permissions(dir, Permissions::from_mode(mode)).map_err(|e| ProvisionError::io("setting mode of", dir, e))
}

/// Creates `dir` with `mode` if it is missing; an existing folder keeps its mode and owner, which
/// packaging (tmpfiles.d) may have set on purpose.
pub fn ensure_dir_keep_mode(dir: &Path, mode: u32) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(mode).create(dir).map_err(|e| ProvisionError::io("creating folder", dir, e))
}

/// Reads a whole file, refusing one larger than `limit` bytes.
pub fn read_capped(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(|e| ProvisionError::io(format!("reading {what}"), path, e))?;
    read_open_capped(f, path, limit, what)
}

/// Reads the whole of the open file `f` (named `path` in errors), refusing more than `limit` bytes.
fn read_open_capped(f: File, path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let action = format!("reading {what}");
    let size = f.metadata().map_err(|e| ProvisionError::io(&action, path, e))?.len();
    if size > limit {
        return Err(ProvisionError::TooLarge { what: what.to_string(), path: path.to_path_buf(), size, limit });
    }
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // `take` also caps a file that grows while it is read.
    f.take(limit + 1).read_to_end(&mut buf).map_err(|e| ProvisionError::io(&action, path, e))?;
    if buf.len() as u64 > limit {
        return Err(ProvisionError::TooLarge {
            what: what.to_string(),
            path: path.to_path_buf(),
            size: buf.len() as u64,
            limit,
        });
    }
    Ok(buf)
}

/// Reads a whole file that another account owns (the service's state folder, read by root)
/// without following any symlink on the way: each component of the absolute path is opened with
/// `O_NOFOLLOW` from the one before it (`openat`), so a link planted anywhere in the path fails
/// with `ELOOP` instead of leading root elsewhere. (The same guarantee as `openat2`'s
/// `RESOLVE_NO_SYMLINKS`, on kernels before 5.6 too.) The file must be a regular file that only
/// its owner may write; returns its bytes and its owner's uid for the caller to check.
pub fn read_unfollowed(path: &Path, limit: u64, what: &str) -> Result<(Vec<u8>, u32)> {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::Mode;
    use std::path::Component;
    let action = format!("reading {what} without following links");
    let err = |e: std::io::Error| ProvisionError::io(&action, path, e);
    let abs = std::path::absolute(path).map_err(err)?;
    let mut dir: std::os::fd::OwnedFd = File::open("/").map_err(err)?.into();
    let mut comps: Vec<_> = abs.components().filter(|c| !matches!(c, Component::RootDir | Component::CurDir)).collect();
    let Some(Component::Normal(leaf)) = comps.pop() else {
        return Err(err(std::io::Error::new(ErrorKind::InvalidInput, "not a file path")));
    };
    let nofollow = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    for c in comps {
        let Component::Normal(name) = c else {
            return Err(err(std::io::Error::new(ErrorKind::InvalidInput, "'..' is not allowed in the path")));
        };
        dir = openat(&dir, name, nofollow | OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty())
            .map_err(|e| err(e.into()))?;
    }
    let fd =
        openat(&dir, leaf, nofollow | OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()).map_err(|e| err(e.into()))?;
    let f = File::from(fd);
    let meta = f.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::new(ErrorKind::InvalidInput, "not a regular file")));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(err(std::io::Error::new(ErrorKind::PermissionDenied, "writable by other accounts than its owner")));
    }
    let buf = read_open_capped(f, path, limit, what)?;
    Ok((buf, meta.uid()))
}

/// Reads a whole UTF-8 text file, refusing one larger than `limit` bytes.
pub fn read_text_capped(path: &Path, limit: u64, what: &str) -> Result<String> {
    let bytes = read_capped(path, limit, what)?;
    String::from_utf8(bytes).map_err(|_| {
        ProvisionError::io(
            format!("reading {what}"),
            path,
            std::io::Error::new(ErrorKind::InvalidData, "the file is not UTF-8 text"),
        )
    })
}

/// `N` bytes from the operating system's CSPRNG (ring's `SystemRandom`).
pub fn random_bytes<const N: usize>(what: &str) -> Result<[u8; N]> {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out).map_err(|_| ProvisionError::Rng { what: what.to_string() })?;
    Ok(out)
}

/// The letters a hex decoder accepts. Every caller says which, so that a second spelling of the
/// same bytes is accepted only where it is harmless.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HexCase {
    /// `0-9a-f` only: the one spelling govbox writes ([`hex`]). For text that is signed or
    /// compared as written (signatures, log hashes, quotes), where an upper-case letter would be
    /// a second spelling that an edit could hide behind.
    Lower,
    /// `0-9a-fA-F`: what an operator may type or paste (a fingerprint, a nonce, a test vector).
    Either,
}

/// Lower-case hex: the spelling every govbox format writes.
pub fn hex(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

/// Decodes hex of exactly `N` bytes (`2 * N` digits) in the letters `case` allows.
pub fn unhex<const N: usize>(s: &str, case: HexCase) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    decode_into(s, case, &mut out)?;
    Some(out)
}

/// Decodes hex of any even length in the letters `case` allows; the caller caps the length first.
pub fn unhex_vec(s: &str, case: HexCase) -> Option<Vec<u8>> {
    let mut out = vec![0u8; s.len() / 2];
    decode_into(s, case, &mut out)?;
    Some(out)
}

/// base16ct's decoders: constant-time in the digits, refusing an odd length, a sign, white space
/// or any other byte.
fn decode_into(s: &str, case: HexCase, out: &mut [u8]) -> Option<()> {
    let decoded = match case {
        HexCase::Lower => base16ct::lower::decode(s, out),
        HexCase::Either => base16ct::mixed::decode(s, out),
    };
    decoded.ok().map(|_| ())
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Whether `e` is sled's refusal to open a database whose file lock another handle holds.
pub fn is_sled_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Opens the sled database `config` describes. sled releases its file lock from a background
/// thread a moment after the last handle of a previous opener (another process that just
/// exited, or this one) goes away, so a lock held only briefly is waited for, up to `wait`; after
/// that the lock error is returned ([`is_sled_lock_error`]).
pub fn open_sled(config: &sled::Config, wait: std::time::Duration) -> std::result::Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match config.open() {
            Err(e) if is_sled_lock_error(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn hex_round_trips() {
        let b = [0x00, 0x7f, 0x80, 0xff];
        assert_eq!(hex(&b), "007f80ff");
        assert_eq!(hex(&[]), "");
        for case in [HexCase::Lower, HexCase::Either] {
            assert_eq!(unhex::<4>("007f80ff", case), Some(b));
            assert_eq!(unhex_vec("007f80ff", case), Some(b.to_vec()));
            assert_eq!(unhex_vec("", case), Some(vec![]));
            for bad in ["007f80f", "007f80fg", "007f80ff00", "007f80", "+07f80ff", " 07f80ff", "007f80f\n", "é7f80ff"]
            {
                assert_eq!(unhex::<4>(bad, case), None, "{bad:?} as {case:?}");
            }
            for bad in ["0", "007f80f", "0g", "+f", "0x0f", " 0f", "é"] {
                assert_eq!(unhex_vec(bad, case), None, "{bad:?} as {case:?}");
            }
        }
        assert_eq!(unhex::<4>("007F80fF", HexCase::Either), Some(b));
        assert_eq!(unhex_vec("007F80fF", HexCase::Either), Some(b.to_vec()));
        assert_eq!(unhex::<4>("007F80ff", HexCase::Lower), None);
        assert_eq!(unhex_vec("007f80fF", HexCase::Lower), None);
    }

    #[test]
    fn refuse_does_not_overwrite_and_replace_does() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_file(&p, b"one", PRIVATE_FILE_MODE, Overwrite::Refuse, "test file").unwrap();
        let err = write_file(&p, b"two", PRIVATE_FILE_MODE, Overwrite::Refuse, "test file").unwrap_err();
        assert!(matches!(err, ProvisionError::AlreadyExists { .. }), "{err}");
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write_file(&p, b"three", PUBLIC_FILE_MODE, Overwrite::Replace, "test file").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"three");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, PUBLIC_FILE_MODE);
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn read_unfollowed_refuses_a_link_anywhere_in_the_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("real/trust")).unwrap();
        fs::write(dir.path().join("real/trust/root.json"), b"{}").unwrap();
        let (bytes, _) = read_unfollowed(&dir.path().join("real/trust/root.json"), 10, "x").unwrap();
        assert_eq!(bytes, b"{}");
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("state")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real/trust/root.json"), dir.path().join("real/link.json")).unwrap();
        for p in ["state/trust/root.json", "real/link.json", "real/../real/trust/root.json"] {
            assert!(read_unfollowed(&dir.path().join(p), 10, "x").is_err(), "{p}");
        }
        assert!(matches!(
            read_unfollowed(&dir.path().join("real/trust/root.json"), 1, "x"),
            Err(ProvisionError::TooLarge { .. })
        ));
    }

    #[test]
    fn read_capped_refuses_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        fs::write(&p, vec![0u8; 100]).unwrap();
        assert!(matches!(read_capped(&p, 99, "x"), Err(ProvisionError::TooLarge { size: 100, .. })));
        assert_eq!(read_capped(&p, 100, "x").unwrap().len(), 100);
    }
}
