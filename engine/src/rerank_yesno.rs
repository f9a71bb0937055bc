//! Qwen3-Reranker's yes/no form: a causal LM asked, in a fixed chat prompt, whether a document
//! meets a query, and scored by its next-token logits for "yes" and "no".
//!
//! The prompt is the model card's, built from three pieces tokenised apart, exactly as the card
//! does (so the pieces' boundaries tokenise the same way):
//! - the system turn and the opening of the user turn ([`SYSTEM`]);
//! - `<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}`, cut from the end
//!   when the whole would not fit (the card's `truncation='longest_first'` on one text);
//! - the end of the user turn and the assistant's empty think block ([`SUFFIX`]).
//!
//! The relevance logit is `logit("yes") - logit("no")` at the last position, so that
//! `sigmoid(logit) = e^yes / (e^yes + e^no)`, the card's score (the softmax over the two), and
//! the same value sentence-transformers' `LogitScore` gives. A folder says nothing that tells this
//! model from a chat model (its config names `Qwen3ForCausalLM`), so it is loaded this way only
//! when the caller says it is a reranker: a package of kind `rerank`, `govbox model rerank`.

use std::path::Path;
use std::sync::Arc;

use govbox_drivers::Backend;

use crate::causal::{CausalRunner, Read};
use crate::config::DecoderConfig;
use crate::embed::{EmbedInputError, load_hf_tokenizer};
use crate::models::decoder::DecoderModel;
use crate::weights::WeightMap;
use crate::{EngineError, Result};

/// The system turn and the opening of the user turn.
pub const SYSTEM: &str = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query \
                          and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n\
                          <|im_start|>user\n";
/// The end of the user turn and the assistant's opening, with its empty think block.
pub const SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";
/// The card's instruction when the caller gives none.
pub const DEFAULT_INSTRUCTION: &str = "Given a web search query, retrieve relevant passages that answer the query";

/// A loaded yes/no reranker.
pub struct YesNoReranker {
    runner: CausalRunner,
    /// The HF tokenizer, without truncation or padding.
    tokenizer: tokenizers::Tokenizer,
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    /// The vocabulary ids of "yes" and "no", in that order.
    yes_no: [u32; 2],
}

impl std::fmt::Debug for YesNoReranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YesNoReranker").field("runner", &self.runner).field("yes_no", &self.yes_no).finish()
    }
}

impl YesNoReranker {
    /// Loads a HF causal-LM folder (`config.json`, safetensors, `tokenizer.json`) whose
    /// vocabulary has "yes" and "no" tokens, with a KV pool of `kv_tokens` (the longest pair).
    pub fn load(dir: &Path, backend: Arc<dyn Backend>, kv_tokens: usize) -> Result<Self> {
        let cfg = DecoderConfig::from_hf_dir(dir)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = load_hf_tokenizer(&tok_path)?;
        let id = |t: &str| {
            tokenizer.token_to_id(t).ok_or_else(|| EngineError::Config {
                file: tok_path.display().to_string(),
                detail: format!("the vocabulary has no '{t}' token, which a yes/no reranker scores"),
            })
        };
        let yes_no = [id("yes")?, id("no")?];
        let piece = |text: &str| -> Result<Vec<u32>> {
            let enc = tokenizer.encode(text, false).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
            Ok(enc.get_ids().to_vec())
        };
        let (prefix, suffix) = (piece(SYSTEM)?, piece(SUFFIX)?);
        let weights = WeightMap::from_hf_dir(dir)?;
        let runner = CausalRunner::new(DecoderModel::from_hf(cfg, &weights, backend)?, kv_tokens)?;
        if prefix.len() + suffix.len() >= runner.max_tokens() {
            return Err(EngineError::Config {
                file: dir.join("config.json").display().to_string(),
                detail: format!(
                    "the reranking prompt alone has {} tokens; the model takes {}",
                    prefix.len() + suffix.len(),
                    runner.max_tokens()
                ),
            });
        }
        Ok(Self { runner, tokenizer, prefix, suffix, yes_no })
    }

    /// The decoder's architecture.
    pub fn architecture(&self) -> &'static str {
        self.runner.model().config().arch.hf_name()
    }

    /// The most tokens a pair's prompt may have.
    pub fn max_tokens(&self) -> usize {
        self.runner.max_tokens()
    }

    /// The prompt's token ids for (`query`, `document`), the middle cut from its end to fit
    /// when `truncate`, else refused when too long (`index` names the document).
    pub fn encode_pair(&self, query: &str, document: &str, truncate: bool, index: usize) -> Result<Vec<u32>> {
        let text = format!("<Instruct>: {DEFAULT_INSTRUCTION}\n<Query>: {query}\n<Document>: {document}");
        let enc = self.tokenizer.encode(text, true).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut middle = enc.get_ids().to_vec();
        let (fixed, limit) = (self.prefix.len() + self.suffix.len(), self.max_tokens());
        if fixed + middle.len() > limit {
            if !truncate {
                return Err(EmbedInputError::TooLong { index, tokens: fixed + middle.len(), limit }.into());
            }
            middle.truncate(limit - fixed);
        }
        Ok([self.prefix.as_slice(), &middle, &self.suffix].concat())
    }

    /// `logit("yes") - logit("no")` after each prompt, in order.
    pub fn score_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<f32>> {
        let mut logits = vec![0f32; ids.len()];
        self.runner.run(ids, Read::Logits(&self.yes_no), &mut |i, two| {
            logits[i] = two[0] - two[1];
            Ok(())
        })?;
        Ok(logits)
    }
}
