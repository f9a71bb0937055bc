//! The safetensors header parser (`govbox_engine::weights::parse_safetensors_header`) on
//! arbitrary bytes: never a panic, and every entry it accepts is a byte range inside the input,
//! after the header. Seed with truncated fixture files (`fuzz/seeds/safetensors_header`).
#![no_main]

use govbox_engine::weights::parse_safetensors_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = parse_safetensors_header(data) else { return };
    for e in &entries {
        assert!(e.start <= e.end && e.end <= data.len(), "{}: [{}, {}) of {}", e.name, e.start, e.end, data.len());
        assert!(e.start >= 8, "{} overlaps the length prefix", e.name);
    }
});
