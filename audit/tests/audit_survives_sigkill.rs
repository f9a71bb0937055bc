//! A writer killed with SIGKILL mid-stream loses no acknowledged entry; the log reopens,
//! verifies and continues the seqs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::{Fixture, request};
use govbox_audit::{AuditKeys, AuditLog, AuditOptions};
use govbox_provisioning::SigningKey;

const CHILD_DIR: &str = "GOVBOX_AUDIT_SIGKILL_CHILD_DIR";

/// In the child process: append from four threads forever, printing each acknowledged seq.
#[test]
fn sigkill_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let pem = std::fs::read_to_string(format!("{dir}/audit.key")).unwrap();
    let keys = AuditKeys::new(SigningKey::from_pkcs8_pem(&pem, "test").unwrap(), [42; 32]);
    let log = AuditLog::open(format!("{dir}/audit"), keys, AuditOptions { checkpoint_every: 50, ..Default::default() })
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let seq = log.append_blocking(request(t * 1_000_000 + i)).unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {seq}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn acknowledged_entries_survive_sigkill_and_seqs_continue() {
    let fx = Fixture::new();
    std::fs::write(fx.dir.path().join("audit.key"), &fx.pem).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sigkill_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, fx.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    // Kept open until the child is dead, so that it cannot die of a closed pipe (and close the
    // log cleanly) instead of SIGKILL.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if let Some(seq) = line.unwrap().strip_prefix("ACK ") {
            acked.push(seq.parse::<u64>().unwrap());
            if acked.len() >= 700 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "{status:?}");
    drop(lines);
    assert!(acked.len() >= 700, "the child stopped early after {} acks", acked.len());

    let log = fx.open();
    let size = log.tree_size();
    let max = *acked.iter().max().unwrap();
    assert!(size > max, "acknowledged seq {max} is lost: the log has {size} entries");
    let report = log.verify_store().unwrap();
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.count, size);
    assert_eq!(log.append_blocking(request(0)).unwrap(), size, "seqs continue without a gap");
}
