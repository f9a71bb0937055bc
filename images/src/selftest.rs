//! The self-test a model package may carry: fixed inputs and the outputs the vendor's build
//! recorded, so that the box can check after import that the model computes what it should.
//!
//! The engine run itself is the caller's job (the daemon or the CLI); this module only holds the
//! data and compares.

use serde::{Deserialize, Serialize};

/// A recorded self-test, chosen by the shape of its JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SelfTest {
    /// For chat models: the top logits after the last of `token_ids`.
    Chat(ChatSelfTest),
    /// For embedding models: the first values of each text's embedding.
    Embedding(EmbeddingSelfTest),
    /// For rerankers: each document's relevance logit for the query.
    Rerank(RerankSelfTest),
}

/// `{"token_ids":[..],"top_k":[[id, logit]..],"tolerance":t}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatSelfTest {
    /// The prompt, as token ids.
    pub token_ids: Vec<u32>,
    /// The largest logits at the last position, largest first: `(token id, logit)`.
    pub top_k: Vec<(u32, f32)>,
    /// Allowed difference, relative to `max(1, |expected|)`.
    pub tolerance: f32,
}

/// `{"texts":[..],"values":[[..]..],"tolerance":t}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingSelfTest {
    /// The texts to embed.
    pub texts: Vec<String>,
    /// The first values of each text's embedding, one row per text.
    pub values: Vec<Vec<f32>>,
    /// Allowed difference, relative to `max(1, |expected|)`.
    pub tolerance: f32,
}

/// `{"query":q,"documents":[..],"logits":[..],"tolerance":t}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankSelfTest {
    /// The query.
    pub query: String,
    /// The documents scored against it.
    pub documents: Vec<String>,
    /// Each document's logit, in document order.
    pub logits: Vec<f32>,
    /// Allowed difference, relative to `max(1, |expected|)`.
    pub tolerance: f32,
}

/// What the engine computed for a self-test.
#[derive(Debug, Clone, Copy)]
pub enum SelfTestOutput<'a> {
    /// The logits at the last position of `token_ids` (one per vocabulary entry).
    Logits(&'a [f32]),
    /// The embeddings of `texts`, one vector per text.
    Embeddings(&'a [Vec<f32>]),
    /// The relevance logits of `documents`, one per document.
    RerankLogits(&'a [f32]),
}

/// A passed self-test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelfTestReport {
    /// Values compared.
    pub checked: usize,
    /// The largest absolute difference seen.
    pub max_abs_diff: f32,
}

/// A failed self-test: the first value out of tolerance.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{at}: expected {expected}, computed {actual} (tolerance {tolerance}; largest difference so far {max_abs_diff})"
)]
pub struct SelfTestMismatch {
    /// Which value, e.g. `logit of token 42` or `text 1 value 3`.
    pub at: String,
    /// The recorded value.
    pub expected: f32,
    /// The computed value (NaN when there is none).
    pub actual: f32,
    /// The largest absolute difference up to and including this one.
    pub max_abs_diff: f32,
    /// The test's tolerance.
    pub tolerance: f32,
}

/// Compares value by value, stopping at the first one out of tolerance.
struct Comparer {
    tolerance: f32,
    checked: usize,
    max_abs_diff: f32,
}

impl Comparer {
    fn check(
        &mut self,
        at: impl FnOnce() -> String,
        expected: f32,
        actual: Option<f32>,
    ) -> Result<(), SelfTestMismatch> {
        let actual = actual.unwrap_or(f32::NAN);
        let diff = (actual - expected).abs();
        self.checked += 1;
        if diff.is_finite() {
            self.max_abs_diff = self.max_abs_diff.max(diff);
        }
        // Written so that NaN fails.
        if diff <= self.tolerance * expected.abs().max(1.0) {
            return Ok(());
        }
        Err(SelfTestMismatch {
            at: at(),
            expected,
            actual,
            max_abs_diff: if diff.is_finite() { self.max_abs_diff } else { f32::INFINITY },
            tolerance: self.tolerance,
        })
    }
}

