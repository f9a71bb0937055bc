//! BERT-family encoders (`BertModel`, `XLMRobertaModel`): the transformer behind
//! sentence-transformers embedding models such as all-MiniLM-L6-v2, the BGE family and bge-m3,
//! and behind cross-encoder rerankers. The two families differ only in where positions start
//! (see [`BertConfig::position_offset`]) and in the prefix of task-head weights.
//!
//! The forward pass keeps a batch *packed*: the rows of every sequence follow each other with no
//! padding, so the matmuls, norms and GELU only ever see real tokens. Only attention needs the
//! padded `[batch, seq_len]` layout; the query, key and value rows are gathered into it for that
//! op and the result is gathered back. A sequence therefore costs the same work whatever the
//! lengths of its batch-mates, and its result does not depend on them beyond float rounding.

use std::sync::Arc;

use govbox_drivers::{Backend, DenseAttn, Tensor};

pub use super::bert_config::{BertConfig, EncoderFamily};
use crate::weights::WeightMap;
use crate::{EngineError, Result};

/// Most sequences run through the encoder at once.
const MAX_BATCH_SEQS: usize = 64;
/// Most rows of the padded `[batch, longest]` attention layout in one encoder call. Batches are
/// formed from length-sorted inputs, so this rarely splits inputs of similar length.
const MAX_BATCH_PADDED_TOKENS: usize = 16 << 10;

/// A linear layer: weight `[out, in]` and bias `[out]`.
struct Linear {
    w: Tensor,
    b: Tensor,
}

/// A LayerNorm's weight and bias.
struct Norm {
    w: Tensor,
    b: Tensor,
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    intermediate: Linear,
    output: Linear,
    out_norm: Norm,
}

/// The hidden states of a batch, packed: sequence `i` owns rows `offsets[i]..offsets[i + 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderOutput {
    /// `[total_tokens, hidden_size]`, row-major.
    pub hidden: Vec<f32>,
    /// Row offsets of the sequences, `batch + 1` entries.
    pub offsets: Vec<usize>,
    /// Width of a row.
    pub hidden_size: usize,
}

impl EncoderOutput {
    /// Sequences in the batch.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `[tokens, hidden_size]` rows of sequence `i`, or `None` past the end.
    pub fn sequence(&self, i: usize) -> Option<&[f32]> {
        let (a, b) = (*self.offsets.get(i)?, *self.offsets.get(i + 1)?);
        self.hidden.get(a * self.hidden_size..b * self.hidden_size)
    }
}

/// A loaded BERT encoder.
pub struct BertModel {
    cfg: BertConfig,
    backend: Arc<dyn Backend>,
    word: Tensor,
    position: Tensor,
    /// The whole token-type table, for inputs with a second segment (BERT cross-encoders).
    token_types: Tensor,
    /// The token-type-0 embedding row, `[1, hidden]`, added to every row of single-segment
    /// inputs (and of every XLM-RoBERTa input, whose one type row is this one).
    token_type0: Tensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
}

