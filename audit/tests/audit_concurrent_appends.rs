//! Many writers at once: every seq is handed out once, without gaps, and the log verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, request};
use govbox_audit::{ExportRange, verify_export};

#[test]
fn sixty_four_threads_of_two_hundred_appends_get_unique_contiguous_seqs() {
    let fx = Fixture::new();
    let log = fx.open();
    let threads: Vec<_> = (0..64u64)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..200u64).map(|i| log.append_blocking(request(t * 1000 + i)).unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..12_800).collect::<Vec<_>>());
    assert_eq!(log.tree_size(), 12_800);
    assert_eq!(log.failures(), 0);

    let report = log.verify_store().unwrap();
    assert!(report.ok, "{report:#?}");
    assert_eq!(report.count, 12_800);
    let export = log.export(ExportRange::default()).unwrap();
    let r = verify_export(&export, None, Some(&fx.public())).unwrap();
    assert!(r.ok && r.count == 12_800, "{:#?}", common::failures(&r));
    // Default checkpoint_every is 1000: the writer made checkpoints on the way.
    assert!(r.checks.iter().filter(|c| c.name == "checkpoint").count() >= 10, "{:?}", r.checks.len());
}
