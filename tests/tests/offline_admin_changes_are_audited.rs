//! Property: changes `govbox` makes on the state folder while govboxd is stopped are audit
//! entries, the same ones govboxd makes for them (issue 21 §2): a client added and revoked, a
//! model imported, disabled and enabled all appear in the next export, which verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use govbox_e2e::{TestBox, bin, govbox, repo};

#[test]
fn offline_client_and_model_changes_appear_in_the_next_export() {
    let b = TestBox::provisioned("offline-audited");
    let certs = b.dir.join("hr-certs");
    govbox(&b.state, &["client", "add", "hr-portal", "--models", "all", "--cert-out", certs.to_str().unwrap()]);
    govbox(&b.state, &["client", "revoke", "hr-portal"]);
    let package = b.build_package(&repo().join("tests/fixtures/tiny-qwen2"), "tiny-qwen2", "1.0.0", false);
    b.import(&package);
    govbox(&b.state, &["model", "disable", "tiny-qwen2"]);
    let list = govbox(&b.state, &["model", "list"]);
    assert!(list.lines().any(|l| l.starts_with("tiny-qwen2 ") && l.contains("*disabled")), "{list}");
    govbox(&b.state, &["model", "enable", "tiny-qwen2"]);

    let entries = govbox_e2e::verified_entries(&b.state, &b.dir, "export.json");
    let admin = |action: &str, subject: &str| {
        entries.iter().any(|e| {
            e["kind"] == "admin"
                && e["action"] == action
                && e["subject"] == subject
                && e["actor"].as_str().unwrap().starts_with("uid ")
        })
    };
    assert!(admin("client_add", "app"), "the box's first client, added offline: {entries:#?}");
    assert!(admin("client_add", "hr-portal"), "{entries:#?}");
    assert!(admin("client_revoke", "hr-portal"), "{entries:#?}");
    assert!(admin("model_disable", "tiny-qwen2") && admin("model_enable", "tiny-qwen2"), "{entries:#?}");
    let package = |action: &str| {
        entries.iter().any(|e| e["kind"] == "package" && e["action"] == action && e["name"] == "tiny-qwen2")
    };
    assert!(package("imported") && package("activated"), "{entries:#?}");
}

/// A change whose audit entry cannot be written is refused and changes nothing.
#[test]
fn an_offline_change_that_cannot_be_recorded_is_refused() {
    let b = TestBox::provisioned("offline-unrecorded");
    // An audit store that cannot be opened (as on a full or broken disk).
    let audit = b.state.join("audit");
    let aside = b.dir.join("audit-aside");
    std::fs::rename(&audit, &aside).unwrap();
    std::fs::write(&audit, b"not a store").unwrap();
    let certs = b.dir.join("x-certs");
    let o = Command::new(bin("govbox"))
        .arg("--state")
        .arg(&b.state)
        .args(["client", "add", "x", "--models", "all", "--cert-out", certs.to_str().unwrap()])
        .output()
        .unwrap();
    std::fs::remove_file(&audit).unwrap();
    std::fs::rename(&aside, &audit).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("audit"), "{err}");
    let list = govbox(&b.state, &["client", "list"]);
    assert!(!list.lines().any(|l| l.starts_with("x ")), "the refused client was added: {list}");
}
