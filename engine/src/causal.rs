//! A decoder run as an encoder: each sequence goes through the model whole, in one pass, with no
//! generation and no prefix cache. Decoder embedders (Qwen3-Embedding) read the final hidden
//! state of the last token; yes/no rerankers (Qwen3-Reranker) read two logits at the last
//! position.
//!
//! The runner owns a KV pool of its own, separate from any chat model's, because the decoder's
//! attention reads keys and values from a paged cache. Every sequence starts at position 0 on
//! blocks that are simply reused by the next batch, so the pool holds one batch at a time: its
//! size (`kv_tokens`) bounds both one sequence and the tokens of one forward pass. Sequences run
//! unpadded, so a sequence's last token is its own last token whatever its neighbours' lengths:
//! HF's left- or right-padding question does not arise.

use std::sync::Mutex;

use govbox_drivers::{KvCache, KvSpec};

use crate::kv::BLOCK_SIZE;
use crate::models::decoder::{DecoderModel, LogitsFor, SeqInput};
use crate::{EngineError, Result};

/// What a pass reads at each sequence's last token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read<'a> {
    /// The final (normed) hidden state, `hidden_size` values.
    Hidden,
    /// The logits of these vocabulary ids, in this order.
    Logits(&'a [u32]),
}

/// A decoder with its own KV pool, run over whole sequences.
pub struct CausalRunner {
    model: DecoderModel,
    pool: Mutex<Box<dyn KvCache>>,
    n_blocks: usize,
}

impl std::fmt::Debug for CausalRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CausalRunner").field("model", &self.model).field("n_blocks", &self.n_blocks).finish()
    }
}

impl CausalRunner {
    /// Wraps `model` with a pool of at least `kv_tokens` tokens.
    pub fn new(model: DecoderModel, kv_tokens: usize) -> Result<Self> {
        let n_blocks = kv_tokens.max(BLOCK_SIZE).div_ceil(BLOCK_SIZE);
        let (n_kv_heads, head_dim) = model.kv_layout();
        // Embedding and rerank scores are compared with HF at 1e-4: their short-lived pool stays f32
        // whatever `[serving] kv_dtype` says for chat models.
        let spec = KvSpec {
            n_layers: model.config().n_layers,
            n_kv_heads,
            head_dim,
            block_size: BLOCK_SIZE,
            n_blocks,
            dtype: govbox_drivers::KvDType::F32,
        };
        let pool = model.backend().new_kv_cache(spec)?;
        Ok(Self { model, pool: Mutex::new(pool), n_blocks })
    }

    /// The decoder.
    pub fn model(&self) -> &DecoderModel {
        &self.model
    }

    /// The most tokens one sequence may have: the model's context or the pool, whichever is less.
    pub fn max_tokens(&self) -> usize {
        self.model.config().max_position_embeddings.min(self.n_blocks * BLOCK_SIZE)
    }

    /// Runs every sequence of `seqs` (each 1 to [`max_tokens`](Self::max_tokens) tokens) and
    /// calls `each(i, values)` with what `read` asks of sequence `i`. Sequences are packed into
    /// forward passes longest first, as many as the pool holds; each result equals the one the
    /// sequence gets alone, up to float rounding.
    pub fn run(
        &self,
        seqs: &[Vec<u32>],
        read: Read<'_>,
        each: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let max = self.max_tokens();
        if let Some(s) = seqs.iter().find(|s| s.is_empty() || s.len() > max) {
            return Err(EngineError::Request(format!(
                "a sequence of {} tokens cannot run: sequences need 1 to {max} tokens",
                s.len()
            )));
        }
        let vocab = self.model.config().vocab_size;
        if let Read::Logits(ids) = read
            && let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab)
        {
            return Err(EngineError::Request(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
        // A poisoned lock only means another pass panicked; the pool holds no state between passes.
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let mut rest = order.as_slice();
        while !rest.is_empty() {
            let mut used = 0;
            let n = rest
                .iter()
                .take_while(|&&i| {
                    used += seqs[i].len().div_ceil(BLOCK_SIZE);
                    used <= self.n_blocks
                })
                .count()
                .max(1);
            let (batch, tail) = rest.split_at(n);
            rest = tail;
            let mut tables = Vec::with_capacity(n);
            let mut next = 0u32;
            for &i in batch {
                let blocks = seqs[i].len().div_ceil(BLOCK_SIZE) as u32;
                tables.push((next..next + blocks).collect::<Vec<u32>>());
                next += blocks;
            }
            let inputs: Vec<SeqInput<'_>> = batch
                .iter()
                .zip(&tables)
                .map(|(&i, t)| SeqInput { tokens: &seqs[i], start_pos: 0, block_table: t, local_table: &[] })
                .collect();
            match read {
                Read::Hidden => {
                    let rows = self.model.forward_hidden(&inputs, pool.as_mut())?;
                    let h = self.model.config().hidden_size;
                    for (k, &i) in batch.iter().enumerate() {
                        each(i, &rows[k * h..(k + 1) * h])?;
                    }
                }
                Read::Logits(ids) => {
                    let rows = self.model.forward(&inputs, pool.as_mut(), LogitsFor::Last)?;
                    for (k, &i) in batch.iter().enumerate() {
                        let row = &rows[k * vocab..(k + 1) * vocab];
                        let picked: Vec<f32> = ids.iter().map(|&id| row[id as usize]).collect();
                        each(i, &picked)?;
                    }
                }
            }
        }
        Ok(())
    }
}
