//! Reasoning models (DeepSeek-R1 distills, Qwen3) think inside `<think>…</think>` before they
//! answer. The thinking is not the answer: [`ReasoningSplitter`] separates the two as the text
//! streams, so that the API returns the first as `reasoning_content` and only the second as
//! `content`.
//!
//! Where the thinking starts depends on the template: Qwen3's generation prompt ends with
//! `<|im_start|>assistant\n` and the model writes `<think>` itself; DeepSeek-R1's ends with
//! `<｜Assistant｜><think>\n`, so the model's first token is already thinking. With thinking
//! switched off (`enable_thinking: false`), Qwen3's template writes an empty, closed block.
//! [`opens_thinking`] reads which of these the rendered prompt did.

/// What opens a reasoning block.
pub const THINK_OPEN: &str = "<think>";
/// What closes it.
pub const THINK_CLOSE: &str = "</think>";

/// Whether a chat template belongs to a reasoning model (it writes or reads `<think>` blocks).
pub fn template_thinks(source: &str) -> bool {
    source.contains(THINK_OPEN) && source.contains(THINK_CLOSE)
}

/// Whether the rendered prompt `tail` (its last few tokens as text) leaves a reasoning block
/// open, so that the answer starts inside it.
pub fn opens_thinking(tail: &str) -> bool {
    match (tail.rfind(THINK_OPEN), tail.rfind(THINK_CLOSE)) {
        (Some(open), Some(close)) => open > close,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Whether the prompt `ids` end inside an open reasoning block (read from its last 16 tokens).
pub fn prompt_opens_thinking(tok: &crate::tokenizer::Tokenizer, ids: &[u32]) -> bool {
    let tail = &ids[ids.len().saturating_sub(16)..];
    tok.decode(tail, false).is_ok_and(|t| opens_thinking(&t))
}

/// A piece of streamed text, sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Thinking.
    Reasoning(String),
    /// The answer.
    Content(String),
}

/// Splits a streamed answer into reasoning and content. Only a block at the start of the answer
/// is reasoning (a `<think>` later in the answer is the answer's own text). Text that may be the
/// start of a marker is held back until the next piece shows whether it is one.
#[derive(Debug)]
pub struct ReasoningSplitter {
    state: State,
    held: String,
    /// Newlines right after a marker are the template's layout, not text.
    trim_newlines: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing seen yet: a `<think>` here opens a block.
    Start,
    Thinking,
    Answering,
}

impl ReasoningSplitter {
    /// A splitter for an answer that starts inside a reasoning block when `inside` (see
    /// [`opens_thinking`]).
    pub fn new(inside: bool) -> Self {
        Self { state: if inside { State::Thinking } else { State::Start }, held: String::new(), trim_newlines: inside }
    }

    /// Sorts the next piece of text.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let lead = self.held.trim_start();
                    if let Some(rest) = lead.strip_prefix(THINK_OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Thinking;
                        self.trim_newlines = true;
                    } else if THINK_OPEN.starts_with(lead) {
                        return out; // empty, or a part of "<think>": wait
                    } else {
                        self.state = State::Answering;
                    }
                }
                State::Thinking => {
                    self.trim_held();
                    if let Some(at) = self.held.find(THINK_CLOSE) {
                        let reasoning = self.held[..at].to_string();
                        self.held.drain(..at + THINK_CLOSE.len());
                        push_piece(&mut out, Piece::Reasoning(reasoning));
                        self.state = State::Answering;
                        self.trim_newlines = true;
                        continue;
                    }
                    let keep = partial_suffix(&self.held, THINK_CLOSE);
                    let ready: String = self.held.drain(..self.held.len() - keep).collect();
                    push_piece(&mut out, Piece::Reasoning(ready));
                    return out;
                }
                State::Answering => {
                    self.trim_held();
                    push_piece(&mut out, Piece::Content(std::mem::take(&mut self.held)));
                    return out;
                }
            }
        }
    }

    /// What is still held back, at the end of the answer.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        match self.state {
            State::Thinking => push_piece(&mut out, Piece::Reasoning(rest)),
            State::Start | State::Answering => push_piece(&mut out, Piece::Content(rest)),
        }
        out
    }

    fn trim_held(&mut self) {
        if self.trim_newlines {
            let n = self.held.len() - self.held.trim_start_matches('\n').len();
            self.held.drain(..n);
            self.trim_newlines = self.held.is_empty();
        }
    }
}

/// Splits a whole answer given as `parts`: its (reasoning, content).
pub fn split_parts(inside: bool, parts: &[&str]) -> (String, String) {
    let mut s = ReasoningSplitter::new(inside);
    let mut pieces: Vec<Piece> = parts.iter().flat_map(|p| s.push(p)).collect();
    pieces.extend(s.finish());
    let (mut reasoning, mut content) = (String::new(), String::new());
    for p in pieces {
        match p {
            Piece::Reasoning(t) => reasoning.push_str(&t),
            Piece::Content(t) => content.push_str(&t),
        }
    }
    (reasoning, content)
}

fn push_piece(out: &mut Vec<Piece>, p: Piece) {
    match &p {
        Piece::Reasoning(t) | Piece::Content(t) if t.is_empty() => {}
        _ => out.push(p),
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `marker`.
pub fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_split_whatever_the_chunking() {
        let text = "<think>\nFirst, 2+2.\n</think>\n\nIt is 4.";
        let whole = split_parts(false, &[text]);
        assert_eq!(whole, ("First, 2+2.\n".to_string(), "It is 4.".to_string()));
        // Every way of cutting the text in two gives the same answer.
        for i in 1..text.len() {
            assert_eq!(split_parts(false, &[&text[..i], &text[i..]]), whole, "cut at {i}");
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(split_parts(false, &refs), whole);
        // R1: the prompt opened the block.
        assert_eq!(split_parts(true, &["Hmm.", "</th", "ink>\n\nYes."]), ("Hmm.".into(), "Yes.".into()));
        // No block: all content, `<` included; a later <think> is text.
        assert_eq!(split_parts(false, &["<", "b>x</b> <think>"]), (String::new(), "<b>x</b> <think>".into()));
        // Cut off while thinking: all reasoning.
        assert_eq!(split_parts(true, &["still </thi"]), ("still </thi".into(), String::new()));
    }

    #[test]
    fn prompt_tails() {
        assert!(opens_thinking("<｜Assistant｜><think>\n"));
        assert!(!opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
        assert!(!opens_thinking("<|im_start|>assistant\n"));
        assert_eq!(partial_suffix("ab</th", THINK_CLOSE), 4);
        assert_eq!(partial_suffix("ab", THINK_CLOSE), 0);
        assert_eq!(partial_suffix("é<", THINK_CLOSE), 1);
    }
}
