//! Attention: causal over a paged KV cache (decoders) and bidirectional over a padded batch
//! (encoders).

use std::any::Any;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::simd::{self, simd_kernel};
use super::{check_f32, f32_values, kv_f16, new_f32};
use crate::{DenseAttn, DriverError, KvCache, KvDType, KvSpec, PagedAttn, Result, Tensor};

/// One layer's keys (or values) for every slot, in the pool's stored type.
#[derive(Debug)]
enum Pool {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Pool {
    fn zeroed(dtype: KvDType, n: usize) -> Self {
        match dtype {
            KvDType::F32 => Pool::F32(vec![0.0; n]),
            KvDType::F16 => Pool::F16(vec![f16::ZERO; n]),
        }
    }

    /// Stores `src` from value `at` on, rounded to the stored type.
    fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            Pool::F32(p) => p[at..at + src.len()].copy_from_slice(src),
            Pool::F16(p) => p[at..at + src.len()].convert_from_f32_slice(src),
        }
    }

    fn copy_within(&mut self, from: std::ops::Range<usize>, to: usize) {
        match self {
            Pool::F32(p) => p.copy_within(from, to),
            Pool::F16(p) => p.copy_within(from, to),
        }
    }

    /// Values `at..at + scratch.len()` as `f32`: borrowed from an `f32` pool, widened into
    /// `scratch` from an `f16` one.
    fn read<'a>(&'a self, at: usize, scratch: &'a mut [f32]) -> &'a [f32] {
        match self {
            Pool::F32(p) => &p[at..at + scratch.len()],
            Pool::F16(p) => {
                kv_f16::to_f32(&p[at..at + scratch.len()], scratch);
                scratch
            }
        }
    }
}

/// A paged KV pool in host memory: per layer, K and V of shape
/// `[n_blocks, block_size, n_kv_heads, head_dim]`, stored as the spec's [`KvDType`].
#[derive(Debug)]
pub struct CpuKvCache {
    spec: KvSpec,
    k: Vec<Pool>,
    v: Vec<Pool>,
}

impl CpuKvCache {
    /// Allocates a zeroed pool.
    pub fn new(spec: KvSpec) -> Result<Self> {
        let per_layer = spec.values_per_layer().ok_or_else(|| DriverError::KvCache(format!("{spec:?} overflows")))?;
        spec.bytes().ok_or_else(|| DriverError::KvCache(format!("{spec:?} overflows")))?;
        if spec.block_size == 0 {
            return Err(DriverError::KvCache("block size 0".into()));
        }
        Ok(Self {
            spec,
            k: (0..spec.n_layers).map(|_| Pool::zeroed(spec.dtype, per_layer)).collect(),
            v: (0..spec.n_layers).map(|_| Pool::zeroed(spec.dtype, per_layer)).collect(),
        })
    }

