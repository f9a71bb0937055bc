//! `govbox doctor` against a real govboxd: it reaches the daemon over the admin socket, finds its
//! process through the socket's peer credentials, and turns a key readable by others into a FAIL
//! (exit 1) that `chmod 0600` clears.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use govbox_e2e::{TestBox, bin};
use serde_json::Value;

fn doctor(b: &TestBox) -> (Option<i32>, Value) {
    let o = Command::new(bin("govbox")).arg("--state").arg(&b.state).args(["doctor", "--json"]).output().unwrap();
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}\n{}", String::from_utf8_lossy(&o.stderr)));
    (o.status.code(), v)
}

fn check<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no {name}: {v:#}"))
}

#[test]
fn doctor_checks_a_running_box_and_catches_a_readable_key() {
    let b = TestBox::provisioned("doctor");
    let d = b.start();
    let pid = d.child.id();

    let (code, v) = doctor(&b);
    for name in
        ["state folder", "private keys", "public files", "server certificate", "certificate chain", "trust root"]
    {
        assert_eq!(check(&v, name)["level"], "OK", "{name}: {v:#}");
    }
    assert_eq!(check(&v, "admin socket")["level"], "OK", "{v:#}");
    let daemon = check(&v, "govboxd");
    assert_eq!(daemon["level"], "OK", "{v:#}");
    assert!(daemon["message"].as_str().unwrap().contains("ready"), "{daemon}");
    // The client certificates, read through the running daemon: `app`'s is fresh.
    let clients = check(&v, "client certificates");
    assert_eq!(clients["level"], "OK", "{clients}");
    assert!(clients["message"].as_str().unwrap().starts_with("1 active clients"), "{clients}");
    // The egress lockdown is reported (or "unknown" by a govboxd without it), never a failure.
    assert_ne!(check(&v, "egress lockdown")["level"], "FAIL", "{v:#}");
    // The process behind the socket is the one this test started. Under root (CI) the check
    // fails, as it should for a root govboxd; as another user it passes.
    let ident = check(&v, "service identity");
    assert!(ident["message"].as_str().unwrap().contains(&format!("pid {pid}")), "{ident}");
    let as_root = fs::read_to_string("/proc/self/status").unwrap().lines().any(|l| l.starts_with("Uid:\t0\t"));
    assert_eq!(ident["level"], if as_root { "FAIL" } else { "OK" }, "{ident}");
    // Exit 1 exactly when some check failed (the disk may be short on a busy machine).
    let any_fail = v["checks"].as_array().unwrap().iter().any(|c| c["level"] == "FAIL");
    assert_eq!(code, Some(i32::from(any_fail)), "{v:#}");

    let key = b.state.join("identity/device.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let (code, v) = doctor(&b);
    let keys = check(&v, "private keys");
    assert_eq!((code, keys["level"].as_str()), (Some(1), Some("FAIL")), "{v:#}");
    assert!(keys["message"].as_str().unwrap().contains("identity/device.key is mode 0644"), "{keys}");

    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let (_, v) = doctor(&b);
    assert_eq!(check(&v, "private keys")["level"], "OK", "{v:#}");
    drop(d);

    // Stopped: the daemon checks say so without failing.
    let (_, v) = doctor(&b);
    assert_eq!(check(&v, "govboxd")["level"], "WARN", "{v:#}");
    assert_eq!(check(&v, "service identity")["level"], "SKIP", "{v:#}");
    assert_eq!(check(&v, "client certificates")["level"], "OK", "read from the store offline: {v:#}");
}