impl std::fmt::Debug for BertModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertModel").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl BertModel {
    /// Builds the model from `weights`, named as HF's `BertModel` / `XLMRobertaModel` save
    /// them, with or without the `bert.` / `roberta.` prefix that task-head checkpoints carry.
    /// Pooler and task-head tensors, and the unused I64 `embeddings.position_ids` buffer, are
    /// ignored.
    pub fn load(cfg: BertConfig, weights: &WeightMap, backend: Arc<dyn Backend>) -> Result<Self> {
        let task_prefix = cfg.family.weight_prefix();
        let prefix = if weights.contains("embeddings.word_embeddings.weight") {
            ""
        } else if weights.contains(&format!("{task_prefix}embeddings.word_embeddings.weight")) {
            task_prefix
        } else {
            // Neither: report the unprefixed name, the one sentence-transformers folders use.
            ""
        };
        let be = backend.as_ref();
        let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let get = |name: &str, shape: &[usize]| weights.upload(be, &format!("{prefix}{name}"), shape);
        let linear = |name: &str, out: usize, inp: usize| -> Result<Linear> {
            Ok(Linear { w: get(&format!("{name}.weight"), &[out, inp])?, b: get(&format!("{name}.bias"), &[out])? })
        };
        let norm = |name: &str| -> Result<Norm> {
            Ok(Norm { w: get(&format!("{name}.weight"), &[h])?, b: get(&format!("{name}.bias"), &[h])? })
        };
        let word = get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
        let position = get("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings, h])?;
        let token_types = get("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, h])?;
        let token_type0 = be.embedding(&token_types, &[0])?;
        let emb_norm = norm("embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let l = format!("encoder.layer.{i}");
            layers.push(Layer {
                query: linear(&format!("{l}.attention.self.query"), h, h)?,
                key: linear(&format!("{l}.attention.self.key"), h, h)?,
                value: linear(&format!("{l}.attention.self.value"), h, h)?,
                attn_out: linear(&format!("{l}.attention.output.dense"), h, h)?,
                attn_norm: norm(&format!("{l}.attention.output.LayerNorm"))?,
                intermediate: linear(&format!("{l}.intermediate.dense"), inter, h)?,
                output: linear(&format!("{l}.output.dense"), h, inter)?,
                out_norm: norm(&format!("{l}.output.LayerNorm"))?,
            });
        }
        Ok(Self { cfg, backend, word, position, token_types, token_type0, emb_norm, layers })
    }

    /// The model's shape.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// The backend the weights live on.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Runs the encoder over a batch of token sequences (special tokens already added) and
    /// returns the last hidden state of every token.
    ///
    /// Every sequence must hold between 1 and [`BertConfig::max_tokens`] tokens, each below
    /// `vocab_size`. Every token has type 0.
    pub fn forward(&self, seqs: &[&[u32]]) -> Result<EncoderOutput> {
        self.forward_typed(seqs, None)
    }

    /// As [`forward`](Self::forward), with each token's type (segment) id when `types` is given:
    /// one slice per sequence, of the same length, each id below `type_vocab_size`.
    pub fn forward_typed(&self, seqs: &[&[u32]], types: Option<&[&[u32]]>) -> Result<EncoderOutput> {
        let mut out = None;
        self.backend.run_within(&mut || out = Some(self.forward_inner(seqs, types)));
        out.unwrap_or_else(|| Err(EngineError::Request("the backend did not run the encoder".into())))
    }

    /// Runs any number of inputs through the encoder in batches of similar length (longest
    /// first, so that the padded attention layout wastes little), and hands each input's rows
    /// to `each` with its index in `inputs`. Each input's rows equal those it gets alone, up to
    /// float rounding.
    pub fn forward_batched(
        &self,
        inputs: &[Vec<u32>],
        types: Option<&[Vec<u32>]>,
        each: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        if types.is_some_and(|t| t.len() != inputs.len()) {
            return Err(EngineError::Request("token type ids must be given for every input".into()));
        }
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].len()));
        let mut start = 0;
        while start < order.len() {
            // The first input of a batch is its longest.
            let longest = inputs[order[start]].len().max(1);
            let cap = (MAX_BATCH_PADDED_TOKENS / longest).clamp(1, MAX_BATCH_SEQS);
            let batch = &order[start..(start + cap).min(order.len())];
            let seqs: Vec<&[u32]> = batch.iter().map(|&i| inputs[i].as_slice()).collect();
            let typed: Option<Vec<&[u32]>> = types.map(|t| batch.iter().map(|&i| t[i].as_slice()).collect());
            let out = self.forward_typed(&seqs, typed.as_deref())?;
            for (j, &i) in batch.iter().enumerate() {
                let rows = out.sequence(j).ok_or_else(|| EngineError::Request(format!("encoder lost input {i}")))?;
                each(i, rows)?;
            }
            start += batch.len();
        }
        Ok(())
    }

    fn forward_inner(&self, seqs: &[&[u32]], types: Option<&[&[u32]]>) -> Result<EncoderOutput> {
        let h = self.cfg.hidden_size;
        let mut offsets = Vec::with_capacity(seqs.len() + 1);
        offsets.push(0);
        for (i, s) in seqs.iter().enumerate() {
            if s.is_empty() || s.len() > self.cfg.max_tokens() {
                return Err(EngineError::Request(format!(
                    "input {i} has {} tokens; the encoder takes 1 to {}",
                    s.len(),
                    self.cfg.max_tokens()
                )));
            }
            offsets.push(offsets[i] + s.len());
        }
        // Type ids only matter when some are not 0; all-zero ones take the broadcast row.
        let types = match types {
            Some(t) if t.iter().any(|s| s.iter().any(|&x| x != 0)) => {
                let lens_match = t.len() == seqs.len() && t.iter().zip(seqs).all(|(a, b)| a.len() == b.len());
                let most = self.cfg.type_vocab_size as u32;
                if !lens_match || t.iter().any(|s| s.iter().any(|&x| x >= most)) {
                    return Err(EngineError::Request(format!(
                        "token type ids must match the inputs one for one and be below type_vocab_size {most}"
                    )));
                }
                Some(t.iter().flat_map(|s| s.iter().copied()).collect::<Vec<u32>>())
            }
            _ => None,
        };
        if seqs.is_empty() {
            return Ok(EncoderOutput { hidden: Vec::new(), offsets, hidden_size: h });
        }
        let be = self.backend.as_ref();
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        // Positions restart at the offset in every sequence; max_position_embeddings fits in
        // u32 (capped), and offset + len is within it (checked above).
        let first = self.cfg.position_offset as u32;
        let positions: Vec<u32> = seqs.iter().flat_map(|s| first..first + s.len() as u32).collect();
        let layout = PaddedLayout::new(&offsets);

        // Embeddings, summed in the order transformers sums them: (word + type) + position.
        let word = be.embedding(&self.word, &ids)?;
        let x = match types {
            Some(t) => be.add(&word, &be.embedding(&self.token_types, &t)?)?,
            None => be.add(&word, &self.token_type0)?,
        };
        let pos = be.embedding(&self.position, &positions)?;
        let mut x = be.add_layer_norm(&x, &pos, &self.emb_norm.w, &self.emb_norm.b, self.cfg.layer_norm_eps)?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &layout)?;
        }
        let hidden = be.download_f32(&x)?;
        Ok(EncoderOutput { hidden, offsets, hidden_size: h })
    }

    fn linear(&self, x: &Tensor, l: &Linear) -> Result<Tensor> {
        let be = self.backend.as_ref();
        Ok(be.linear(x, &l.w, &l.b, false)?)
    }

    /// One post-LayerNorm encoder block on packed rows.
    fn layer(&self, l: &Layer, x: &Tensor, layout: &PaddedLayout) -> Result<Tensor> {
        let be = self.backend.as_ref();
        let eps = self.cfg.layer_norm_eps;
        let (q, k, v) = (self.linear(x, &l.query)?, self.linear(x, &l.key)?, self.linear(x, &l.value)?);
        let spec = DenseAttn {
            batch: layout.batch,
            seq_len: layout.seq_len,
            n_heads: self.cfg.n_heads,
            head_dim: self.cfg.head_dim(),
            scale: 1.0 / (self.cfg.head_dim() as f32).sqrt(),
            key_mask: &layout.key_mask,
        };
        let ctx = if layout.is_packed() {
            be.attention_dense(&q, &k, &v, &spec)?
        } else {
            let pad = |t: &Tensor| be.gather_rows(t, &layout.to_padded);
            let ctx = be.attention_dense(&pad(&q)?, &pad(&k)?, &pad(&v)?, &spec)?;
            be.gather_rows(&ctx, &layout.to_packed)?
        };
        let a = be.add_layer_norm(&self.linear(&ctx, &l.attn_out)?, x, &l.attn_norm.w, &l.attn_norm.b, eps)?;
        let f = be.linear(&a, &l.intermediate.w, &l.intermediate.b, true)?;
        Ok(be.add_layer_norm(&self.linear(&f, &l.output)?, &a, &l.out_norm.w, &l.out_norm.b, eps)?)
    }
}

