//! The policy library's parsers on arbitrary bytes: never a panic. The input is split at its
//! first NUL into a `policy.toml` and a keyword list; what parses is compiled with that list as
//! every file it names, and a text (the list's bytes, lossily) is checked and streamed.
#![no_main]

use std::sync::Arc;

use govbox_policy::{Policy, StreamFilter, parse_list, parse_policy_toml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (toml, list) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[..0]),
    };
    let _ = parse_list(list, "fuzz.txt");
    let _ = govbox_policy::bank::parse_bank(list, "fuzz.jsonl");
    let Ok(file) = parse_policy_toml(toml, "policy.toml") else { return };
    let Ok(policy) = Policy::compile(file, &mut |_| Ok(list.to_vec())) else { return };
    let text = String::from_utf8_lossy(list);
    let _ = policy.check(&text);
    let policy = Arc::new(policy);
    let mut f = StreamFilter::new(policy);
    for piece in text.split_inclusive(|c: char| c.is_whitespace()) {
        let _ = f.push(piece);
    }
    let _ = f.finish();
});
