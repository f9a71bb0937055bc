//! The compiled library: one Aho-Corasick automaton over every normalised keyword and exception,
//! and the size-limited regular expressions, all matched on normalised text.
//!
//! A keyword hit is ignored when a listed exception (a longer benign word) occurs around it,
//! covering the whole hit. Regular expressions are checked the same way.

use std::collections::HashMap;
use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex::{Regex, RegexBuilder};

use crate::error::{PolicyError, Result};
use crate::format::{Action, ListEntry, PolicyFile, Surface, Thresholds, parse_list, parse_policy_toml, surfaces};
use crate::normalise::Normaliser;

/// At most this many keywords and exceptions together.
pub const MAX_WORDS: usize = 1_000_000;
/// A keyword or exception is at most this many characters once normalised; the streaming filter
/// holds back one fewer than the longest.
pub const MAX_WORD_CHARS: usize = 64;
/// At most this many regular expressions.
pub const MAX_PATTERNS: usize = 256;
/// A regular expression's source is at most this long.
pub const MAX_REGEX_SOURCE: usize = 1024;
/// A regular expression matches at most this many bytes of normalised text (64 CJK characters).
pub const MAX_REGEX_MATCH_BYTES: usize = 192;
/// The compiled size cap of one regular expression, and of its lazy DFA.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
const REGEX_DFA_LIMIT: usize = 2 << 20;

/// A category, compiled.
#[derive(Debug, Clone)]
pub struct Category {
    /// Its id.
    pub id: String,
    /// Its name for people.
    pub title: String,
    /// Refuse or replace.
    pub action: Action,
    /// What the client is told when it refuses.
    pub refusal: String,
    /// What replaces matched text.
    pub replacement: String,
}

#[derive(Debug, Clone)]
struct Rule {
    id: String,
    category: usize,
}

#[derive(Debug, Clone, Copy)]
enum Word {
    Keyword(usize),
    Exception,
}

/// A rule that hit: which, and where in the normalised text (byte offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    rule: usize,
    category: usize,
    /// Where the match starts in the normalised text.
    pub start: usize,
    /// Where it ends.
    pub end: usize,
}

/// A compiled policy library.
#[derive(Debug, Clone)]
pub struct Policy {
    name: String,
    version: String,
    description: String,
    thresholds: Thresholds,
    banks: Vec<String>,
    apply_to: Vec<Surface>,
    normaliser: Normaliser,
    categories: Vec<Category>,
    rules: Vec<Rule>,
    words: AhoCorasick,
    word_kinds: Vec<Word>,
    regexes: Vec<(Regex, usize)>,
    longest: usize,
    keyword_count: usize,
}

impl Policy {
    /// Reads and compiles the library in `dir` (its `policy.toml` and the files it names).
    pub fn load_dir(dir: &Path) -> Result<Policy> {
        let read = |rel: &str, limit: u64| -> Result<Vec<u8>> {
            let path = dir.join(rel);
            let meta = std::fs::metadata(&path).map_err(|source| PolicyError::Read { path: path.clone(), source })?;
            if meta.len() > limit {
                return Err(PolicyError::TooLarge { file: rel.into(), limit });
            }
            std::fs::read(&path).map_err(|source| PolicyError::Read { path, source })
        };
        let file = parse_policy_toml(&read("policy.toml", crate::format::POLICY_TOML_LIMIT)?, "policy.toml")?;
        Policy::compile(file, &mut |rel| read(rel, crate::format::LIST_LIMIT))
    }

