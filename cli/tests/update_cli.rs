//! `govbox update` as vendors and agency IT run it, with stand-in binaries and no systemd:
//! build, refuse, and a real `apply` process aborted at each step (as a power loss would stop
//! it), after which `boot-check` and `status` find `current` on a complete slot that verifies
//! against its signed manifest, and the stored security version has not fallen. The steps are
//! in the install folder's update journal (no govboxd answers here; root never writes the state
//! folder), for govboxd to import at its next start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use govbox_provisioning::{Overwrite, SigningKey};
use serde_json::Value;

fn govbox(cwd: &Path, args: &[&str], fault: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_govbox"));
    c.args(["--state", "s"]).args(args).current_dir(cwd);
    for v in ["GOVBOX_STATE", "GOVBOX_ADMIN_SOCKET", "GOVBOX_ROOT", "GOVBOX_UPDATE_FAULT"] {
        c.env_remove(v);
    }
    if let Some(f) = fault {
        c.env("GOVBOX_UPDATE_FAULT", f);
    }
    c.output().expect("running govbox")
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let out = govbox(cwd, args, None);
    assert!(
        out.status.success(),
        "govbox {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(cwd: &Path, args: &[&str]) -> String {
    let out = govbox(cwd, args, None);
    assert!(!out.status.success(), "govbox {args:?} should fail:\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

/// A provisioned state folder whose root trusts `updates.key` for updates, and two
/// stand-in binaries.
fn setup(cwd: &Path) {
    for (name, roles) in [("updates", "root,updates"), ("models", "models")] {
        let k = SigningKey::generate().unwrap();
        k.write_pem(&cwd.join(format!("{name}.key")), Overwrite::Refuse).unwrap();
        k.public_key().write_pem(&cwd.join(format!("{name}.pub")), Overwrite::Refuse).unwrap();
        let _ = roles;
    }
    ok(
        cwd,
        &[
            "provision",
            "--hostname",
            "box.test",
            "--trust-key",
            "root,updates:updates.pub",
            "--trust-key",
            "models:models.pub",
        ],
    );
    let out = ok(cwd, &["update", "init", "--root", "opt", "--from", "s/trust/root.json"]);
    assert!(out.contains("version 1") && out.contains("role updates  threshold 1 of 1"), "{out}");
    // Once only: afterwards the anchor changes only by a signed rotation.
    let e = fails(cwd, &["update", "init", "--root", "opt", "--from", "s/trust/root.json"]);
    assert!(e.contains("already installed") && e.contains("(trust_anchor_invalid)"), "{e}");
}

fn build(cwd: &Path, version: &str, sv: u64, key: &str) -> String {
    build_with(cwd, version, sv, key, &[]).0
}

/// `govbox update build` with `extra` arguments; the bundle's file name and what it printed.
fn build_with(cwd: &Path, version: &str, sv: u64, key: &str, extra: &[&str]) -> (String, String) {
    let src = cwd.join(format!("src-{version}"));
    std::fs::create_dir_all(src.join("dist")).unwrap();
    std::fs::write(src.join("govboxd"), format!("#!/bin/sh\necho govboxd {version}\n")).unwrap();
    std::fs::write(src.join("govbox"), format!("#!/bin/sh\necho govbox {version}\n")).unwrap();
    std::fs::write(src.join("dist/govboxd.service"), "[Service]\n").unwrap();
    let out = format!("govbox-{version}.gbu");
    let sv = sv.to_string();
    let d = src.join("govboxd").display().to_string();
    let c = src.join("govbox").display().to_string();
    let dist = src.join("dist").display().to_string();
    let key = format!("{key}.key");
    let mut args = vec![
        "update",
        "build",
        "--version",
        version,
        "--security-version",
        &sv,
        "--daemon",
        &d,
        "--cli",
        &c,
        "--dist",
        &dist,
        "--sign",
        &key,
        "-o",
        &out,
    ];
    args.extend(extra);
    let printed = ok(cwd, &args);
    assert!(printed.contains(&format!("govbox {version}, security version {sv}, 3 files")), "{printed}");
    (out, printed)
}

const APPLY: [&str; 6] = ["--root", "opt", "--restart-cmd", "true", "--ready-timeout", "0"];

fn apply(cwd: &Path, bundle: &str, fault: Option<&str>) -> Output {
    let mut args = vec!["update", "apply", bundle];
    args.extend(APPLY);
    govbox(cwd, &args, fault)
}

fn status(cwd: &Path) -> Value {
    serde_json::from_str(&ok(cwd, &["update", "status", "--root", "opt", "--verify", "--json"])).unwrap()
}

/// `current` names a staged slot and every slot verifies; after a boot-check (`clean`), no
/// staging leftovers remain either.
fn assert_sound(cwd: &Path, what: &str, clean: bool) -> Value {
    let s = status(cwd);
    let cur = s["current"].as_str().unwrap_or_else(|| panic!("{what}: no current slot: {s}"));
    for slot in s["slots"].as_array().unwrap() {
        assert!(slot["problem"].is_null(), "{what}: {slot}");
        if slot["slot"] == cur {
            assert!(slot["meta"].is_object(), "{what}: current slot {cur} is not staged: {s}");
        }
    }
    let link = std::fs::read_link(cwd.join("opt/current")).unwrap();
    assert_eq!(link, Path::new("slots").join(cur));
    let govboxd = std::fs::read_to_string(cwd.join("opt/current/govboxd")).unwrap();
    assert!(govboxd.starts_with("#!/bin/sh\necho govboxd "), "{what}: {govboxd}");
    for d in if clean { &["opt", "opt/slots"][..] } else { &[][..] } {
        for e in std::fs::read_dir(cwd.join(d)).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!n.starts_with(".staging-") && !n.starts_with(".current.tmp"), "{what}: leftover {d}/{n}");
        }
    }
    s
}

#[test]
fn apply_killed_at_every_step_leaves_a_complete_current_slot() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    setup(cwd);
    let v1 = build(cwd, "1.0.0", 1, "updates");
    // The first install, confirmed the way a power loss during its trial would be: boot-ok.
    let out = apply(cwd, &v1, Some("during_trial"));
    assert_eq!(out.status.signal(), Some(libc_sigabrt()), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(ok(cwd, &["update", "boot-ok", "--root", "opt"]).contains("committed"));
    let s = assert_sound(cwd, "first install", true);
    assert_eq!((s["current"].as_str(), s["security_version"].as_u64()), (Some("a"), Some(1)));

    let mut stored = 1;
    for (i, point) in ["after_stage", "mid_switch", "after_switch", "during_trial"].iter().enumerate() {
        let v = build(cwd, &format!("2.0.{i}"), 2, "updates");
        let out = apply(cwd, &v, Some(point));
        assert_eq!(out.status.signal(), Some(libc_sigabrt()), "{point}: {}", String::from_utf8_lossy(&out.stderr));
        let s = assert_sound(cwd, point, false);
        assert!(s["security_version"].as_u64().unwrap() >= stored, "{point}: {s}");
        let booted = ok(cwd, &["update", "boot-check", "--root", "opt"]);
        let s = assert_sound(cwd, point, true);
        let sv = s["security_version"].as_u64().unwrap();
        assert!(sv >= stored, "{point}: {s}");
        stored = sv;
        let trial = s["state"]["phase"] == "trial";
        assert_eq!(trial, matches!(*point, "after_switch" | "during_trial"), "{point}: {booted} {s}");
    }

    // A version that never becomes ready (nothing answers here) is reverted by apply itself.
    let before = status(cwd)["current"].clone();
    let v3 = build(cwd, "3.0.0", 3, "updates");
    let out = apply(cwd, &v3, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("update_reverted"), "{err}");
    let s = assert_sound(cwd, "reverted", true);
    assert_eq!(s["state"]["phase"], "reverted");
    assert_ne!(s["current"], before, "the orphaned trial was reverted first, then v3 was tried and reverted");
    assert_eq!(s["security_version"].as_u64(), Some(stored));

    let journal = std::fs::read_to_string(cwd.join("opt/update-journal.jsonl")).unwrap();
    let steps: Vec<String> = journal
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|e| e["step"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(std::fs::read_dir(cwd.join("s/audit")).unwrap().count(), 0, "root wrote the service's audit store");
    for step in ["staged", "switched", "committed", "trial_boot", "repaired", "reverted"] {
        assert!(steps.iter().any(|s| s == step), "no '{step}' update entry in {steps:?}");
    }
}

fn libc_sigabrt() -> i32 {
    6
}

#[test]
fn refused_bundles_change_nothing_and_rollback_respects_the_security_version() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    setup(cwd);
    let v1 = build(cwd, "1.0.0", 4, "updates");
    assert_eq!(apply(cwd, &v1, Some("during_trial")).status.signal(), Some(libc_sigabrt()));
    ok(cwd, &["update", "boot-ok", "--root", "opt"]);
    let before = status(cwd);

    let lower = build(cwd, "2.0.0", 3, "updates");
    let e = String::from_utf8(apply(cwd, &lower, None).stderr).unwrap();
    assert!(e.contains("security_version 3 is below") && e.contains("(security_version_too_low)"), "{e}");
    let by_models = build(cwd, "2.0.1", 5, "models");
    let e = String::from_utf8(apply(cwd, &by_models, None).stderr).unwrap();
    assert!(e.contains("(wrong_role)"), "{e}");
    let mut bytes = std::fs::read(cwd.join(build(cwd, "2.0.2", 5, "updates"))).unwrap();
    let at = bytes.windows(14).position(|w| w == b"echo govboxd 2").unwrap();
    bytes[at] = b'E';
    std::fs::write(cwd.join("tampered.gbu"), bytes).unwrap();
    let e = String::from_utf8(apply(cwd, "tampered.gbu", None).stderr).unwrap();
    assert!(e.contains("bin/govboxd") && e.contains("(sha256_mismatch)"), "{e}");
    let after = status(cwd);
    assert_eq!(
        (&after["current"], &after["state"], &after["slots"]),
        (&before["current"], &before["state"], &before["slots"])
    );

    // A newer version committed (via boot-ok), then a rollback to v1 (security version 4 < 5) is refused.
    let v2 = build(cwd, "2.1.0", 5, "updates");
    assert_eq!(apply(cwd, &v2, Some("during_trial")).status.signal(), Some(libc_sigabrt()));
    ok(cwd, &["update", "boot-ok", "--root", "opt"]);
    let e = fails(cwd, &["update", "rollback", "--root", "opt", "--restart-cmd", "true", "--ready-timeout", "0"]);
    assert!(e.contains("(rollback_refused)"), "{e}");
    let s = status(cwd);
    assert_eq!((s["current"].as_str(), s["security_version"].as_u64()), (Some("b"), Some(5)));
    let text = ok(cwd, &["update", "status", "--root", "opt"]);
    assert!(text.contains("* slot b         2.1.0 (security version 5"), "{text}");
    assert!(text.contains("security version 5"), "{text}");
}

/// The bundle digest `update build` printed: `<hash>-<hex>`.
fn printed_digest(printed: &str) -> &str {
    printed.lines().find_map(|l| l.strip_prefix("digest       ")).unwrap_or_else(|| panic!("no digest: {printed}"))
}

#[test]
fn a_bundle_built_with_hash_sm3_applies_boot_checks_and_a_tampered_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    setup(cwd);
    let (v1, printed) = build_with(cwd, "1.0.0", 1, "updates", &["--hash", "sm3"]);
    let digest = printed_digest(&printed).strip_prefix("sm3-").unwrap_or_else(|| panic!("not sm3: {printed}"));
    assert!(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()), "{printed}");
    let (_, plain) = build_with(cwd, "1.0.1", 1, "updates", &[]);
    assert!(printed_digest(&plain).starts_with("sha256-"), "the default stays SHA-256: {plain}");

    assert_eq!(apply(cwd, &v1, Some("during_trial")).status.signal(), Some(libc_sigabrt()));
    assert!(ok(cwd, &["update", "boot-ok", "--root", "opt"]).contains("committed"));
    // `status --verify` re-hashes the slot with SM3 against its signed manifest.
    let s = assert_sound(cwd, "sm3 install", true);
    let a = s["slots"].as_array().unwrap().iter().find(|x| x["slot"] == "a").unwrap();
    assert_eq!(a["meta"]["digest"].as_str(), Some(digest), "{s}");

    // A power loss right after the switch: boot-check re-verifies the SM3 slot and keeps the trial.
    let (v2, _) = build_with(cwd, "2.0.0", 2, "updates", &["--hash", "sm3"]);
    assert_eq!(apply(cwd, &v2, Some("after_switch")).status.signal(), Some(libc_sigabrt()));
    let booted = ok(cwd, &["update", "boot-check", "--root", "opt"]);
    let s = assert_sound(cwd, "sm3 trial", true);
    assert_eq!((s["current"].as_str(), &s["state"]["phase"]), (Some("b"), &Value::from("trial")), "{booted} {s}");
    ok(cwd, &["update", "boot-ok", "--root", "opt"]);

    // One byte of the SM3 bundle's daemon changed after signing: refused, nothing changes.
    let before = status(cwd);
    let (v3, _) = build_with(cwd, "3.0.0", 3, "updates", &["--hash", "sm3"]);
    let mut bytes = std::fs::read(cwd.join(v3)).unwrap();
    let at = bytes.windows(14).position(|w| w == b"echo govboxd 3").unwrap();
    bytes[at] = b'E';
    std::fs::write(cwd.join("tampered.gbu"), bytes).unwrap();
    let e = String::from_utf8(apply(cwd, "tampered.gbu", None).stderr).unwrap();
    assert!(e.contains("bin/govboxd") && e.contains("(sha256_mismatch)"), "{e}");
    let after = status(cwd);
    assert_eq!((&after["current"], &after["slots"]), (&before["current"], &before["slots"]));

    let e = fails(cwd, &["update", "build", "--version", "4.0.0", "--hash", "md5"]);
    assert!(e.contains("--hash") && e.contains("md5"), "{e}");
}
