//! Llama and Qwen2 decoders (GQA/MQA, explicit head_dim, tied or untied embeddings, q/k/v bias),
//! from HF safetensors or GGUF.

use std::sync::Arc;

use govbox_drivers::{Backend, KvCache, PagedAttn, Rope, RopeStyle, SeqAttn, Tensor};

use crate::config::{DecoderArch, DecoderConfig};
use crate::gguf::GgufFile;
use crate::weights::{WeightInfo, WeightMap};
use crate::{EngineError, MappedFile, Result};

struct Layer {
    attn_norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    wo: Tensor,
    ffn_norm: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
}

/// Where each tensor lives in the two naming schemes.
#[derive(Clone, Copy)]
enum Names {
    Hf,
    Gguf,
}

impl Names {
    fn embed(self) -> &'static str {
        match self {
            Names::Hf => "model.embed_tokens.weight",
            Names::Gguf => "token_embd.weight",
        }
    }
    fn norm(self) -> &'static str {
        match self {
            Names::Hf => "model.norm.weight",
            Names::Gguf => "output_norm.weight",
        }
    }
    fn lm_head(self) -> &'static str {
        match self {
            Names::Hf => "lm_head.weight",
            Names::Gguf => "output.weight",
        }
    }
    fn layer(self, i: usize, part: &str) -> String {
        match self {
            Names::Hf => {
                let p = match part {
                    "attn_norm" => "input_layernorm",
                    "q" => "self_attn.q_proj",
                    "k" => "self_attn.k_proj",
                    "v" => "self_attn.v_proj",
                    "o" => "self_attn.o_proj",
                    "ffn_norm" => "post_attention_layernorm",
                    "gate" => "mlp.gate_proj",
                    "up" => "mlp.up_proj",
                    _ => "mlp.down_proj",
                };
                format!("model.layers.{i}.{p}")
            }
            Names::Gguf => {
                let p = match part {
                    "attn_norm" => "attn_norm",
                    "q" => "attn_q",
                    "k" => "attn_k",
                    "v" => "attn_v",
                    "o" => "attn_output",
                    "ffn_norm" => "ffn_norm",
                    "gate" => "ffn_gate",
                    "up" => "ffn_up",
                    _ => "ffn_down",
                };
                format!("blk.{i}.{p}")
            }
        }
    }
}

/// A loaded decoder-only transformer.
pub struct DecoderModel {
    cfg: DecoderConfig,
    backend: Arc<dyn Backend>,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    inv_freq: Vec<f32>,
    rope_style: RopeStyle,
    weight_bytes: usize,
    weight_dtypes: Vec<(String, usize)>,
}

/// One sequence's new tokens in a forward batch.
#[derive(Clone, Copy, Debug)]
pub struct SeqInput<'a> {
    /// New token ids.
    pub tokens: &'a [u32],
    /// Tokens of this sequence already in the KV cache.
    pub start_pos: usize,
    /// KV blocks covering positions `0..start_pos + tokens.len()`.
    pub block_table: &'a [u32],
}

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsFor {
    /// Only the last new token of each sequence (generation).
    Last,
    /// Every new token (the `logits` command, self-tests).
    All,
}

impl DecoderModel {
    /// Loads a HF folder's `config.json` and safetensors.
    pub fn from_hf(cfg: DecoderConfig, weights: &WeightMap, backend: Arc<dyn Backend>) -> Result<Self> {
        Self::build(cfg, weights, backend, Names::Hf, RopeStyle::Half)
    }

