//! Multi-head latent attention (DeepSeek-V2/V3), computed in the "absorbed" form so that the KV
//! cache holds only each token's compressed latent.
//!
//! Per token the model makes one shared latent `c` (`kv_lora_rank` values, RMS-normed) and one
//! shared RoPE key `k_pe` (`qk_rope_head_dim` values). HF expands `c` into per-head keys and values
//! (`kv_b_proj`); instead, each head's query is mapped into the latent space
//! (`q_lat = W_UKᵀ q_nope`), so `q·k = q_lat·c + q_pe·k_pe`, and each head's output is
//! `W_UV (Σ p c)`. Attention then runs as multi-query attention over one "head" `[k_pe, c]`
//! (`qk_rope + kv_lora_rank` values per token) with the backend's paged attention op, which keeps
//! that head as both key and value.

use govbox_drivers::{Backend, KvCache, PagedAttn, Rope, RopeStyle, SeqAttn, Tensor};

use super::names::{MlaPart, Names, Part};
use crate::family::MlaConfig;
use crate::weights::WeightMap;
use crate::{EngineError, Result};

/// One layer's MLA weights.
pub(crate) struct Mla {
    /// `q_a_proj` and `q_a_layernorm`, when queries are compressed.
    q_a: Option<(Tensor, Tensor)>,
    /// `q_b_proj` (or `q_proj`): `[heads · (nope + rope), q_rank or hidden]`.
    q_b: Tensor,
    /// `kv_a_proj_with_mqa` split: the latent rows and the RoPE-key rows.
    kv_a_latent: Tensor,
    kv_a_rope: Tensor,
    kv_a_norm: Tensor,
    /// Per head `W_UKᵀ` `[rank, nope]`: query no-rope part into the latent space.
    uk: Vec<Tensor>,
    /// Per head `W_UV` `[v_head, rank]`: latent to the head's value.
    uv: Vec<Tensor>,
    o: Tensor,
}

/// What one MLA forward pass needs besides the weights.
pub(crate) struct MlaStep<'a> {
    pub layer: usize,
    pub n_heads: usize,
    pub eps: f32,
    pub inv_freq: &'a [f32],
    /// YaRN's factor on cos and sin (1 without YaRN).
    pub rope_factor: f32,
    /// Softmax scale: `(nope + rope)^-0.5`, times YaRN's `mscale²`.
    pub softmax_scale: f32,
    pub positions: &'a [u32],
    pub seqs: &'a [SeqAttn<'a>],
}

impl Mla {
    /// Values per token in the KV cache: `[k_pe, c]`.
    pub fn cache_width(cfg: &MlaConfig) -> usize {
        cfg.qk_rope + cfg.kv_lora_rank
    }

    /// Loads layer `i` (HF or GGUF naming). GGUF files from llama.cpp's converter carry
    /// `kv_b_proj` split per head into `attn_k_b` (already `W_UKᵀ`) and `attn_v_b` (`W_UV`),
    /// which upload as they are; HF folders and older GGUF files have the whole `kv_b_proj`,
    /// which is split here.
    pub fn load(
        w: &WeightMap,
        b: &dyn Backend,
        names: Names,
        i: usize,
        cfg: &MlaConfig,
        h: usize,
        nh: usize,
    ) -> Result<Self> {
        let n = |p: MlaPart| names.mla(i, p);
        let (rank, nope, rope, vh) = (cfg.kv_lora_rank, cfg.qk_nope, cfg.qk_rope, cfg.v_head);
        let qk = nope + rope;
        let (q_a, q_b) = match cfg.q_lora_rank {
            Some(qr) => (
                Some((w.upload(b, &n(MlaPart::QA), &[qr, h])?, w.upload(b, &n(MlaPart::QANorm), &[qr])?)),
                w.upload(b, &n(MlaPart::QB), &[nh * qk, qr])?,
            ),
            None => (None, w.upload(b, &format!("{}.weight", names.layer(i, Part::Q)), &[nh * qk, h])?),
        };
        let kv_a = n(MlaPart::KvA);
        let (kv_a_latent, kv_a_rope) = (
            upload_rows(w, b, &kv_a, [rank + rope, h], 0, rank)?,
            upload_rows(w, b, &kv_a, [rank + rope, h], rank, rope)?,
        );
        let (mut uk, mut uv) = (Vec::with_capacity(nh), Vec::with_capacity(nh));
        let (k_b, v_b, kv_b) = (n(MlaPart::KB), n(MlaPart::VB), n(MlaPart::KvB));
        if names.gguf && w.contains(&k_b) {
            for head in 0..nh {
                uk.push(w.upload_part(b, &k_b, &[nh, rank, nope], head)?);
                uv.push(w.upload_part(b, &v_b, &[nh, vh, rank], head)?);
            }
        } else if w.contains(&kv_b) {
            let kv_b = w.read_f32(&kv_b, &[nh * (nope + vh), rank])?;
            for head in 0..nh {
                let rows = &kv_b[head * (nope + vh) * rank..(head + 1) * (nope + vh) * rank];
                // W_UK rows are [nope, rank]; the matmul wants its transpose [rank, nope].
                let mut t = vec![0f32; rank * nope];
                for n in 0..nope {
                    for r in 0..rank {
                        t[r * nope + n] = rows[n * rank + r];
                    }
                }
                uk.push(b.upload_f32(&t, &[rank, nope])?);
                uv.push(b.upload_f32(&rows[nope * rank..], &[vh, rank])?);
            }
        } else {
            let tensor = if names.gguf { format!("{k_b} (or {kv_b})") } else { kv_b };
            return Err(EngineError::MissingTensor { file: w.source().into(), tensor });
        }
        Ok(Self {
            q_a,
            q_b,
            kv_a_latent,
            kv_a_rope,
            kv_a_norm: w.upload(b, &n(MlaPart::KvANorm), &[rank])?,
            uk,
            uv,
            o: w.upload(b, &format!("{}.weight", names.layer(i, Part::O)), &[h, nh * vh])?,
        })
    }

