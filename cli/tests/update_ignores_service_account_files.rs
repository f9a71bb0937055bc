//! Root's `govbox update` never trusts a file of the service account's: the `govbox` account
//! (played here by an unprivileged uid through `setpriv`, on a state folder it owns) plants a
//! symlink from its state folder to a root-owned folder standing in for `/etc`, and rewrites its
//! `trust/root.json` to name its own key. Root (the test runner) then runs `update apply` of a
//! junk bundle, of a good one (confirmed by `boot-check`/`boot-ok` as the unit runs them) and of
//! the attacker's `--security-version 99` bundle: the folder is untouched, and the attacker's
//! bundle is refused against the root-owned anchor installed by `update init`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use govbox_provisioning::{Overwrite, Role, SigningKey, TrustRoot};
use serde_json::Value;
use time::{Duration, OffsetDateTime};

/// The service account: a uid and gid with no name and no privilege.
const SERVICE_UID: &str = "64242";

fn govbox(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_govbox"));
    c.args(["--state", "s", "--admin-socket", "s/no-daemon.sock"]).args(args).current_dir(cwd);
    for v in ["GOVBOX_STATE", "GOVBOX_ADMIN_SOCKET", "GOVBOX_ROOT", "GOVBOX_UPDATE_FAULT"] {
        c.env_remove(v);
    }
    c.envs(env.iter().copied());
    c.output().expect("running govbox")
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let out = govbox(cwd, args, &[]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "govbox {args:?} failed:\n{text}");
    text
}

/// Runs `sh -c script` as the service account.
fn as_service(cwd: &Path, script: &str) {
    let out = Command::new("setpriv")
        .args(["--reuid", SERVICE_UID, "--regid", SERVICE_UID, "--clear-groups", "sh", "-c", script])
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(out.status.success(), "as the service account: {script}: {}", String::from_utf8_lossy(&out.stderr));
}

fn build(cwd: &Path, version: &str, sv: u64, key: &str) -> String {
    let src = cwd.join(format!("src-{version}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("govboxd"), format!("#!/bin/sh\necho govboxd {version}\n")).unwrap();
    std::fs::write(src.join("govbox"), format!("#!/bin/sh\necho govbox {version}\n")).unwrap();
    let out = format!("govbox-{version}.gbu");
    let (d, c) = (src.join("govboxd").display().to_string(), src.join("govbox").display().to_string());
    let sv = sv.to_string();
    #[rustfmt::skip]
    ok(cwd, &["update", "build", "--version", version, "--security-version", &sv, "--daemon", &d, "--cli", &c,
              "--sign", key, "-o", &out]);
    out
}

fn apply(cwd: &Path, bundle: &str, fault: Option<&str>) -> Output {
    let args = ["update", "apply", bundle, "--root", "opt", "--restart-cmd", "true", "--ready-timeout", "0"];
    govbox(cwd, &args, &fault.map(|f| [("GOVBOX_UPDATE_FAULT", f)]).unwrap_or_default())
}

/// Every entry under `dir` with its owner and size: what "untouched" compares.
fn snapshot(dir: &Path) -> Vec<(String, u32, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        out.push((e.file_name().to_string_lossy().into_owned(), m.uid(), m.len()));
        if m.is_dir() {
            out.extend(
                snapshot(&e.path()).into_iter().map(|(n, u, l)| (format!("{}/{n}", e.file_name().display()), u, l)),
            );
        }
    }
    out.sort();
    out
}

#[test]
fn planted_links_and_a_rewritten_trust_root_decide_nothing() {
    if is_root() {
        eprintln!("running as root: the service account is uid {SERVICE_UID}");
    } else {
        eprintln!("skipped: needs root (the test runner plays root, setpriv the service account)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    std::fs::set_permissions(cwd, std::fs::Permissions::from_mode(0o755)).unwrap();
    let updates = SigningKey::generate().unwrap();
    updates.write_pem(&cwd.join("updates.key"), Overwrite::Refuse).unwrap();
    updates.public_key().write_pem(&cwd.join("updates.pub"), Overwrite::Refuse).unwrap();
    #[rustfmt::skip]
    ok(cwd, &["provision", "--hostname", "box.test", "--trust-key", "root,updates,models:updates.pub"]);
    // The state folder is the service account's, as the unit's StateDirectory= makes it.
    let owner = format!("{SERVICE_UID}:{SERVICE_UID}");
    assert!(Command::new("chown").args(["-R", &owner, "s"]).current_dir(cwd).status().unwrap().success());
    // Agency IT installs the update trust anchor once, at set-up.
    let init = ok(cwd, &["update", "init", "--root", "opt", "--from", "s/trust/root.json"]);
    assert!(init.contains(&format!("owned by uid {SERVICE_UID}")), "{init}");

    // A root-owned folder standing in for /etc, with one file in it.
    std::fs::create_dir(cwd.join("etc")).unwrap();
    std::fs::write(cwd.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    let before = snapshot(&cwd.join("etc"));
    // The service account turns its audit and tls folders into links to it.
    as_service(cwd, "rm -rf s/audit s/tls && ln -s ../etc s/audit && ln -s ../etc s/tls");

    // A junk bundle is refused; a good one is applied and confirmed the way the unit's hooks do.
    std::fs::write(cwd.join("junk.gbu"), b"not a bundle").unwrap();
    assert!(!apply(cwd, "junk.gbu", None).status.success());
    let good = build(cwd, "1.0.0", 1, "updates.key");
    assert!(!apply(cwd, &good, Some("during_trial")).status.success(), "aborted during its trial");
    ok(cwd, &["update", "boot-check", "--root", "opt"]);
    assert!(ok(cwd, &["update", "boot-ok", "--root", "opt"]).contains("committed"));
    assert_eq!(snapshot(&cwd.join("etc")), before, "root wrote through the service account's link");
    let journal = std::fs::read_to_string(cwd.join("opt/update-journal.jsonl")).unwrap();
    for step in ["refused", "staged", "switched", "committed"] {
        assert!(journal.contains(&format!("\"step\":\"{step}\"")), "no {step} in the journal:\n{journal}");
    }

    // The service account names its own key for every role and signs a bundle with it.
    let attacker = SigningKey::generate().unwrap();
    attacker.write_pem(&cwd.join("attacker.key"), Overwrite::Refuse).unwrap();
    let roles = [(vec![Role::Root, Role::Models, Role::Updates], attacker.public_key())];
    let forged = TrustRoot::build(&roles, &[], OffsetDateTime::now_utc() + Duration::days(30)).unwrap();
    std::fs::write(cwd.join("forged.json"), forged.to_canonical_json()).unwrap();
    as_service(cwd, "cat forged.json > s/trust/root.json");
    let evil = build(cwd, "6.6.6", 99, "attacker.key");
    // Had it been accepted, its trial would be confirmed at the next start, as with the good one.
    let out = apply(cwd, &evil, Some("during_trial"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("(below_threshold)"), "{err}");
    assert!(ok(cwd, &["update", "boot-ok", "--root", "opt"]).contains("nothing to do"));
    let status: Value = serde_json::from_str(&ok_json(cwd)).unwrap();
    assert_eq!(status["security_version"].as_u64(), Some(1), "{status}");
    assert_eq!(status["current"].as_str(), Some("a"), "{status}");
    assert!(!std::fs::read_to_string(cwd.join("opt/current/govboxd")).unwrap().contains("6.6.6"));
}

fn ok_json(cwd: &Path) -> String {
    let out = govbox(cwd, &["update", "status", "--root", "opt", "--json"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}
