//! Issue 19: root moves a box's old `STATE/audit` (the service account's) into govbox-auditd's
//! folder (the audit account's) with `govbox-auditd --migrate-from`, and never follows what the
//! service account planted there: a symbolic link for `audit` itself or inside it, or a file
//! with a second hard link, stops the migration before anything moves, and the root-owned
//! folder standing in for `/etc` keeps its owners. Needs root (to play two accounts by uid); as
//! another user the test prints `SKIPPED` and returns.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Fixture, fill};
use govbox_audit::AuditLog;

const SERVICE: u32 = 64_242;
const AUDIT: u32 = 64_243;

/// A root-owned folder with a box's state folder (the service's), an old store in it, the
/// audit account's empty folder, and a root-owned stand-in for /etc.
struct Scene {
    fx: Fixture,
    state: PathBuf,
    dest: PathBuf,
    etc: PathBuf,
}

fn chown_tree(path: &Path, uid: u32) {
    let st = Command::new("chown").arg("-hR").arg(format!("{uid}:{uid}")).arg(path).status().unwrap();
    assert!(st.success());
}

fn scene() -> Option<Scene> {
    if !nix::unistd::getuid().is_root() {
        eprintln!("SKIPPED: playing the service and audit accounts needs root (CI runs as root)");
        return None;
    }
    let fx = Fixture::new();
    let root = fx.dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = root.join("state");
    std::fs::create_dir(&state).unwrap();
    let log = AuditLog::open(state.join("audit"), fx.keys(), Default::default()).unwrap();
    fill(&log, 12);
    log.close().unwrap();
    drop(log);
    chown_tree(&state, SERVICE);
    let dest = root.join("govbox-audit");
    std::fs::create_dir(&dest).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o700)).unwrap();
    chown_tree(&dest, AUDIT);
    let etc = root.join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("shadow"), "root:*:20000::::::\n").unwrap();
    Some(Scene { fx, state, dest, etc })
}

fn migrate(s: &Scene) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_govbox-auditd"))
        .arg("--migrate-from")
        .arg(s.state.join("audit"))
        .arg("--audit-dir")
        .arg(&s.dest)
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Every entry under `path`, with its owner.
fn owners(path: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(path).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        out.push((p.clone(), m.uid()));
        if m.is_dir() {
            out.extend(owners(&p));
        }
    }
    out
}

fn assert_untouched(s: &Scene) {
    assert!(owners(&s.etc).iter().all(|(_, uid)| *uid == 0), "the stand-in for /etc changed owner");
    assert_eq!(std::fs::metadata(&s.etc).unwrap().uid(), 0);
    assert_eq!(std::fs::read_dir(&s.dest).unwrap().count(), 0, "something was moved in");
}

#[test]
fn the_old_store_moves_to_the_audit_account_and_still_opens() {
    let Some(s) = scene() else { return };
    let (ok, err) = migrate(&s);
    assert!(ok, "{err}");
    assert!(err.contains("moved the audit store"), "{err}");
    let moved = owners(&s.dest);
    assert!(moved.iter().any(|(p, _)| p.ends_with("db")), "{moved:?}");
    assert!(moved.iter().all(|(_, uid)| *uid == AUDIT), "{moved:?}");
    assert_eq!(std::fs::read_dir(s.state.join("audit")).unwrap().count(), 0);
    let log = AuditLog::open(&s.dest, s.fx.keys(), Default::default()).unwrap();
    assert_eq!(log.tree_size(), 12);
    assert!(log.verify_store().unwrap().ok);
    drop(log);
    // Run again (the unit does at every start): nothing left to move.
    std::fs::remove_dir(s.state.join("audit")).unwrap();
    let (ok, err) = migrate(&s);
    assert!(ok && err.is_empty(), "{err}");
}

#[test]
fn a_planted_link_for_the_store_itself_is_never_followed() {
    let Some(s) = scene() else { return };
    std::fs::rename(s.state.join("audit"), s.state.join("audit.old")).unwrap();
    std::os::unix::fs::symlink(&s.etc, s.state.join("audit")).unwrap();
    let (ok, err) = migrate(&s);
    assert!(!ok && err.contains("symbolic link"), "{err}");
    assert_untouched(&s);
}

#[test]
fn a_planted_link_or_hard_link_inside_the_store_stops_it_before_anything_moves() {
    let Some(s) = scene() else { return };
    let db = s.state.join("audit/db");
    let conf = db.join("conf");
    std::fs::remove_file(&conf).unwrap();
    std::os::unix::fs::symlink(s.etc.join("shadow"), &conf).unwrap();
    chown_tree(&conf, SERVICE); // the link itself, as the service account would have made it
    let (ok, err) = migrate(&s);
    assert!(!ok && err.contains("conf") && err.contains("link"), "{err}");
    assert_untouched(&s);

    // A hard link: the same inode under a name outside the store.
    std::fs::remove_file(&conf).unwrap();
    let outside = s.state.join("elsewhere");
    std::fs::write(&outside, "x").unwrap();
    chown_tree(&outside, SERVICE);
    std::fs::hard_link(&outside, &conf).unwrap();
    let (ok, err) = migrate(&s);
    assert!(!ok && err.contains("hard links"), "{err}");
    assert_untouched(&s);

    // A root-owned file inside (a hard link to the real /etc/shadow would look so).
    std::fs::remove_file(&conf).unwrap();
    std::fs::write(&conf, "x").unwrap();
    chown_tree(&conf, 0);
    let (ok, err) = migrate(&s);
    assert!(!ok && err.contains("owned by uid 0"), "{err}");
    assert_untouched(&s);
}