    /// Attention of the normed rows `x`, writing their latents into `cache`: `[rows, hidden]`.
    pub fn forward(
        &self,
        b: &dyn Backend,
        cfg: &MlaConfig,
        x: &Tensor,
        cache: &mut dyn KvCache,
        s: &MlaStep<'_>,
    ) -> Result<Tensor> {
        let (rank, nope, rope, nh) = (cfg.kv_lora_rank, cfg.qk_nope, cfg.qk_rope, s.n_heads);
        let qk = nope + rope;
        let q = match &self.q_a {
            Some((qa, norm)) => b.matmul(&b.rms_norm(&b.matmul(x, qa)?, norm, s.eps)?, &self.q_b)?,
            None => b.matmul(x, &self.q_b)?,
        };
        let style = if cfg.rope_interleave { RopeStyle::Interleaved } else { RopeStyle::Half };
        let rope_of = |t: &Tensor| -> Result<Tensor> {
            let r =
                b.rope(t, &Rope { n_heads: 1, head_dim: rope, inv_freq: s.inv_freq, style, positions: s.positions })?;
            // RoPE is linear in cos and sin, so YaRN's factor on them is a factor on the result.
            Ok(if s.rope_factor == 1.0 { r } else { b.scale(&r, s.rope_factor)? })
        };
        let latent = b.rms_norm(&b.matmul(x, &self.kv_a_latent)?, &self.kv_a_norm, s.eps)?;
        let k_pe = rope_of(&b.matmul(x, &self.kv_a_rope)?)?;
        let kv = b.concat_cols(&[&k_pe, &latent])?;
        let mut q_parts = Vec::with_capacity(2 * nh);
        for head in 0..nh {
            let q_nope = b.slice_cols(&q, head * qk, nope)?;
            q_parts.push(rope_of(&b.slice_cols(&q, head * qk + nope, rope)?)?);
            q_parts.push(b.matmul(&q_nope, &self.uk[head])?);
        }
        let q_lat = b.concat_cols(&q_parts.iter().collect::<Vec<_>>())?;
        let spec = PagedAttn {
            layer: s.layer,
            n_heads: nh,
            n_kv_heads: 1,
            head_dim: rope + rank,
            scale: s.softmax_scale,
            seqs: s.seqs,
        };
        let att = b.attention(&q_lat, &kv, &kv, cache, &spec)?;
        let mut heads = Vec::with_capacity(nh);
        for head in 0..nh {
            let o_lat = b.slice_cols(&att, head * (rope + rank) + rope, rank)?;
            heads.push(b.matmul(&o_lat, &self.uv[head])?);
        }
        Ok(b.matmul(&b.concat_cols(&heads.iter().collect::<Vec<_>>())?, &self.o)?)
    }
}

/// Rows `start..start + n` of the matrix `name` of `shape`, uploaded in its own dtype without
/// copying on backends that keep host bytes (the latent and RoPE-key parts of `kv_a_proj`).
fn upload_rows(
    w: &WeightMap,
    b: &dyn Backend,
    name: &str,
    shape: [usize; 2],
    start: usize,
    n: usize,
) -> Result<Tensor> {
    let t = w.get_shaped(name, &shape)?;
    let bad = |detail: String| EngineError::Tensor { file: t.file.clone(), tensor: name.into(), detail };
    let row = t.dtype.row_bytes(shape[1]).filter(|r| r * shape[0] == t.data.len());
    let row = row.ok_or_else(|| bad(format!("{} data of {} bytes for {shape:?}", t.dtype.name(), t.data.len())))?;
    let data = t.data.slice(start * row, n * row).ok_or_else(|| bad(format!("rows {start}..{} outside", start + n)))?;
    b.upload(data, t.dtype, &[n, shape[1]]).map_err(|e| bad(e.to_string()))
}
