//! The filter for outputs that arrive piece by piece (tokens, SSE chunks).
//!
//! It holds back only the last `longest - 1` normalised characters of what it was given, where
//! `longest` is the longest keyword, exception or pattern of the library, and releases the rest.
//! A character is released only once every rule that could start at it has been decided: a
//! match starting at normalised character `s` is complete, and so is every exception that could
//! cover it, once `longest` characters from `s` on have arrived. So a keyword split across
//! chunks is found before any of its characters leave, and a benign longer word listed as an
//! exception is never cut short by a premature verdict. Characters that normalise to nothing
//! (spaces, punctuation, format characters) are released with the character before them, so
//! they add no hold-back.
//!
//! The last `longest` normalised characters already released are kept as context, so that an
//! exception starting in released text still covers a keyword in held text.

use std::sync::Arc;

use crate::format::Action;
use crate::matcher::{Hit, Policy};

/// A verdict, as audit entries and metrics record it: which category and rule, never the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The category id.
    pub category: String,
    /// The rule id.
    pub rule: String,
    /// Refused or replaced.
    pub action: Action,
}

impl Verdict {
    /// The verdict for a hit of `policy`.
    pub fn of(policy: &Policy, hit: &Hit) -> Verdict {
        let c = policy.category_of(hit);
        Verdict { category: c.id.clone(), rule: policy.rule_of(hit).to_string(), action: c.action }
    }
}

/// What one step of the filter lets through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Released {
    /// Text that may be sent now (replacements already applied).
    pub text: String,
    /// Each replacement made in it.
    pub replaced: Vec<Verdict>,
    /// Set when a refusing rule hit: `text` is what came before the match, the stream must stop,
    /// and the answer ends with this category's refusal.
    pub refused: Option<(Verdict, String)>,
}

/// A streaming output filter over one answer.
#[derive(Debug)]
pub struct StreamFilter {
    policy: Arc<Policy>,
    /// Original text given but not yet released.
    pending: String,
    /// The normalised form of `pending`.
    norm: String,
    /// For each character of `norm`, the byte offset in `pending` of the character it came from.
    origins: Vec<usize>,
    /// Up to `longest` normalised characters that were already released.
    context: String,
    stopped: bool,
}

impl StreamFilter {
    /// A filter for one answer under `policy`.
    pub fn new(policy: Arc<Policy>) -> Self {
        StreamFilter {
            policy,
            pending: String::new(),
            norm: String::new(),
            origins: Vec::new(),
            context: String::new(),
            stopped: false,
        }
    }

    /// The library it applies.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Whether a refusal stopped it; everything given afterwards is dropped.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes the next piece of the answer and returns what may be sent now.
    pub fn push(&mut self, piece: &str) -> Released {
        if self.stopped {
            return Released::default();
        }
        let base = self.pending.len();
        self.pending.push_str(piece);
        self.policy.normaliser().normalise_mapped(piece, base, &mut self.norm, &mut self.origins);
        self.step(false)
    }

    /// Ends the answer: decides what is still held and releases the rest.
    pub fn finish(&mut self) -> Released {
        if self.stopped {
            return Released::default();
        }
        let out = self.step(true);
        self.stopped = true;
        out
    }

    /// Filters a whole text at once, as a non-streamed answer is.
    pub fn filter_text(policy: Arc<Policy>, text: &str) -> Released {
        let mut f = StreamFilter::new(policy);
        let mut out = f.push(text);
        if out.refused.is_none() {
            let rest = f.finish();
            out.text.push_str(&rest.text);
            out.replaced.extend(rest.replaced);
            out.refused = rest.refused;
        }
        out
    }

    fn step(&mut self, last: bool) -> Released {
        let mut out = Released::default();
        let longest = self.policy.longest();
        loop {
            let window = format!("{}{}", self.context, self.norm);
            let from = self.context.len();
            // A match is decided once `longest` characters from its start have arrived (or the
            // answer ended): then it and every exception that could cover it are complete.
            let decided = |h: &Hit| last || window[h.start..].chars().count() >= longest;
            let Some(hit) = self.policy.find(&window, from, &decided) else { break };
            let verdict = Verdict::of(&self.policy, &hit);
            let first = window[from..hit.start].chars().count();
            let last_char = window[from..hit.end].chars().count() - 1;
            let start = self.origins[first];
            let end = self.origins[last_char]
                + self.pending[self.origins[last_char]..].chars().next().map_or(0, char::len_utf8);
            out.text.push_str(&self.pending[..start]);
            if verdict.action == Action::Refuse {
                let refusal = self.policy.category_of(&hit).refusal.clone();
                out.refused = Some((verdict, refusal));
                self.stopped = true;
                self.pending.clear();
                self.norm.clear();
                self.origins.clear();
                return out;
            }
            out.text.push_str(&self.policy.category_of(&hit).replacement);
            out.replaced.push(verdict);
            // What follows the replaced text is filtered afresh; the replacement itself is the
            // library's own text and is not matched again.
            let rest = self.pending.split_off(end);
            self.pending = String::new();
            self.norm.clear();
            self.origins.clear();
            self.context.clear();
            self.policy.normaliser().normalise_mapped(&rest, 0, &mut self.norm, &mut self.origins);
            self.pending = rest;
        }
        let held = if last { 0 } else { longest - 1 };
        let count = self.origins.len();
        let (cut, keep_from) = if count > held {
            let k = count - held;
            (self.origins.get(k).copied().unwrap_or(self.pending.len()), k)
        } else if count == 0 {
            (self.pending.len(), 0)
        } else {
            (self.origins[0], 0)
        };
        // Characters of `norm` before `keep_from` are released; so is every original byte before
        // the first held character.
        let split = self.norm.char_indices().nth(keep_from).map_or(self.norm.len(), |(i, _)| i);
        let held_norm = self.norm.split_off(split);
        self.context.push_str(&self.norm);
        let ctx_chars = self.context.chars().count();
        if ctx_chars > longest {
            let drop = self.context.char_indices().nth(ctx_chars - longest).map_or(0, |(i, _)| i);
            self.context.drain(..drop);
        }
        self.norm = held_norm;
        self.origins.drain(..keep_from);
        for o in &mut self.origins {
            *o -= cut;
        }
        out.text.push_str(&self.pending[..cut]);
        self.pending.drain(..cut);
        out
    }
}
