//! `govbox policy` as agency IT runs it with govboxd stopped: build a library package signed by
//! the `policy` role, verify it, import, list, activate, roll back, each step in the audit log;
//! a package signed by the models key is refused and the refusal recorded too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use govbox_audit::{AuditLog, AuditOptions};
use govbox_provisioning::{Overwrite, SigningKey, StatePaths};

fn govbox(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_govbox"))
        .args(args)
        .current_dir(cwd)
        .env_remove("GOVBOX_STATE")
        .env_remove("GOVBOX_ADMIN_SOCKET")
        .output()
        .expect("running govbox")
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let out = govbox(cwd, args);
    assert!(
        out.status.success(),
        "govbox {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn library(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir.join("lists")).unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        format!(
            "format = \"govbox-policy/1\"\nname = \"baseline\"\nversion = \"{version}\"\n[[category]]\nid = \"violence\"\n\
             action = \"refuse\"\nrefusal = \"抱歉，无法回答。\"\nkeywords = [\"lists/violence.txt\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("lists/violence.txt"), "炸药配方\n").unwrap();
}

#[test]
fn build_verify_import_activate_rollback_are_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let (models, policy) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
    models.public_key().write_pem(&cwd.join("models.pub"), Overwrite::Refuse).unwrap();
    policy.public_key().write_pem(&cwd.join("policy.pub"), Overwrite::Refuse).unwrap();
    models.write_pem(&cwd.join("models.key"), Overwrite::Refuse).unwrap();
    policy.write_pem(&cwd.join("policy.key"), Overwrite::Refuse).unwrap();
    let out = ok(
        cwd,
        &[
            "--state",
            "s",
            "provision",
            "--hostname",
            "box.test",
            "--trust-key",
            "root,models,updates:models.pub",
            "--trust-key",
            "policy:policy.pub",
        ],
    );
    assert!(out.contains("policy"), "{out}");

    library(&cwd.join("lib1"), "1.0.0");
    library(&cwd.join("lib2"), "1.1.0");
    let built = ok(cwd, &["policy", "build", "lib1", "--sign", "policy.key", "-o", "v1.gbp"]);
    assert!(built.contains("baseline 1.0.0") && built.contains("1 keywords"), "{built}");
    ok(cwd, &["policy", "build", "lib2", "--sign", "policy.key", "-o", "v2.gbp"]);
    ok(cwd, &["policy", "build", "lib1", "--version", "1.0.1", "--sign", "models.key", "-o", "wrong.gbp"]);
    let v = ok(cwd, &["--state", "s", "policy", "verify", "v1.gbp"]);
    assert!(v.contains("OK") && v.contains("role 'policy'"), "{v}");

    let refused = govbox(cwd, &["--state", "s", "policy", "import", "wrong.gbp"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("role 'policy'"), "{err}");

    assert!(ok(cwd, &["--state", "s", "policy", "import", "v1.gbp"]).contains("now active"));
    assert!(ok(cwd, &["--state", "s", "policy", "import", "v2.gbp"]).contains("not active"));
    assert!(ok(cwd, &["--state", "s", "policy", "activate", "baseline@1.1.0"]).contains("now 1.1.0"));
    assert!(ok(cwd, &["--state", "s", "policy", "rollback", "baseline"]).contains("now 1.0.0"));
    let list = ok(cwd, &["--state", "s", "policy", "list"]);
    assert!(list.lines().any(|l| l.starts_with("baseline") && l.contains("1.0.0") && l.contains(" * ")), "{list}");

    let log = AuditLog::open_state(&StatePaths::new(cwd.join("s")), AuditOptions::default()).unwrap();
    let kinds: Vec<String> = log
        .tail(20)
        .unwrap()
        .iter()
        .map(|e| {
            let v = serde_json::to_value(e).unwrap();
            format!(
                "{} {}",
                v["kind"].as_str().unwrap_or(""),
                v["action"].as_str().or(v["code"].as_str()).unwrap_or("")
            )
        })
        .filter(|k| k.starts_with("policy_package") || k.starts_with("package_refused"))
        .collect();
    assert_eq!(
        kinds,
        [
            "package_refused wrong_role",
            "policy_package imported",
            "policy_package activated",
            "policy_package imported",
            "policy_package activated",
            "policy_package rolled_back",
        ]
    );
}