    /// Bytes the pool's keys and values take in memory (what [`KvSpec::bytes`] promises).
    pub fn data_bytes(&self) -> usize {
        self.k
            .iter()
            .chain(&self.v)
            .map(|p| match p {
                Pool::F32(p) => std::mem::size_of_val(p.as_slice()),
                Pool::F16(p) => std::mem::size_of_val(p.as_slice()),
            })
            .sum()
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

pub(super) fn paged(q: &Tensor, k: &Tensor, v: &Tensor, cache: &mut dyn KvCache, a: &PagedAttn<'_>) -> Result<Tensor> {
    paged_windowed(q, k, v, cache, a, None)
}

/// [`paged`] where each row attends only to the last `window` positions (itself included) when
/// `window` is set.
pub(super) fn paged_windowed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cache: &mut dyn KvCache,
    a: &PagedAttn<'_>,
    window: Option<usize>,
) -> Result<Tensor> {
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
            kl.write(at, &kv[row * w..(row + 1) * w]);
            vl.write(at, &vv[row * w..(row + 1) * w]);
            row += 1;
        }
    }
    // 2. Each (row, head) attends to its sequence's positions 0..=pos.
    let mut jobs = Vec::with_capacity(rows);
    let mut slots_of = Vec::with_capacity(a.seqs.len());
    for (si, s) in a.seqs.iter().enumerate() {
        let end = s.start_pos + s.n_new;
        slots_of.push((0..end).map(|p| slot(s.block_table, p)).collect::<Result<Vec<usize>>>()?);
        for i in 0..s.n_new {
            jobs.push((si, s.start_pos + i + 1));
        }
    }
    let (kl, vl) = (&cache.k[a.layer], &cache.v[a.layer]);
    // Every row scores its keys laid out per KV head as `[dim][position]` (see `attend_t`), a
    // decode step's single row too: one kernel, one order of operations, so a row's attention
    // is bitwise the same whether its sequence brings one row to this pass or many (a fresh
    // prompt, the suffix after a cached prefix, a decode step), and whatever other sequences
    // share the pass. The layout costs a copy of the keys per pass. A sliding-window layer lays
    // out each row's own window instead (below), in the same kernel.
    let keys_t: Vec<Option<KeysT>> = a
        .seqs
        .par_iter()
        .zip(&slots_of)
        .map(|(_, slots)| window.is_none().then(|| KeysT::new(kl, slots, nkv, hd)))
        .collect();
    let qv = f32_values(q, "attention")?;
    let group = nh / nkv;
    let mut out = vec![0f32; rows * nh * hd];
    out.par_chunks_mut(hd).enumerate().for_each_init(Vec::new, |scores, (idx, o)| {
        let (r, h) = (idx / nh, idx % nh);
        let (si, n) = jobs[r];
        let qh = &qv[(r * nh + h) * hd..(r * nh + h + 1) * hd];
        let v = match vl {
            Pool::F32(v) => Values::F32(v),
            Pool::F16(v) => Values::F16(v),
        };
        let head = KvHead { v, stride: nkv * hd, off: (h / group) * hd };
        let first = window.map_or(0, |w| n.saturating_sub(w.max(1)));
        let slots = &slots_of[si][first..n];
        match &keys_t[si] {
            Some(kt) => attend_t(qh, kt.head(h / group), kt.len, slots, head, a.scale, scores, o),
            None => {
                let kt = KeysT::one_head(kl, slots, nkv, hd, h / group);
                attend_t(qh, kt.head(0), kt.len, slots, head, a.scale, scores, o)
            }
        }
    });
    Ok(new_f32(out, vec![rows, nh * hd]))
}

/// Keys scored at once by [`attend_t`] (four AVX-512 registers).
const KEY_CHUNK: usize = 64;
/// Keys scored at once past the last whole [`KEY_CHUNK`] (one AVX-512 register).
const TAIL_CHUNK: usize = 16;

/// A sequence's keys for one layer, per KV head `[dim][position]`, positions padded with zeros
/// to whole chunks of [`TAIL_CHUNK`].
struct KeysT {
    /// Padded positions per row.
    len: usize,
    head_dim: usize,
    values: Vec<f32>,
}

impl KeysT {
    /// Every KV head of `slots`. Keys of an `f16` pool are widened here, one key at a time, as
    /// they are laid out: the layout is a copy made per pass anyway, and the pool stays `f16`.
    fn new(k: &Pool, slots: &[usize], n_kv: usize, hd: usize) -> Self {
        Self::heads(k, slots, n_kv * hd, 0, n_kv * hd, hd)
    }

    /// Only KV head `g` of `slots` (a sliding-window row's own window), as head 0.
    fn one_head(k: &Pool, slots: &[usize], n_kv: usize, hd: usize, g: usize) -> Self {
        Self::heads(k, slots, n_kv * hd, g * hd, hd, hd)
    }

