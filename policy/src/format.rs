//! The library's files as an agency writes them. A library is a folder:
//!
//! ```text
//! policy.toml            what the library is, its categories, patterns, thresholds
//! lists/<category>.txt   keywords, one a line: `keyword` or `rule-id<TAB>keyword`
//! lists/exceptions.txt   longer benign words that contain a keyword and must not be hit
//! banks/<name>.jsonl     test questions (see `bank`)
//! ```
//!
//! ```toml
//! format = "govbox-policy/1"
//! name = "agency-baseline"
//! version = "2026.12.1"
//! exceptions = ["lists/exceptions.txt"]
//! banks = ["banks/release.jsonl"]
//! apply_to = ["chat", "completions", "embeddings", "rerank"]  # default: chat and completions
//! [normalise]
//! traditional = true
//! [thresholds]
//! should_refuse = 0.95      # at least this share of should-refuse questions is refused
//! should_not_refuse = 0.05  # at most this share of ordinary questions is refused
//! [[category]]
//! id = "violence"
//! action = "refuse"         # or "replace"
//! refusal = "抱歉，这个问题我无法回答。"
//! keywords = ["lists/violence.txt"]
//! patterns = [{ id = "violence-re-1", regex = "炸.{0,3}药" }]
//! ```
//!
//! Lines that are empty or start with `#` are skipped. Regular expressions are matched against
//! the normalised text, so they are written in normalised form (lower case, no spaces when
//! separators are skipped), and each must have a bounded match length.

use serde::Deserialize;

use crate::error::{PolicyError, Result};
use crate::normalise::NormaliseOptions;

/// The `policy.toml` cap: a library's lists live in their own files.
pub const POLICY_TOML_LIMIT: u64 = 1 << 20;
/// The cap on one list or bank file.
pub const LIST_LIMIT: u64 = 32 << 20;

/// What a category does when one of its rules hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The request is refused, or the stream is stopped and ends with the refusal text.
    Refuse,
    /// The matched text is replaced by the replacement and the answer goes on.
    Replace,
}

/// Where a library applies: the API surfaces whose inputs it checks (and, for the generative
/// ones, whose answers it filters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Surface {
    /// `/v1/chat/completions`: every message, and the answer as it streams.
    Chat,
    /// `/v1/completions`: every prompt and the suffix, and the answer as it streams.
    Completions,
    /// `/v1/embeddings`: every input, token-id inputs as the text they decode to.
    Embeddings,
    /// `/v1/rerank`: the query and every document.
    Rerank,
}

impl Surface {
    /// Every surface, in the order `policy.toml` names them.
    pub const ALL: [Surface; 4] = [Surface::Chat, Surface::Completions, Surface::Embeddings, Surface::Rerank];

    /// Its name in `apply_to`.
    pub fn name(self) -> &'static str {
        match self {
            Surface::Chat => "chat",
            Surface::Completions => "completions",
            Surface::Embeddings => "embeddings",
            Surface::Rerank => "rerank",
        }
    }
}

/// `apply_to` when the library does not say: the generative APIs, which must always be filtered.
fn default_apply_to() -> Vec<String> {
    vec![Surface::Chat.name().into(), Surface::Completions.name().into()]
}

/// `policy.toml`, as parsed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Must be [`crate::FORMAT`].
    pub format: String,
    /// The library's name, as clients and `govbox policy list` show it.
    pub name: String,
    /// The library's version, as its maintainers number releases.
    pub version: String,
    /// A line on what it is.
    #[serde(default)]
    pub description: String,
    /// Which normalisation steps apply.
    #[serde(default)]
    pub normalise: NormaliseOptions,
    /// The release criteria for the test banks.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// Files of benign words that contain keywords.
    #[serde(default)]
    pub exceptions: Vec<String>,
    /// Files of test questions.
    #[serde(default)]
    pub banks: Vec<String>,
    /// The API surfaces it applies to (names of [`Surface`]): `chat` and `completions` always
    /// (GB/T 45654 asks for generated content to be filtered), `embeddings` and `rerank` when the
    /// library asks for their inputs to be checked too.
    #[serde(default = "default_apply_to")]
    pub apply_to: Vec<String>,
    /// The risk categories.
    #[serde(rename = "category")]
    pub categories: Vec<CategoryFile>,
}