/// How packed rows map to the padded `[batch, seq_len]` layout that attention works on.
struct PaddedLayout {
    batch: usize,
    seq_len: usize,
    /// `[batch * seq_len]`: true for real tokens.
    key_mask: Vec<bool>,
    /// For each padded row, the packed row it copies (padding rows repeat the sequence's last
    /// token; the mask keeps them out of every real row's attention).
    to_padded: Vec<usize>,
    /// For each packed row, its padded row.
    to_packed: Vec<usize>,
}

impl PaddedLayout {
    /// `offsets` has `batch + 1` entries and no empty sequence.
    fn new(offsets: &[usize]) -> Self {
        let lens: Vec<usize> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
        let (batch, seq_len) = (lens.len(), lens.iter().copied().max().unwrap_or(0));
        let mut key_mask = Vec::with_capacity(batch * seq_len);
        let mut to_padded = Vec::with_capacity(batch * seq_len);
        let mut to_packed = Vec::with_capacity(offsets.last().copied().unwrap_or(0));
        for (s, &len) in lens.iter().enumerate() {
            for j in 0..seq_len {
                key_mask.push(j < len);
                to_padded.push(offsets[s] + j.min(len.saturating_sub(1)));
                if j < len {
                    to_packed.push(s * seq_len + j);
                }
            }
        }
        Self { batch, seq_len, key_mask, to_padded, to_packed }
    }

