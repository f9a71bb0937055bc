//! `govbox audit` as auditors and agency IT run it: export and tail on the state folder when
//! govboxd is stopped, the admin-socket protocol when it runs, and verify offline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};

use govbox_audit::{AuditLog, AuditOptions, Event, HmacKey, read_hmac_secret};
use govbox_provisioning::{SigningKey, StatePaths};
use serde_json::Value;

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

fn provisioned(cwd: &Path) -> StatePaths {
    let vendor = SigningKey::generate().unwrap();
    vendor.public_key().write_pem(&cwd.join("vendor.pub"), govbox_provisioning::Overwrite::Refuse).unwrap();
    ok(cwd, &["--state", "s", "provision", "--hostname", "box.test", "--trust-key", "vendor.pub"]);
    StatePaths::new(cwd.join("s"))
}

fn append(paths: &StatePaths, n: u64) {
    let log = AuditLog::open_state(paths, AuditOptions::default()).unwrap();
    for i in 0..n {
        log.append_blocking(Event::Admin {
            actor: "uid 0".into(),
            action: "client_add".into(),
            subject: format!("app-{i}"),
        })
        .unwrap();
    }
    log.close().unwrap();
}

#[test]
fn offline_export_tail_hmac_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let paths = provisioned(cwd);
    append(&paths, 10);

    // The export records itself first (seq 10), so it holds its own record.
    let out = ok(cwd, &["--state", "s", "audit", "export", "-o", "e1.json"]);
    assert!(out.contains("exported seq 0..=10 (11 entries), tree size 11, to e1.json"), "{out}");
    let out = ok(cwd, &["audit", "verify", "e1.json", "--device-key", "s/identity/audit.pub"]);
    assert!(out.contains("range      seq 0..=10 (11 entries), tree size 11"), "{out}");
    assert!(out.contains("PASS  pinned key") && out.trim_end().ends_with("checks)"), "{out}");
    assert!(out.contains("result     PASS"), "{out}");

    let err = govbox(cwd, &["--state", "s", "audit", "export", "-o", "e1.json"]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("refusing to overwrite e1.json"));

    let out = ok(cwd, &["--state", "s", "audit", "tail", "-n", "3"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[1].trim_start().starts_with("9  ") && lines[1].contains("admin") && lines[1].contains("subject=app-9"),
        "{out}"
    );
    assert!(lines[2].trim_start().starts_with("10  ") && lines[2].contains("action=audit_export"), "{out}");

    let hmac = ok(cwd, &["--state", "s", "audit", "hmac", "--text", "what is the budget?"]);
    let want = HmacKey::new(&read_hmac_secret(&paths.audit_hmac_key()).unwrap()).hmac(b"what is the budget?");
    assert_eq!(hmac.trim(), want);
    let out = ok(cwd, &["--state", "s", "audit", "tail", "-n", "1", "--json"]);
    let last: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((last["seq"].as_u64(), last["action"].as_str()), (Some(11), Some("audit_hmac_query")));
    assert_eq!(last["subject"].as_str(), Some(want.as_str()));

    append(&paths, 5);
    let out = ok(cwd, &["--state", "s", "audit", "export", "--from", "11", "-o", "e2.json"]);
    assert!(out.contains("exported seq 11..=17"), "{out}");
    let out = ok(cwd, &["audit", "verify", "e2.json", "--previous", "e1.json", "--device-key", "s/identity/audit.pub"]);
    assert!(out.contains("PASS  previous export"), "{out}");
    // Nothing pinned: FAIL, saying why; trusting the embedded key passes with a warning.
    let out = govbox(cwd, &["audit", "verify", "e2.json", "--previous", "e1.json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  pinned key") && stdout.contains("none given, so an export signed by any fresh key"));
    let out = ok(cwd, &["audit", "verify", "e2.json", "--insecure-embedded-key"]);
    assert!(out.contains("WARNING    no audit key pinned") && out.contains("result     PASS"), "{out}");

    // A tampered export fails, names the seq, and exits non-zero.
    let text = std::fs::read_to_string(cwd.join("e2.json")).unwrap();
    std::fs::write(cwd.join("bad.json"), text.replace("app-3", "app-X")).unwrap();
    let out =
        govbox(cwd, &["audit", "verify", "bad.json", "--previous", "e1.json", "--device-key", "s/identity/audit.pub"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL  entry") && stdout.contains(": entry hash mismatch"), "{stdout}");
    assert!(stdout.contains("result     FAIL"), "{stdout}");

    let out = govbox(cwd, &["audit", "verify", "vendor.pub"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid export"));

    // Prompt hashes are keyed per client: --client gives the hash that client's entries hold.
    let key = HmacKey::new(&read_hmac_secret(&paths.audit_hmac_key()).unwrap());
    let text = "what is the budget?";
    let hr = ok(cwd, &["--state", "s", "audit", "hmac", "--client", "hr-portal", "--text", text]);
    assert_eq!(hr.trim(), key.client_hmac("hr-portal", text.as_bytes()));
    let hotline = ok(cwd, &["--state", "s", "audit", "hmac", "--client", "hotline", "--text", text]);
    assert_ne!(hr.trim(), hotline.trim());
    let out = ok(cwd, &["--state", "s", "audit", "tail", "-n", "1", "--json"]);
    let last: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((last["action"].as_str(), last["subject"].as_str()), (Some("audit_hmac_query"), Some(hotline.trim())));
}

/// Answers one connection's requests with `answer(request)`, returning the requests.
fn serve(path: &Path, answer: impl Fn(&Value) -> Value + Send + 'static) -> std::thread::JoinHandle<Vec<Value>> {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let mut seen = Vec::new();
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 0 {
            let req: Value = serde_json::from_str(&line).unwrap();
            let reply = serde_json::json!({"ok": true, "result": answer(&req)});
            w.write_all(format!("{reply}\n").as_bytes()).unwrap();
            seen.push(req);
            line.clear();
        }
        seen
    })
}

#[test]
fn through_the_admin_socket_when_govboxd_runs() {
    use base64::Engine as _;
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let paths = provisioned(cwd);
    append(&paths, 4);
    let log = AuditLog::open_state(&paths, AuditOptions::default()).unwrap();
    let export = log.export(Default::default()).unwrap();
    let entries: Vec<Value> = log.tail(2).unwrap().iter().map(|e| serde_json::to_value(e).unwrap()).collect();
    drop(log);

    let b64 = base64::engine::general_purpose::STANDARD.encode(&export);
    let t = serve(&cwd.join("s/admin.sock"), move |_| serde_json::json!({"export_b64": b64}));
    let out =
        ok(cwd, &["--state", "s", "audit", "export", "--since", "2020-01-01T00:00:00Z", "--to", "3", "-o", "on.json"]);
    assert!(out.contains("exported seq 0..=3"), "{out}");
    assert_eq!(std::fs::read(cwd.join("on.json")).unwrap(), export);
    let seen = t.join().unwrap();
    assert_eq!(seen[0]["cmd"], "audit_export");
    assert_eq!(
        (seen[0]["since"].as_str(), seen[0]["to"].as_u64(), seen[0]["from"].is_null()),
        (Some("2020-01-01T00:00:00Z"), Some(3), true)
    );

    std::fs::remove_file(cwd.join("s/admin.sock")).unwrap();
    let t = serve(&cwd.join("s/admin.sock"), move |req| match req["cmd"].as_str() {
        Some("audit_tail") => serde_json::json!({"entries": entries}),
        _ => serde_json::json!({"hmac": "ab".repeat(32)}),
    });
    let out = ok(cwd, &["--state", "s", "audit", "tail", "-n", "2"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("subject=app-3"), "{out}");
    let seen = t.join().unwrap();
    assert_eq!((seen[0]["cmd"].as_str(), seen[0]["n"].as_u64()), (Some("audit_tail"), Some(2)));

    std::fs::remove_file(cwd.join("s/admin.sock")).unwrap();
    let t = serve(&cwd.join("s/admin.sock"), |_| serde_json::json!({"hmac": "cd".repeat(32)}));
    assert_eq!(ok(cwd, &["--state", "s", "audit", "hmac", "--text", "hi"]).trim(), "cd".repeat(32));
    assert_eq!(t.join().unwrap()[0], serde_json::json!({"cmd": "audit_hmac", "text": "hi"}));
    std::fs::remove_file(cwd.join("s/admin.sock")).unwrap();
    let t = serve(&cwd.join("s/admin.sock"), |_| serde_json::json!({"hmac": "ef".repeat(32)}));
    assert_eq!(ok(cwd, &["--state", "s", "audit", "hmac", "--client", "app", "--text", "hi"]).trim(), "ef".repeat(32));
    assert_eq!(t.join().unwrap()[0], serde_json::json!({"cmd": "audit_hmac", "text": "hi", "client": "app"}));
}
