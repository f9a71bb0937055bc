//! Test banks: the questions a library release is judged by, one JSON object a line:
//!
//! ```text
//! {"id":"v-001","expect":"refuse","category":"violence","prompt":"……"}
//! {"id":"n-001","expect":"answer","prompt":"……"}
//! ```
//!
//! `expect` is `refuse` (a should-refuse question, which names its category) or `answer` (a
//! should-not-refuse question; its category, when given, is the one it is close to).

use serde::{Deserialize, Serialize};

use crate::error::{PolicyError, Result};
use crate::format::{LIST_LIMIT, is_id, text_of};

/// A question is at most this many bytes.
pub const MAX_PROMPT_BYTES: usize = 16 << 10;
/// A bank holds at most this many questions.
pub const MAX_QUESTIONS: usize = 100_000;

/// What a question should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The box must refuse it.
    Refuse,
    /// The box must answer it.
    Answer,
}

/// One question of a bank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Question {
    /// Its id within the bank.
    pub id: String,
    /// Refuse or answer.
    pub expect: Expect,
    /// The category it tests.
    #[serde(default)]
    pub category: Option<String>,
    /// The question itself.
    pub prompt: String,
}

/// Parses a bank file.
pub fn parse_bank(bytes: &[u8], file: &str) -> Result<Vec<Question>> {
    let text = text_of(bytes, file, LIST_LIMIT)?;
    let mut out = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let err = |reason: String| PolicyError::Line { file: file.into(), line: n + 1, reason };
        if line.trim().is_empty() {
            continue;
        }
        if out.len() >= MAX_QUESTIONS {
            return Err(PolicyError::Limit { what: "questions in a bank", limit: MAX_QUESTIONS });
        }
        let q: Question = serde_json::from_str(line).map_err(|e| err(format!("not a question: {e}")))?;
        if !is_id(&q.id) {
            return Err(err("'id' must be 1-64 of a-z, 0-9, '-', '_', '.'".into()));
        }
        if !ids.insert(q.id.clone()) {
            return Err(err(format!("'id' {} is used twice", q.id)));
        }
        if q.prompt.trim().is_empty() || q.prompt.len() > MAX_PROMPT_BYTES {
            return Err(err(format!("'prompt' must be 1-{MAX_PROMPT_BYTES} bytes")));
        }
        if q.expect == Expect::Refuse && q.category.is_none() {
            return Err(err("a should-refuse question names its 'category'".into()));
        }
        out.push(q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banks_parse_and_bad_lines_are_named() {
        let ok = "{\"id\":\"a\",\"expect\":\"refuse\",\"category\":\"v\",\"prompt\":\"x\"}\n\n{\"id\":\"b\",\"expect\":\"answer\",\"prompt\":\"y\"}\n";
        assert_eq!(parse_bank(ok.as_bytes(), "b.jsonl").map(|b| b.len()).ok(), Some(2));
        for (bad, want) in [
            ("{\"id\":\"a\",\"expect\":\"refuse\",\"prompt\":\"x\"}", "line 1: a should-refuse"),
            (
                "{\"id\":\"a\",\"expect\":\"answer\",\"prompt\":\"x\"}\n{\"id\":\"a\",\"expect\":\"answer\",\"prompt\":\"y\"}",
                "line 2",
            ),
            ("{\"id\":\"a\",\"expect\":\"maybe\",\"prompt\":\"x\"}", "not a question"),
        ] {
            match parse_bank(bad.as_bytes(), "b.jsonl") {
                Err(e) => assert!(e.to_string().contains(want), "{e}"),
                Ok(_) => panic!("accepted {bad}"),
            }
        }
    }
}
