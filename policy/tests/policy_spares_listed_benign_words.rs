//! A keyword inside a longer benign word that the library lists as an exception is not a hit,
//! in a whole text and in a stream split anywhere; the same keyword elsewhere still is.

mod common;

use common::generate;
use govbox_policy::StreamFilter;

#[test]
fn a_keyword_inside_a_listed_benign_word_is_not_a_hit() {
    let lib = generate(10_000);
    let policy = lib.policy();
    assert!(lib.exceptions.len() >= 900, "only {} exceptions", lib.exceptions.len());
    for (kw, benign) in &lib.exceptions {
        assert!(policy.check(&format!("0123{kw}4567")).is_some(), "{kw:?} alone is not caught");
        assert_eq!(policy.check(&format!("0123{benign}4567")), None, "{kw:?} hit inside {benign:?}");
        let spaced: String = benign.chars().map(|c| format!("{c} ")).collect();
        assert_eq!(policy.check(&spaced), None, "{kw:?} hit inside spaced {benign:?}");
        // The benign word next to a bare keyword: the bare one is still caught.
        assert!(policy.check(&format!("{benign}0{kw}")).is_some(), "{kw:?} after {benign:?} is missed");
    }
}

#[test]
fn a_benign_word_split_across_chunks_passes_whole() {
    let lib = generate(10_000);
    let policy = lib.policy();
    for (_, benign) in lib.exceptions.iter().step_by(10) {
        let text = format!("0123 {benign} 4567");
        let chars: Vec<char> = text.chars().collect();
        for split in 0..=chars.len() {
            let (a, b): (String, String) = (chars[..split].iter().collect(), chars[split..].iter().collect());
            let mut f = StreamFilter::new(policy.clone());
            let mut out = String::new();
            for piece in [a.as_str(), b.as_str()] {
                let r = f.push(piece);
                assert!(r.refused.is_none(), "{benign:?} refused when split at {split}");
                out.push_str(&r.text);
            }
            out.push_str(&f.finish().text);
            assert_eq!(out, text);
        }
    }
}
