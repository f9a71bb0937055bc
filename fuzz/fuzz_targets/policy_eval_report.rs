//! The figures of a `govbox policy eval` report on arbitrary bytes, as `eval-verify` reads them:
//! the JSON document, its `report.summary` and `report.results`, and the recount. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = govbox_policy::eval::recount(&doc["report"]);
});