    /// Compiles a parsed `policy.toml`, reading the lists it names through `read`.
    pub fn compile(file: PolicyFile, read: &mut dyn FnMut(&str) -> Result<Vec<u8>>) -> Result<Policy> {
        let apply_to = surfaces(&file, "policy.toml")?;
        let normaliser = Normaliser::new(file.normalise.clone()).map_err(|bad| PolicyError::Field {
            file: "policy.toml".into(),
            field: "normalise.map".into(),
            reason: format!("{}: each side must be exactly one character", bad.0),
        })?;
        let mut b = Builder::new(&normaliser);
        for (ci, c) in file.categories.iter().enumerate() {
            for path in &c.keywords {
                for entry in parse_list(&read(path)?, path)? {
                    b.add(path, &entry, Some((ci, &c.id)))?;
                }
            }
            for p in &c.patterns {
                b.add_regex(ci, &p.id, &p.regex)?;
            }
        }
        for path in &file.exceptions {
            for entry in parse_list(&read(path)?, path)? {
                b.add(path, &entry, None)?;
            }
        }
        let words = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&b.patterns)
            .or_else(|_| AhoCorasick::builder().match_kind(MatchKind::Standard).build(&b.patterns))
            .map_err(|e| PolicyError::Automaton(e.to_string()))?;
        let Builder { rules, regexes, patterns: _, kinds, index: _, longest, normaliser: _ } = b;
        let keyword_count = rules.len() - regexes.len();
        let categories = file
            .categories
            .into_iter()
            .map(|c| Category {
                id: c.id,
                title: c.title,
                action: c.action,
                refusal: c.refusal,
                replacement: c.replacement,
            })
            .collect();
        Ok(Policy {
            name: file.name,
            version: file.version,
            description: file.description,
            thresholds: file.thresholds,
            banks: file.banks,
            apply_to,
            normaliser,
            categories,
            keyword_count,
            rules,
            words,
            word_kinds: kinds,
            regexes,
            longest: longest.max(1),
        })
    }

    /// The library's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its version.
    pub fn version(&self) -> &str {
        &self.version
    }
    /// Its one-line description.
    pub fn description(&self) -> &str {
        &self.description
    }
    /// The release criteria for its banks.
    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }
    /// The bank files it names, relative to its folder.
    pub fn banks(&self) -> &[String] {
        &self.banks
    }
    /// Whether it applies to `surface` (`apply_to`).
    pub fn applies_to(&self, surface: Surface) -> bool {
        self.apply_to.contains(&surface)
    }
    /// Its categories, in file order.
    pub fn categories(&self) -> &[Category] {
        &self.categories
    }
    /// How many literal keywords it holds (after de-duplication).
    pub fn keyword_count(&self) -> usize {
        self.keyword_count
    }
    /// The normaliser it applies.
    pub fn normaliser(&self) -> &Normaliser {
        &self.normaliser
    }
    /// The longest match any rule or exception can have, in normalised characters (for regular
    /// expressions, their byte bound, which is never fewer).
    pub fn longest(&self) -> usize {
        self.longest
    }
    /// The category a hit belongs to.
    pub fn category_of(&self, hit: &Hit) -> &Category {
        &self.categories[hit.category]
    }
    /// The rule id of a hit.
    pub fn rule_of(&self, hit: &Hit) -> &str {
        &self.rules[hit.rule].id
    }

    /// Checks a whole text: the first rule that hits, if any, whatever its action.
    pub fn check(&self, text: &str) -> Option<Hit> {
        self.find(&self.normaliser.normalise(text), 0, &|_| true)
    }

    /// Checks a request's input: the first hit of a refusing category. Replacing categories
    /// govern what the box shows, so they do not refuse questions.
    pub fn check_input(&self, text: &str) -> Option<Hit> {
        let refuses = |h: &Hit| self.categories[h.category].action == Action::Refuse;
        self.find(&self.normaliser.normalise(text), 0, &refuses)
    }

    /// The first hit in `norm` (normalised text) starting at or after byte `from` that `decided`
    /// accepts, skipping hits that a listed exception covers.
    pub(crate) fn find(&self, norm: &str, from: usize, decided: &dyn Fn(&Hit) -> bool) -> Option<Hit> {
        let mut covers: Vec<(usize, usize)> = Vec::new();
        let mut hits: Vec<Hit> = Vec::new();
        for m in self.words.find_overlapping_iter(norm) {
            match self.word_kinds[m.pattern().as_usize()] {
                Word::Exception => covers.push((m.start(), m.end())),
                Word::Keyword(rule) if m.start() >= from => {
                    hits.push(Hit { rule, category: self.rules[rule].category, start: m.start(), end: m.end() })
                }
                Word::Keyword(_) => {}
            }
        }
        let covered = |s: usize, e: usize| covers.iter().any(|&(a, b)| a <= s && e <= b);
        if let Some(h) = hits.into_iter().find(|h| decided(h) && !covered(h.start, h.end)) {
            return Some(h);
        }
        for (re, rule) in &self.regexes {
            let mut at = from;
            while let Some(m) = re.find_at(norm, at) {
                let hit = Hit { rule: *rule, category: self.rules[*rule].category, start: m.start(), end: m.end() };
                if decided(&hit) && !covered(m.start(), m.end()) {
                    return Some(hit);
                }
                at = m.start() + norm[m.start()..].chars().next().map_or(1, char::len_utf8);
                if at > norm.len() {
                    break;
                }
            }
        }
        None
    }
}

