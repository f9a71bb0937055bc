//! Property: the admin socket grants roles by the caller's peer credentials (issue 21 §2):
//! members of `govbox-admin` operate but may not query the audit log's HMAC oracle, members of
//! `govbox-audit-readers` may query it (at most 30 times a minute, each answer in its audit entry)
//! but not change clients, and a caller in neither group is refused everything.
//!
//! Needs root (the e2e machine runs as root): it creates the two groups with `groupadd -f` and
//! runs `govbox` as `nobody` with chosen groups through `setpriv`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use govbox_e2e::{TestBox, bin};

/// The gid of group `name`, created when missing.
fn group(name: &str) -> u32 {
    let o = Command::new("groupadd").args(["-f", "--system", name]).output().unwrap();
    assert!(o.status.success(), "groupadd {name}: {}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("getent").args(["group", name]).output().unwrap();
    let line = String::from_utf8(o.stdout).unwrap();
    line.split(':').nth(2).unwrap().trim().parse().unwrap()
}

/// `govbox --admin-socket SOCKET ARGS` as uid/gid 65534 with exactly `groups`.
fn as_nobody(socket: &Path, groups: &[u32], args: &[&str]) -> Output {
    let groups = match groups {
        [] => "--clear-groups".to_string(),
        g => format!("--groups={}", g.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
    };
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", &groups])
        .arg(bin("govbox"))
        .arg("--admin-socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn a_user_outside_audit_readers_is_refused_audit_hmac() {
    assert!(nix_is_root(), "this test creates groups and changes user: run it as root");
    let operators = group("govbox-admin");
    let auditors = group("govbox-audit-readers");
    let b = TestBox::provisioned("admin-roles");
    // The socket in a folder every user may reach (the state folder is the owner's only).
    let run = b.dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    for d in [&b.dir, &run] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let socket = run.join("admin.sock");
    let mut config = std::fs::read_to_string(&b.config).unwrap();
    config.push_str(&format!("admin_socket = \"{}\"\n", socket.display()));
    std::fs::write(&b.config, config).unwrap();
    let _d = b.start();

    // An operator: status and clients, not the HMAC oracle.
    let o = as_nobody(&socket, &[operators], &["status"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = as_nobody(&socket, &[operators], &["audit", "hmac", "--text", "x"]);
    assert!(!o.status.success() && text(&o).contains("forbidden"), "{}", text(&o));
    assert!(text(&o).contains("govbox-audit-readers"), "the refusal names the group: {}", text(&o));

    // Nobody in neither group: refused everything.
    let o = as_nobody(&socket, &[], &["status"]);
    assert!(!o.status.success() && text(&o).contains("forbidden"), "{}", text(&o));

    // An auditor: the oracle, not the clients.
    let o = as_nobody(&socket, &[auditors], &["client", "revoke", "app"]);
    assert!(!o.status.success() && text(&o).contains("forbidden"), "{}", text(&o));
    let o = as_nobody(&socket, &[auditors], &["audit", "hmac", "--text", "x"]);
    assert!(o.status.success(), "{}", text(&o));
    let hmac = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert_eq!(hmac.len(), 64, "{hmac}");
    // Rate-limited: 30 a minute per caller.
    for i in 1..30 {
        let o = as_nobody(&socket, &[auditors], &["audit", "hmac", "--text", &format!("guess {i}")]);
        assert!(o.status.success(), "query {i}: {}", text(&o));
    }
    let o = as_nobody(&socket, &[auditors], &["audit", "hmac", "--text", "one too many"]);
    assert!(!o.status.success() && text(&o).contains("rate_limited"), "{}", text(&o));

    // Each answer is in its audit entry; the revocation never happened.
    let entries = govbox_e2e::exported_entries(&b.state, &b.dir);
    assert!(
        entries.iter().any(|e| e["action"] == "audit_hmac_query"
            && e["actor"] == "admin-socket uid 65534"
            && e["subject"].as_str().unwrap().contains(&hmac)),
        "{entries:#?}"
    );
    assert!(!entries.iter().any(|e| e["action"] == "client_revoke"), "{entries:#?}");
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}