impl SelfTest {
    /// Records a chat self-test from the last-position logits: the `k` largest, largest first.
    pub fn record_chat(token_ids: Vec<u32>, last_logits: &[f32], k: usize, tolerance: f32) -> SelfTest {
        let mut order: Vec<u32> = (0..u32::try_from(last_logits.len()).unwrap_or(u32::MAX)).collect();
        order.sort_by(|&a, &b| last_logits[b as usize].total_cmp(&last_logits[a as usize]).then(a.cmp(&b)));
        let top_k = order.into_iter().take(k).map(|i| (i, last_logits[i as usize])).collect();
        SelfTest::Chat(ChatSelfTest { token_ids, top_k, tolerance })
    }

    /// Records an embedding self-test: the first `n` values of each vector.
    pub fn record_embedding(texts: Vec<String>, vectors: &[Vec<f32>], n: usize, tolerance: f32) -> SelfTest {
        let values = vectors.iter().map(|v| v.iter().take(n).copied().collect()).collect();
        SelfTest::Embedding(EmbeddingSelfTest { texts, values, tolerance })
    }

    /// Records a reranker self-test.
    pub fn record_rerank(query: String, documents: Vec<String>, logits: Vec<f32>, tolerance: f32) -> SelfTest {
        SelfTest::Rerank(RerankSelfTest { query, documents, logits, tolerance })
    }

