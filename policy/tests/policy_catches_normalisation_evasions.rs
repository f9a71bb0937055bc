//! Every keyword of a generated library of more than 10,000 entries is caught however it is
//! disguised (width, case, zero-width characters, inserted spaces, punctuation or emoji,
//! look-alike letters, accents, traditional characters), and gets the same verdict as when
//! written plainly.

mod common;

use common::{disguises, generate, traditional};

#[test]
fn every_disguise_of_every_keyword_gets_the_plain_verdict() {
    let lib = generate(10_000);
    let policy = lib.policy();
    assert!(policy.keyword_count() >= 10_000, "only {} keywords", policy.keyword_count());
    let verdict = |text: &str| policy.check(&format!("0123 {text} 4567")).map(|h| policy.rule_of(&h).to_string());
    let mut checked = 0;
    for word in lib.cjk.iter().chain(&lib.latin).chain(&lib.traditional) {
        let plain = verdict(word);
        assert!(plain.is_some(), "{word:?} written plainly is not caught");
        let mut forms = disguises(word);
        if lib.traditional.contains(word) {
            let t = traditional(word);
            assert_ne!(&t, word);
            forms.extend(disguises(&t).into_iter().map(|(how, s)| (how, s.clone())));
            forms.push(("traditional", t));
        }
        for (how, disguised) in forms {
            assert_eq!(verdict(&disguised), plain, "{how} hides {word:?} as {disguised:?}");
            checked += 1;
        }
    }
    assert!(checked > 120_000, "{checked} disguises checked");
}

#[test]
fn bounded_patterns_match_on_normalised_text() {
    let lib = generate(10_000);
    let policy = lib.policy();
    for text in ["qq12345zz", "ＱＱ 1 2 3 4 5 6 ＺＺ", "q\u{200B}q123456789zz"] {
        let hit = policy.check(text).map(|h| policy.rule_of(&h).to_string());
        assert_eq!(hit.as_deref(), Some("violence-re-1"), "{text:?}");
    }
    assert_eq!(policy.check("qq1234zz"), None, "four digits are outside the pattern");
}

#[test]
fn rule_ids_are_explicit_or_name_list_and_line() {
    let lib = generate(10_000);
    let policy = lib.policy();
    let first_fraud = &lib.cjk[lib.cjk.len() / 2];
    let hit = policy.check(first_fraud).map(|h| (policy.category_of(&h).id.clone(), policy.rule_of(&h).to_string()));
    assert_eq!(hit, Some(("fraud".to_string(), "fraud-first".to_string())));
    let second = &lib.cjk[lib.cjk.len() / 2 + 1];
    let hit = policy.check(&format!("1{second}2")).map(|h| policy.rule_of(&h).to_string());
    assert_eq!(hit.as_deref(), Some("fraud.fraud.3"));
}
