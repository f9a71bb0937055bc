//! The reliability campaign's short form, for CI (the full one is `scripts/reliability.sh`; see
//! tests/RELIABILITY.md): a real govboxd holds 200 concurrent TLS connections, serves 20 s of mixed
//! chat, streamed chat and embeddings at saturation with no 5xx but admission's 503, survives
//! each abuse check with the documented status and stays ready, and its audit log verifies with
//! every answered request in it. The log is govbox-auditd's, as in the packaged setup.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::time::Duration;

use govbox_e2e::TestBox;
use govbox_e2e::load::{self, Target};

const HEADER_TIMEOUT: u64 = 2;
const MAX_BODY: usize = 256 << 10;

#[test]
fn connections_load_and_abuse_leave_the_daemon_healthy_and_the_audit_log_whole() {
    let b = TestBox::new("reliability-short");
    std::fs::write(
        &b.config,
        format!(
            "config_version = 2\nlisten = \"127.0.0.1:{}\"\nthreads = 2\nlog_level = \"info\"\n\
             [limits]\nmax_connections = 300\nmax_connections_per_address = 300\nheader_timeout_secs = {HEADER_TIMEOUT}\nmax_body_bytes = {MAX_BODY}\n\
             [serving]\nmax_concurrent = 2\nqueue_depth = 4\n",
            b.port
        ),
    )
    .unwrap();
    b.use_auditd("");
    let mut auditd = b.start_auditd();
    let mut d = b.start();
    let pid = d.child.id();
    let t = Target::of(&b).unwrap();
    let ca = std::fs::read_to_string(b.certs.join("ca.crt")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let soak = rt.block_on(async {
        let hold = load::hold(&t, 200, 5, Duration::from_millis(500)).await;
        assert_eq!(hold.held, 200, "connections dropped: {hold:?}\n{}", d.log_text());

        // 12 clients against 2 running + 4 queued: some answers must be admission's 503.
        let soak = load::soak(&t, 12, 20, Duration::from_secs(5), pid).await;
        eprintln!(
            "soak: {} requests, {:?}, rss {:?} -> {:?} KiB",
            soak.requests, soak.by_status, soak.rss_warm_kib, soak.rss_end_kib
        );
        assert_eq!(soak.unexpected_5xx(), 0, "{soak:?}");
        assert_eq!(soak.bad_bodies, 0, "{:?}", soak.errors);
        assert_eq!(soak.transport_errors, 0, "{:?}", soak.errors);
        assert!(soak.by_status.get(&200).copied().unwrap_or(0) >= 10, "{soak:?}");
        assert!(soak.by_status.keys().all(|s| [200, 503].contains(s)), "{:?}", soak.by_status);

        let checks = [
            load::slowloris(&t, 20, Duration::from_secs(HEADER_TIMEOUT)).await,
            load::oversized_headers(&t).await,
            load::oversized_body(&t, MAX_BODY).await,
            load::bad_certificates(&t, &ca, 200).await,
            load::invalid_utf8(&t).await,
            load::nested_json(&t, 100_000).await,
            load::huge_max_tokens(&t, 4096).await,
        ];
        for c in &checks {
            eprintln!("{}: {} (expected {})", c.name, c.got, c.expected);
        }
        let failed: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
        assert!(failed.is_empty(), "{failed:#?}\n{}", d.log_text());
        soak
    });
    assert!(d.child.try_wait().unwrap().is_none(), "govboxd exited:\n{}", d.log_text());
    drop(d);
    assert!(auditd.child.try_wait().unwrap().is_none(), "govbox-auditd exited:\n{}", auditd.log_text());

    let export = b.dir.join("export.json");
    let (verified, entries, ids, out) = load::audit_export_verify(&b.state, Some(&b.auditd_socket()), &export).unwrap();
    assert!(verified, "audit verify failed: {out}");
    let audited: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let lost: Vec<_> = soak.request_ids.iter().filter(|id| !audited.contains(id.as_str())).collect();
    assert!(lost.is_empty(), "{} of {} answered requests missing from {entries} audit entries", lost.len(), ids.len());
}
