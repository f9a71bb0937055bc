//! Decoder-only transformers: Llama, Qwen2, Qwen3, Qwen3-MoE, GLM-4 and Gemma 3 (text) (GQA/MQA,
//! explicit head_dim, tied or untied embeddings, q/k/v bias, q/k norms, partial rotary, post
//! norms, sliding-window layers, MoE MLPs), from HF safetensors or GGUF.

use std::sync::Arc;

use govbox_drivers::{Backend, KvCache, PagedAttn, Rope, RopeStyle, SeqAttn, Tensor};

use super::mla::{Mla, MlaStep};
use super::moe::MoeBlock;
use super::names::{Names, Part};
use crate::config::{DecoderArch, DecoderConfig};
use crate::family::FamilyConfig;
use crate::gguf::GgufFile;
use crate::kv::{BLOCK_SIZE, SplitKv};
use crate::weights::{WeightInfo, WeightMap};
use crate::{EngineError, MappedFile, Result};

fn shape_err(what: &str) -> EngineError {
    EngineError::Request(format!("{what}: the rows do not split into heads"))
}

/// Multi-head (grouped-query) attention weights.
struct Mha {
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    wo: Tensor,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
}

enum Attn {
    Mha(Box<Mha>),
    Mla(Box<Mla>),
}

struct Layer {
    attn_norm: Tensor,
    attn: Attn,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    mlp: Mlp,
    post_ffn_norm: Option<Tensor>,
    /// A sliding-window (local) layer.
    sliding: bool,
}

enum Mlp {
    Dense { gate: Tensor, up: Tensor, down: Tensor },
    Moe(Box<MoeBlock>),
}

