//! The GGUF header parser (`govbox_engine::gguf::parse_gguf`) on arbitrary bytes: never a panic,
//! and whatever it accepts describes tensors that lie inside the input with the alignment it
//! declares. Seed with the headers of `tests/fixtures/gguf/*.gguf` (`fuzz/seeds/gguf_header`).
#![no_main]

use govbox_engine::gguf::parse_gguf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = parse_gguf(data) else { return };
    assert!(f.alignment.is_power_of_two(), "alignment {}", f.alignment);
    assert!(f.data_offset.is_multiple_of(f.alignment));
    for t in &f.tensors {
        let end = t.offset.checked_add(t.n_bytes as u64).expect("tensor end overflows");
        assert!(end <= data.len() as u64, "tensor {} ends at {end}, past {} bytes", t.name, data.len());
        assert!(t.offset >= f.data_offset as u64, "tensor {} starts before the data section", t.name);
        let _ = (t.shape(), t.n_elements());
    }
    let _ = f.architecture();
});
