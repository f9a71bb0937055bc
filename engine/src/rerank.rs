//! Cross-encoder rerankers: a BERT-family encoder with a one-label sequence-classification head
//! (`XLMRobertaForSequenceClassification` as in bge-reranker-base and bge-reranker-v2-m3,
//! `BertForSequenceClassification` as in the ms-marco MiniLM cross-encoders).
//!
//! The query and a document go through the encoder together, as the tokenizer's pair template
//! joins them (`<s> q </s></s> d </s>` for XLM-RoBERTa, `[CLS] q [SEP] d [SEP]` with the
//! document's tokens as segment 1 for BERT). The head reads the first token's vector:
//! `out(tanh(dense(h)))`, where XLM-RoBERTa names the two layers `classifier.dense` and
//! `classifier.out_proj`, and BERT `bert.pooler.dense` and `classifier`. The logit is the
//! relevance; `sigmoid(logit)` is the score sentence-transformers' `CrossEncoder` reports.
//!
//! A causal LM loaded as a reranker ([`RerankModel::load_yes_no`]) is scored Qwen3-Reranker's
//! way instead (`rerank_yesno.rs`); its logit is `logit("yes") - logit("no")`, so the same
//! `sigmoid` gives its probability of "yes".

use std::path::Path;
use std::sync::Arc;

use govbox_drivers::{Backend, DType, HostBytes, Tensor};
use serde_json::Value;

use crate::batcher::{BatchStats, Batcher, Pause};
use crate::embed::EmbedInputError;
use crate::models::bert::{BertConfig, BertModel, EncoderFamily};
use crate::rerank_yesno::YesNoReranker;
use crate::weights::{WeightMap, read_small};
use crate::{EngineError, Result};

/// Largest `tokenizer_config.json` read.
const MAX_TOKENIZER_CONFIG: u64 = 1 << 20;

/// Relevance of documents to one query, in document order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RerankScores {
    /// The head's logit for each document.
    pub logits: Vec<f32>,
    /// Tokens of each query–document pair, special tokens included, after truncation.
    pub token_counts: Vec<usize>,
}

/// `1 / (1 + e^-x)`: the score a one-label cross-encoder's logit stands for.
pub fn sigmoid(x: f32) -> f32 {
    (1.0 / (1.0 + (-f64::from(x)).exp())) as f32
}

/// The classification head.
struct Head {
    dense_w: Tensor,
    dense_b: Tensor,
    out_w: Tensor,
    out_b: Tensor,
}

/// A cross-encoder's parts.
struct Cross {
    bert: BertModel,
    /// The HF tokenizer, without truncation or padding.
    whole: tokenizers::Tokenizer,
    /// The same, truncating pairs (longest first, as `CrossEncoder` does) at `max_tokens`.
    cutting: tokenizers::Tokenizer,
    head: Head,
}

/// How pairs are scored.
enum Scorer {
    /// A sequence-classification encoder.
    Cross(Box<Cross>),
    /// A causal LM's "yes" and "no" logits.
    YesNo(Box<YesNoReranker>),
}

/// Most query–document pairs one batch of concurrent requests carries (a request with more runs
/// alone): enough to fill the encoder's length-sorted sub-batches several times over.
pub const MAX_BATCH_PAIRS: usize = 256;

/// One encoded pair: token ids and segment ids.
pub type PairIds = (Vec<u32>, Vec<u32>);

/// A loaded reranker: a cross-encoder or a yes/no causal LM.
pub struct RerankModel {
    scorer: Scorer,
    /// Pairs of concurrent [`score`](RerankModel::score) calls, run together.
    batcher: Batcher<PairIds, f32>,
    tokenizer: crate::tokenizer::Tokenizer,
    max_tokens: usize,
}

impl std::fmt::Debug for RerankModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("RerankModel");
        match &self.scorer {
            Scorer::Cross(c) => d.field("bert", &c.bert),
            Scorer::YesNo(y) => d.field("yes_no", y),
        };
        d.field("max_tokens", &self.max_tokens).finish_non_exhaustive()
    }
}

impl RerankModel {
    /// Whether `dir`'s `config.json` names a sequence-classification encoder first.
    pub fn is_rerank_dir(dir: &Path) -> bool {
        let Ok(text) = read_small(&dir.join("config.json"), 1 << 20) else { return false };
        serde_json::from_str::<Value>(&text).is_ok_and(|v| {
            BertConfig::architecture_of(&v)
                .is_some_and(|a| a.ends_with("ForSequenceClassification") && BertConfig::is_encoder_architecture(a))
        })
    }

