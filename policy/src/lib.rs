//! `govbox-policy`: the content-safety library of a box: its format, the normalisation applied
//! before matching, and the matching itself, on whole texts (inputs, non-streamed answers) and on
//! streamed answers.
//!
//! **What it trusts:** nothing. A library arrives from outside (on a USB stick, inside a signed
//! `policy` package whose signatures the images crate checks); this crate reads it with a size cap
//! on every file and a limit on every count, refuses unbounded or oversized regular expressions,
//! and reports a bad file with its name, line or field.
//!
//! **What it guarantees:** a text is normalised one character at a time (width, case, format
//! characters, inserted separators, look-alike letters, traditional characters when asked), the
//! same way as the library's keywords, and matched by one Aho-Corasick automaton and the
//! size-limited regular expressions; a hit that a listed benign longer word covers is not a hit.
//! The [`StreamFilter`] holds back no more than the longest pattern less one normalised character
//! and releases nothing of a match before deciding it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bank;
mod error;
pub mod eval;
pub mod format;
mod matcher;
mod normalise;
mod stream;
mod tables;

pub use error::{PolicyError, Result};
pub use format::{Action, PolicyFile, Surface, Thresholds, parse_list, parse_policy_toml};
pub use matcher::{Category, Hit, MAX_PATTERNS, MAX_WORD_CHARS, MAX_WORDS, Policy};
pub use normalise::{NormaliseOptions, Normaliser};
pub use stream::{Released, StreamFilter, Verdict};

/// The only `format` of `policy.toml` this version reads.
pub const FORMAT: &str = "govbox-policy/1";
