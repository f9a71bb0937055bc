//! Durable audit appends per second with 1, 8 and 64 concurrent writers, against the
//! single-writer ceiling of a plain sled `insert` + `flush` loop on the same disk.
//!
//! `cargo run --release -p govbox-audit --example append_bench -- DIR [SECONDS] [intl|gm]`
//! (`bench/audit-append.sh` runs it on a real-disk folder). The socket runs start the real
//! `govbox-auditd` of the same build (`target/release/govbox-auditd`, which the script builds).
//! With `gm` the log is of the `gm` suite: SM3 leaves and tree, SM2-signed checkpoints (every
//! 1000 entries), HMAC-SM3.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use govbox_audit::remote::AuditClient;
use govbox_audit::{AuditKeys, AuditLog, AuditOptions, Event};
use govbox_provisioning::{Overwrite, SigningKey, Suite};

fn event(i: u64) -> Event {
    Event::InferenceRequest {
        request_id: format!("chatcmpl-{i:016x}"),
        client: "hr-portal".into(),
        model: "qwen2-7b-instruct".into(),
        model_digest: "5f".repeat(32),
        prompt_hmac: format!("{:064x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15),
        endpoint: "/v1/chat/completions".into(),
        user_hmac: None,
    }
}

/// Appends from `writers` threads for `secs` with `append`; returns durable entries per second.
fn drive(writers: u64, secs: Duration, append: impl Fn(Event) + Clone + Send + 'static) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let (append, stop) = (append.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    append(event(t << 32 | n));
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(secs);
    stop.store(true, Ordering::Relaxed);
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    total as f64 / start.elapsed().as_secs_f64()
}

fn open(dir: &Path, name: String, suite: Suite) -> AuditLog {
    let keys = AuditKeys::new(SigningKey::generate_with(suite.signature_algorithm()).unwrap(), [9; 32]);
    assert_eq!(keys.suite, suite);
    AuditLog::open(dir.join(name), keys, AuditOptions::default()).unwrap()
}

/// `append_blocking` on the log in this process.
fn log_rate(dir: &Path, writers: u64, secs: Duration, suite: Suite) -> f64 {
    let log = open(dir, format!("log-{suite}-{writers}"), suite);
    let writer = log.clone();
    let rate = drive(writers, secs, move |e| {
        writer.append_blocking(e).unwrap();
    });
    assert!(log.verify_store().unwrap().ok);
    log.close().unwrap();
    rate
}

/// The same through the real `govbox-auditd`, a process of its own: the writers on an
/// [`AuditClient`], one JSON line each way per entry over its Unix socket. Afterwards the
/// process is stopped and its store checked.
fn socket_rate(dir: &Path, writers: u64, secs: Duration, suite: Suite) -> f64 {
    let exe = std::env::current_exe().unwrap();
    let auditd = exe.parent().and_then(Path::parent).unwrap().join("govbox-auditd");
    assert!(auditd.exists(), "{} is missing: cargo build --release -p govbox-audit --bins", auditd.display());
    let keys = dir.join(format!("keys-{writers}"));
    std::fs::create_dir_all(&keys).unwrap();
    let signing = SigningKey::generate_with(suite.signature_algorithm()).unwrap();
    signing.write_pem(&keys.join("audit.key"), Overwrite::Refuse).unwrap();
    std::fs::write(keys.join("audit-hmac.key"), [9u8; 32]).unwrap();
    signing.public_key().write_pem(&keys.join("device.pub"), Overwrite::Refuse).unwrap();
    let (store, path) = (dir.join(format!("socket-{suite}-{writers}")), dir.join(format!("audit-{writers}.sock")));
    let mut child = std::process::Command::new(auditd)
        .arg("--audit-dir")
        .arg(&store)
        .arg("--keys")
        .arg(&keys)
        .arg("--socket")
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        match AuditClient::connect(&path) {
            Ok(c) => break Arc::new(c),
            Err(e) if Instant::now() > deadline => panic!("govbox-auditd did not answer: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let rate = drive(writers, secs, move |e| {
        client.append_blocking(e).unwrap();
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let log = AuditLog::open(&store, AuditKeys::new(signing, [9; 32]), AuditOptions::default()).unwrap();
    assert!(log.verify_store().unwrap().ok);
    rate
}

/// The ceiling one writer can reach without group commit: insert one entry, flush, repeat.
fn sled_rate(dir: &Path, secs: Duration) -> f64 {
    let db = sled::open(dir.join("plain-sled")).unwrap();
    let tree = db.open_tree("entries").unwrap();
    let bytes = serde_json::to_vec(&event(0)).unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < secs {
        tree.insert(n.to_be_bytes(), bytes.as_slice()).unwrap();
        db.flush().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The same, but as the writer stores an entry: entry and leaf in one two-tree transaction.
fn sled_tx_rate(dir: &Path, secs: Duration) -> f64 {
    use sled::Transactional;
    let db = sled::open(dir.join("plain-sled-tx")).unwrap();
    let (entries, leaves) = (db.open_tree("entries").unwrap(), db.open_tree("leaves").unwrap());
    let bytes = serde_json::to_vec(&event(0)).unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < secs {
        (&entries, &leaves)
            .transaction(|(e, l)| {
                e.insert(&n.to_be_bytes(), bytes.as_slice())?;
                l.insert(&n.to_be_bytes(), &[7u8; 32])?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .unwrap();
        db.flush().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "target/audit-bench".into());
    let secs = Duration::from_secs_f64(args.next().map_or(3.0, |s| s.parse().expect("SECONDS is a number")));
    let suite: Suite = args.next().map_or(Suite::Intl, |s| s.parse().expect("SUITE is intl or gm"));
    println!("suite: {suite}");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();

    let plain = sled_rate(dir.path(), secs);
    println!("{:<34} {:>12}  {:>8}", "run", "entries/s", "vs sled");
    println!("{:<34} {:>12.0}  {:>8.2}", "sled insert+flush, 1 writer", plain, 1.0);
    let tx = sled_tx_rate(dir.path(), secs);
    println!("{:<34} {:>12.0}  {:>8.2}", "sled 2-tree txn+flush, 1 writer", tx, tx / plain);
    let mut rates = Vec::new();
    for writers in [1, 8, 64] {
        let r = log_rate(dir.path(), writers, secs, suite);
        println!("{:<34} {:>12.0}  {:>8.2}", format!("audit append_blocking, {writers} writers"), r, r / plain);
        rates.push(r);
    }
    println!("group-commit gain (64 writers vs 1): {:.1}x", rates[2] / rates[0]);
    let mut socket = 0.0;
    for writers in [1, 64] {
        socket = socket_rate(dir.path(), writers, secs, suite);
        println!(
            "{:<34} {:>12.0}  {:>8.2}",
            format!("via govbox-auditd process, {writers} writers"),
            socket,
            socket / plain
        );
    }
    let target = 5000.0;
    for (what, rate) in [("in process", rates[2]), ("through the socket", socket)] {
        let verdict = if rate >= target { "meets" } else { "MISSES" };
        println!("64 writers {what}: {rate:.0} durable entries/s, {verdict} the {target:.0}/s target");
    }
}
