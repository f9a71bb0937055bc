//! The streaming filter catches a keyword however the answer is cut into pieces, before any
//! character of it is released, and holds back no more than the longest pattern less one
//! normalised character.

mod common;

use std::sync::Arc;

use common::{REFUSAL_FRAUD, REFUSAL_VIOLENCE, REPLACEMENT, generate};
use govbox_policy::{Action, Policy, Released, StreamFilter};

/// Runs `pieces` through a filter: the text released, and the refusal if one came.
fn run(policy: &Arc<Policy>, pieces: &[&str]) -> (String, Option<Released>) {
    let mut f = StreamFilter::new(policy.clone());
    let mut out = String::new();
    for p in pieces {
        let r = f.push(p);
        out.push_str(&r.text);
        if r.refused.is_some() {
            assert!(f.stopped());
            assert_eq!(f.push("more").text, "", "a stopped filter lets nothing through");
            return (out, Some(r));
        }
    }
    let r = f.finish();
    out.push_str(&r.text);
    let refused = r.refused.is_some().then_some(r);
    (out, refused)
}

#[test]
fn a_keyword_split_at_any_point_is_refused_before_it_leaves() {
    let lib = generate(10_000);
    let policy = lib.policy();
    let before = "0123456789 ";
    for word in lib.cjk.iter().step_by(25).chain(lib.latin.iter().step_by(5)) {
        let text = format!("{before}{}, 98765", word.chars().map(|c| format!("{c}\u{200B}")).collect::<String>());
        let chars: Vec<char> = text.chars().collect();
        for split in 0..=chars.len() {
            let (a, b): (String, String) = (chars[..split].iter().collect(), chars[split..].iter().collect());
            let (out, refused) = run(&policy, &[&a, &b]);
            let Some(r) = refused else { panic!("{word:?} split at {split} was not refused") };
            let (verdict, refusal) = r.refused.unwrap_or_else(|| unreachable!());
            assert_eq!(verdict.action, Action::Refuse);
            let want = if verdict.category == "violence" { REFUSAL_VIOLENCE } else { REFUSAL_FRAUD };
            assert_eq!(refusal, want);
            assert_eq!(out, before, "{word:?} split at {split}: released {out:?}");
        }
        // Token by token, one character a piece.
        let pieces: Vec<String> = chars.iter().map(char::to_string).collect();
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let (out, refused) = run(&policy, &refs);
        assert!(refused.is_some(), "{word:?} char by char was not refused");
        assert_eq!(out, before);
    }
}

#[test]
fn hold_back_is_the_longest_pattern_less_one_character() {
    let lib = generate(10_000);
    let policy = lib.policy();
    let hold = policy.longest() - 1;
    let mut f = StreamFilter::new(policy.clone());
    let text: String = (0..200).map(|i| char::from(b'0' + (i % 10) as u8)).collect();
    let digits = |r: Released| r.text.chars().filter(char::is_ascii_digit).count();
    let (mut released, mut all) = (0usize, String::new());
    for (i, c) in text.chars().enumerate() {
        let r = f.push(&c.to_string());
        all.push_str(&r.text);
        released += digits(r);
        assert_eq!(i + 1 - released, (i + 1).min(hold), "after {} characters", i + 1);
        // Separators add no hold-back: they leave with the character before them.
        all.push_str(&f.push(" ").text);
    }
    all.push_str(&f.finish().text);
    assert_eq!(all.chars().count(), 400);
}

#[test]
fn replacing_categories_replace_and_the_answer_goes_on() {
    let lib = generate(10_000);
    let policy = lib.policy();
    let word = &lib.replaced[7];
    let text = format!("电话 0123 {word} 结束 4567 {word}!");
    let want = format!("电话 0123 {REPLACEMENT} 结束 4567 {REPLACEMENT}!");
    let whole = StreamFilter::filter_text(policy.clone(), &text);
    assert_eq!(whole.text, want);
    assert_eq!(whole.replaced.len(), 2);
    assert!(whole.replaced.iter().all(|v| v.category == "privacy" && v.action == Action::Replace));
    let pieces: Vec<String> = text.chars().map(String::from).collect();
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let (out, refused) = run(&policy, &refs);
    assert!(refused.is_none());
    assert_eq!(out, want);
    // A question that names the replaced word is not refused: replacing governs outputs only.
    assert!(policy.check_input(&text).is_none());
    assert!(policy.check(&text).is_some());
}
