//! Who writes the state: while govboxd runs, `govbox client ...` goes through its admin socket and
//! every change takes effect on the next HTTPS request, with no restart; `govbox status` reports
//! the daemon. Once it stops, `govbox status` exits 3 and the client commands work offline.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};

use govbox_e2e::{TestBox, bin, govbox};

fn govbox_raw(state: &Path, args: &[&str]) -> Output {
    Command::new(bin("govbox")).arg("--state").arg(state).args(args).output().unwrap()
}

/// The HTTP status of GET /v1/models with `Authorization: Bearer token`.
fn models_status_with_token(b: &TestBox, token: &str) -> String {
    let auth = format!("Authorization: Bearer {token}");
    let o = b.curl(&["-o", "/dev/null", "-w", "%{http_code}", "-H", &auth, &b.url("/v1/models")]);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn client_commands_go_through_the_running_daemon_and_work_offline_once_it_stops() {
    let b = TestBox::new("admin-socket");
    let d = b.start();
    let socket = b.state.join("admin.sock");

    // Status, for humans and as JSON.
    let out = govbox(&b.state, &["status"]);
    assert!(out.lines().next().unwrap().ends_with(": ready"), "{out}");
    assert!(out.contains("tiny-qwen2") && out.contains("minilm"), "{out}");
    assert!(out.contains("clients       1 (1 active, 0 with an expired certificate, 0 revoked)"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&govbox(&b.state, &["status", "--json"])).unwrap();
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(v["insecure_dev_models"], false, "signed packages only: {v}");
    let names: Vec<&str> = v["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["minilm", "tiny-qwen2"], "served from the model store, in name order: {v}");

    // Add: the daemon holds the store's lock, so this can only have gone through the socket.
    let certs2 = b.dir.join("certs2");
    let refused = b.dir.join("refused");
    let add = |name: &str, models: Option<&str>| {
        let mut args = vec!["client", "add", name, "--cert-out", refused.to_str().unwrap()];
        if let Some(m) = models {
            args.extend(["--models", m]);
        }
        let o = govbox_raw(&b.state, &args);
        assert!(!o.status.success(), "client add {name} {models:?} was accepted");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // A model the box does not have, or no choice at all, is refused (here through the daemon).
    let err = add("typo", Some("tiny-qwen2,nosuch"));
    assert!(err.contains("model 'nosuch' is not on this box (known: minilm, tiny-qwen2)"), "{err}");
    assert!(add("vague", None).contains("--models all"));
    let out = govbox(
        &b.state,
        &["client", "add", "app2", "--models", "tiny-qwen2", "--token", "--cert-out", certs2.to_str().unwrap()],
    );
    assert!(out.starts_with("added client 'app2'\n"), "{out}");
    let token = out.lines().find(|l| l.starts_with("gbx_")).expect("token line").to_string();
    for f in ["app2.crt", "app2.key", "ca.crt"] {
        assert!(certs2.join(f).is_file(), "{f} written: {out}");
    }
    assert_eq!(models_status_with_token(&b, &token), "200", "new token works at once; log:\n{}", d.log_text());
    let cert = certs2.join("app2.crt");
    let key = certs2.join("app2.key");
    let o = b.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        &b.url("/v1/models"),
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200", "new certificate works at once");

    // Revoke: refused on the very next request, while the other client still gets through.
    let out = govbox(&b.state, &["client", "revoke", "app2"]);
    assert!(out.starts_with("revoked client 'app2'"), "{out}");
    assert_eq!(models_status_with_token(&b, &token), "401", "revoked token refused with no restart");
    assert_eq!(models_status_with_token(&b, &b.token), "200", "the other client is untouched");

    let list = govbox(&b.state, &["client", "list"]);
    let row = list.lines().find(|l| l.starts_with("app2 ")).expect("app2 listed");
    assert!(row.contains(" yes     "), "the REVOKED column says yes: {row}");
    let records: serde_json::Value = serde_json::from_str(&govbox(&b.state, &["client", "list", "--json"])).unwrap();
    let app2 = records.as_array().unwrap().iter().find(|r| r["name"] == "app2").unwrap();
    assert_eq!(app2["revoked"], true, "{records}");

    // The store is locked and the socket given does not answer: say so, change nothing.
    let o = govbox_raw(&b.state, &["--admin-socket", b.dir.join("nowhere.sock").to_str().unwrap(), "client", "list"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("the state store is locked by a running govboxd, but its admin socket")
            && err.contains("nowhere.sock does not answer: the socket does not exist"),
        "{err}"
    );

    // Stop the daemon: status says so with exit code 3, and the client commands work offline.
    drop(d);
    assert!(socket.exists(), "the stale socket stays behind, and must not be mistaken for a daemon");
    let o = govbox_raw(&b.state, &["status"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains(&format!("govboxd is not running (no answer on {})", socket.display())), "{err}");
    let list = govbox(&b.state, &["client", "list"]);
    let row = list.lines().find(|l| l.starts_with("app2 ")).expect("app2 listed offline");
    assert!(row.contains(" yes     "), "{row}");
    let out = govbox(&b.state, &["client", "renew", "app", "--cert-out", b.dir.join("certs3").to_str().unwrap()]);
    assert!(out.starts_with("renewed client 'app'"), "offline write works: {out}");
    // Offline, the model store is the list of models; a revoked name is not given out again.
    let err = add("typo", Some("nosuch"));
    assert!(err.contains("model 'nosuch' is not on this box (known: minilm, tiny-qwen2)"), "{err}");
    let err = add("app2", Some("all"));
    assert!(err.contains("a revoked client had this name, and a name is never reused"), "{err}");
}