    /// Compares the engine's output with the recording.
    ///
    /// A chat test checks each recorded logit and that no token's logit rose above the recorded
    /// largest one by more than the tolerance. An embedding test checks every recorded value.
    pub fn compare(&self, actual: &SelfTestOutput<'_>) -> Result<SelfTestReport, SelfTestMismatch> {
        let kind_mismatch = |want: &str| SelfTestMismatch {
            at: format!("output: the self-test needs {want}"),
            expected: f32::NAN,
            actual: f32::NAN,
            max_abs_diff: f32::INFINITY,
            tolerance: f32::NAN,
        };
        match (self, actual) {
            (SelfTest::Chat(t), SelfTestOutput::Logits(logits)) => {
                let mut c = Comparer { tolerance: t.tolerance, checked: 0, max_abs_diff: 0.0 };
                for &(id, expected) in &t.top_k {
                    c.check(|| format!("logit of token {id}"), expected, logits.get(id as usize).copied())?;
                }
                if let Some(&(top_id, top)) = t.top_k.first() {
                    let (arg, max) = logits
                        .iter()
                        .enumerate()
                        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best });
                    if max > top && arg != top_id as usize {
                        c.check(|| format!("largest logit (token {arg})"), top, Some(max))?;
                    }
                }
                Ok(SelfTestReport { checked: c.checked, max_abs_diff: c.max_abs_diff })
            }
            (SelfTest::Embedding(t), SelfTestOutput::Embeddings(vectors)) => {
                let mut c = Comparer { tolerance: t.tolerance, checked: 0, max_abs_diff: 0.0 };
                for (ti, row) in t.values.iter().enumerate() {
                    for (vi, &expected) in row.iter().enumerate() {
                        let got = vectors.get(ti).and_then(|v| v.get(vi)).copied();
                        c.check(|| format!("text {ti} value {vi}"), expected, got)?;
                    }
                }
                Ok(SelfTestReport { checked: c.checked, max_abs_diff: c.max_abs_diff })
            }
            (SelfTest::Rerank(t), SelfTestOutput::RerankLogits(logits)) => {
                let mut c = Comparer { tolerance: t.tolerance, checked: 0, max_abs_diff: 0.0 };
                for (i, &expected) in t.logits.iter().enumerate() {
                    c.check(|| format!("logit of document {i}"), expected, logits.get(i).copied())?;
                }
                Ok(SelfTestReport { checked: c.checked, max_abs_diff: c.max_abs_diff })
            }
            (SelfTest::Rerank(_), _) => Err(kind_mismatch("rerank logits")),
            (SelfTest::Chat(_), _) => Err(kind_mismatch("logits")),
            (SelfTest::Embedding(_), _) => Err(kind_mismatch("embeddings")),
        }
    }

    /// Checks the recording itself (finite numbers, matching shapes, something to check).
    pub(crate) fn validate(&self) -> Result<(), String> {
        let (tolerance, finite) = match self {
            SelfTest::Chat(t) => {
                if t.token_ids.is_empty() || t.top_k.is_empty() {
                    return Err("a chat self-test needs token_ids and top_k".into());
                }
                (t.tolerance, t.top_k.iter().all(|(_, v)| v.is_finite()))
            }
            SelfTest::Embedding(t) => {
                if t.texts.is_empty() || t.texts.len() != t.values.len() || t.values.iter().any(Vec::is_empty) {
                    return Err("an embedding self-test needs one non-empty row of values per text".into());
                }
                (t.tolerance, t.values.iter().flatten().all(|v| v.is_finite()))
            }
            SelfTest::Rerank(t) => {
                if t.query.is_empty() || t.documents.is_empty() || t.documents.len() != t.logits.len() {
                    return Err("a rerank self-test needs a query and one logit per document".into());
                }
                (t.tolerance, t.logits.iter().all(|v| v.is_finite()))
            }
        };
        if !(tolerance.is_finite() && tolerance >= 0.0) {
            return Err(format!("the tolerance {tolerance} is not a finite non-negative number"));
        }
        if !finite {
            return Err("recorded values must be finite".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chat_records_top_k_and_compares() {
        let logits = [0.5, 3.0, -1.0, 2.0];
        let t = SelfTest::record_chat(vec![1, 2], &logits, 2, 1e-3);
        let SelfTest::Chat(c) = &t else { panic!() };
        assert_eq!(c.top_k, vec![(1, 3.0), (3, 2.0)]);
        let r = t.compare(&SelfTestOutput::Logits(&[0.5, 3.001, -1.0, 2.0])).unwrap();
        assert_eq!(r.checked, 2);
        let m = t.compare(&SelfTestOutput::Logits(&[0.5, 3.1, -1.0, 2.0])).unwrap_err();
        assert!(m.at.contains("token 1"), "{m}");
        // A token that was not in the top-k rising above the top is caught too.
        let m = t.compare(&SelfTestOutput::Logits(&[9.0, 3.0, -1.0, 2.0])).unwrap_err();
        assert!(m.at.contains("largest logit (token 0)"), "{m}");
        // A vocabulary too small, and NaN, fail.
        assert!(t.compare(&SelfTestOutput::Logits(&[0.5, 3.0])).is_err());
        assert!(t.compare(&SelfTestOutput::Logits(&[0.5, f32::NAN, -1.0, 2.0])).is_err());
        assert!(t.compare(&SelfTestOutput::Embeddings(&[])).is_err());
    }

    #[test]
    fn rerank_compares_each_logit_and_serde_picks_the_variant() {
        let t = SelfTest::record_rerank("q".into(), vec!["a".into(), "b".into()], vec![1.5, -2.0], 1e-3);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<SelfTest>(&json).unwrap(), t);
        assert!(t.validate().is_ok());
        assert_eq!(t.compare(&SelfTestOutput::RerankLogits(&[1.5005, -2.0])).unwrap().checked, 2);
        let m = t.compare(&SelfTestOutput::RerankLogits(&[1.5, -2.5])).unwrap_err();
        assert!(m.at.contains("document 1"), "{m}");
        assert!(t.compare(&SelfTestOutput::RerankLogits(&[1.5])).is_err());
        assert!(t.compare(&SelfTestOutput::Embeddings(&[])).is_err());
        let bad = SelfTest::record_rerank("q".into(), vec!["a".into()], vec![], 1e-3);
        assert!(bad.validate().unwrap_err().contains("one logit per document"));
    }

    #[test]
    fn embedding_compares_and_serde_picks_the_variant() {
        let t = SelfTest::record_embedding(vec!["a".into()], &[vec![0.1, 0.2, 0.3]], 2, 1e-3);
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.starts_with(r#"{"texts":["a"],"values":[["#), "{json}");
        assert_eq!(serde_json::from_str::<SelfTest>(&json).unwrap(), t);
        assert!(t.compare(&SelfTestOutput::Embeddings(&[vec![0.1, 0.2, 9.0]])).is_ok());
        let m = t.compare(&SelfTestOutput::Embeddings(&[vec![0.1, 0.25]])).unwrap_err();
        assert_eq!(m.at, "text 0 value 1");
        let chat = r#"{"token_ids":[1],"top_k":[[5,1.5]],"tolerance":0.001}"#;
        assert!(matches!(serde_json::from_str::<SelfTest>(chat).unwrap(), SelfTest::Chat(_)));
        assert!(serde_json::from_str::<SelfTest>(r#"{"token_ids":[1],"top_k":[],"tolerance":0.1,"x":1}"#).is_err());
    }
}