    /// The `width` values from `off` of each slot's key row (`stride` values per slot).
    fn heads(k: &Pool, slots: &[usize], stride: usize, off: usize, width: usize, hd: usize) -> Self {
        let len = slots.len().next_multiple_of(TAIL_CHUNK);
        let mut values = vec![0f32; width * len];
        let mut scratch = vec![0f32; width];
        for (p, &s) in slots.iter().enumerate() {
            let key = k.read(s * stride + off, &mut scratch);
            for (c, &v) in key.iter().enumerate() {
                values[c * len + p] = v;
            }
        }
        KeysT { len, head_dim: hd, values }
    }

    /// KV head `g`: `head_dim` rows of `len` positions.
    fn head(&self, g: usize) -> &[f32] {
        let n = self.head_dim * self.len;
        &self.values[g * n..(g + 1) * n]
    }
}

simd_kernel! {
    /// One query row `qh` of one head against the cached positions `slots` of its KV head,
    /// `o = softmax(scale · q·K) · V` (`scores` is scratch), with the keys of `qh`'s sequence
    /// laid out as `kt[d · len + p]` (`len` a multiple of [`TAIL_CHUNK`]): the scores of a
    /// chunk of keys are formed together (see [`score_chunk`]), one
    /// multiply-add per dimension, with no horizontal sums. `slots` (one per position attended
    /// to) still locate the values.
    #[allow(clippy::too_many_arguments)]
    fn attend_t(
        qh: &[f32],
        kt: &[f32],
        len: usize,
        slots: &[usize],
        head: KvHead<'_>,
        scale: f32,
        scores: &mut Vec<f32>,
        o: &mut [f32],
    ) {
        let n = slots.len();
        scores.clear();
        scores.resize(n.next_multiple_of(TAIL_CHUNK), 0.0);
        // Whole chunks of 64 keys, then the rest 16 at a time (short contexts, decode steps):
        // each key's score is the same either way, the lanes being independent.
        let wide = n / KEY_CHUNK * KEY_CHUNK;
        let (head_scores, tail_scores) = scores.split_at_mut(wide);
        for (c, chunk) in head_scores.chunks_exact_mut(KEY_CHUNK).enumerate() {
            score_chunk::<KEY_CHUNK>(qh, kt, len, c * KEY_CHUNK, scale, chunk);
        }
        for (c, chunk) in tail_scores.chunks_exact_mut(TAIL_CHUNK).enumerate() {
            score_chunk::<TAIL_CHUNK>(qh, kt, len, wide + c * TAIL_CHUNK, scale, chunk);
        }
        scores.truncate(n);
        softmax_v(slots, head, scores, o);
    }
}

/// The scores of the `C` keys from position `base` of `kt` (see [`attend_t`]): per key, the
/// even and odd dimensions in two chains of fused multiply-adds, added, then scaled.
#[inline(always)]
fn score_chunk<const C: usize>(qh: &[f32], kt: &[f32], len: usize, base: usize, scale: f32, chunk: &mut [f32]) {
    let (mut a0, mut a1) = ([0f32; C], [0f32; C]);
    for (d2, q2) in qh.chunks_exact(2).enumerate() {
        let r0 = &kt[2 * d2 * len + base..][..C];
        let r1 = &kt[(2 * d2 + 1) * len + base..][..C];
        for i in 0..C {
            a0[i] = q2[0].mul_add(r0[i], a0[i]);
            a1[i] = q2[1].mul_add(r1[i], a1[i]);
        }
    }
    if qh.len() % 2 == 1 {
        let d = qh.len() - 1;
        let r = &kt[d * len + base..][..C];
        for i in 0..C {
            a0[i] = qh[d].mul_add(r[i], a0[i]);
        }
    }
    for i in 0..C {
        chunk[i] = (a0[i] + a1[i]) * scale;
    }
}

/// The values of one KV head of one layer's cache: slot `s`'s value is
/// `v[s · stride + off..][..head_dim]` (the keys are read laid out, see [`KeysT`]).
#[derive(Clone, Copy)]
struct KvHead<'a> {
    v: Values<'a>,
    stride: usize,
    off: usize,
}

/// A layer's values in the pool's stored type.
#[derive(Clone, Copy)]
enum Values<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

