//! Attention: causal over a paged KV cache (decoders) and bidirectional over a padded batch
//! (encoders).

use std::any::Any;

use rayon::prelude::*;

use super::norm::softmax_in_place;
use super::{check_f32, f32_values, new_f32};
use crate::{DenseAttn, DriverError, KvCache, KvSpec, PagedAttn, Result, Tensor};

/// A paged KV pool in host memory: per layer, K and V of shape
/// `[n_blocks, block_size, n_kv_heads, head_dim]`.
#[derive(Debug)]
pub struct CpuKvCache {
    spec: KvSpec,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl CpuKvCache {
    /// Allocates a zeroed pool.
    pub fn new(spec: KvSpec) -> Result<Self> {
        let per_layer = spec
            .n_blocks
            .checked_mul(spec.block_size)
            .and_then(|a| a.checked_mul(spec.n_kv_heads))
            .and_then(|a| a.checked_mul(spec.head_dim))
            .ok_or_else(|| DriverError::KvCache(format!("{spec:?} overflows")))?;
        if spec.block_size == 0 {
            return Err(DriverError::KvCache("block size 0".into()));
        }
        Ok(Self {
            spec,
            k: (0..spec.n_layers).map(|_| vec![0f32; per_layer]).collect(),
            v: (0..spec.n_layers).map(|_| vec![0f32; per_layer]).collect(),
        })
    }

    fn block_len(&self) -> usize {
        self.spec.block_size * self.spec.n_kv_heads * self.spec.head_dim
    }
}

impl KvCache for CpuKvCache {
    fn spec(&self) -> KvSpec {
        self.spec
    }