    /// Loads a GGUF file's tensors (already parsed from `file`).
    pub fn from_gguf(cfg: DecoderConfig, g: &GgufFile, file: &MappedFile, backend: Arc<dyn Backend>) -> Result<Self> {
        let mut weights = WeightMap::new(file.name());
        for t in &g.tensors {
            let data = usize::try_from(t.offset).ok().and_then(|off| file.slice(off, t.n_bytes)).ok_or_else(|| {
                EngineError::Tensor {
                    file: file.name().into(),
                    tensor: t.name.clone(),
                    detail: "data lies outside the file".into(),
                }
            })?;
            weights.insert(
                t.name.clone(),
                WeightInfo { dtype: t.dtype, shape: t.shape(), data, file: file.name().into() },
            );
        }
        // llama.cpp's converter permutes the Q and K rows of `llama` models so that GGML's
        // adjacent-pair ("normal") RoPE gives HF's rotate-half result; qwen2 is not permuted and
        // uses the NeoX (half) layout. Using the matching layout keeps the weights zero-copy.
        let style = match cfg.arch {
            DecoderArch::Llama => RopeStyle::Interleaved,
            DecoderArch::Qwen2 => RopeStyle::Half,
        };
        Self::build(cfg, &weights, backend, Names::Gguf, style)
    }