/// The release criteria a bank run is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// The lowest acceptable refusal rate on should-refuse questions, per category.
    pub should_refuse: f64,
    /// The highest acceptable refusal rate on should-not-refuse questions.
    pub should_not_refuse: f64,
}

impl Default for Thresholds {
    /// TC260-003's figures: at least 95 % refused of what must be, at most 5 % of what must not.
    fn default() -> Self {
        Thresholds { should_refuse: 0.95, should_not_refuse: 0.05 }
    }
}

/// One category of `policy.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryFile {
    /// Its id, as audit entries and metrics name it: `[a-z0-9_-]`, at most 64 bytes.
    pub id: String,
    /// Its name for people.
    #[serde(default)]
    pub title: String,
    /// Refuse or replace.
    pub action: Action,
    /// What the client is told when this category refuses.
    #[serde(default)]
    pub refusal: String,
    /// What replaces matched text when the action is `replace`.
    #[serde(default)]
    pub replacement: String,
    /// Files of keywords.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Regular expressions.
    #[serde(default)]
    pub patterns: Vec<PatternFile>,
}

/// One regular expression of a category.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternFile {
    /// Its rule id.
    pub id: String,
    /// The expression, over normalised text.
    pub regex: String,
}

/// The format-level checks of `policy.toml`: size, UTF-8, syntax, format, and the shape of ids
/// and paths. What needs the lists (keywords, regexes) is checked when the library compiles.
pub fn parse_policy_toml(bytes: &[u8], file: &str) -> Result<PolicyFile> {
    let text = text_of(bytes, file, POLICY_TOML_LIMIT)?;
    // The format is read first, so that a newer library is reported as such rather than as a
    // schema error.
    #[derive(Deserialize)]
    struct FormatOnly {
        format: Option<String>,
    }
    let head: FormatOnly = toml::from_str(text).map_err(|e| syntax(file, &e))?;
    let found = head.format.unwrap_or_default();
    if found != crate::FORMAT {
        return Err(PolicyError::Format { file: file.into(), found });
    }
    let parsed: PolicyFile = toml::from_str(text).map_err(|e| syntax(file, &e))?;
    check_fields(&parsed, file)?;
    Ok(parsed)
}

fn syntax(file: &str, e: &toml::de::Error) -> PolicyError {
    PolicyError::Syntax { file: file.into(), reason: e.message().to_string() }
}

fn field(file: &str, field: String, reason: &str) -> PolicyError {
    PolicyError::Field { file: file.into(), field, reason: reason.into() }
}