    /// Loads a HF cross-encoder folder (`config.json`, `model.safetensors`, `tokenizer.json`)
    /// onto `backend`. The head must have exactly one label.
    pub fn load(dir: &Path, backend: Arc<dyn Backend>) -> Result<Self> {
        let cfg = BertConfig::from_hf_dir(dir)?;
        let config_file = dir.join("config.json").display().to_string();
        match cfg.num_labels {
            Some(1) => {}
            Some(n) => {
                return Err(EngineError::Config {
                    file: config_file,
                    detail: format!("the classifier has {n} labels; a reranker has exactly one (a relevance logit)"),
                });
            }
            None => {
                return Err(EngineError::Config {
                    file: config_file,
                    detail: format!(
                        "{} has no classification head; a reranker is a …ForSequenceClassification",
                        cfg.architecture
                    ),
                });
            }
        }
        let max_tokens = read_model_max_length(dir)?.map_or(cfg.max_tokens(), |m| m.min(cfg.max_tokens()));
        let tok_path = dir.join("tokenizer.json");
        let whole = crate::embed::load_hf_tokenizer(&tok_path)?;
        let mut cutting = whole.clone();
        let trunc = tokenizers::TruncationParams {
            max_length: max_tokens,
            strategy: tokenizers::TruncationStrategy::LongestFirst,
            ..Default::default()
        };
        cutting
            .with_truncation(Some(trunc))
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        let tokenizer = crate::tokenizer::Tokenizer::from_hf_dir(dir)?;
        let weights = WeightMap::from_hf_dir(dir)?;
        let h = cfg.hidden_size;
        let names = match cfg.family {
            EncoderFamily::Bert => ["bert.pooler.dense", "classifier"],
            EncoderFamily::XlmRoberta => ["classifier.dense", "classifier.out_proj"],
        };
        let be = backend.as_ref();
        let head = Head {
            dense_w: weights.upload(be, &format!("{}.weight", names[0]), &[h, h])?,
            dense_b: weights.upload(be, &format!("{}.bias", names[0]), &[h])?,
            out_w: weights.upload(be, &format!("{}.weight", names[1]), &[1, h])?,
            out_b: weights.upload(be, &format!("{}.bias", names[1]), &[1])?,
        };
        let bert = BertModel::load(cfg, &weights, backend)?;
        let scorer = Scorer::Cross(Box::new(Cross { bert, whole, cutting, head }));
        Ok(Self { scorer, tokenizer, max_tokens, batcher: Batcher::new(MAX_BATCH_PAIRS) })
    }

    /// Loads a HF causal-LM folder as a Qwen3-Reranker-style yes/no reranker (see
    /// `rerank_yesno.rs`), with a KV pool of `kv_tokens` tokens (the longest pair).
    pub fn load_yes_no(dir: &Path, backend: Arc<dyn Backend>, kv_tokens: usize) -> Result<Self> {
        let y = YesNoReranker::load(dir, backend, kv_tokens)?;
        let tokenizer = crate::tokenizer::Tokenizer::from_hf_dir(dir)?;
        let max_tokens = y.max_tokens();
        Ok(Self { max_tokens, scorer: Scorer::YesNo(Box::new(y)), tokenizer, batcher: Batcher::new(MAX_BATCH_PAIRS) })
    }

    /// Loads `dir` as a reranker: a cross-encoder when its config names one, else a causal LM
    /// scored by its yes/no logits.
    pub fn load_any(dir: &Path, backend: Arc<dyn Backend>, kv_tokens: usize) -> Result<Self> {
        if Self::is_rerank_dir(dir) { Self::load(dir, backend) } else { Self::load_yes_no(dir, backend, kv_tokens) }
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &crate::tokenizer::Tokenizer {
        &self.tokenizer
    }

    /// The most tokens a query–document pair may have, special tokens included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The cross-encoder's shape (`None` for a yes/no reranker).
    pub fn config(&self) -> Option<&BertConfig> {
        match &self.scorer {
            Scorer::Cross(c) => Some(c.bert.config()),
            Scorer::YesNo(_) => None,
        }
    }

    /// The architecture `config.json` names.
    pub fn architecture(&self) -> &str {
        match &self.scorer {
            Scorer::Cross(c) => &c.bert.config().architecture,
            Scorer::YesNo(y) => y.architecture(),
        }
    }

    /// Whether pairs are scored by a causal LM's yes/no logits (Qwen3-Reranker).
    pub fn is_yes_no(&self) -> bool {
        matches!(self.scorer, Scorer::YesNo(_))
    }

    /// Token ids and type ids of the pair (`query`, `document`), cut to
    /// [`max_tokens`](Self::max_tokens) when `truncate`, else refused when longer (`index`
    /// names the document in the error). A yes/no reranker's pair is its whole prompt, all of
    /// segment 0.
    pub fn encode_pair(
        &self,
        query: &str,
        document: &str,
        truncate: bool,
        index: usize,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let c = match &self.scorer {
            Scorer::Cross(c) => c,
            Scorer::YesNo(y) => {
                let ids = y.encode_pair(query, document, truncate, index)?;
                let types = vec![0; ids.len()];
                return Ok((ids, types));
            }
        };
        let tok = if truncate { &c.cutting } else { &c.whole };
        let enc = tok.encode((query, document), true).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        if enc.get_ids().len() > self.max_tokens {
            return Err(EmbedInputError::TooLong { index, tokens: enc.get_ids().len(), limit: self.max_tokens }.into());
        }
        if enc.get_ids().is_empty() {
            return Err(EmbedInputError::Empty { index }.into());
        }
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
    }

    /// Scores each document against `query`. The pairs are encoded on the caller's thread, then
    /// run in one batch with the pairs of whatever other calls are waiting (see `batcher.rs`),
    /// grouped by length inside it; each logit equals the one the pair gets alone, up to float
    /// rounding.
    pub fn score(&self, query: &str, documents: &[&str], truncate: bool) -> Result<RerankScores> {
        let pairs = documents
            .iter()
            .enumerate()
            .map(|(i, d)| self.encode_pair(query, d, truncate, i))
            .collect::<Result<Vec<PairIds>>>()?;
        let token_counts = pairs.iter().map(|(ids, _)| ids.len()).collect();
        let logits = self.batcher.run(pairs, &|all| {
            let (ids, types): (Vec<Vec<u32>>, Vec<Vec<u32>>) = all.iter().cloned().unzip();
            Ok(self.score_ids(&ids, &types)?.logits)
        })?;
        Ok(RerankScores { logits, token_counts })
    }

    /// How [`score`](Self::score) calls have been batched so far.
    pub fn batch_stats(&self) -> BatchStats {
        self.batcher.stats()
    }

    /// Calls of [`score`](Self::score) waiting for their batch.
    pub fn queued_calls(&self) -> usize {
        self.batcher.queued()
    }

    /// Keeps batches from starting until the guard drops; calls made meanwhile run together
    /// then. For draining, and for tests that need a known batch.
    pub fn pause_batches(&self) -> Pause<'_, PairIds, f32> {
        self.batcher.pause()
    }

