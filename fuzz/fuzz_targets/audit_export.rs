//! `govbox audit verify` on arbitrary bytes: never a panic, whatever the export (and the
//! previous export) hold. An odd first byte splits the input into an export and a previous one.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((flag, rest)) if flag & 1 == 1 => {
            let (export, previous) = rest.split_at(rest.len() / 2);
            let _ = govbox_audit::verify_export(export, Some(previous), None);
        }
        _ => {
            let _ = govbox_audit::verify_export(data, None, None);
        }
    }
});