fn check_fields(p: &PolicyFile, file: &str) -> Result<()> {
    if !is_id(&p.name) {
        return Err(field(file, "name".into(), "must be 1-64 of a-z, 0-9, '-', '_', '.'"));
    }
    if p.version.is_empty() || p.version.len() > 64 || p.version.chars().any(char::is_control) {
        return Err(field(file, "version".into(), "must be 1-64 printable characters"));
    }
    let t = p.thresholds;
    for (name, rate) in [("should_refuse", t.should_refuse), ("should_not_refuse", t.should_not_refuse)] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(field(file, format!("thresholds.{name}"), "a rate must lie between 0 and 1 (0.95 is 95 %)"));
        }
    }
    if t.should_not_refuse >= t.should_refuse {
        return Err(field(
            file,
            "thresholds".into(),
            "should_not_refuse must be below should_refuse (a bank cannot tell refusing from answering otherwise)",
        ));
    }
    surfaces(p, file)?;
    if p.categories.is_empty() {
        return Err(field(file, "category".into(), "at least one category is needed"));
    }
    for (i, path) in p.exceptions.iter().enumerate() {
        check_rel_path(path).map_err(|r| field(file, format!("exceptions[{i}]"), r))?;
    }
    for (i, path) in p.banks.iter().enumerate() {
        check_rel_path(path).map_err(|r| field(file, format!("banks[{i}]"), r))?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in p.categories.iter().enumerate() {
        if !is_id(&c.id) || c.id == "off" {
            return Err(field(file, format!("category[{i}].id"), "must be 1-64 of a-z, 0-9, '-', '_', '.', not 'off'"));
        }
        if !seen.insert(c.id.as_str()) {
            return Err(field(file, format!("category[{i}].id"), "is used by another category"));
        }
        match c.action {
            Action::Refuse if c.refusal.trim().is_empty() => {
                return Err(field(file, format!("category[{i}].refusal"), "a refusing category needs a refusal text"));
            }
            Action::Replace if c.replacement.is_empty() => {
                return Err(field(
                    file,
                    format!("category[{i}].replacement"),
                    "a replacing category needs a replacement",
                ));
            }
            _ => {}
        }
        for (j, path) in c.keywords.iter().enumerate() {
            check_rel_path(path).map_err(|r| field(file, format!("category[{i}].keywords[{j}]"), r))?;
        }
        for (j, pat) in c.patterns.iter().enumerate() {
            if !is_id(&pat.id) {
                return Err(field(
                    file,
                    format!("category[{i}].patterns[{j}].id"),
                    "must be 1-64 of a-z, 0-9, '-', '_', '.'",
                ));
            }
        }
    }
    Ok(())
}

/// `apply_to` as surfaces: known names, each once, `chat` and `completions` among them.
pub(crate) fn surfaces(p: &PolicyFile, file: &str) -> Result<Vec<Surface>> {
    let mut out: Vec<Surface> = Vec::new();
    for (i, name) in p.apply_to.iter().enumerate() {
        let Some(s) = Surface::ALL.into_iter().find(|s| s.name() == name) else {
            return Err(field(file, format!("apply_to[{i}]"), "must be one of chat, completions, embeddings, rerank"));
        };
        if out.contains(&s) {
            return Err(field(file, format!("apply_to[{i}]"), "names a surface twice"));
        }
        out.push(s);
    }
    for required in [Surface::Chat, Surface::Completions] {
        if !out.contains(&required) {
            return Err(field(
                file,
                "apply_to".into(),
                "must list chat and completions: generated content is always filtered",
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// A file's bytes as text: at most `limit` bytes of UTF-8.
pub(crate) fn text_of<'a>(bytes: &'a [u8], file: &str, limit: u64) -> Result<&'a str> {
    if bytes.len() as u64 > limit {
        return Err(PolicyError::TooLarge { file: file.into(), limit });
    }
    std::str::from_utf8(bytes).map_err(|e| PolicyError::Syntax { file: file.into(), reason: format!("not UTF-8: {e}") })
}

/// Ids that go into audit entries and metric labels: short and plain.
pub(crate) fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

/// A path inside the library folder: relative, plain components, no `..`.
fn check_rel_path(path: &str) -> std::result::Result<(), &'static str> {
    if path.is_empty() || path.len() > 255 || path.starts_with('/') {
        return Err("must be a relative path of 1-255 bytes");
    }
    if path.split('/').any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\\') || c.contains('\0')) {
        return Err("must have plain components: no '.', '..', empty parts or backslashes");
    }
    Ok(())
}

/// One entry of a keyword or exception list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// Its line, from 1.
    pub line: usize,
    /// Its explicit rule id, when the line gave one.
    pub id: Option<String>,
    /// The word as written.
    pub text: String,
}

