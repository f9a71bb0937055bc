//! A model's answer, as the tool-call parsers and the reasoning splitter read it: never a panic,
//! and splitting at any point gives the same reasoning and content as the whole text. The first
//! byte picks the format and where to cut.
#![no_main]

use govbox_engine::reasoning::split_parts;
use govbox_engine::tools::ToolFormat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flag, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let format = if flag & 1 == 0 { ToolFormat::Hermes } else { ToolFormat::Llama3Json };
    let _ = format.parse(text);
    let mut cut = (flag as usize * 7) % (text.len() + 1);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let inside = flag & 2 == 2;
    assert_eq!(split_parts(inside, &[text]), split_parts(inside, &[&text[..cut], &text[cut..]]));
});
