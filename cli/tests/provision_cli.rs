//! `govbox keygen`, `govbox provision` and `govbox client` as agency IT runs them, judged by
//! OpenSSL: the keys and certificates must be usable by software that is not ours.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use govbox_provisioning::{ClientStore, PublicKey, SigningKey};

fn govbox(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_govbox"))
        .args(args)
        .current_dir(cwd)
        .env_remove("GOVBOX_STATE")
        .output()
        .expect("running govbox")
}

/// Runs govbox and returns its stdout, failing the test with its stderr if it failed.
fn govbox_ok(cwd: &Path, args: &[&str]) -> String {
    let out = govbox(cwd, args);
    assert!(out.status.success(), "govbox {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs govbox, expects it to fail, and returns its stderr.
fn govbox_err(cwd: &Path, args: &[&str]) -> String {
    let out = govbox(cwd, args);
    assert!(
        !out.status.success(),
        "govbox {args:?} should have failed; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

fn openssl(cwd: &Path, args: &[&str]) -> Output {
    match Command::new("openssl").args(args).current_dir(cwd).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "these tests judge govbox's keys and certificates with the openssl command, which could not be run ({e}); \
             .ci/run must install it (apt-get install -y openssl)"
        ),
    }
}

fn openssl_ok(cwd: &Path, args: &[&str]) -> String {
    let out = openssl(cwd, args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "openssl {args:?} failed:\n{text}");
    text
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

/// The SHA-256 fingerprint of a PEM certificate, as OpenSSL computes it, in lower-case hex.
fn openssl_fingerprint(cwd: &Path, cert: &str) -> String {
    let out = openssl_ok(cwd, &["x509", "-in", cert, "-noout", "-fingerprint", "-sha256"]);
    let (_, hex) = out.trim().split_once('=').unwrap();
    hex.replace(':', "").to_lowercase()
}

/// Every file under `dir` with its contents, to prove that a refused command changed nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), (fs::read(&p).unwrap(), mode(&p)));
            }
        }
    }
    out
}

fn keygen(cwd: &Path, name: &str) -> PublicKey {
    govbox_ok(cwd, &["keygen", "--out", &format!("{name}.key")]);
    PublicKey::load_pem(cwd.join(format!("{name}.pub"))).unwrap()
}

fn provisioned(cwd: &Path) {
    keygen(cwd, "vendor");
    govbox_ok(cwd, &["--state", "s", "provision", "--hostname", "box.test", "--trust-key", "vendor.pub"]);
}

#[test]
fn keygen_keys_are_read_by_openssl_and_signatures_cross_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let out = govbox_ok(cwd, &["keygen", "--out", "vendor.key", "--pub", "vendor.pub"]);
    let public = PublicKey::load_pem(cwd.join("vendor.pub")).unwrap();
    assert!(out.contains(&public.keyid()), "keygen prints the key id:\n{out}");
    assert_eq!(mode(&cwd.join("vendor.key")), 0o600);

    // OpenSSL 3.0 reads both files: the private key must be PKCS#8 v1, which it accepts.
    let text = openssl_ok(cwd, &["pkey", "-in", "vendor.key", "-noout", "-text"]);
    assert!(text.contains("ED25519 Private-Key"), "{text}");
    openssl_ok(cwd, &["pkey", "-pubin", "-in", "vendor.pub", "-noout"]);

    // Our signature verifies with OpenSSL ...
    fs::write(cwd.join("msg"), b"govbox-manifest.json bytes").unwrap();
    let key = SigningKey::load_pem(cwd.join("vendor.key")).unwrap();
    fs::write(cwd.join("sig"), key.sign(b"govbox-manifest.json bytes")).unwrap();
    let v = openssl_ok(
        cwd,
        &["pkeyutl", "-verify", "-pubin", "-inkey", "vendor.pub", "-rawin", "-in", "msg", "-sigfile", "sig"],
    );
    assert!(v.contains("Signature Verified Successfully"), "{v}");
    // ... and a tampered one does not.
    fs::write(cwd.join("msg2"), b"govbox-manifest.json bytez").unwrap();
    let bad = openssl(
        cwd,
        &["pkeyutl", "-verify", "-pubin", "-inkey", "vendor.pub", "-rawin", "-in", "msg2", "-sigfile", "sig"],
    );
    assert!(!bad.status.success(), "openssl accepted a signature over different bytes");

    // OpenSSL's signature with our private key file verifies with our public key: same key.
    openssl_ok(cwd, &["pkeyutl", "-sign", "-inkey", "vendor.key", "-rawin", "-in", "msg", "-out", "osig"]);
    public.verify(b"govbox-manifest.json bytes", &fs::read(cwd.join("osig")).unwrap()).unwrap();

    // No silent overwrite; --force replaces.
    let before = fs::read(cwd.join("vendor.key")).unwrap();
    let err = govbox_err(cwd, &["keygen", "--out", "vendor.key"]);
    assert!(err.contains("refusing to overwrite") && err.contains("vendor.key"), "{err}");
    assert_eq!(fs::read(cwd.join("vendor.key")).unwrap(), before);
    govbox_ok(cwd, &["keygen", "--out", "vendor.key", "--force"]);
    assert_ne!(fs::read(cwd.join("vendor.key")).unwrap(), before);
}

