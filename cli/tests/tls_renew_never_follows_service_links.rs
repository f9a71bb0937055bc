//! `govbox tls renew` run by root on a state folder the service account owns does its work as
//! that account: a `tls/` the account turned into a link to a root-owned folder (standing in for
//! `/etc`) gets no key written through it by root's rights, and no file there changes owner.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

/// The service account: a uid and gid with no name and no privilege.
const SERVICE_UID: u32 = 64243;

#[test]
fn renew_as_root_cannot_write_through_a_planted_link() {
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        eprintln!("skipped: needs root (the test runner plays root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    std::fs::set_permissions(cwd, std::fs::Permissions::from_mode(0o755)).unwrap();
    let govbox = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_govbox"));
        c.args(["--state", "s", "--admin-socket", "s/no-daemon.sock"]).args(args).current_dir(cwd);
        c.env_remove("GOVBOX_STATE").env_remove("GOVBOX_ADMIN_SOCKET");
        c.output().unwrap()
    };
    let key = govbox_provisioning::SigningKey::generate().unwrap();
    key.public_key().write_pem(&cwd.join("v.pub"), govbox_provisioning::Overwrite::Refuse).unwrap();
    assert!(
        govbox(&["provision", "--hostname", "box.test", "--trust-key", "root,updates,models:v.pub"]).status.success()
    );
    // The root-owned folder holds what the link must not let root change: a copy of the TLS files.
    let etc = cwd.join("etc");
    std::fs::create_dir(&etc).unwrap();
    for f in std::fs::read_dir(cwd.join("s/tls")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), etc.join(f.file_name())).unwrap();
    }
    let before: Vec<_> = std::fs::read_dir(&etc)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.clone(), std::fs::read(&p).unwrap(), std::fs::metadata(&p).unwrap().uid())
        })
        .collect();
    let owner = format!("{SERVICE_UID}:{SERVICE_UID}");
    assert!(Command::new("chown").args(["-R", &owner, "s"]).current_dir(cwd).status().unwrap().success());
    // The service account swaps its tls folder for a link to the root-owned one.
    std::fs::remove_dir_all(cwd.join("s/tls")).unwrap();
    std::os::unix::fs::symlink("../etc", cwd.join("s/tls")).unwrap();
    std::os::unix::fs::lchown(cwd.join("s/tls"), Some(SERVICE_UID), Some(SERVICE_UID)).unwrap();

    let out = govbox(&["tls", "renew"]);
    assert!(!out.status.success(), "renewed through the link: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(std::fs::read_dir(&etc).unwrap().count(), before.len(), "no file added");
    for (p, bytes, uid) in before {
        assert_eq!((std::fs::read(&p).unwrap(), std::fs::metadata(&p).unwrap().uid()), (bytes, uid), "{}", p.display());
    }
}
