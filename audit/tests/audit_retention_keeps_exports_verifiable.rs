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
    let tail = log.tail(2).unwrap();
    assert_eq!((tail[0].seq, tail[1].seq), (25, seq), "the intent, then the counts");
    let Event::Policy { detail } = &tail[0].event else { panic!("{:?}", tail[0]) };
    assert!(detail.contains("forced prune of the entries from before") && detail.ends_with("begins"), "{detail}");
    let Event::Policy { detail } = &tail[1].event else { panic!("{:?}", tail[1]) };
    assert!(detail.contains("forced prune: removed seqs 10..25 (15 entries)"), "{detail}");
    assert!(detail.contains("the last export covered 20 entries"), "{detail}");

    let third = log.export(ExportRange::default()).unwrap();
    let r3 = verify_export(&third, Some(&second), None).unwrap();
    assert!(r3.ok, "{r3:#?}");
    assert_eq!((r3.from, r3.to), (25, 26));
    let report = log.verify_store().unwrap();
    assert!(report.ok && report.from == 25, "{report:#?}");
    log.close().unwrap();
    drop(log);

    // Reopening a pruned log recovers and continues.
    let log = fx.open();
    assert_eq!(log.append_blocking(common::request(0)).unwrap(), 27);
    assert!(log.verify_store().unwrap().ok);
}

#[test]
fn a_forced_prune_is_on_record_before_it_removes_anything() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 10);
    // A cut-off in the future: the intent entry, written first, would fall before it.
    let intent = Event::Admin { actor: "uid 0".into(), action: "forced_prune".into(), subject: "reason: test".into() };
    let r = log.prune_forced(OffsetDateTime::now_utc() + time::Duration::days(1), intent).unwrap();
    assert_eq!((r.removed, r.pruned_before, r.recorded_at), (10, 10, Some(11)), "{r:?}");
    let left = log.tail(5).unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    let Event::Admin { action, subject, .. } = &left[0].event else { panic!("{:?}", left[0]) };
    assert_eq!((left[0].seq, action.as_str(), subject.as_str()), (10, "forced_prune", "reason: test"));
    assert!(matches!(&left[1].event, Event::Policy { detail } if detail.contains("removed seqs 0..10")), "{left:?}");
    assert!(log.verify_store().unwrap().ok);
}
