//! A flood of authentication failures becomes one entry per source and minute.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;

use common::Fixture;
use govbox_audit::Event;

#[test]
fn failures_are_counted_per_source_and_written_at_checkpoint_and_close() {
    let fx = Fixture::new();
    let log = fx.open();
    let a: IpAddr = "10.1.2.3".parse().unwrap();
    let b: IpAddr = "2001:db8::7".parse().unwrap();
    for _ in 0..5000 {
        log.record_auth_failure(a, "bad_token");
    }
    log.record_auth_failure(b, "unknown_client_cert");
    // Unless the minute turned over during the loop, one entry per source (two for `a` if it did).
    log.checkpoint().unwrap();
    let entries = log.tail(10).unwrap();
    let count_for = |src: &str| -> u64 {
        entries
            .iter()
            .filter_map(|e| match &e.event {
                Event::AuthFailure { source, count, .. } if source == src => Some(*count),
                _ => None,
            })
            .sum()
    };
    assert_eq!(count_for("10.1.2.3"), 5000);
    assert_eq!(count_for("2001:db8::7"), 1);
    assert!(entries.len() <= 4, "{entries:?}");

    log.record_auth_failure(a, "bad_token");
    let before = log.tree_size();
    log.close().unwrap();
    drop(log);
    let log = fx.open();
    assert_eq!(log.tree_size(), before + 1, "close writes the pending tally");
    let last = log.tail(1).unwrap().remove(0);
    assert!(matches!(last.event, Event::AuthFailure { count: 1, ref reason, .. } if reason == "bad_token"), "{last:?}");
}