/// A loaded decoder-only transformer.
pub struct DecoderModel {
    cfg: DecoderConfig,
    backend: Arc<dyn Backend>,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// Absent for a decoder loaded as an encoder (an embedder such as Qwen3-Embedding, whose
    /// weights have no LM head).
    lm_head: Option<Tensor>,
    inv_freq: Vec<f32>,
    /// RoPE frequencies of the sliding-window layers, when their base differs.
    local_inv_freq: Vec<f32>,
    rope_style: RopeStyle,
    parameters: usize,
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
    /// The sequence's table in the sliding-window pool, when the cache is a
    /// [`crate::kv::SplitKv`] (made ready with [`crate::kv::WindowBlocks::fit`]); empty
    /// otherwise.
    pub local_table: &'a [u32],
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
        Self::from_hf_with(cfg, weights, backend, true)
    }

    /// Loads a HF folder's decoder without its LM head: for embedders, which read the last
    /// hidden state ([`forward_hidden`](Self::forward_hidden)) and ship no head.
    pub fn from_hf_without_head(cfg: DecoderConfig, weights: &WeightMap, backend: Arc<dyn Backend>) -> Result<Self> {
        Self::from_hf_with(cfg, weights, backend, false)
    }

    fn from_hf_with(cfg: DecoderConfig, weights: &WeightMap, backend: Arc<dyn Backend>, head: bool) -> Result<Self> {
        // GLM-4 rotates adjacent pairs; the others use rotate-half.
        let style = if cfg.arch == DecoderArch::Glm4 { RopeStyle::Interleaved } else { RopeStyle::Half };
        let prefix = Names::HF_PREFIXES
            .into_iter()
            .find(|p| weights.contains(&format!("{p}embed_tokens.weight")))
            .unwrap_or(Names::HF_PREFIXES[0]);
        if !prefix.is_empty() && prefix != Names::HF_PREFIXES[0] {
            log::info!("{}: using the language model under '{prefix}'; other towers are ignored", weights.source());
        }
        let names = Names { gguf: false, arch: cfg.arch, prefix };
        Self::build(cfg, weights, backend, names, style, head)
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
            DecoderArch::Llama | DecoderArch::Glm4 => RopeStyle::Interleaved,
            _ => RopeStyle::Half,
        };
        let names = Names { gguf: true, arch: cfg.arch, prefix: "" };
        Self::build(cfg, &weights, backend, names, style, true)
    }

    fn build(
        cfg: DecoderConfig,
        w: &WeightMap,
        backend: Arc<dyn Backend>,
        names: Names,
        rope_style: RopeStyle,
        head: bool,
    ) -> Result<Self> {
        let b = backend.as_ref();
        let (h, hd, nh, nkv, ff) = (cfg.hidden_size, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.intermediate_size);
        let fam = &cfg.family;
        // HF Gemma norms multiply by (1 + w); llama.cpp's converter has already added the 1.
        let plus_one = cfg.arch == DecoderArch::Gemma3 && !names.gguf;
        let norm_w = |name: &str, n: usize| {
            if plus_one { w.upload_mapped(b, name, &[n], |x| 1.0 + x) } else { w.upload(b, name, &[n]) }
        };
        let embed = w.upload(b, &names.embed(), &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let n = |p: Part, s: &str| format!("{}.{s}", names.layer(i, p));
            let bias = |p: Part, rows: usize| -> Result<Option<Tensor>> {
                if cfg.attention_bias { w.upload(b, &n(p, "bias"), &[rows]).map(Some) } else { Ok(None) }
            };
            let opt_norm = |on: bool, p: Part, size: usize| -> Result<Option<Tensor>> {
                if on { norm_w(&n(p, "weight"), size).map(Some) } else { Ok(None) }
            };
            let post_norms = matches!(cfg.arch, DecoderArch::Glm4 | DecoderArch::Gemma3);
            let sparse = fam.moe.as_ref().filter(|m| m.sparse_layers.get(i).copied().unwrap_or(false));
            let mlp = match sparse {
                Some(m) => Mlp::Moe(Box::new(MoeBlock::load(w, b, names, i, m, h)?)),
                None if cfg.arch == DecoderArch::Glm4 => {
                    let fused = n(Part::GateUp, "weight");
                    Mlp::Dense {
                        gate: w.upload_part(b, &fused, &[2, ff, h], 0)?,
                        up: w.upload_part(b, &fused, &[2, ff, h], 1)?,
                        down: w.upload(b, &n(Part::Down, "weight"), &[h, ff])?,
                    }
                }
                None => Mlp::Dense {
                    gate: w.upload(b, &n(Part::Gate, "weight"), &[ff, h])?,
                    up: w.upload(b, &n(Part::Up, "weight"), &[ff, h])?,
                    down: w.upload(b, &n(Part::Down, "weight"), &[h, ff])?,
                },
            };
            let attn = match &fam.mla {
                Some(m) => Attn::Mla(Box::new(Mla::load(w, b, names, i, m, h, nh)?)),
                None => Attn::Mha(Box::new(Mha {
                    wq: w.upload(b, &n(Part::Q, "weight"), &[nh * hd, h])?,
                    wk: w.upload(b, &n(Part::K, "weight"), &[nkv * hd, h])?,
                    wv: w.upload(b, &n(Part::V, "weight"), &[nkv * hd, h])?,
                    bq: bias(Part::Q, nh * hd)?,
                    bk: bias(Part::K, nkv * hd)?,
                    bv: bias(Part::V, nkv * hd)?,
                    wo: w.upload(b, &n(Part::O, "weight"), &[h, nh * hd])?,
                    q_norm: opt_norm(fam.qk_norm, Part::QNorm, hd)?,
                    k_norm: opt_norm(fam.qk_norm, Part::KNorm, hd)?,
                })),
            };
            layers.push(Layer {
                attn_norm: norm_w(&n(Part::AttnNorm, "weight"), h)?,
                attn,
                post_attn_norm: opt_norm(post_norms, Part::PostAttnNorm, h)?,
                ffn_norm: norm_w(&n(Part::FfnNorm, "weight"), h)?,
                mlp,
                post_ffn_norm: opt_norm(post_norms, Part::PostFfnNorm, h)?,
                sliding: fam.sliding_layers.get(i).copied().unwrap_or(false),
            });
        }
        let norm = norm_w(&names.norm(), h)?;
        let lm_head = if !head {
            None
        } else if cfg.tie_word_embeddings && !w.contains(names.lm_head()) {
            Some(embed.clone())
        } else {
            Some(w.upload(b, names.lm_head(), &[cfg.vocab_size, h])?)
        };
        let mut mix = std::collections::BTreeMap::<String, usize>::new();
        for (_, t) in w.iter() {
            *mix.entry(t.dtype.name().to_string()).or_default() += 1;
        }
        let rotary = fam.rotary_dim.unwrap_or(hd);
        let inv_freq = if let Some(y) = &fam.yarn {
            y.inv_freq(cfg.rope_theta, rotary)
        } else if rotary == hd && fam.rope_linear_factor.is_none() {
            cfg.inv_freq()
        } else {
            FamilyConfig::inv_freq(cfg.rope_theta, rotary, fam.rope_linear_factor)
        };
        let local_inv_freq = match fam.local_rope_theta {
            Some(t) => FamilyConfig::inv_freq(t, rotary, None),
            None => inv_freq.clone(),
        };
        Ok(Self {
            inv_freq,
            local_inv_freq,
            parameters: w.iter().map(|(_, t)| t.shape.iter().product::<usize>()).sum(),
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

    /// KV heads and values per head that the KV cache needs: the attention heads' for GQA, one
    /// "head" of `qk_rope + kv_lora_rank` (the compressed latent) for MLA.
    pub fn kv_layout(&self) -> (usize, usize) {
        match &self.cfg.family.mla {
            Some(m) => (1, Mla::cache_width(m)),
            None => (self.cfg.n_kv_heads, self.cfg.head_dim),
        }
    }

    /// The sliding window, when the model has both sliding-window and full-attention layers:
    /// then its KV is a [`crate::kv::SplitKv`] of [`Self::layer_counts`] layers each.
    pub fn split_window(&self) -> Option<usize> {
        let (global, local) = self.layer_counts();
        self.cfg.family.sliding_window.filter(|_| global > 0 && local > 0)
    }

    /// Full-attention and sliding-window layers.
    pub fn layer_counts(&self) -> (usize, usize) {
        let local = self.layers.iter().filter(|l| l.sliding).count();
        (self.layers.len() - local, local)
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

    /// Parameter count: the elements of the model's tensors (a tied embedding counted once).
    pub fn parameter_count(&self) -> usize {
        self.parameters
    }

    /// Runs new tokens of one or more sequences through the model, writing their keys and values
    /// into `cache`, and returns logits (`[rows, vocab]` flattened) for the rows `which` selects.
    pub fn forward(&self, batch: &[SeqInput<'_>], cache: &mut dyn KvCache, which: LogitsFor) -> Result<Vec<f32>> {
        let mut out = None;
        self.backend.run_within(&mut || out = Some(self.forward_inner(batch, &mut *cache, which)));
        out.unwrap_or_else(|| Err(EngineError::Request("the backend did not run the forward pass".into())))
    }

    /// Runs sequences through the model like [`forward`](Self::forward) and returns the final
    /// (normed) hidden state of each sequence's last new token, `[sequences, hidden]` flattened:
    /// what last-token pooling reads. The LM head is not used.
    pub fn forward_hidden(&self, batch: &[SeqInput<'_>], cache: &mut dyn KvCache) -> Result<Vec<f32>> {
        let mut out = None;
        self.backend.run_within(&mut || {
            out =
                Some(self.hidden(batch, &mut *cache, LogitsFor::Last).and_then(|x| Ok(self.backend.download_f32(&x)?)))
        });
        out.unwrap_or_else(|| Err(EngineError::Request("the backend did not run the forward pass".into())))
    }

    fn forward_inner(&self, batch: &[SeqInput<'_>], cache: &mut dyn KvCache, which: LogitsFor) -> Result<Vec<f32>> {
        let lm_head = self
            .lm_head
            .as_ref()
            .ok_or_else(|| EngineError::Request("this decoder was loaded without its LM head".into()))?;
        let x = self.hidden(batch, cache, which)?;
        let logits = self.backend.matmul(&x, lm_head)?;
        Ok(self.backend.download_f32(&logits)?)
    }

    /// The final-normed hidden states of the rows `which` selects.
    fn hidden(&self, batch: &[SeqInput<'_>], cache: &mut dyn KvCache, which: LogitsFor) -> Result<Tensor> {
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
        // A split cache: full-attention layers in one pool, sliding-window layers in the other,
        // each numbered from 0 in layer order, and the sliding ones read through the local tables.
        let split = cache.as_any_mut().is::<SplitKv>() && self.split_window().is_some();
        let local_seqs: Vec<SeqAttn<'_>> = batch
            .iter()
            .map(|s| SeqAttn { block_table: s.local_table, start_pos: s.start_pos, n_new: s.tokens.len() })
            .collect();
        if split && batch.iter().any(|s| s.local_table.len() < (s.start_pos + s.tokens.len()).div_ceil(BLOCK_SIZE)) {
            return Err(EngineError::Request("a sequence has no sliding-window blocks for its positions".into()));
        }
        let (mut n_global, mut n_local) = (0, 0);
        let (head_dim, style) = (c.head_dim, self.rope_style);
        let rope = |n_heads, inv_freq| Rope { n_heads, head_dim, inv_freq, style, positions: &positions };
        let fam = &c.family;
        let scale = fam.query_pre_attn_scalar.map_or(1.0 / (c.head_dim as f32).sqrt(), |s| 1.0 / s.sqrt());
        let rows = ids.len();
        let eps = c.rms_norm_eps;
        // Per-head RMSNorm: the rows of `t` seen as `[rows * heads, head_dim]`.
        let head_norm = |t: &Tensor, wt: &Tensor, heads: usize| -> Result<Tensor> {
            let per_head = t.reshape(&[rows * heads, c.head_dim]).ok_or_else(|| shape_err("q/k norm"))?;
            b.rms_norm(&per_head, wt, eps)?.reshape(&[rows, heads * c.head_dim]).ok_or_else(|| shape_err("q/k norm"))
        };
        let mut x = b.embedding(&self.embed, &ids)?;
        if c.arch == DecoderArch::Gemma3 {
            x = b.scale(&x, (c.hidden_size as f32).sqrt())?;
        }
        for (li, l) in self.layers.iter().enumerate() {
            let hn = b.rms_norm(&x, &l.attn_norm, eps)?;
            let freqs = if l.sliding { &self.local_inv_freq } else { &self.inv_freq };
            let mut o = match &l.attn {
                Attn::Mla(mla) => {
                    let m = fam.mla.as_ref().ok_or_else(|| shape_err("mla"))?;
                    let yarn = fam.yarn.as_ref();
                    let step = MlaStep {
                        layer: li,
                        n_heads: c.n_heads,
                        eps,
                        inv_freq: freqs,
                        rope_factor: yarn.map_or(1.0, |y| y.attention_factor as f32),
                        softmax_scale: yarn.map_or(1.0, |y| y.softmax_scale_factor())
                            / ((m.qk_nope + m.qk_rope) as f32).sqrt(),
                        positions: &positions,
                        seqs: &seqs,
                    };
                    mla.forward(b, m, &hn, cache, &step)?
                }
                Attn::Mha(a) => {
                    let mut q = b.matmul(&hn, &a.wq)?;
                    let mut k = b.matmul(&hn, &a.wk)?;
                    let mut v = b.matmul(&hn, &a.wv)?;
                    if let (Some(bq), Some(bk), Some(bv)) = (&a.bq, &a.bk, &a.bv) {
                        q = b.add(&q, bq)?;
                        k = b.add(&k, bk)?;
                        v = b.add(&v, bv)?;
                    }
                    if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
                        q = head_norm(&q, qn, c.n_heads)?;
                        k = head_norm(&k, kn, c.n_kv_heads)?;
                    }
                    let q = b.rope(&q, &rope(c.n_heads, freqs))?;
                    let k = b.rope(&k, &rope(c.n_kv_heads, freqs))?;
                    let mut spec = PagedAttn {
                        layer: li,
                        n_heads: c.n_heads,
                        n_kv_heads: c.n_kv_heads,
                        head_dim: c.head_dim,
                        scale,
                        seqs: &seqs,
                    };
                    let pool: &mut dyn KvCache = if split {
                        let sk = cache.as_any_mut().downcast_mut::<SplitKv>().ok_or_else(|| shape_err("split kv"))?;
                        if l.sliding {
                            spec.layer = n_local;
                            spec.seqs = &local_seqs;
                            n_local += 1;
                            sk.local.as_mut()
                        } else {
                            spec.layer = n_global;
                            n_global += 1;
                            sk.global.as_mut()
                        }
                    } else {
                        &mut *cache
                    };
                    let att = match fam.sliding_window.filter(|_| l.sliding) {
                        Some(window) => b.attention_windowed(&q, &k, &v, pool, &spec, window)?,
                        None => b.attention(&q, &k, &v, pool, &spec)?,
                    };
                    b.matmul(&att, &a.wo)?
                }
            };
            if let Some(pn) = &l.post_attn_norm {
                o = b.rms_norm(&o, pn, eps)?;
            }
            x = b.add(&x, &o)?;
            // Freed before the MLP, and its gate and up before its down projection: a prefill
            // chunk's MLP activations are the widest (`[512, 18944]` f32, 39 MB each at 7B).
            drop((hn, o));
            let hn = b.rms_norm(&x, &l.ffn_norm, eps)?;
            let mut m = match &l.mlp {
                Mlp::Dense { gate, up, down } => {
                    let act = {
                        let (g, u) = (b.matmul(&hn, gate)?, b.matmul(&hn, up)?);
                        if c.arch == DecoderArch::Gemma3 { b.geglu_tanh(&g, &u)? } else { b.swiglu_into(g, &u)? }
                    };
                    b.matmul(&act, down)?
                }
                Mlp::Moe(moe) => moe.forward(b, &hn)?,
            };
            if let Some(pn) = &l.post_ffn_norm {
                m = b.rms_norm(&m, pn, eps)?;
            }
            x = b.add(&x, &m)?;
        }
        if which == LogitsFor::Last {
            x = b.gather_rows(&x, &last_rows)?;
        }
        Ok(b.rms_norm(&x, &self.norm, c.rms_norm_eps)?)
    }
}

impl std::fmt::Debug for DecoderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderModel").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}