/// Parses a keyword or exception list: UTF-8, one entry a line, `#` comments, optional
/// `rule-id<TAB>word`.
pub fn parse_list(bytes: &[u8], file: &str) -> Result<Vec<ListEntry>> {
    let text = text_of(bytes, file, LIST_LIMIT)?;
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, word) = match line.split_once('\t') {
            Some((id, word)) => {
                if !is_id(id) {
                    return Err(PolicyError::Line {
                        file: file.into(),
                        line: n + 1,
                        reason: "the rule id before the tab must be 1-64 of a-z, 0-9, '-', '_', '.'".into(),
                    });
                }
                (Some(id.to_string()), word)
            }
            None => (None, line),
        };
        out.push(ListEntry { line: n + 1, id, text: word.to_string() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "format = \"govbox-policy/1\"\nname = \"t\"\nversion = \"1\"\n\
        [[category]]\nid = \"a\"\naction = \"refuse\"\nrefusal = \"no\"\n";

    #[test]
    fn a_minimal_file_parses_with_default_thresholds() {
        let p = parse_policy_toml(MINIMAL.as_bytes(), "policy.toml");
        let Ok(p) = p else { panic!("{p:?}") };
        assert_eq!(p.thresholds, Thresholds::default());
        assert_eq!(surfaces(&p, "policy.toml").ok(), Some(vec![Surface::Chat, Surface::Completions]));
        assert!(p.normalise.separators && !p.normalise.traditional);
    }

    #[test]
    fn bad_files_name_the_field() {
        let cases = [
            (MINIMAL.replace("govbox-policy/1", "govbox-policy/2"), "format 'govbox-policy/2'"),
            (MINIMAL.replace("refusal = \"no\"", "refusal = \"\""), "category[0].refusal"),
            (MINIMAL.replace("id = \"a\"", "id = \"A b\""), "category[0].id"),
            (format!("{MINIMAL}keywords = [\"../etc/passwd\"]\n"), "category[0].keywords[0]"),
            (format!("{MINIMAL}colour = 1\n"), "unknown field"),
            (
                MINIMAL.replace("version = \"1\"\n", "version = \"1\"\nthresholds = { should_refuse = 2.0 }\n"),
                "thresholds.should_refuse",
            ),
            (
                MINIMAL.replace("version = \"1\"\n", "version = \"1\"\nthresholds = { should_not_refuse = nan }\n"),
                "thresholds.should_not_refuse",
            ),
            (
                MINIMAL.replace(
                    "version = \"1\"\n",
                    "version = \"1\"\nthresholds = { should_refuse = 0.5, should_not_refuse = 0.6 }\n",
                ),
                "must be below should_refuse",
            ),
            (
                MINIMAL.replace(
                    "version = \"1\"\n",
                    "version = \"1\"\napply_to = [\"chat\", \"completions\", \"embedding\"]\n",
                ),
                "apply_to[2]",
            ),
            (MINIMAL.replace("version = \"1\"\n", "version = \"1\"\napply_to = [\"chat\", \"chat\"]\n"), "apply_to[1]"),
            (
                MINIMAL.replace("version = \"1\"\n", "version = \"1\"\napply_to = [\"chat\", \"rerank\"]\n"),
                "field 'apply_to': must list chat and completions",
            ),
        ];
        for (text, want) in cases {
            match parse_policy_toml(text.as_bytes(), "policy.toml") {
                Err(e) => assert!(e.to_string().contains(want), "{e} lacks {want}"),
                Ok(_) => panic!("accepted a file that should fail with {want}"),
            }
        }
    }

    #[test]
    fn lists_take_ids_and_skip_comments() {
        let l = parse_list("# c\n\nfoo\nr-1\tbar\r\n".as_bytes(), "x.txt").ok();
        let want = vec![
            ListEntry { line: 3, id: None, text: "foo".into() },
            ListEntry { line: 4, id: Some("r-1".into()), text: "bar".into() },
        ];
        assert_eq!(l, Some(want));
        assert!(parse_list(b"Bad Id\tword\n", "x.txt").is_err());
        assert!(parse_list(&[0xff, b'\n'], "x.txt").is_err());
    }
}
