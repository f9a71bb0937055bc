//! `govbox audit verify --witness` on arbitrary bytes: the witness file parser never panics,
//! whatever the syslog server wrote (frames, lines, or neither).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = govbox_audit::witness::parse_witness_file(data);
});
