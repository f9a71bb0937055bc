//! Normalisation before matching: the same fold is applied to the library's keywords when it is
//! compiled and to every text that is checked, so that a keyword matches however it was
//! disguised.
//!
//! Each input character is folded on its own, independently of its neighbours. That is what
//! lets the streaming filter normalise chunk by chunk and still find a keyword split across
//! chunks: the normalised text of `a + b` is always the normalised text of `a` followed by that
//! of `b`. The steps, in order:
//! 1. format characters (zero-width spaces and joiners, bidi controls, the BOM, soft hyphens,
//!    variation selectors, tag characters) are dropped;
//! 2. compatibility decomposition (Unicode NFKD, one character at a time) turns full-width and
//!    half-width forms, ligatures, circled, parenthesised and mathematical letters into plain
//!    ones, and combining marks (accents) that it splits off are dropped;
//! 3. upper case becomes lower case;
//! 4. the character map: look-alike letters from other scripts, traditional characters when the
//!    library asks for them, and the library's own pairs (which win);
//! 5. when separators are skipped, everything that is not a letter or a digit (spaces,
//!    punctuation, symbols, emoji) is dropped, so `炸 药`, `炸.药` and `炸🙂药` read as `炸药`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use unicode_normalization::char::{decompose_compatible, is_combining_mark};

use crate::tables;

/// Which normalisation steps a library asks for. Every step but the traditional-character fold
/// is on by default: a library written in simplified Chinese that also wants to catch the
/// traditional spelling says so, since it changes what its keywords mean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NormaliseOptions {
    /// Compatibility decomposition: full/half width, ligatures, circled and mathematical letters.
    pub width: bool,
    /// Lower-case everything.
    pub case: bool,
    /// Drop zero-width, bidi and other format characters.
    pub format_chars: bool,
    /// Drop everything that is not a letter or a digit, so inserted spaces or punctuation do
    /// not hide a keyword. Keywords lose theirs too.
    pub separators: bool,
    /// Fold look-alike letters of other scripts into Latin ones.
    pub homoglyphs: bool,
    /// Fold traditional Chinese characters into simplified ones.
    pub traditional: bool,
    /// The library's own pairs, `from = "to"`, one character each; they override the tables.
    pub map: std::collections::BTreeMap<String, String>,
}

impl Default for NormaliseOptions {
    fn default() -> Self {
        NormaliseOptions {
            width: true,
            case: true,
            format_chars: true,
            separators: true,
            homoglyphs: true,
            traditional: false,
            map: Default::default(),
        }
    }
}

/// A compiled normaliser.
#[derive(Debug, Clone)]
pub struct Normaliser {
    opts: NormaliseOptions,
    map: HashMap<char, char>,
}

/// A character that [`NormaliseOptions::map`] cannot use: a key or value that is not exactly one
/// character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMapEntry(pub String);

impl Normaliser {
    /// Compiles the options; fails on a map entry that is not one character to one character.
    pub fn new(opts: NormaliseOptions) -> Result<Self, BadMapEntry> {
        let mut map = HashMap::new();
        if opts.homoglyphs {
            map.extend(tables::pairs(tables::HOMOGLYPHS));
        }
        if opts.traditional {
            map.extend(tables::pairs(tables::TRADITIONAL));
        }
        for (from, to) in &opts.map {
            let (Some(f), Some(t)) = (single_char(from), single_char(to)) else {
                return Err(BadMapEntry(format!("{from:?} = {to:?}")));
            };
            map.insert(f, t);
        }
        Ok(Normaliser { opts, map })
    }

    /// The options it was built from.
    pub fn options(&self) -> &NormaliseOptions {
        &self.opts
    }

    /// Folds one character, handing each resulting character (none, one or a few) to `out`.
    pub fn fold_char(&self, c: char, out: &mut impl FnMut(char)) {
        if self.opts.format_chars && is_format_char(c) {
            return;
        }
        if self.opts.width {
            decompose_compatible(c, |d| self.fold_decomposed(d, out));
        } else {
            self.fold_decomposed(c, out);
        }
    }