#[test]
fn keygen_sm2_keys_are_read_by_openssl_and_trusted_at_provisioning() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let out = govbox_ok(cwd, &["keygen", "--algorithm", "sm2", "--out", "gm.key"]);
    let public = PublicKey::load_pem(cwd.join("gm.pub")).unwrap();
    assert!(out.contains("algorithm    sm2") && out.contains(&public.keyid()), "{out}");
    assert_eq!(mode(&cwd.join("gm.key")), 0o600);
    let text = openssl_ok(cwd, &["pkey", "-in", "gm.key", "-noout", "-text"]);
    assert!(text.contains("ASN1 OID: SM2"), "{text}");
    let text = openssl_ok(cwd, &["pkey", "-pubin", "-in", "gm.pub", "-noout", "-text"]);
    assert!(text.contains("ASN1 OID: SM2"), "{text}");

    fs::write(cwd.join("msg"), b"govbox-manifest.json bytes").unwrap();
    let key = SigningKey::load_pem(cwd.join("gm.key")).unwrap();
    fs::write(cwd.join("sig"), key.sign(b"govbox-manifest.json bytes")).unwrap();
    let verify = ["pkeyutl", "-verify", "-pubin", "-inkey", "gm.pub", "-rawin", "-in", "msg", "-sigfile", "sig"];
    let v = openssl_ok(cwd, &[&verify[..], &["-pkeyopt", "distid:1234567812345678"]].concat());
    assert!(v.contains("Signature Verified Successfully"), "{v}");
    // The ID is part of what is signed: another ID does not verify.
    assert!(!openssl(cwd, &[&verify[..], &["-pkeyopt", "distid:1234567812345679"]].concat()).status.success());

    let err = govbox_err(cwd, &["keygen", "--algorithm", "rsa", "--out", "r.key"]);
    assert!(err.contains("unknown key algorithm 'rsa'"), "{err}");
    assert!(!cwd.join("r.key").exists());

    // An SM2 vendor key beside an Ed25519 one in the trust root, models threshold 2.
    keygen(cwd, "vendor");
    let provision = "--state s provision --hostname box.test --trust-key vendor.pub --trust-key models:gm.pub";
    let args: Vec<&str> = provision.split(' ').chain(["--threshold", "models:2"]).collect();
    govbox_ok(cwd, &args);
    let root = fs::read_to_string(cwd.join("s/trust/root.json")).unwrap();
    assert!(root.contains(&format!(r#""{}":{{"keytype":"sm2""#, public.keyid())), "{root}");
    let shown = govbox_ok(cwd, &["--state", "s", "trust", "show"]);
    assert!(shown.contains(&format!("{} (sm2)", public.keyid())), "{shown}");
}

#[test]
fn provision_lays_out_the_state_folder_and_refuses_a_second_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let vendor = keygen(cwd, "vendor");
    let out = govbox_ok(
        cwd,
        &["--state", "s", "provision", "--hostname", "box.test", "--san", "10.9.8.7", "--trust-key", "vendor.pub"],
    );
    let s = cwd.join("s");
    let device = PublicKey::load_pem(s.join("identity/device.pub")).unwrap();
    let audit = PublicKey::load_pem(s.join("identity/audit.pub")).unwrap();
    assert_ne!(device, audit, "the audit key is separate from the device key");
    for shown in [
        device.keyid(),
        audit.keyid(),
        openssl_fingerprint(&s, "tls/ca.crt"),
        openssl_fingerprint(&s, "tls/server.crt"),
    ] {
        assert!(out.contains(&shown), "provision output lacks {shown}:\n{out}");
    }

    for d in ["identity", "tls", "trust", "models", "audit", "state"] {
        assert_eq!(mode(&s.join(d)), 0o700, "{d}/");
    }
    for f in ["identity/device.key", "identity/audit.key", "identity/audit-hmac.key", "tls/ca.key", "tls/server.key"] {
        assert_eq!(mode(&s.join(f)), 0o600, "{f}");
    }
    for f in ["identity/device.pub", "identity/audit.pub", "tls/ca.crt", "tls/server.crt", "trust/root.json"] {
        assert_eq!(mode(&s.join(f)), 0o644, "{f}");
    }
    assert_eq!(fs::read(s.join("identity/audit-hmac.key")).unwrap().len(), 32);
    openssl_ok(&s, &["pkey", "-in", "identity/device.key", "-noout"]);
    openssl_ok(&s, &["pkey", "-in", "tls/ca.key", "-noout"]);

    // root.json: canonical, TUF-shaped, the vendor key in all three roles.
    let text = fs::read_to_string(s.join("trust/root.json")).unwrap();
    assert!(!text.contains(' ') && !text.contains('\n'), "root.json is canonical JSON: {text}");
    let root: serde_json::Value = serde_json::from_str(&text).unwrap();
    let signed = &root["signed"];
    assert_eq!(signed["_type"], "root");
    assert_eq!(signed["version"], 1);
    assert_eq!(root["signatures"], serde_json::json!([]));
    assert_eq!(signed["keys"][vendor.keyid()]["keyval"]["public"], vendor.to_hex());
    assert_eq!(signed["keys"][vendor.keyid()]["keytype"], "ed25519");
    for role in ["root", "models", "updates"] {
        assert_eq!(signed["roles"][role]["keyids"], serde_json::json!([vendor.keyid()]), "{role}");
        assert_eq!(signed["roles"][role]["threshold"], 1, "{role}");
    }

    // The server certificate chains to the box's CA, for server use, with the SANs.
    openssl_ok(&s, &["verify", "-CAfile", "tls/ca.crt", "tls/server.crt"]);
    openssl_ok(&s, &["verify", "-purpose", "sslserver", "-CAfile", "tls/ca.crt", "tls/server.crt"]);
    let sans = openssl_ok(&s, &["x509", "-in", "tls/server.crt", "-noout", "-ext", "subjectAltName"]);
    for want in
        ["IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1", "DNS:localhost", "DNS:box.test", "IP Address:10.9.8.7"]
    {
        assert!(sans.contains(want), "server certificate lacks {want}:\n{sans}");
    }

    // A second run without --force is refused and changes nothing.
    let before = snapshot(&s);
    let err = govbox_err(cwd, &["--state", "s", "provision", "--hostname", "other", "--trust-key", "vendor.pub"]);
    assert!(err.contains("already provisioned") && err.contains("--force"), "{err}");
    assert_eq!(snapshot(&s), before, "a refused provision changed the state folder");

    // --show prints the public identity.
    let show = govbox_ok(cwd, &["--state", "s", "provision", "--show"]);
    for want in
        [device.keyid(), device.to_spki_pem(), audit.keyid(), openssl_fingerprint(&s, "tls/ca.crt"), vendor.keyid()]
    {
        assert!(show.contains(&want), "--show lacks {want}:\n{show}");
    }
    assert!(show.contains("models   threshold 1 of 1"), "{show}");
    assert!(!show.contains("PRIVATE KEY"), "{show}");

    // --force replaces the identity.
    govbox_ok(cwd, &["--state", "s", "provision", "--hostname", "box.test", "--trust-key", "vendor.pub", "--force"]);
    assert_ne!(PublicKey::load_pem(s.join("identity/device.pub")).unwrap(), device);
}

#[test]
fn provision_assigns_roles_separately_and_checks_thresholds() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let (a, b, r) = (keygen(cwd, "a"), keygen(cwd, "b"), keygen(cwd, "r"));
    let base = ["--state", "s", "provision", "--hostname", "box.test"];
    fn run<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }

    let err = govbox_err(cwd, &run(&base, &["--trust-key", "models:a.pub", "--trust-key", "updates:b.pub"]));
    assert!(err.contains("role 'root' has no key"), "{err}");
    let err = govbox_err(
        cwd,
        &run(
            &base,
            &[
                "--trust-key",
                "models:a.pub",
                "--trust-key",
                "updates:b.pub",
                "--trust-key",
                "root:r.pub",
                "--threshold",
                "models:2",
            ],
        ),
    );
    assert!(err.contains("models:2") && err.contains("1 distinct key(s)"), "{err}");
    let err = govbox_err(cwd, &run(&base, &["--trust-key", "model:a.pub"]));
    assert!(err.contains("unknown role 'model'"), "{err}");
    let err = govbox_err(cwd, &run(&base, &["--trust-key", "a.pub", "--threshold", "root:0"]));
    assert!(err.contains("minimum is 1"), "{err}");
    assert!(!cwd.join("s").exists(), "rejected input must not create the state folder");

    govbox_ok(
        cwd,
        &run(
            &base,
            &[
                "--trust-key",
                "models:a.pub",
                "--trust-key",
                "models,updates:b.pub",
                "--trust-key",
                "root:r.pub",
                "--threshold",
                "models:2",
            ],
        ),
    );
    let root: serde_json::Value = serde_json::from_slice(&fs::read(cwd.join("s/trust/root.json")).unwrap()).unwrap();
    let roles = &root["signed"]["roles"];
    let mut models = vec![a.keyid(), b.keyid()];
    models.sort();
    assert_eq!(roles["models"]["keyids"], serde_json::json!(models));
    assert_eq!(roles["models"]["threshold"], 2);
    assert_eq!(roles["updates"]["keyids"], serde_json::json!([b.keyid()]));
    assert_eq!(roles["root"]["keyids"], serde_json::json!([r.keyid()]));
    assert_eq!(root["signed"]["keys"].as_object().unwrap().len(), 3);
}