    /// Whether packed and padded rows coincide (all sequences have the same length).
    fn is_packed(&self) -> bool {
        self.to_packed.len() == self.batch * self.seq_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use govbox_drivers::cpu::CpuBackend;
    use govbox_drivers::{DType, HostBytes};
    use serde_json::Value;

    use crate::weights::WeightInfo;

    fn config_json() -> Value {
        serde_json::json!({
            "architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 8,
            "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 12,
            "max_position_embeddings": 16, "type_vocab_size": 2, "vocab_size": 20, "layer_norm_eps": 1e-12
        })
    }

    #[test]
    fn config_parses_and_rejects_what_it_cannot_run() {
        let c = BertConfig::from_json(&config_json(), "config.json").unwrap();
        assert_eq!((c.hidden_size, c.n_layers, c.n_heads, c.head_dim()), (8, 2, 2, 4));
        let bad = |k: &str, v: Value| {
            let mut j = config_json();
            j[k] = v;
            BertConfig::from_json(&j, "x/config.json").unwrap_err().to_string()
        };
        assert!(bad("hidden_act", "relu".into()).contains("hidden_act \"relu\" is not supported"));
        assert!(bad("num_attention_heads", 3.into()).contains("not a multiple of num_attention_heads 3"));
        assert!(bad("hidden_size", 0.into()).contains("'hidden_size' is 0"));
        assert!(
            bad("architectures", serde_json::json!(["GPT2Model"])).contains("'GPT2Model' is not a supported encoder")
        );
        assert!(bad("position_embedding_type", "relative_key".into()).contains("relative_key"));
        let e = bad("layer_norm_eps", (-1.0).into());
        assert!(e.starts_with("x/config.json: layer_norm_eps -1"), "{e}");
    }

    /// A deterministic pseudo-random tensor.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn tiny_weights(c: &BertConfig, prefix: &str) -> WeightMap {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.word_embeddings.weight".into(), vec![c.vocab_size, h]),
            ("embeddings.position_embeddings.weight".into(), vec![c.max_position_embeddings, h]),
            ("embeddings.token_type_embeddings.weight".into(), vec![c.type_vocab_size, h]),
            ("embeddings.LayerNorm.weight".into(), vec![h]),
            ("embeddings.LayerNorm.bias".into(), vec![h]),
        ];
        for l in 0..c.n_layers {
            for (p, o, n) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", i, h),
                ("output.dense", h, i),
            ] {
                shapes.push((format!("encoder.layer.{l}.{p}.weight"), vec![o, n]));
                shapes.push((format!("encoder.layer.{l}.{p}.bias"), vec![o]));
            }
            for p in ["attention.output.LayerNorm", "output.LayerNorm"] {
                shapes.push((format!("encoder.layer.{l}.{p}.weight"), vec![h]));
                shapes.push((format!("encoder.layer.{l}.{p}.bias"), vec![h]));
            }
        }
        let mut w = WeightMap::new("tiny");
        for (seed, (name, shape)) in shapes.into_iter().enumerate() {
            let n = shape.iter().product();
            let mut v = values(n, seed as u32);
            if name.ends_with("LayerNorm.weight") {
                v.iter_mut().for_each(|x| *x = 1.0 + *x * 0.1);
            }
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let info = WeightInfo { dtype: DType::F32, shape, data: HostBytes::from_vec(bytes), file: "tiny".into() };
            w.insert(format!("{prefix}{name}"), info);
        }
        w
    }

    fn weight(w: &WeightMap, name: &str) -> Vec<f32> {
        w.get(name)
            .unwrap()
            .data
            .as_slice()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn layer_norm(x: &mut [f32], g: &[f32], b: &[f32], eps: f32) {
        for row in x.chunks_exact_mut(g.len()) {
            let n = row.len() as f32;
            let mean = row.iter().sum::<f32>() / n;
            let var = row.iter().map(|a| (a - mean) * (a - mean)).sum::<f32>() / n;
            for ((a, gi), bi) in row.iter_mut().zip(g).zip(b) {
                *a = (*a - mean) / (var + eps).sqrt() * gi + bi;
            }
        }
    }

    fn linear(x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
        let (out, inp) = (b.len(), w.len() / b.len());
        x.chunks_exact(inp)
            .flat_map(|r| {
                (0..out).map(move |o| b[o] + r.iter().zip(&w[o * inp..(o + 1) * inp]).map(|(p, q)| p * q).sum::<f32>())
            })
            .collect()
    }

    fn erf(x: f32) -> f32 {
        // Abramowitz-Stegun 7.1.26 is too coarse for 1e-4; integrate instead (Simpson, fine steps).
        let n = 2000;
        let h = f64::from(x) / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(f64::from(x));
        for k in 1..n {
            s += f(k as f64 * h) * if k % 2 == 1 { 4.0 } else { 2.0 };
        }
        (s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()) as f32
    }

    /// A direct, single-sequence transcription of HF's BertModel forward.
    fn reference(c: &BertConfig, w: &WeightMap, ids: &[u32]) -> Vec<f32> {
        let h = c.hidden_size;
        let (word, pos, tt) = (
            weight(w, "embeddings.word_embeddings.weight"),
            weight(w, "embeddings.position_embeddings.weight"),
            weight(w, "embeddings.token_type_embeddings.weight"),
        );
        let mut x = Vec::with_capacity(ids.len() * h);
        for (p, &id) in ids.iter().enumerate() {
            let id = id as usize;
            x.extend((0..h).map(|j| word[id * h + j] + tt[j] + pos[p * h + j]));
        }
        let g = |n: &str| weight(w, n);
        layer_norm(&mut x, &g("embeddings.LayerNorm.weight"), &g("embeddings.LayerNorm.bias"), c.layer_norm_eps);
        let (nh, hd, n) = (c.n_heads, c.head_dim(), ids.len());
        for l in 0..c.n_layers {
            let p = |s: &str| format!("encoder.layer.{l}.{s}");
            let lin = |x: &[f32], s: &str| linear(x, &g(&p(&format!("{s}.weight"))), &g(&p(&format!("{s}.bias"))));
            let (q, k, v) =
                (lin(&x, "attention.self.query"), lin(&x, "attention.self.key"), lin(&x, "attention.self.value"));
            let mut ctx = vec![0f32; n * h];
            for hh in 0..nh {
                for i in 0..n {
                    let s: Vec<f32> = (0..n)
                        .map(|j| {
                            (0..hd).map(|d| q[i * h + hh * hd + d] * k[j * h + hh * hd + d]).sum::<f32>()
                                / (hd as f32).sqrt()
                        })
                        .collect();
                    let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = s.iter().map(|a| (a - m).exp()).collect();
                    let z: f32 = e.iter().sum();
                    for j in 0..n {
                        for d in 0..hd {
                            ctx[i * h + hh * hd + d] += e[j] / z * v[j * h + hh * hd + d];
                        }
                    }
                }
            }
            let mut a: Vec<f32> = lin(&ctx, "attention.output.dense").iter().zip(&x).map(|(p, q)| p + q).collect();
            let ln = |x: &mut [f32], s: &str| {
                layer_norm(x, &g(&p(&format!("{s}.weight"))), &g(&p(&format!("{s}.bias"))), c.layer_norm_eps)
            };
            ln(&mut a, "attention.output.LayerNorm");
            let f: Vec<f32> = lin(&a, "intermediate.dense")
                .iter()
                .map(|&z| 0.5 * z * (1.0 + erf(z / std::f32::consts::SQRT_2)))
                .collect();
            x = lin(&f, "output.dense").iter().zip(&a).map(|(p, q)| p + q).collect();
            ln(&mut x, "output.LayerNorm");
        }
        x
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn forward_matches_a_direct_transcription_batched_or_not() {
        let c = tiny_config();
        let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new(2).unwrap());
        for prefix in ["", "bert."] {
            let w = tiny_weights(&c, prefix);
            let m = BertModel::load(c.clone(), &w, backend.clone()).unwrap();
            let seqs: [&[u32]; 4] = [&[1, 5, 7, 2], &[1, 2], &[1, 19, 3, 3, 3, 9, 11, 13, 4, 2], &[0]];
            let unprefixed = tiny_weights(&c, "");
            let batched = m.forward(&seqs).unwrap();
            assert_eq!(batched.len(), 4);
            for (i, s) in seqs.iter().enumerate() {
                let expect = reference(&c, &unprefixed, s);
                let alone = m.forward(&[s]).unwrap();
                let d_ref = max_diff(alone.sequence(0).unwrap(), &expect);
                let d_batch = max_diff(batched.sequence(i).unwrap(), alone.sequence(0).unwrap());
                assert!(d_ref < 1e-4, "sequence {i}: {d_ref} from the reference");
                assert!(d_batch < 1e-5, "sequence {i}: {d_batch} between batched and alone");
            }
        }
    }

    #[test]
    fn forward_refuses_empty_and_overlong_inputs_and_bad_ids() {
        let c = tiny_config();
        let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new(1).unwrap());
        let m = BertModel::load(c.clone(), &tiny_weights(&c, ""), backend).unwrap();
        assert!(m.forward(&[&[1, 2], &[]]).unwrap_err().to_string().contains("input 1 has 0 tokens"));
        assert!(m.forward(&[&[1; 17]]).unwrap_err().to_string().contains("1 to 16"));
        assert!(m.forward(&[&[1, 20]]).is_err());
        assert!(m.forward(&[]).unwrap().is_empty());
    }

    fn tiny_config() -> BertConfig {
        BertConfig::from_json(&config_json(), "config.json").unwrap()
    }

    #[test]
    fn load_names_a_missing_or_misshapen_tensor() {
        let c = tiny_config();
        let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new(1).unwrap());
        let mut wide = c.clone();
        wide.intermediate_size = 16;
        let e = BertModel::load(wide, &tiny_weights(&c, ""), backend.clone()).unwrap_err().to_string();
        assert!(e.contains("encoder.layer.0.intermediate.dense.weight") && e.contains("[16, 8]"), "{e}");
        let e = BertModel::load(c, &WeightMap::new("empty.safetensors"), backend).unwrap_err().to_string();
        assert!(e.contains("missing tensor 'embeddings.word_embeddings.weight'"), "{e}");
    }

    #[test]
    fn padded_layout_maps_rows_both_ways() {
        let l = PaddedLayout::new(&[0, 2, 5]);
        assert_eq!((l.batch, l.seq_len), (2, 3));
        assert_eq!(l.key_mask, [true, true, false, true, true, true]);
        assert_eq!(l.to_padded, [0, 1, 1, 2, 3, 4]);
        assert_eq!(l.to_packed, [0, 1, 3, 4, 5]);
        assert!(!l.is_packed());
        assert!(PaddedLayout::new(&[0, 3, 6]).is_packed());
    }
}