    fn build(
        cfg: DecoderConfig,
        w: &WeightMap,
        backend: Arc<dyn Backend>,
        names: Names,
        rope_style: RopeStyle,
    ) -> Result<Self> {
        let b = backend.as_ref();
        let (h, hd, nh, nkv, ff) = (cfg.hidden_size, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.intermediate_size);
        let embed = w.upload(b, names.embed(), &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |p: &str, s: &str| format!("{}.{s}", names.layer(i, p));
            let bias = |p: &str, rows: usize| -> Result<Option<Tensor>> {
                if cfg.attention_bias { w.upload(b, &n(p, "bias"), &[rows]).map(Some) } else { Ok(None) }
            };
            layers.push(Layer {
                attn_norm: w.upload(b, &n("attn_norm", "weight"), &[h])?,
                wq: w.upload(b, &n("q", "weight"), &[nh * hd, h])?,
                wk: w.upload(b, &n("k", "weight"), &[nkv * hd, h])?,
                wv: w.upload(b, &n("v", "weight"), &[nkv * hd, h])?,
                bq: bias("q", nh * hd)?,
                bk: bias("k", nkv * hd)?,
                bv: bias("v", nkv * hd)?,
                wo: w.upload(b, &n("o", "weight"), &[h, nh * hd])?,
                ffn_norm: w.upload(b, &n("ffn_norm", "weight"), &[h])?,
                w_gate: w.upload(b, &n("gate", "weight"), &[ff, h])?,
                w_up: w.upload(b, &n("up", "weight"), &[ff, h])?,
                w_down: w.upload(b, &n("down", "weight"), &[h, ff])?,
            });
        }
        let norm = w.upload(b, names.norm(), &[h])?;
        let lm_head = if cfg.tie_word_embeddings && !w.contains(names.lm_head()) {
            embed.clone()
        } else {
            w.upload(b, names.lm_head(), &[cfg.vocab_size, h])?
        };
        let mut mix = std::collections::BTreeMap::<String, usize>::new();
        for (_, t) in w.iter() {
            *mix.entry(t.dtype.name().to_string()).or_default() += 1;
        }
        Ok(Self {
            inv_freq: cfg.inv_freq(),
            weight_bytes: w.total_bytes(),
            weight_dtypes: mix.into_iter().collect(),
            cfg,
            backend,
            embed,
            layers,
            norm,
            lm_head,
            rope_style,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// The backend the weights live on.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Bytes of weights (the file's tensor data).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// How many tensors of each dtype the model has.
    pub fn weight_dtypes(&self) -> &[(String, usize)] {
        &self.weight_dtypes
    }

    /// Parameter count (embedding counted once when tied).
    pub fn parameter_count(&self) -> usize {
        let c = &self.cfg;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let attn = h * c.n_heads * hd * 2 + h * c.n_kv_heads * hd * 2;
        let bias = if c.attention_bias { (c.n_heads + 2 * c.n_kv_heads) * hd } else { 0 };
        let mlp = 3 * h * c.intermediate_size;
        let per_layer = attn + bias + mlp + 2 * h;
        let head = if c.tie_word_embeddings { 0 } else { c.vocab_size * h };
        c.vocab_size * h + c.n_layers * per_layer + h + head
    }

    /// Runs new tokens of one or more sequences through the model, writing their keys and values
    /// into `cache`, and returns logits (`[rows, vocab]` flattened) for the rows `which` selects.
    pub fn forward(&self, batch: &[SeqInput<'_>], cache: &mut dyn KvCache, which: LogitsFor) -> Result<Vec<f32>> {
        let mut out = None;
        self.backend.run_within(&mut || out = Some(self.forward_inner(batch, &mut *cache, which)));
        out.unwrap_or_else(|| Err(EngineError::Request("the backend did not run the forward pass".into())))
    }

    fn forward_inner(&self, batch: &[SeqInput<'_>], cache: &mut dyn KvCache, which: LogitsFor) -> Result<Vec<f32>> {
        let b = self.backend.as_ref();
        let c = &self.cfg;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut last_rows = Vec::with_capacity(batch.len());
        for s in batch {
            if s.tokens.is_empty() {
                return Err(EngineError::Request("a sequence in the batch has no new tokens".into()));
            }
            let end = s.start_pos + s.tokens.len();
            if end > c.max_position_embeddings {
                return Err(EngineError::Request(format!(
                    "{end} tokens exceed the model's context of {}",
                    c.max_position_embeddings
                )));
            }
            ids.extend_from_slice(s.tokens);
            positions.extend((s.start_pos..end).map(|p| p as u32));
            last_rows.push(ids.len() - 1);
        }
        let seqs: Vec<SeqAttn<'_>> = batch
            .iter()
            .map(|s| SeqAttn { block_table: s.block_table, start_pos: s.start_pos, n_new: s.tokens.len() })
            .collect();
        let rope_q = Rope {
            n_heads: c.n_heads,
            head_dim: c.head_dim,
            inv_freq: &self.inv_freq,
            style: self.rope_style,
            positions: &positions,
        };
        let rope_k = Rope { n_heads: c.n_kv_heads, ..rope_q.clone() };
        let mut x = b.embedding(&self.embed, &ids)?;
        for (li, l) in self.layers.iter().enumerate() {
            let hn = b.rms_norm(&x, &l.attn_norm, c.rms_norm_eps)?;
            let mut q = b.matmul(&hn, &l.wq)?;
            let mut k = b.matmul(&hn, &l.wk)?;
            let mut v = b.matmul(&hn, &l.wv)?;
            if let (Some(bq), Some(bk), Some(bv)) = (&l.bq, &l.bk, &l.bv) {
                q = b.add(&q, bq)?;
                k = b.add(&k, bk)?;
                v = b.add(&v, bv)?;
            }
            let q = b.rope(&q, &rope_q)?;
            let k = b.rope(&k, &rope_k)?;
            let spec = PagedAttn {
                layer: li,
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_dim: c.head_dim,
                scale: 1.0 / (c.head_dim as f32).sqrt(),
                seqs: &seqs,
            };
            let att = b.attention(&q, &k, &v, cache, &spec)?;
            x = b.add(&x, &b.matmul(&att, &l.wo)?)?;
            let hn = b.rms_norm(&x, &l.ffn_norm, c.rms_norm_eps)?;
            let act = b.swiglu(&b.matmul(&hn, &l.w_gate)?, &b.matmul(&hn, &l.w_up)?)?;
            x = b.add(&x, &b.matmul(&act, &l.w_down)?)?;
        }
        if which == LogitsFor::Last {
            x = b.gather_rows(&x, &last_rows)?;
        }
        let x = b.rms_norm(&x, &self.norm, c.rms_norm_eps)?;
        let logits = b.matmul(&x, &self.lm_head)?;
        Ok(b.download_f32(&logits)?)
    }
}

impl std::fmt::Debug for DecoderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderModel").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}