    /// Scores encoded pairs (from [`encode_pair`](Self::encode_pair)), in order.
    pub fn score_ids(&self, ids: &[Vec<u32>], types: &[Vec<u32>]) -> Result<RerankScores> {
        let token_counts = ids.iter().map(Vec::len).collect();
        let c = match &self.scorer {
            Scorer::Cross(c) => c,
            Scorer::YesNo(y) => return Ok(RerankScores { logits: y.score_ids(ids)?, token_counts }),
        };
        let h = c.bert.config().hidden_size;
        let mut first_rows = vec![0f32; ids.len() * h];
        c.bert.forward_batched(ids, Some(types), &mut |i, rows| {
            first_rows[i * h..(i + 1) * h].copy_from_slice(&rows[..h]);
            Ok(())
        })?;
        let logits = if ids.is_empty() { Vec::new() } else { c.head(first_rows, ids.len())? };
        Ok(RerankScores { logits, token_counts })
    }
}

impl Cross {
    /// `out(tanh(dense(x)))` over `n` first-token rows.
    fn head(&self, rows: Vec<f32>, n: usize) -> Result<Vec<f32>> {
        let be = self.bert.backend().as_ref();
        let h = self.bert.config().hidden_size;
        let upload = |v: Vec<f32>| -> Result<Tensor> {
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            Ok(be.upload(HostBytes::from_vec(bytes), DType::F32, &[n, h])?)
        };
        let mut out = None;
        self.bert.backend().run_within(&mut || {
            out = Some((|| -> Result<Vec<f32>> {
                let dense = be.linear(&upload(rows.clone())?, &self.head.dense_w, &self.head.dense_b, false)?;
                // The backend has no tanh op; the rows are few (one per pair).
                let mut pooled = be.download_f32(&dense)?;
                pooled.iter_mut().for_each(|x| *x = x.tanh());
                let logits = be.linear(&upload(pooled)?, &self.head.out_w, &self.head.out_b, false)?;
                Ok(be.download_f32(&logits)?)
            })());
        });
        out.unwrap_or_else(|| Err(EngineError::Request("the backend did not run the classifier".into())))
    }
}

/// `model_max_length` from `tokenizer_config.json`, when present and sane (HF writes a huge
/// sentinel for "no limit", which is ignored).
fn read_model_max_length(dir: &Path) -> Result<Option<usize>> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = read_small(&path, MAX_TOKENIZER_CONFIG)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| EngineError::Config {
        file: path.display().to_string(),
        detail: format!("not valid JSON: {e}"),
    })?;
    Ok(v.get("model_max_length")
        .and_then(Value::as_u64)
        .and_then(|m| usize::try_from(m).ok())
        .filter(|&m| (2..=1 << 20).contains(&m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_is_the_logistic_function() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((sigmoid(2.0) - 0.880_797).abs() < 1e-6);
        assert!((sigmoid(-2.0) - 0.119_203).abs() < 1e-6);
        assert_eq!(sigmoid(-200.0), 0.0);
    }
}
