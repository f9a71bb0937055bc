//! A model's answer, as the tool-call parsers, the streamed-call tracker and the reasoning
//! splitter read it: never a panic; splitting at any point gives the same reasoning and content
//! as the whole text, and the same calls and arguments when streamed in two pieces as in one.
//! The first byte picks the format and where to cut.
#![no_main]

use govbox_engine::reasoning::split_parts;
use govbox_engine::tool_stream::{CallDelta, CallTracker};
use govbox_engine::tools::ToolFormat;
use libfuzzer_sys::fuzz_target;

/// The calls the deltas build: (name, arguments).
fn joined(deltas: Vec<CallDelta>) -> Vec<(String, String)> {
    let mut calls: Vec<(String, String)> = Vec::new();
    for d in deltas {
        if let Some(n) = d.name {
            calls.push((n, String::new()));
        }
        calls[d.index].1.push_str(&d.arguments);
    }
    calls
}

fuzz_target!(|data: &[u8]| {
    let Some((&flag, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let formats = [ToolFormat::Hermes, ToolFormat::Llama3Json, ToolFormat::DeepSeek, ToolFormat::Glm4];
    let format = formats[usize::from(flag & 1) | usize::from((flag >> 1) & 2)];
    let parsed = format.parse(text);
    let mut cut = (flag as usize * 7) % (text.len() + 1);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut whole = CallTracker::new(format);
    let once = joined(whole.finish(text, &parsed));
    let mut pieces = CallTracker::new(format);
    let mut deltas = pieces.update(&text[..cut]);
    deltas.extend(pieces.finish(text, &parsed));
    assert_eq!(once, joined(deltas));
    let inside = flag & 2 == 2;
    assert_eq!(split_parts(inside, &[text]), split_parts(inside, &[&text[..cut], &text[cut..]]));
});