    fn copy_block(&mut self, src: u32, dst: u32) -> Result<()> {
        let (s, d) = (src as usize, dst as usize);
        if s >= self.spec.n_blocks || d >= self.spec.n_blocks {
            return Err(DriverError::KvCache(format!("copy_block {s} -> {d} of {} blocks", self.spec.n_blocks)));
        }
        let bl = self.block_len();
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            layer.copy_within(s * bl..(s + 1) * bl, d * bl);
        }
        Ok(())
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Dot product with 16 independent accumulators, so that the compiler can keep them in SIMD
/// registers (a single running sum forces a sequential chain of adds).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

pub(super) fn paged(q: &Tensor, k: &Tensor, v: &Tensor, cache: &mut dyn KvCache, a: &PagedAttn<'_>) -> Result<Tensor> {
    for t in [q, k, v] {
        check_f32(t, "attention")?;
    }
    let cache = cache
        .as_any_mut()
        .downcast_mut::<CpuKvCache>()
        .ok_or(DriverError::ForeignTensor { op: "attention (kv cache)" })?;
    let spec = cache.spec;
    let (hd, nh, nkv) = (a.head_dim, a.n_heads, a.n_kv_heads);
    let rows: usize = a.seqs.iter().map(|s| s.n_new).sum();
    if spec.head_dim != hd
        || spec.n_kv_heads != nkv
        || nkv == 0
        || nh % nkv != 0
        || a.layer >= spec.n_layers
        || q.shape() != [rows, nh * hd]
        || k.shape() != [rows, nkv * hd]
        || v.shape() != [rows, nkv * hd]
    {
        return Err(DriverError::Shape {
            op: "attention",
            detail: format!(
                "q {:?} k {:?} v {:?} for {rows} rows, {nh} heads, {nkv} kv heads of {hd}, layer {}, cache {spec:?}",
                q.shape(),
                k.shape(),
                v.shape(),
                a.layer
            ),
        });
    }
    let bs = spec.block_size;
    let slot = |table: &[u32], pos: usize| -> Result<usize> {
        let b = *table.get(pos / bs).ok_or_else(|| DriverError::KvCache(format!("position {pos} has no block")))?;
        if b as usize >= spec.n_blocks {
            return Err(DriverError::KvCache(format!("block {b} of {}", spec.n_blocks)));
        }
        Ok(b as usize * bs + pos % bs)
    };
    // 1. Write the new keys and values.
    let (kv, vv) = (f32_values(k, "attention")?, f32_values(v, "attention")?);
    let w = nkv * hd;
    let (kl, vl) = (&mut cache.k[a.layer], &mut cache.v[a.layer]);
    let mut row = 0;
    for s in a.seqs {
        for i in 0..s.n_new {
            let at = slot(s.block_table, s.start_pos + i)? * w;
            kl[at..at + w].copy_from_slice(&kv[row * w..(row + 1) * w]);
            vl[at..at + w].copy_from_slice(&vv[row * w..(row + 1) * w]);
            row += 1;
        }
    }
    // 2. Each (row, head) attends to its sequence's positions 0..=pos.
    let mut jobs = Vec::with_capacity(rows);
    for s in a.seqs {
        for i in 0..s.n_new {
            let pos = s.start_pos + i;
            let slots: Vec<usize> = (0..=pos).map(|p| slot(s.block_table, p)).collect::<Result<_>>()?;
            jobs.push(slots);
        }
    }
    let qv = f32_values(q, "attention")?;
    let (kl, vl) = (&cache.k[a.layer], &cache.v[a.layer]);
    let group = nh / nkv;
    let mut out = vec![0f32; rows * nh * hd];
    out.par_chunks_mut(hd).enumerate().for_each_init(Vec::new, |scores, (idx, o)| {
        let (r, h) = (idx / nh, idx % nh);
        let kvh = h / group;
        let qh = &qv[(r * nh + h) * hd..(r * nh + h + 1) * hd];
        let slots = &jobs[r];
        scores.clear();
        scores.extend(slots.iter().map(|&s| {
            let kh = &kl[(s * nkv + kvh) * hd..(s * nkv + kvh + 1) * hd];
            dot(qh, kh) * a.scale
        }));
        softmax_in_place(scores);
        for (&s, &p) in slots.iter().zip(scores.iter()) {
            let vh = &vl[(s * nkv + kvh) * hd..(s * nkv + kvh + 1) * hd];
            o.iter_mut().zip(vh).for_each(|(a, &b)| *a += p * b);
        }
    });
    Ok(new_f32(out, vec![rows, nh * hd]))
}

pub(super) fn dense(q: &Tensor, k: &Tensor, v: &Tensor, a: &DenseAttn<'_>) -> Result<Tensor> {
    for t in [q, k, v] {
        check_f32(t, "attention_dense")?;
    }
    let (b, l, nh, hd) = (a.batch, a.seq_len, a.n_heads, a.head_dim);
    let shape = [b * l, nh * hd];
    if q.shape() != shape || k.shape() != shape || v.shape() != shape || a.key_mask.len() != b * l {
        return Err(DriverError::Shape {
            op: "attention_dense",
            detail: format!(
                "q {:?} k {:?} v {:?} mask {} for batch {b} x {l}, {nh} heads of {hd}",
                q.shape(),
                k.shape(),
                v.shape(),
                a.key_mask.len()
            ),
        });
    }
    let (qv, kv, vv) =
        (f32_values(q, "attention_dense")?, f32_values(k, "attention_dense")?, f32_values(v, "attention_dense")?);
    let w = nh * hd;
    let mut out = vec![0f32; b * l * w];
    out.par_chunks_mut(hd).enumerate().for_each_init(Vec::new, |scores, (idx, o)| {
        let (row, h) = (idx / nh, idx % nh);
        let seq = row / l;
        let qh = &qv[row * w + h * hd..row * w + (h + 1) * hd];
        scores.clear();
        for j in 0..l {
            let key = seq * l + j;
            scores.push(if a.key_mask[key] {
                dot(qh, &kv[key * w + h * hd..key * w + (h + 1) * hd]) * a.scale
            } else {
                f32::NEG_INFINITY
            });
        }
        if scores.iter().all(|s| *s == f32::NEG_INFINITY) {
            return; // an all-padding row: its output is never read
        }
        softmax_in_place(scores);
        for (j, &p) in scores.iter().enumerate() {
            if p != 0.0 {
                let key = seq * l + j;
                o.iter_mut().zip(&vv[key * w + h * hd..key * w + (h + 1) * hd]).for_each(|(a, &b)| *a += p * b);
            }
        }
    });
    Ok(new_f32(out, shape.to_vec()))
}