#[test]
fn clients_are_issued_listed_renewed_and_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    provisioned(cwd);
    let state = ["--state", "s", "client"];
    let client = |args: &[&str]| govbox_ok(cwd, &[&state[..], args].concat());

    let out = client(&[
        "add",
        "hr-portal",
        "--models",
        "qwen2,bge",
        "--rpm",
        "60",
        "--token",
        "--cert-out",
        "out",
        "--days",
        "30",
    ]);
    let token =
        out.lines().find(|l| l.starts_with("gbx_")).unwrap_or_else(|| panic!("no token printed:\n{out}")).to_string();
    assert_eq!(token.len(), 47);
    assert_eq!(mode(&cwd.join("out/hr-portal.key")), 0o600);
    assert_eq!(mode(&cwd.join("out/hr-portal.crt")), 0o644);
    assert_eq!(fs::read(cwd.join("out/ca.crt")).unwrap(), fs::read(cwd.join("s/tls/ca.crt")).unwrap());
    openssl_ok(cwd, &["verify", "-purpose", "sslclient", "-CAfile", "s/tls/ca.crt", "out/hr-portal.crt"]);
    let subject = openssl_ok(cwd, &["x509", "-in", "out/hr-portal.crt", "-noout", "-subject"]);
    assert!(subject.contains("CN = hr-portal"), "{subject}");
    // The purpose check can fail: the server certificate is not a client certificate.
    let server_as_client =
        openssl(cwd, &["verify", "-purpose", "sslclient", "-CAfile", "s/tls/ca.crt", "s/tls/server.crt"]);
    assert!(!server_as_client.status.success(), "the server certificate passed as a TLS client certificate");

    // The token is stored only as its hash.
    for (path, (bytes, _)) in snapshot(&cwd.join("s")) {
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "the token is stored in {}",
            path.display()
        );
    }

    let fp1 = openssl_fingerprint(cwd, "out/hr-portal.crt");
    let list = client(&["list"]);
    let row = list.lines().find(|l| l.starts_with("hr-portal")).unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains(&fp1) && row.contains("qwen2,bge") && row.contains(" 60 "), "{row}");
    let records: serde_json::Value = serde_json::from_str(&client(&["list", "--json"])).unwrap();
    assert_eq!(records[0]["cert_sha256"], fp1);
    assert_eq!(records[0]["revoked"], false);
    assert_eq!(records[0]["token_sha256"].as_str().unwrap().len(), 64);

    client(&["renew", "hr-portal", "--cert-out", "out"]);
    let fp2 = openssl_fingerprint(cwd, "out/hr-portal.crt");
    assert_ne!(fp1, fp2, "renew must issue a new certificate");
    openssl_ok(cwd, &["verify", "-purpose", "sslclient", "-CAfile", "s/tls/ca.crt", "out/hr-portal.crt"]);
    let records: serde_json::Value = serde_json::from_str(&client(&["list", "--json"])).unwrap();
    assert_eq!(records[0]["cert_sha256"], fp2);

    client(&["revoke", "hr-portal"]);
    let records: serde_json::Value = serde_json::from_str(&client(&["list", "--json"])).unwrap();
    assert_eq!(records[0]["revoked"], true);
    let list = client(&["list"]);
    let row = list.lines().find(|l| l.starts_with("hr-portal")).unwrap();
    assert!(row.contains(" yes     "), "the REVOKED column says yes: {row}");

    // What the daemon will see, through the library.
    let store = ClientStore::open(cwd.join("s")).unwrap();
    assert!(store.find_by_token(&token).is_none(), "a revoked client's token is refused");
    assert!(store.find_by_cert_fingerprint_hex(&fp2).is_none());
    drop(store);

    let err = govbox_err(cwd, &[&state[..], &["renew", "hr-portal"]].concat());
    assert!(err.contains("revoked"), "{err}");
    let err = govbox_err(cwd, &[&state[..], &["add", "hr-portal", "--models", "all", "--cert-out", "again"]].concat());
    assert!(err.contains("a revoked client had this name, and a name is never reused"), "{err}");
    // Which models a client may use is always a choice: none given is refused, `all` is explicit.
    let err = govbox_err(cwd, &[&state[..], &["add", "vague", "--cert-out", "vague"]].concat());
    assert!(err.contains("choose the models it may use: --models NAME[,NAME...], or --models all"), "{err}");
    assert!(!cwd.join("vague").exists(), "a refused add writes nothing");
    client(&["add", "scraper", "--scope", "metrics", "--cert-out", "scraper"]);
    client(&["add", "everything", "--models", "all", "--cert-out", "everything", "--days", "30"]);
    // An expired certificate is marked in the list (made through the library: the CLI issues
    // certificates valid from now).
    let store = ClientStore::open(cwd.join("s")).unwrap();
    store.renew_at("everything", 1, time::OffsetDateTime::now_utc() - time::Duration::days(3)).unwrap();
    drop(store);
    let list = client(&["list"]);
    let row = |name: &str| list.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{list}")).to_string();
    assert!(row("everything ").contains("(all)") && row("everything ").contains(" EXPIRED "), "{list}");
    assert!(row("scraper ").contains(" metrics ") && !row("scraper ").contains("EXPIRED"), "{list}");
    for bad in ["Bad-Name", "../evil", "a b", "_x", ""] {
        let err = govbox_err(cwd, &[&state[..], &["add", bad]].concat());
        assert!(err.contains("checking client name"), "{bad:?}: {err}");
    }
    assert!(!cwd.join("evil").exists() && !cwd.join("Bad-Name").exists());
}

#[test]
fn client_commands_say_to_use_the_daemon_when_it_holds_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    provisioned(cwd);
    // This test process plays govboxd: it holds sled's exclusive lock.
    let _daemon = ClientStore::open(cwd.join("s")).unwrap();
    let err = govbox_err(cwd, &["--state", "s", "client", "list"]);
    assert!(
        err.contains("the state store is locked by a running govboxd, but its admin socket")
            && err.contains("admin.sock does not answer"),
        "{err}"
    );
}

#[test]
fn client_commands_need_a_provisioned_box() {
    let tmp = tempfile::tempdir().unwrap();
    let err = govbox_err(tmp.path(), &["--state", "s", "client", "list"]);
    assert!(err.contains("not provisioned") && err.contains("govbox provision"), "{err}");
}
