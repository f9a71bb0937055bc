//! Log-probabilities of generated tokens, for OpenAI's `logprobs` / `top_logprobs`.
//!
//! They are the model's own distribution: a log-softmax of the raw logits of the step that
//! produced the token, before penalties, `logit_bias` and temperature (as vLLM's default
//! reports them), so a client can compare them across sampling settings. They are computed
//! only for requests that ask, on the scheduler thread right after sampling.
//!
//! [`Pending`] hands each token's entry to the caller no later than the text it produced, so
//! that a streamed chunk carries the log-probabilities of exactly the tokens behind its text.

use std::collections::VecDeque;

/// OpenAI's limit on `top_logprobs`.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A sampled token's log-probability and the most likely tokens of the same step (ids).
#[derive(Clone, Debug, PartialEq)]
pub struct IdLogprobs {
    /// The sampled token.
    pub id: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The `top` most likely tokens, most likely first (ties by lower id).
    pub top: Vec<(u32, f32)>,
}

/// One alternative, as text.
#[derive(Clone, Debug, PartialEq)]
pub struct Alternative {
    /// The token's text (a part of a character shows as U+FFFD).
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
}

/// A generated token's log-probability and its alternatives, as text.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The sampled token and its log-probability.
    pub chosen: Alternative,
    /// The most likely tokens of the step, most likely first.
    pub top: Vec<Alternative>,
}

/// The log-probability of `chosen` and the `top` most likely tokens under `logits`
/// (`top` is capped at [`MAX_TOP_LOGPROBS`]). Sums in f64 so that a 150k vocabulary loses
/// nothing to rounding.
pub fn token_logprobs(logits: &[f32], chosen: u32, top: usize) -> IdLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    let lp = |i: u32| logits.get(i as usize).map_or(f32::NEG_INFINITY, |&x| (x as f64 - lse) as f32);
    let k = top.min(MAX_TOP_LOGPROBS).min(logits.len());
    let order = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let mut idx: Vec<u32> = Vec::new();
    if k > 0 {
        idx = (0..logits.len() as u32).collect();
        idx.select_nth_unstable_by(k - 1, order);
        idx.truncate(k);
        idx.sort_unstable_by(order);
    }
    IdLogprobs { id: chosen, logprob: lp(chosen), top: idx.into_iter().map(|i| (i, lp(i))).collect() }
}

/// Entries waiting for their text to be emitted.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Each entry with the byte offset, in the generated text, where its text ends.
    queue: VecDeque<(TokenLogprob, usize)>,
    /// Bytes of text the tokens have produced so far.
    produced: usize,
    /// Bytes emitted so far.
    emitted: usize,
    /// Where the text of the first waiting entry begins.
    first_start: usize,
}

impl Pending {
    /// Adds a token whose text is `piece_len` bytes.
    pub(crate) fn push(&mut self, entry: TokenLogprob, piece_len: usize) {
        self.produced += piece_len;
        self.queue.push_back((entry, self.produced));
    }

    /// `n` more bytes were emitted: the entries whose text is now wholly out.
    pub(crate) fn emitted(&mut self, n: usize) -> Vec<TokenLogprob> {
        self.emitted += n;
        let mut out = Vec::new();
        while let Some((e, end)) = self.queue.pop_front() {
            if end > self.emitted {
                self.queue.push_front((e, end));
                break;
            }
            self.first_start = end;
            out.push(e);
        }
        out
    }

    /// The text was cut after `n` more bytes (a stop string): the entries whose text begins
    /// before the cut; those wholly inside the stop string are dropped with it.
    pub(crate) fn cut(&mut self, n: usize) -> Vec<TokenLogprob> {
        self.emitted += n;
        let mut start = self.first_start;
        let mut out = Vec::new();
        for (e, end) in std::mem::take(&mut self.queue) {
            if start < self.emitted || end <= self.emitted {
                out.push(e);
            }
            start = end;
        }
        self.first_start = start;
        out
    }

    /// Everything still waiting (the text has ended without a stop string).
    pub(crate) fn rest(&mut self) -> Vec<TokenLogprob> {
        self.queue.drain(..).map(|(e, _)| e).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_and_top_is_sorted() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let r = token_logprobs(&logits, 2, 3);
        let z: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
        assert!((r.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(r.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        let total: f64 =
            logits.iter().enumerate().map(|(i, _)| (token_logprobs(&logits, i as u32, 0).logprob as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(token_logprobs(&logits, 0, 50).top.len(), 5);
    }

    fn entry(t: &str) -> TokenLogprob {
        TokenLogprob { chosen: Alternative { token: t.into(), logprob: 0.0 }, top: vec![] }
    }

    #[test]
    fn entries_follow_their_text() {
        let mut p = Pending::default();
        p.push(entry("he"), 2);
        p.push(entry("llo"), 3);
        assert_eq!(p.emitted(3), vec![entry("he")], "'llo' is not wholly out yet");
        p.push(entry(" EN"), 3);
        p.push(entry("D!"), 2);
        // Stop string "END": the text is cut after " " (1 more byte than "hel" + "lo" → 2 + 1).
        let out = p.cut(3);
        assert_eq!(out, vec![entry("llo"), entry(" EN")], "'D!' lies wholly inside the stop string");
        let mut p = Pending::default();
        p.push(entry("a"), 1);
        assert_eq!(p.rest(), vec![entry("a")]);
    }
}
