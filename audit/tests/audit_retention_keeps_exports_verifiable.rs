//! Pruning removes old entries only once exported (unless forced), and later exports still verify.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Fixture, fill};
use govbox_audit::{AuditLog, AuditOptions, Event, ExportRange, verify_export};
use time::OffsetDateTime;

/// Polls until the clock is past the newest entry's millisecond, so "older than now" holds for all.
fn wait_past_last_entry(log: &AuditLog) {
    let last = log.tail(1).unwrap()[0].parsed_time().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while OffsetDateTime::now_utc() <= last + time::Duration::milliseconds(1) {
        assert!(Instant::now() < deadline, "the clock does not advance");
        std::thread::yield_now();
    }
}

#[test]
fn prune_respects_retention_and_the_last_export_and_force_is_recorded() {
    let fx = Fixture::new();
    let default = fx.open();
    fill(&default, 10);
    wait_past_last_entry(&default);
    let r = default.prune(OffsetDateTime::now_utc(), false).unwrap();
    assert_eq!(r.removed, 0, "the default 180-day retention keeps today's entries");
    default.close().unwrap();
    drop(default);

    let log = fx.open_with(AuditOptions { retention_days: 0, ..Default::default() });
    wait_past_last_entry(&log);
    let r = log.prune_expired().unwrap();
    assert_eq!((r.removed, r.held_by_export), (0, true), "nothing was exported yet");

    let first = log.export(ExportRange::default()).unwrap();
    fill(&log, 10);
    wait_past_last_entry(&log);
    let r = log.prune_expired().unwrap();
    assert_eq!((r.removed, r.pruned_before, r.held_by_export), (10, 10, true), "only the exported 10 go");
    assert!(log.verify_store().unwrap().ok);
    let e = log.export(ExportRange { from_seq: Some(3), ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("entries before seq 10 were pruned"), "{e}");

    let second = log.export(ExportRange::default()).unwrap();
    let r2 = verify_export(&second, Some(&first), Some(&fx.public())).unwrap();
    assert!(r2.ok, "{r2:#?}");
    assert_eq!((r2.from, r2.count), (10, 10));

    fill(&log, 5);
    wait_past_last_entry(&log);
    let r = log.prune(OffsetDateTime::now_utc(), true).unwrap();
    assert_eq!((r.removed, r.pruned_before, r.forced), (15, 25, true), "forced: the unexported 5 go too");
    let seq = r.recorded_at.unwrap();
    let tail = log.tail(1).unwrap();
    assert_eq!(tail[0].seq, seq);
    let Event::Policy { detail } = &tail[0].event else { panic!("{:?}", tail[0]) };
    assert!(detail.contains("forced prune: removed seqs 10..25 (15 entries)"), "{detail}");
    assert!(detail.contains("the last export covered 20 entries"), "{detail}");

    let third = log.export(ExportRange::default()).unwrap();
    let r3 = verify_export(&third, Some(&second), None).unwrap();
    assert!(r3.ok, "{r3:#?}");
    assert_eq!((r3.from, r3.to), (25, 25));
    let report = log.verify_store().unwrap();
    assert!(report.ok && report.from == 25, "{report:#?}");
    log.close().unwrap();
    drop(log);

    // Reopening a pruned log recovers and continues.
    let log = fx.open();
    assert_eq!(log.append_blocking(common::request(0)).unwrap(), 26);
    assert!(log.verify_store().unwrap().ok);
}
