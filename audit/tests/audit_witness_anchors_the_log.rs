//! The witness anchors the log outside the store: heads reach a syslog receiver (queued while it
//! is down, sent once it is up), and `verify_export_with_witness` fails an export that does not
//! extend the witnessed heads: a log cut back, a log rewritten under the same key, a head of this
//! key that does not verify. An export of the untouched log passes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Fixture, fill, open_sled};
use govbox_audit::witness::{frame, syslog_message};
use govbox_audit::{AuditLog, AuditOptions, ExportRange, SignedTreeHead, VerifyReport, verify_export_with_witness};
use govbox_provisioning::SigningKey;

/// Collects whatever is sent to `listener`.
fn collect(listener: TcpListener) -> Arc<Mutex<Vec<u8>>> {
    let got: Arc<Mutex<Vec<u8>>> = Arc::default();
    let sink = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let (Ok(mut conn), sink) = (conn, sink.clone()) else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    got
}

fn open(fx: &Fixture, port: u16) -> AuditLog {
    let witness = Some(format!("tcp://127.0.0.1:{port}").parse().unwrap());
    fx.open_with(AuditOptions { witness, ..AuditOptions::default() })
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn witnessed(got: &Mutex<Vec<u8>>, size: u64) -> bool {
    let text = String::from_utf8_lossy(&got.lock().unwrap()).into_owned();
    text.contains(&format!("tree_size=\"{size}\""))
}

fn witness_failure(r: &VerifyReport) -> String {
    r.checks.iter().filter(|c| c.name == "witness" && !c.ok).map(|c| c.detail.clone()).collect::<Vec<_>>().join("; ")
}

#[test]
fn heads_wait_for_a_witness_that_is_down_and_then_anchor_the_log() {
    let fx = Fixture::new();
    // A port nobody listens on yet: the heads queue up.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = open(&fx, port);
    fill(&log, 5);
    log.checkpoint().unwrap();
    fill(&log, 3);
    log.checkpoint().unwrap();
    wait_until("the sender has failed once", || log.witness_status().unwrap().last_error.is_some());
    let status = log.witness_status().unwrap();
    assert_eq!(status.pending, 2, "{status:?}");
    assert_eq!(status.address, format!("tcp://127.0.0.1:{port}"));

    // The server comes up: both heads arrive, in order, and nothing is pending.
    let got = collect(TcpListener::bind(("127.0.0.1", port)).unwrap());
    wait_until("both heads reached the witness", || witnessed(&got, 5) && witnessed(&got, 8));
    wait_until("the status shows it", || log.witness_status().unwrap().pending == 0);
    assert_eq!(log.witness_status().unwrap().last_sent_size, Some(8));

    let export = log.export(ExportRange::default()).unwrap();
    wait_until("the export's head reached the witness", || witnessed(&got, 8));
    let file = got.lock().unwrap().clone();
    let r = verify_export_with_witness(&export, None, Some(&fx.public()), &file).unwrap();
    assert!(r.ok, "{r:#?}");

    // Entries 5.. are cut with file access alone: the next export misses witnessed head 8.
    log.close().unwrap();
    drop(log);
    let db = open_sled(&fx.db_path());
    for name in ["entries", "leaves"] {
        let t = db.open_tree(name).unwrap();
        for k in t.range(5u64.to_be_bytes()..).keys() {
            t.remove(k.unwrap()).unwrap();
        }
    }
    let cps = db.open_tree("checkpoints").unwrap();
    for k in cps.range(6u64.to_be_bytes()..).keys() {
        cps.remove(k.unwrap()).unwrap();
    }
    db.open_tree("meta").unwrap().remove("frontier").unwrap();
    db.open_tree("meta").unwrap().remove("last_export").unwrap();
    db.flush().unwrap();
    drop((db, cps));

    let log = fx.open();
    assert_eq!(log.tree_size(), 5, "recovery accepts the cut store");
    let short = log.export(ExportRange::default()).unwrap();
    let r = verify_export_with_witness(&short, None, None, &file).unwrap();
    assert!(!r.ok);
    assert!(witness_failure(&r).contains("has only 5 entries: entries were removed"), "{r:#?}");

    // The insider appends new entries to reach the old size again: the roots differ.
    fill(&log, 6);
    let regrown = log.export(ExportRange::default()).unwrap();
    let r = verify_export_with_witness(&regrown, None, None, &file).unwrap();
    assert!(!r.ok);
    assert!(witness_failure(&r).contains("differs from the witnessed heads of size 8"), "{r:#?}");

    // An export that starts after the witnessed head cannot be checked against it.
    let late = log.export(ExportRange { from_seq: Some(9), ..ExportRange::default() }).unwrap();
    let r = verify_export_with_witness(&late, None, None, &file).unwrap();
    assert!(witness_failure(&r).contains("export from seq 7 or earlier"), "{r:#?}");
}

#[test]
fn a_witness_file_without_a_valid_head_of_this_key_fails() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 3);
    let export = log.export(ExportRange::default()).unwrap();

    // Only another box's head: nothing anchors this log.
    let other = SigningKey::generate().unwrap();
    let foreign = SignedTreeHead::sign(
        &other,
        govbox_provisioning::HashAlgorithm::Sha256,
        2,
        &[1; 32],
        "2026-01-01T00:00:00.000Z".into(),
    );
    let file = frame(&syslog_message(&foreign, "other-box", 7));
    let r = verify_export_with_witness(&export, None, None, &file).unwrap();
    assert!(witness_failure(&r).contains("holds no head of audit key"), "{r:#?}");

    // A head of this key whose signature fails (size changed after signing).
    let mut forged = SignedTreeHead::sign(
        &SigningKey::from_pkcs8_pem(&fx.pem, "test").unwrap(),
        govbox_provisioning::HashAlgorithm::Sha256,
        2,
        &[1; 32],
        "2026-01-01T00:00:00.000Z".into(),
    );
    forged.tree_size = 1;
    let mut file = frame(&syslog_message(&forged, "h", 1));
    file.push(b'\n');
    let r = verify_export_with_witness(&export, None, None, &file).unwrap();
    assert!(witness_failure(&r).contains("witnessed head (size 1)"), "{r:#?}");
}
