//! Moving an audit store out of the service's state folder: boxes provisioned before
//! `govbox-auditd` keep their log in `STATE/audit`, owned by the service account (`govbox`); the
//! writer's store is `/var/lib/govbox-audit`, owned by the audit account. Root moves it once
//! (`govbox-auditd --migrate-from /var/lib/govbox/audit`, the unit's `ExecStartPre=+`).
//!
//! **The danger.** Everything under `STATE` is the service account's: it may have replaced
//! `audit` (or anything in it) by a symbolic link to `/etc`, a hard link to `/etc/shadow`, a FIFO
//! or a device node, and it may keep a descriptor open inside the folder to do so while root
//! works. Root following any of those would hand a system file to the audit account or block.
//!
//! **How it is done.** No path under `STATE` is ever resolved by name from the root of the file
//! system: every component is opened relative to the one before it with `O_NOFOLLOW` (a link
//! anywhere fails with `ELOOP`), and every later step works on the descriptors so obtained.
//! 1. `STATE/audit` must be a folder owned by the owner of `STATE`; the destination a folder
//!    that holds no store yet.
//! 2. The tree is walked once to check it before anything moves: only folders and regular files,
//!    every one owned by the service account, no file with a second hard link, at most
//!    [`MAX_ENTRIES`] entries and [`MAX_DEPTH`] levels.
//! 3. Each top-level entry (`db`, `witness`, ...) is renamed, from the folder's descriptor into
//!    the destination's, with `RENAME_NOREPLACE` (never across file systems: `EXDEV` stops it).
//! 4. The moved tree, now inside the audit account's 0700 folder, is walked again and each
//!    entry is opened with `O_PATH | O_NOFOLLOW`, checked again on that descriptor (type, owner,
//!    link count) and only then given to the audit account with `fchownat(fd, "",
//!    AT_EMPTY_PATH)`: the inode checked is the inode changed, whatever was renamed meanwhile.
//!
//! Anything unexpected stops the migration with an error naming the entry; what was already
//! moved stays where it is, for the operator to look at.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};
use nix::unistd::{Gid, Uid, fchownat};

use crate::error::{AuditError, Result};

/// Most entries a store may have: a sled store is a handful of files, the witness spool at most
/// 10,000 heads.
pub const MAX_ENTRIES: usize = 100_000;
/// Deepest folder nesting walked.
pub const MAX_DEPTH: usize = 8;

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The top-level entries moved (`db`, `witness`, ...).
    pub moved: Vec<String>,
    /// Files and folders given to the destination's owner.
    pub chowned: usize,
}

fn fail(path: &Path, why: impl std::fmt::Display) -> AuditError {
    AuditError::Config(format!("migrating the audit store {}: {why}; nothing further was changed", path.display()))
}

fn io(path: &Path, action: &str, e: Errno) -> AuditError {
    AuditError::Io {
        action: format!("migrating the audit store: {action}"),
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// Opens the folder `path` (absolute) component by component with `O_NOFOLLOW`.
fn open_dir_unfollowed(path: &Path) -> Result<OwnedFd> {
    let flags = OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let mut dir = openat(nix::fcntl::AT_FDCWD, "/", flags, Mode::empty()).map_err(|e| io(path, "opening /", e))?;
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => {
                dir = openat(&dir, name, flags, Mode::empty())
                    .map_err(|e| io(path, "opening a folder without following links", e))?;
            }
            _ => return Err(fail(path, "the path must be absolute, without '..'")),
        }
    }
    Ok(dir)
}

fn is(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind
}

/// The names in the folder `dir`, without `.` and `..`.
fn names(dir: &impl AsFd, path: &Path) -> Result<Vec<OsString>> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut d = nix::dir::Dir::openat(dir, ".", flags, Mode::empty()).map_err(|e| io(path, "listing", e))?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(|e| io(path, "listing", e))?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." {
            out.push(name.to_os_string());
        }
    }
    Ok(out)
}

/// Whose files a walk checks and to whom it gives them.
#[derive(Clone, Copy)]
struct Owners {
    /// The service account: every entry must be its (or already `to`'s, on a second pass).
    from: u32,
    /// `(uid, gid)` to give each entry to; `None` only checks.
    to: Option<(u32, u32)>,
}

