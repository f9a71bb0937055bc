//! Why a policy library could not be read or compiled. Every message names the file (and line or
//! field) and the reason, so that whoever maintains the library can fix it without guessing.

use std::path::PathBuf;

/// A policy library that cannot be used. Nothing is half-loaded: a library either compiles
/// whole or is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A file of the library could not be read.
    #[error("policy file '{path}': {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than its cap.
    #[error("policy file '{file}': larger than the {limit}-byte limit")]
    TooLarge {
        /// The file.
        file: String,
        /// The cap, in bytes.
        limit: u64,
    },
    /// A file is not UTF-8, or `policy.toml` does not parse.
    #[error("policy file '{file}': {reason}")]
    Syntax {
        /// The file.
        file: String,
        /// What the parser said.
        reason: String,
    },
    /// `policy.toml` names another format.
    #[error("policy file '{file}': format '{found}' is not '{}', which this version reads", crate::FORMAT)]
    Format {
        /// The file.
        file: String,
        /// The format it names.
        found: String,
    },
    /// A field of `policy.toml` has a value that cannot be used.
    #[error("policy file '{file}': field '{field}': {reason}")]
    Field {
        /// The file.
        file: String,
        /// The field, e.g. `category[2].refusal`.
        field: String,
        /// Why.
        reason: String,
    },
    /// A line of a keyword, exception or bank file cannot be used.
    #[error("policy file '{file}': line {line}: {reason}")]
    Line {
        /// The file.
        file: String,
        /// The line, from 1.
        line: usize,
        /// Why.
        reason: String,
    },
    /// The library as a whole exceeds a cap (keywords, patterns, categories).
    #[error("policy library: {what} exceeds the limit of {limit}")]
    Limit {
        /// What was counted.
        what: &'static str,
        /// The cap.
        limit: usize,
    },
    /// A bank question, or its result, does not fit the library.
    #[error("test bank: question '{id}': {reason}")]
    Bank {
        /// The question's id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The multi-pattern automaton could not be built.
    #[error("policy library: building the keyword automaton: {0}")]
    Automaton(String),
}

/// Short for this crate's results.
pub type Result<T, E = PolicyError> = std::result::Result<T, E>;

impl PolicyError {
    /// A stable short code for metrics and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::Read { .. } => "policy_read",
            PolicyError::TooLarge { .. } => "policy_too_large",
            PolicyError::Syntax { .. } => "policy_syntax",
            PolicyError::Format { .. } => "policy_format",
            PolicyError::Field { .. } => "policy_field",
            PolicyError::Line { .. } => "policy_line",
            PolicyError::Limit { .. } => "policy_limit",
            PolicyError::Bank { .. } => "policy_bank",
            PolicyError::Automaton(_) => "policy_automaton",
        }
    }
}
