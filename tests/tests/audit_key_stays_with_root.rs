//! Issue 19: the key that signs the audit log's heads is not the service account's. Root makes
//! it (`govbox keygen`, as the .deb's postinst does into /etc/govbox/audit), provisioning names
//! only its public half (`--audit-pub`), and no file of the state folder holds the private key,
//! so code running as `govbox` cannot sign heads of its own. `govbox-auditd`, given the key the
//! way systemd's `LoadCredential=` does, serves; given another key than the one the box's
//! identity names, it refuses to start and says why.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use govbox_e2e::{bin, govbox};

/// Kills govbox-auditd however the test ends (it holds the test's output pipe open).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
    }
    out
}

/// The credentials folder systemd would make for govbox-auditd.
fn credentials(dir: &Path, audit_key: &Path, state: &Path) -> PathBuf {
    let creds = dir.join(format!("creds-{}", audit_key.file_stem().unwrap().to_str().unwrap()));
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::copy(audit_key, creds.join("audit.key")).unwrap();
    for f in ["audit-hmac.key", "device.pub", "audit.pub"] {
        std::fs::copy(state.join("identity").join(f), creds.join(f)).unwrap();
    }
    creds
}

#[test]
fn the_audit_key_never_enters_the_state_folder_and_auditd_signs_only_with_the_named_key() {
    let dir = std::env::temp_dir().join(format!("govbox-e2e-auditkey-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (root, state) = (dir.join("etc-govbox-audit"), dir.join("state"));
    std::fs::create_dir_all(&root).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    govbox(&state, &["keygen", "--out", &s(&root.join("audit.key"))]);
    govbox(&state, &["keygen", "--out", &s(&dir.join("vendor.key"))]);
    let out = govbox(
        &state,
        &["provision", "--trust-key", &s(&dir.join("vendor.pub")), "--audit-pub", &s(&root.join("audit.pub"))],
    );
    assert!(out.contains("private key is govbox-auditd's"), "{out}");

    // Nothing the service account owns holds the private key.
    assert!(!state.join("identity/audit.key").exists());
    let private = std::fs::read_to_string(root.join("audit.key")).unwrap();
    let body: String = private.lines().filter(|l| !l.starts_with("-----")).collect();
    for f in files_under(&state) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).replace(['\n', '\r'], "");
        assert!(!text.contains(&body), "{} holds the audit private key", f.display());
    }
    assert_eq!(
        std::fs::read_to_string(state.join("identity/audit.pub")).unwrap(),
        std::fs::read_to_string(root.join("audit.pub")).unwrap()
    );

    // govbox-auditd with root's key serves.
    let socket = dir.join("audit.sock");
    let creds = credentials(&dir, &root.join("audit.key"), &state);
    let mut child = Killed(
        Command::new(bin("govbox-auditd"))
            .args(["--audit-dir", &s(&dir.join("audit")), "--keys", &s(&creds), "--socket", &s(&socket)])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(child.0.try_wait().unwrap().is_none(), "govbox-auditd exited with the named key");
        assert!(Instant::now() < deadline, "govbox-auditd did not listen in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // govboxd is not running: `govbox audit` reaches the store through govbox-auditd (the state
    // folder has none), and the export, signed with root's key, verifies against the identity.
    let export = dir.join("export.json");
    let via = |args: &[&str]| {
        let mut all = vec!["--admin-socket", "/nonexistent/admin.sock", "--audit-socket", socket.to_str().unwrap()];
        all.extend_from_slice(args);
        govbox(&state, &all)
    };
    via(&["audit", "export", "-o", &s(&export)]);
    let tail = via(&["audit", "tail", "-n", "5"]);
    assert!(tail.contains("audit_export"), "{tail}");
    assert!(!state.join("audit/db").exists(), "the CLI opened a store in the state folder");
    let verified = Command::new(bin("govbox"))
        .args(["audit", "verify", &s(&export), "--device-key", &s(&root.join("audit.pub"))])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success() && report.contains("PASS"), "{report}");
    drop(child);

    // With a key the identity does not name (one the service account made itself), it refuses.
    govbox(&state, &["keygen", "--out", &s(&dir.join("forged.key"))]);
    let creds = credentials(&dir, &dir.join("forged.key"), &state);
    let out = Command::new(bin("govbox-auditd"))
        .args(["--audit-dir", &s(&dir.join("audit")), "--keys", &s(&creds), "--socket", &s(&dir.join("b.sock"))])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "govbox-auditd started with a key the box does not name");
    assert!(err.contains("--audit-pub") && err.contains("audit.pub"), "{err}");
    assert!(!dir.join("b.sock").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