/// One pass over the tree under `dir` (only the entries `only` of it, when given): checks every
/// entry is a folder or a regular file with one link, owned as `owners` says, and gives it to
/// `owners.to`. Counts into `seen`.
fn walk(
    dir: &OwnedFd,
    path: &Path,
    owners: Owners,
    depth: usize,
    only: Option<&[OsString]>,
    seen: &mut usize,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(fail(path, format!("nested deeper than {MAX_DEPTH} folders")));
    }
    let (owner, to) = (owners.from, owners.to);
    let listed = names(dir, path)?;
    for name in listed.into_iter().filter(|n| only.is_none_or(|o| o.contains(n))) {
        let child = path.join(&name);
        *seen += 1;
        if *seen > MAX_ENTRIES {
            return Err(fail(&child, format!("more than {MAX_ENTRIES} entries")));
        }
        // O_PATH: nothing is opened for reading, so a FIFO or a device cannot block or act.
        let fd = openat(dir, name.as_os_str(), OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| io(&child, "opening without following links", e))?;
        let st = fstat(&fd).map_err(|e| io(&child, "reading its status", e))?;
        let owned = st.st_uid == owner || to.is_some_and(|(uid, _)| st.st_uid == uid);
        if !owned {
            return Err(fail(&child, format!("owned by uid {}, not by the service account (uid {owner})", st.st_uid)));
        }
        let folder = is(&st, SFlag::S_IFDIR);
        if !folder && !is(&st, SFlag::S_IFREG) {
            return Err(fail(&child, "neither a folder nor a regular file (a link, a FIFO or a device)"));
        }
        if !folder && st.st_nlink != 1 {
            return Err(fail(
                &child,
                format!("has {} hard links: another name outside the store may share it", st.st_nlink),
            ));
        }
        if let Some((uid, gid)) = to {
            fchownat(&fd, "", Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), AtFlags::AT_EMPTY_PATH)
                .map_err(|e| io(&child, "changing its owner", e))?;
        }
        if folder {
            let sub = openat(
                dir,
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io(&child, "opening the folder without following links", e))?;
            let again = fstat(&sub).map_err(|e| io(&child, "reading its status", e))?;
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
                return Err(fail(&child, "was replaced while it was being checked"));
            }
            walk(&sub, &child, owners, depth + 1, None, seen)?;
        }
    }
    Ok(())
}

/// Moves the store in `from` (normally `STATE/audit`) into the folder `to` (the writer's, e.g.
/// `/var/lib/govbox-audit`) and gives it to `to`'s owner, as the module documentation says.
/// Returns `None` when `from` does not exist (nothing to move). Run as root.
pub fn migrate(from: &Path, to: &Path) -> Result<Option<Migrated>> {
    let (Some(parent), Some(name)) = (from.parent(), from.file_name()) else {
        return Err(fail(from, "not a folder path"));
    };
    let state = open_dir_unfollowed(parent)?;
    let service = fstat(&state).map_err(|e| io(parent, "reading its status", e))?.st_uid;
    let src = match openat(
        &state,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            return Err(fail(from, "is a symbolic link or not a folder: the service account may have planted it"));
        }
        Err(e) => return Err(io(from, "opening without following links", e)),
    };
    let src_st = fstat(&src).map_err(|e| io(from, "reading its status", e))?;
    if src_st.st_uid != service {
        return Err(fail(
            from,
            format!("owned by uid {}, not by the state folder's owner (uid {service})", src_st.st_uid),
        ));
    }
    let dst = open_dir_unfollowed(to)?;
    let dst_st = fstat(&dst).map_err(|e| io(to, "reading its status", e))?;
    if dst_st.st_uid == service {
        return Err(fail(to, "belongs to the service account too: the store would gain nothing by moving"));
    }
    let top = names(&src, from)?;
    let existing = names(&dst, to)?;
    if let Some(clash) = top.iter().find(|n| existing.contains(n)) {
        return Err(fail(
            &to.join(clash),
            "already exists: this folder holds a store of its own (compare the two and move one by hand)",
        ));
    }
    let mut seen = 0;
    walk(&src, from, Owners { from: service, to: None }, 0, None, &mut seen)?;
    let mut moved = Vec::new();
    for n in &top {
        renameat2(&src, n.as_os_str(), &dst, n.as_os_str(), RenameFlags::RENAME_NOREPLACE).map_err(|e| match e {
            Errno::EXDEV => fail(
                from,
                format!("{} is on another file system than {}: move it by hand", from.display(), to.display()),
            ),
            e => io(&from.join(n), "moving it", e),
        })?;
        moved.push(n.to_string_lossy().into_owned());
    }
    let mut chowned = 0;
    let owners = Owners { from: service, to: Some((dst_st.st_uid, dst_st.st_gid)) };
    walk(&dst, to, owners, 0, Some(&top), &mut chowned)?;
    Ok(Some(Migrated { moved, chowned }))
}