    fn fold_decomposed(&self, d: char, out: &mut impl FnMut(char)) {
        if self.opts.width && is_combining_mark(d) {
            return;
        }
        if self.opts.case && d.is_uppercase() {
            for l in d.to_lowercase() {
                if !is_combining_mark(l) {
                    self.fold_mapped(l, out);
                }
            }
        } else {
            self.fold_mapped(d, out);
        }
    }

    fn fold_mapped(&self, c: char, out: &mut impl FnMut(char)) {
        let c = self.map.get(&c).copied().unwrap_or(c);
        if self.opts.separators && !c.is_alphanumeric() {
            return;
        }
        out(c);
    }

    /// The normalised form of `text`.
    pub fn normalise(&self, text: &str) -> String {
        let mut s = String::with_capacity(text.len());
        for c in text.chars() {
            self.fold_char(c, &mut |n| s.push(n));
        }
        s
    }

    /// Normalises `text`, appending to `out` and recording, for each character appended, the byte
    /// offset (plus `base`) in `text` of the input character it came from.
    pub fn normalise_mapped(&self, text: &str, base: usize, out: &mut String, origins: &mut Vec<usize>) {
        for (i, c) in text.char_indices() {
            self.fold_char(c, &mut |n| {
                out.push(n);
                origins.push(base + i);
            });
        }
    }
}

fn single_char(s: &str) -> Option<char> {
    let mut it = s.chars();
    let c = it.next()?;
    it.next().is_none().then_some(c)
}

/// Unicode format characters (general category Cf) that can hide inside a word without showing,
/// and the invisible fillers and selectors that are used the same way.
fn is_format_char(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFFB}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E007F}'
        | '\u{E0100}'..='\u{E01EF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(opts: NormaliseOptions, s: &str) -> String {
        Normaliser::new(opts).map(|n| n.normalise(s)).unwrap_or_default()
    }

    #[test]
    fn each_step_folds_its_disguise() {
        let d = NormaliseOptions::default();
        assert_eq!(norm(d.clone(), "ＦＡＬＵＮ"), "falun");
        assert_eq!(norm(d.clone(), "炸\u{200B}药"), "炸药");
        assert_eq!(norm(d.clone(), "炸 . 药!"), "炸药");
        assert_eq!(norm(d.clone(), "Ｂｏｍｂ"), "bomb");
        assert_eq!(norm(d.clone(), "bоmb"), "bomb"); // Cyrillic о
        assert_eq!(norm(d.clone(), "bómb"), "bomb");
        assert_eq!(norm(d.clone(), "ⓑⓞⓜⓑ"), "bomb");
        assert_eq!(norm(d.clone(), "炸彈"), "炸彈"); // traditional stays unless asked
        let t = NormaliseOptions { traditional: true, ..NormaliseOptions::default() };
        assert_eq!(norm(t, "炸彈"), "炸弹");
        let mut mapped = NormaliseOptions::default();
        mapped.map.insert("〇".into(), "零".into());
        assert_eq!(norm(mapped, "〇"), "零");
    }

    #[test]
    fn folding_is_per_character_so_chunks_compose() {
        let n = Normaliser::new(NormaliseOptions { traditional: true, ..Default::default() }).ok();
        let n =
            n.as_ref().map(|n| (n.normalise("Ｂ\u{200B}о"), n.normalise("m b 彈"), n.normalise("Ｂ\u{200B}оm b 彈")));
        let Some((a, b, whole)) = n else { panic!("default options compile") };
        assert_eq!(a + &b, whole);
    }

    #[test]
    fn a_map_entry_of_two_characters_is_refused() {
        let mut o = NormaliseOptions::default();
        o.map.insert("ab".into(), "c".into());
        assert!(Normaliser::new(o).is_err());
    }
}
