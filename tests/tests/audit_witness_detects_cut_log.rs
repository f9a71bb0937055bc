//! Issue 19, finding 3: recent audit history cut from the store with file access alone is found
//! by `govbox audit verify --witness`, because every signed tree head also went to a syslog
//! receiver (here a small TCP listener on loopback that writes the frames to a file as it gets
//! them, as rsyslog's `imtcp` would).
//!
//! The attack, as the issue reproduced it: entries are made, exported, more entries are made
//! (their heads reach the witness), govboxd stops, and the entries after the export are cut from
//! the sled store together with their leaves, the newer checkpoints and `meta.frontier`. govboxd
//! restarts on the cut store and the next export verifies against the previous one: the file
//! access left no trace in the box. Against the witness file it must fail, while the same store
//! left untouched passes. Also: with a witness configured, the egress lockdown still refuses
//! connects to every other port (under Landlock).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use govbox_e2e::{Daemon, TestBox, bin, govbox, syslog_receiver};
use serde_json::{Value, json};

/// `govbox client add NAME --models all`, its certificate written into the box's folder.
fn add_client(b: &TestBox, name: &str) {
    let out = b.dir.join(format!("client-{name}"));
    govbox(&b.state, &["client", "add", name, "--models", "all", "--cert-out", out.to_str().unwrap()]);
}

fn tree_size(b: &TestBox) -> u64 {
    let out = govbox(&b.state, &["audit", "tail", "-n", "1", "--json"]);
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    last["seq"].as_u64().unwrap() + 1
}

/// Polls the witness file until it holds a head of `size` entries.
fn wait_for_witnessed(file: &Path, size: u64) {
    let needle = format!("tree_size=\"{size}\"");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(file).unwrap_or_default().contains(&needle) {
        assert!(Instant::now() < deadline, "the witness never got a head of size {size}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(d: &mut Daemon) {
    assert!(Command::new("kill").args(["-TERM", &d.child.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "govboxd did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn export(b: &TestBox, name: &str) -> PathBuf {
    let file = b.dir.join(name);
    govbox(&b.state, &["audit", "export", "-o", file.to_str().unwrap()]);
    file
}

/// `govbox audit verify EXPORT --previous PREVIOUS [--witness FILE]`.
/// `govbox audit verify`, pinned to the box's audit key as an auditor does (taken at install).
fn verify(b: &TestBox, export: &Path, previous: &Path, witness: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new(bin("govbox"));
    cmd.args(["audit", "verify"]).arg(export).arg("--previous").arg(previous);
    cmd.arg("--device-key").arg(b.state.join("identity/audit.pub"));
    if let Some(w) = witness {
        cmd.arg("--witness").arg(w);
    }
    let o: Output = cmd.output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// What the insider does with file access to `STATE/audit/db` and no key: every entry and leaf
/// from seq `keep` on, every checkpoint beyond `keep`, and `meta.frontier` go.
fn cut_store(db: &Path, keep: u64) {
    let db = sled::open(db).unwrap();
    for name in ["entries", "leaves"] {
        let t = db.open_tree(name).unwrap();
        for k in t.range(keep.to_be_bytes()..).keys() {
            t.remove(k.unwrap()).unwrap();
        }
    }
    let cps = db.open_tree("checkpoints").unwrap();
    for k in cps.range((keep + 1).to_be_bytes()..).keys() {
        cps.remove(k.unwrap()).unwrap();
    }
    db.open_tree("meta").unwrap().remove("frontier").unwrap();
    db.flush().unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    assert!(Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
}

#[test]
fn entries_cut_after_their_head_reached_the_witness_fail_verification() {
    let b = TestBox::provisioned("audit-witness");
    let witness = b.dir.join("witness.log");
    let port = syslog_receiver(witness.clone());
    let mut f = std::fs::OpenOptions::new().append(true).open(&b.config).unwrap();
    writeln!(f, "\n[audit]\nwitness = \"tcp://127.0.0.1:{port}\"\ncheckpoint_interval_secs = 1").unwrap();

    let mut d = b.start();
    add_client(&b, "clerk");
    let first = export(&b, "first.json");
    let first_size = serde_json::from_slice::<Value>(&std::fs::read(&first).unwrap()).unwrap()["head"]["tree_size"]
        .as_u64()
        .unwrap();
    wait_for_witnessed(&witness, first_size);

    // The recent history the insider wants gone: new clients, among them their own.
    add_client(&b, "insider");
    add_client(&b, "helper");
    let size = tree_size(&b);
    assert!(size > first_size + 1, "{size} vs {first_size}");
    wait_for_witnessed(&witness, size);

    // Status and readiness (its details are for authenticated clients) report the witness as up to date.
    let status = b.admin(&json!({"cmd": "status"}));
    assert_eq!(status["audit_witness"]["pending"], 0, "{status}");
    assert_eq!(status["audit_witness"]["address"], format!("tcp://127.0.0.1:{port}"));
    let ready = b.curl(&["-H", &format!("Authorization: Bearer {}", b.token), &b.url("/readyz")]);
    let ready: Value = serde_json::from_slice(&ready.stdout).unwrap();
    assert_eq!(ready["audit_witness"]["behind"], false, "{ready}");

    // With a witness, connects to any other port stay refused (Landlock names the witness port).
    if status["egress"]["mechanism"] == "landlock" {
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let probe = b.admin(&json!({"cmd": "debug_egress_probe", "addr": other.local_addr().unwrap().to_string()}));
        for p in probe["probes"].as_array().unwrap() {
            assert_eq!(p["connected"], false, "a connect to another port was allowed: {probe}");
        }
        assert!(status["egress"]["connect"].as_str().unwrap().contains(&format!("only to port {port}")), "{status}");
    } else {
        eprintln!("egress is {}: the per-port rule needs Landlock; not checked", status["egress"]["mechanism"]);
    }
    stop(&mut d);

    // What the log server holds of this history (later heads of the cut log would go there too).
    let witnessed = b.dir.join("witness-before-cut.log");
    std::fs::copy(&witness, &witnessed).unwrap();
    let audit = b.state.join("audit");
    let untouched = b.dir.join("audit-untouched");
    copy_dir(&audit, &untouched);

    // The cut, then a restart: govboxd recovers without complaint.
    cut_store(&audit.join("db"), first_size);
    let mut d = b.start();
    let second = export(&b, "second.json");
    stop(&mut d);
    let (ok, out) = verify(&b, &second, &first, None);
    assert!(ok, "the cut is invisible to an export checked only against the previous one:\n{out}");
    let (ok, out) = verify(&b, &second, &first, Some(&witnessed));
    assert!(!ok, "verify --witness passed a log cut after its head was witnessed:\n{out}");
    assert!(out.contains("FAIL  witness"), "{out}");

    // The same log untouched passes.
    std::fs::remove_dir_all(&audit).unwrap();
    copy_dir(&untouched, &audit);
    let d = b.start();
    let third = export(&b, "third.json");
    drop(d);
    let (ok, out) = verify(&b, &third, &first, Some(&witnessed));
    assert!(ok, "the untouched log fails verify --witness:\n{out}");
    assert!(out.contains("PASS  witness") && out.contains("extends the largest witnessed head"), "{out}");
}