struct Builder<'a> {
    normaliser: &'a Normaliser,
    patterns: Vec<String>,
    kinds: Vec<Word>,
    index: HashMap<String, usize>,
    rules: Vec<Rule>,
    regexes: Vec<(Regex, usize)>,
    longest: usize,
}

impl<'a> Builder<'a> {
    fn new(normaliser: &'a Normaliser) -> Self {
        Builder {
            normaliser,
            patterns: Vec::new(),
            kinds: Vec::new(),
            index: HashMap::new(),
            rules: Vec::new(),
            regexes: Vec::new(),
            longest: 0,
        }
    }

    fn add(&mut self, file: &str, entry: &ListEntry, category: Option<(usize, &str)>) -> Result<()> {
        let line_err = |reason: String| PolicyError::Line { file: file.into(), line: entry.line, reason };
        let norm = self.normaliser.normalise(&entry.text);
        let chars = norm.chars().count();
        if chars == 0 {
            return Err(line_err(
                "the word is empty once normalised (only spaces, punctuation or format characters)".into(),
            ));
        }
        if chars > MAX_WORD_CHARS {
            return Err(line_err(format!("the word has {chars} characters once normalised; at most {MAX_WORD_CHARS}")));
        }
        if let Some(&prev) = self.index.get(&norm) {
            // The same word twice in keyword lists is harmless (the first rule keeps it); a word
            // that is both a keyword and an exception is a contradiction the maintainer must settle.
            return match (self.kinds[prev], category) {
                (Word::Keyword(_), Some(_)) | (Word::Exception, None) => Ok(()),
                _ => Err(line_err("the word is both a keyword and an exception once normalised".into())),
            };
        }
        if self.patterns.len() >= MAX_WORDS {
            return Err(PolicyError::Limit { what: "keywords and exceptions", limit: MAX_WORDS });
        }
        let kind = match category {
            Some((ci, cid)) => {
                let id = entry.id.clone().unwrap_or_else(|| format!("{cid}.{}.{}", list_stem(file), entry.line));
                self.rules.push(Rule { id, category: ci });
                Word::Keyword(self.rules.len() - 1)
            }
            None => Word::Exception,
        };
        self.longest = self.longest.max(chars);
        self.index.insert(norm.clone(), self.patterns.len());
        self.patterns.push(norm);
        self.kinds.push(kind);
        Ok(())
    }

    fn add_regex(&mut self, category: usize, id: &str, source: &str) -> Result<()> {
        let err =
            |reason: String| PolicyError::Field { file: "policy.toml".into(), field: format!("pattern {id}"), reason };
        if self.regexes.len() >= MAX_PATTERNS {
            return Err(PolicyError::Limit { what: "regular expressions", limit: MAX_PATTERNS });
        }
        if source.len() > MAX_REGEX_SOURCE {
            return Err(err(format!("longer than {MAX_REGEX_SOURCE} bytes")));
        }
        let hir = regex_syntax::Parser::new().parse(source).map_err(|e| err(e.to_string()))?;
        let props = hir.properties();
        match props.maximum_len() {
            Some(max) if max <= MAX_REGEX_MATCH_BYTES => self.longest = self.longest.max(max),
            Some(max) => return Err(err(format!("matches up to {max} bytes; at most {MAX_REGEX_MATCH_BYTES}"))),
            None => return Err(err("its match length is unbounded (use {m,n}, not * or +)".into())),
        }
        if props.minimum_len() == Some(0) {
            return Err(err("it matches the empty string".into()));
        }
        let re = RegexBuilder::new(source)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_DFA_LIMIT)
            .build()
            .map_err(|e| err(e.to_string()))?;
        self.rules.push(Rule { id: id.to_string(), category });
        self.regexes.push((re, self.rules.len() - 1));
        Ok(())
    }
}

/// `lists/violence.txt` → `violence`: the default rule ids read `category.list.line`.
fn list_stem(file: &str) -> &str {
    let base = file.rsplit('/').next().unwrap_or(file);
    base.split('.').next().unwrap_or(base)
}