/// `o = softmax(scores) · V` over the values of `slots`; `scores` is overwritten. Inlined into
/// the kernel above.
#[inline(always)]
fn softmax_v(slots: &[usize], head: KvHead<'_>, scores: &mut [f32], o: &mut [f32]) {
    // The largest score, lane by lane (a select per lane vectorises; `f32::max` does not).
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = scores.chunks_exact(16);
    let mut max = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    for c in chunks {
        for i in 0..16 {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    for l in lanes {
        max = if l > max { l } else { max };
    }
    for x in scores.iter_mut() {
        *x = simd::exp(*x - max);
    }
    let inv = 1.0 / simd::sum(scores);
    let v = match head.v {
        Values::F32(v) => v,
        Values::F16(v) => return kv_f16::weighted_sum(slots, v, head.stride, head.off, scores, inv, o),
    };
    match o.len() {
        64 => weighted_sum::<4>(slots, v, head, scores, inv, o),
        128 => weighted_sum::<8>(slots, v, head, scores, inv, o),
        hd => {
            for (&s, &p) in slots.iter().zip(scores.iter()) {
                let p = p * inv;
                let b = s * head.stride + head.off;
                for (a, &v) in o.iter_mut().zip(&v[b..b + hd]) {
                    *a = p.mul_add(v, *a);
                }
            }
        }
    }
}

/// `a += p · v_s`, the value of slot `s` (`16 · C` values). A function, not a closure, so that
/// it is inlined into the AVX-512 copy of its caller.
#[inline(always)]
fn add_value<const C: usize>(a: &mut [[f32; 16]; C], v: &[f32], head: KvHead<'_>, s: usize, p: f32) {
    let b = s * head.stride + head.off;
    let v = &v[b..b + 16 * C];
    for c in 0..C {
        for i in 0..16 {
            a[c][i] = p.mul_add(v[16 * c + i], a[c][i]);
        }
    }
}

/// `o += Σ_s (p_s · inv) · v_s` for a head of `16 · C` values, the sums held in registers (two
/// sets, for alternate positions, so that twice as many multiply-adds are in flight).
#[inline(always)]
fn weighted_sum<const C: usize>(slots: &[usize], v: &[f32], head: KvHead<'_>, scores: &[f32], inv: f32, o: &mut [f32]) {
    let (mut a0, mut a1) = ([[0f32; 16]; C], [[0f32; 16]; C]);
    let (sp, st) = slots.as_chunks::<2>();
    for (s2, p2) in sp.iter().zip(scores.chunks_exact(2)) {
        add_value(&mut a0, v, head, s2[0], p2[0] * inv);
        add_value(&mut a1, v, head, s2[1], p2[1] * inv);
    }
    if let [s] = st {
        add_value(&mut a0, v, head, *s, scores[slots.len() - 1] * inv);
    }
    for (c, oc) in o.chunks_exact_mut(16).enumerate() {
        for i in 0..16 {
            oc[i] += a0[c][i] + a1[c][i];
        }
    }
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
    if b * l * w == 0 {
        return Ok(new_f32(out, shape.to_vec()));
    }
    let seq = l * w;
    let job = |scratch: &mut Vec<f32>, (s, o): (usize, &mut [f32])| {
        let rows = s * seq..(s + 1) * seq;
        let mask = &a.key_mask[s * l..(s + 1) * l];
        dense_seq(&qv[rows.clone()], &kv[rows.clone()], &vv[rows], mask, nh, hd, a.scale, o, scratch);
    };
    if b == 1 {
        job(&mut Vec::new(), (0, &mut out));
    } else {
        out.par_chunks_mut(seq).enumerate().for_each_init(Vec::new, job);
    }
    Ok(new_f32(out, shape.to_vec()))
}

simd_kernel! {
    /// Attention of one sequence, all heads: `q`, `k`, `v` and `out` are its `[l, nh * hd]`
    /// rows. Keys with a false `mask` get no weight, and the rows of padding queries are left
    /// at zero (nothing reads them).
    #[allow(clippy::too_many_arguments)]
    fn dense_seq(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: &[bool],
        nh: usize,
        hd: usize,
        scale: f32,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let w = nh * hd;
        let keys: Vec<usize> = (0..mask.len()).filter(|&j| mask[j]).collect();
        let nk = keys.len();
        if nk == 0 {
            return;
        }
        // The head's keys transposed, [hd, nkp] with nk rounded up to whole SIMD vectors (the
        // extra columns stay zero), so that one query's scores are a sum over d of q[d] times a
        // contiguous row; then the scores.
        let nkp = nk.div_ceil(16) * 16;
        scratch.clear();
        scratch.resize(hd * nkp + nkp, 0.0);
        let (kt, scores) = scratch.split_at_mut(hd * nkp);
        for h in 0..nh {
            let col = h * hd..(h + 1) * hd;
            for (jj, &j) in keys.iter().enumerate() {
                for (d, &x) in k[j * w..][col.clone()].iter().enumerate() {
                    kt[d * nkp + jj] = x;
                }
            }
            for (i, &real) in mask.iter().enumerate() {
                if !real {
                    continue;
                }
                let qrow = &q[i * w..][col.clone()];
                let nc = nkp / 16;
                let (kc, _) = kt.as_chunks::<16>();
                let (sc, _) = scores.as_chunks_mut::<16>();
                for (c, sc) in sc.iter_mut().enumerate() {
                    let mut acc = [0f32; 16];
                    for (d, &qd) in qrow.iter().enumerate() {
                        let kk = &kc[d * nc + c];
                        for t in 0..16 {
                            acc[t] = qd.mul_add(kk[t], acc[t]);
                        }
                    }
                    *sc = acc.map(|a| a * scale);
                }
                let scores = &mut scores[..nk];
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for s in scores.iter_mut() {
                    *s = simd::exp(*s - max);
                }
                let inv = 1.0 / simd::sum(scores);
                let o = &mut out[i * w..][col.clone()];
                if hd.is_multiple_of(16) {
                    for (c, oc) in o.as_chunks_mut::<16>().0.iter_mut().enumerate() {
                        let mut acc = [0f32; 16];
                        for (&p, &j) in scores.iter().zip(&keys) {
                            let vc = &v[j * w + h * hd + c * 16..][..16];
                            for t in 0..16 {
                                acc[t] = p.mul_add(vc[t], acc[t]);
                            }
                        }
                        *oc = acc.map(|a| a * inv);
                    }
                } else {
                    for (&p, &j) in scores.iter().zip(&keys) {
                        for (a, &b) in o.iter_mut().zip(&v[j * w..][col.clone()]) {
                            *a = p.mul_add(b, *a);
                        }
                    }
                    o.iter_mut().for_each(|a| *a *= inv);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::SeqAttn;

    /// A prefill of 70 rows and the same rows one by one against the plain formula, with
    /// grouped-query heads, a scattered block table and heads of 24, 32, 64 and 128 values; and
    /// every row bitwise the same whichever way the rows were cut into passes (whole, one by
    /// one, chunks of mixed sizes as after a cached prefix).
    #[test]
    fn prefill_and_decode_rows_match_the_formula() {
        // 64 and 128 take the register-held weighted sums, 24 and 32 the plain loop.
        for hd in [24, 32, 64, 128] {
            rows_match_the_formula(hd, KvDType::F32, 1e-5);
        }
    }

    /// The same with an `f16` pool: within f16's rounding of the keys and values (values of
    /// about 1, so a few ulp of 2^-11), and every row still bitwise the same however the rows
    /// were cut into passes.
    #[test]
    fn f16_pool_rows_match_the_formula_and_are_pass_invariant() {
        for hd in [24, 32, 64, 128] {
            rows_match_the_formula(hd, KvDType::F16, 2e-3);
        }
    }

    /// An `f16` pool takes half the bytes of an `f32` one, as [`KvSpec::bytes`] says.
    #[test]
    fn f16_pool_takes_half_the_bytes() {
        let spec = |dtype| KvSpec { n_layers: 3, n_kv_heads: 2, head_dim: 64, block_size: 16, n_blocks: 8, dtype };
        let (f32_bytes, f16_bytes) = (2 * 3 * 8 * 16 * 2 * 64 * 4, 2 * 3 * 8 * 16 * 2 * 64 * 2);
        for (dtype, bytes) in [(KvDType::F32, f32_bytes), (KvDType::F16, f16_bytes)] {
            assert_eq!(spec(dtype).bytes(), Some(bytes), "{dtype}");
            assert_eq!(CpuKvCache::new(spec(dtype)).unwrap().data_bytes(), bytes, "{dtype}");
        }
    }

    fn rows_match_the_formula(hd: usize, dtype: KvDType, tol: f32) {
        let (nh, nkv, bs, rows) = (6, 2, 16, 70);
        let spec = KvSpec { n_layers: 1, n_kv_heads: nkv, head_dim: hd, block_size: bs, n_blocks: 12, dtype };
        let table: Vec<u32> = vec![7, 2, 11, 0, 5];
        let val = |i: usize, salt: usize| (((i * 7919 + salt * 104_729) % 1000) as f32 / 500.0) - 1.0;
        let q: Vec<f32> = (0..rows * nh * hd).map(|i| val(i, 1)).collect();
        let k: Vec<f32> = (0..rows * nkv * hd).map(|i| val(i, 2)).collect();
        let v: Vec<f32> = (0..rows * nkv * hd).map(|i| val(i, 3)).collect();
        let scale = 0.3;
        // The formula, row by row.
        let mut want = vec![0f32; rows * nh * hd];
        for r in 0..rows {
            for h in 0..nh {
                let g = h / (nh / nkv);
                let qh = &q[(r * nh + h) * hd..][..hd];
                let s: Vec<f32> = (0..=r)
                    .map(|p| scale * qh.iter().zip(&k[(p * nkv + g) * hd..][..hd]).map(|(a, b)| a * b).sum::<f32>())
                    .collect();
                let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let e: Vec<f32> = s.iter().map(|x| (x - max).exp()).collect();
                let z: f32 = e.iter().sum();
                for (p, w) in e.iter().enumerate() {
                    for d in 0..hd {
                        want[(r * nh + h) * hd + d] += w / z * v[(p * nkv + g) * hd + d];
                    }
                }
            }
        }
        let t = |x: &[f32], r0: usize, n: usize, w: usize| new_f32(x[r0 * w..(r0 + n) * w].to_vec(), vec![n, w]);
        let run = |chunks: &[(usize, usize)]| {
            let mut cache = CpuKvCache::new(spec).unwrap();
            let mut got = Vec::new();
            for &(r0, n) in chunks {
                let seqs = [SeqAttn { block_table: &table, start_pos: r0, n_new: n }];
                let a = PagedAttn { layer: 0, n_heads: nh, n_kv_heads: nkv, head_dim: hd, scale, seqs: &seqs };
                let o = paged(&t(&q, r0, n, nh * hd), &t(&k, r0, n, nkv * hd), &t(&v, r0, n, nkv * hd), &mut cache, &a)
                    .unwrap();
                got.extend(f32_values(&o, "test").unwrap().iter().copied());
            }
            got
        };
        let prefill = run(&[(0, rows)]);
        let decode = run(&(0..rows).map(|r| (r, 1)).collect::<Vec<_>>());
        for (name, got) in [("prefill", &prefill), ("decode", &decode)] {
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < tol, "{dtype} head_dim {hd}, {name} at {i}: {a} vs {b}");
            }
        }
        assert!(prefill == decode, "head_dim {hd}: a prefill's rows differ from the same rows decoded one by one");
        let chunked = run(&[(0, 32), (32, 3), (35, 17), (52, 18)]);
        assert!(prefill == chunked, "head_dim {hd}: rows differ when the prompt is cut into other passes");
    }
}
