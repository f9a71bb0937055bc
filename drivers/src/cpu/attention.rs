//! Attention: causal over a paged KV cache (decoders; the tiled kernel is in [`super::flash`])
//! and bidirectional over a padded batch (encoders).

use std::any::Any;

use rayon::prelude::*;

use super::flash::{self, Kv, ROW_BLOCK, Rows, Scratch};
use super::kv_pool::{Pool, Q8_BLOCK};
use super::simd::{self, simd_kernel};
use super::{check_f32, f32_values, new_f32};
use crate::{DenseAttn, DriverError, KvCache, KvSpec, PagedAttn, Result, Tensor};

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
        spec.check_whole_blocks()?;
        debug_assert!(spec.dtype.block_len() <= Q8_BLOCK);
        Ok(Self {
            spec,
            k: (0..spec.n_layers).map(|_| Pool::zeroed(spec.dtype, per_layer)).collect(),
            v: (0..spec.n_layers).map(|_| Pool::zeroed(spec.dtype, per_layer)).collect(),
        })
    }

    /// Bytes the pool's keys and values take in memory (what [`KvSpec::bytes`] promises).
    pub fn data_bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(Pool::bytes).sum()
    }
}

impl KvCache for CpuKvCache {
    fn spec(&self) -> KvSpec {
        self.spec
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
    let rows = a.check(&spec, q, k, v)?;
    // Every position's block first, so that a bad block table changes nothing.
    let bs = spec.block_size;
    for s in a.seqs {
        let end = s.start_pos + s.n_new;
        let blocks = s.block_table.get(..end.div_ceil(bs)).ok_or_else(|| {
            DriverError::KvCache(format!("position {} has no block", (s.block_table.len() * bs).min(end)))
        })?;
        if let Some(b) = blocks.iter().find(|&&b| b as usize >= spec.n_blocks) {
            return Err(DriverError::KvCache(format!("block {b} of {}", spec.n_blocks)));
        }
    }
    // 1. Write the new keys and values.
    let (kv, vv) = (f32_values(k, "attention")?, f32_values(v, "attention")?);
    let w = nkv * hd;
    let (kl, vl) = (&mut cache.k[a.layer], &mut cache.v[a.layer]);
    let mut row = 0;
    for s in a.seqs {
        for i in 0..s.n_new {
            let pos = s.start_pos + i;
            let at = (s.block_table[pos / bs] as usize * bs + pos % bs) * w;
            kl.write(at, &kv[row * w..(row + 1) * w]);
            vl.write(at, &vv[row * w..(row + 1) * w]);
            row += 1;
        }
    }
    // 2. Jobs: runs of up to ROW_BLOCK rows of one sequence against one KV head, with the query
    // heads that share it (see `flash`).
    let group = nh / nkv;
    let mut jobs = Vec::new();
    let mut row0 = 0;
    for (si, s) in a.seqs.iter().enumerate() {
        for first in (0..s.n_new).step_by(ROW_BLOCK) {
            let n = ROW_BLOCK.min(s.n_new - first);
            jobs.extend((0..nkv).map(|g| (si, g, row0 + first, s.start_pos + first + 1, n)));
        }
        row0 += s.n_new;
    }
    let (kl, vl) = (&cache.k[a.layer], &cache.v[a.layer]);
    let qv = f32_values(q, "attention")?;
    let qw = nh * hd;
    let results: Vec<Vec<f32>> = jobs
        .par_iter()
        .map_init(Scratch::default, |scratch, &(si, g, r0, end, n)| {
            let s = &a.seqs[si];
            let kv = Kv { k: kl, v: vl, block_table: s.block_table, block_size: bs, stride: w, head: g, head_dim: hd };
            let rows =
                Rows { q: &qv[r0 * qw + g * group * hd..], q_stride: qw, n, heads: group, end, window, scale: a.scale };
            let mut out = vec![0f32; n * group * hd];
            flash::attend(kv, rows, scratch, &mut out);
            out
        })
        .collect();
    let mut out = vec![0f32; rows * qw];
    for (&(_, g, r0, _, n), res) in jobs.iter().zip(&results) {
        for (i, heads) in res.chunks_exact(group * hd).enumerate().take(n) {
            out[(r0 + i) * qw + g * group * hd..][..group * hd].copy_from_slice(heads);
        }
    }
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
    use crate::{DType, KvDType, SeqAttn};

    /// A prefill of 70 and of 150 rows (crossing tile and row-block edges) and the same rows one
    /// by one against the plain formula, with grouped-query heads, a scattered block table and
    /// heads of 24, 32, 64 and 128 values, with and without a sliding window; and every row
    /// bitwise the same whichever way the rows were cut into passes (whole, one by one, chunks of
    /// mixed sizes as after a cached prefix).
    #[test]
    fn prefill_and_decode_rows_match_the_formula() {
        // 64 and 128 take the register-held weighted sums, 24 and 32 the in-memory ones.
        for hd in [24, 32, 64, 128] {
            rows_match_the_formula(hd, KvDType::F32);
        }
    }

    /// The same with an `f16` pool: the formula over the keys and values rounded to `f16`.
    #[test]
    fn f16_pool_rows_match_the_formula_and_are_pass_invariant() {
        for hd in [24, 32, 64, 128] {
            rows_match_the_formula(hd, KvDType::F16);
        }
    }

    /// The same with a `q8_0` pool: the formula over the keys and values quantised to GGUF
    /// `Q8_0` blocks and back.
    #[test]
    fn q8_0_pool_rows_match_the_formula_and_are_pass_invariant() {
        for hd in [32, 64, 128] {
            rows_match_the_formula(hd, KvDType::Q8_0);
        }
    }

    /// Pools take the bytes [`KvSpec::bytes`] promises: `f16` half of `f32`, `q8_0` 34 bytes per
    /// 32 values; `q8_0` refuses a head dimension that is not whole blocks.
    #[test]
    fn pools_take_the_promised_bytes() {
        let spec = |dtype| KvSpec { n_layers: 3, n_kv_heads: 2, head_dim: 64, block_size: 16, n_blocks: 8, dtype };
        let values = 2 * 3 * 8 * 16 * 2 * 64;
        for (dtype, bytes) in
            [(KvDType::F32, values * 4), (KvDType::F16, values * 2), (KvDType::Q8_0, values / 32 * 34)]
        {
            assert_eq!(spec(dtype).bytes(), Some(bytes), "{dtype}");
            assert_eq!(CpuKvCache::new(spec(dtype)).unwrap().data_bytes(), bytes, "{dtype}");
        }
        let err = CpuKvCache::new(KvSpec { head_dim: 48, ..spec(KvDType::Q8_0) }).unwrap_err().to_string();
        assert!(err.contains("head_dim 48 is not a multiple"), "{err}");
    }

    /// `x` as a pool of `dtype` stores it (rows of `w` values).
    fn stored(x: &[f32], w: usize, dtype: KvDType) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for (o, r) in out.chunks_exact_mut(w).zip(x.chunks_exact(w)) {
            match dtype {
                KvDType::F32 => o.copy_from_slice(r),
                KvDType::F16 => o.iter_mut().zip(r).for_each(|(o, &x)| *o = half::f16::from_f32(x).to_f32()),
                _ => {
                    let mut b = Vec::new();
                    crate::quant::quantize_row(DType::Q8_0, r, &mut b).unwrap();
                    crate::quant::dequantize_row(DType::Q8_0, &b, o);
                }
            }
        }
        out
    }

    fn rows_match_the_formula(hd: usize, dtype: KvDType) {
        for (rows, window) in [(70, None), (150, None), (150, Some(20)), (150, Some(71))] {
            rows_match_with(hd, dtype, rows, window);
        }
    }

    fn rows_match_with(hd: usize, dtype: KvDType, rows: usize, window: Option<usize>) {
        let (nh, nkv, bs) = (6, 2, 16);
        let spec = KvSpec { n_layers: 1, n_kv_heads: nkv, head_dim: hd, block_size: bs, n_blocks: 12, dtype };
        let table: Vec<u32> = vec![7, 2, 11, 0, 5, 9, 1, 3, 10, 4];
        let val = |i: usize, salt: usize| (((i * 7919 + salt * 104_729) % 1000) as f32 / 500.0) - 1.0;
        let q: Vec<f32> = (0..rows * nh * hd).map(|i| val(i, 1)).collect();
        let k: Vec<f32> = (0..rows * nkv * hd).map(|i| val(i, 2)).collect();
        let v: Vec<f32> = (0..rows * nkv * hd).map(|i| val(i, 3)).collect();
        let (ks, vs) = (stored(&k, nkv * hd, dtype), stored(&v, nkv * hd, dtype));
        let scale = 0.3;
        // The formula, row by row, over the stored keys and values.
        let mut want = vec![0f32; rows * nh * hd];
        for r in 0..rows {
            let first = window.map_or(0, |w| (r + 1).saturating_sub(w));
            for h in 0..nh {
                let g = h / (nh / nkv);
                let qh = &q[(r * nh + h) * hd..][..hd];
                let s: Vec<f32> = (first..=r)
                    .map(|p| scale * qh.iter().zip(&ks[(p * nkv + g) * hd..][..hd]).map(|(a, b)| a * b).sum::<f32>())
                    .collect();
                let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let e: Vec<f32> = s.iter().map(|x| (x - max).exp()).collect();
                let z: f32 = e.iter().sum();
                for (i, w) in e.iter().enumerate() {
                    for d in 0..hd {
                        want[(r * nh + h) * hd + d] += w / z * vs[((first + i) * nkv + g) * hd + d];
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
                let (qt, kt, vt) = (t(&q, r0, n, nh * hd), t(&k, r0, n, nkv * hd), t(&v, r0, n, nkv * hd));
                let o = paged_windowed(&qt, &kt, &vt, &mut cache, &a, window).unwrap();
                got.extend(f32_values(&o, "test").unwrap().iter().copied());
            }
            got
        };
        let what = format!("{dtype} head_dim {hd}, {rows} rows, window {window:?}");
        let prefill = run(&[(0, rows)]);
        let decode = run(&(0..rows).map(|r| (r, 1)).collect::<Vec<_>>());
        for (name, got) in [("prefill", &prefill), ("decode", &decode)] {
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 2e-5, "{what}, {name} at {i}: {a} vs {b}");
            }
        }
        assert!(prefill == decode, "{what}: a prefill's rows differ from the same rows decoded one by one");
        let chunked = run(&[(0, 32), (32, 3), (35, 17), (52, 18), (70, rows - 70)]);
        assert!(prefill == chunked, "{what}: rows differ when the prompt is cut into other passes");
    }

    /// Two sequences in one pass give each the bits it gets alone.
    #[test]
    fn a_row_is_the_same_whatever_shares_its_pass() {
        let (nh, nkv, hd, bs) = (4, 1, 64, 16);
        let spec =
            KvSpec { n_layers: 1, n_kv_heads: nkv, head_dim: hd, block_size: bs, n_blocks: 16, dtype: KvDType::F16 };
        let val = |i: usize, salt: usize| (((i * 7919 + salt * 104_729) % 1000) as f32 / 500.0) - 1.0;
        let (ta, tb): (Vec<u32>, Vec<u32>) = ((0..8).collect(), (8..16).collect());
        let run = |seqs: &[SeqAttn<'_>], salt: usize| {
            let rows: usize = seqs.iter().map(|s| s.n_new).sum();
            let mut cache = CpuKvCache::new(spec).unwrap();
            let t = |w: usize, s: usize| new_f32((0..rows * w).map(|i| val(i, s + salt)).collect(), vec![rows, w]);
            let a = PagedAttn { layer: 0, n_heads: nh, n_kv_heads: nkv, head_dim: hd, scale: 0.2, seqs };
            let o = paged(&t(nh * hd, 1), &t(nkv * hd, 2), &t(nkv * hd, 3), &mut cache, &a).unwrap();
            f32_values(&o, "test").unwrap().to_vec()
        };
        let alone = run(&[SeqAttn { block_table: &ta, start_pos: 0, n_new: 100 }], 0);
        let both = run(
            &[
                SeqAttn { block_table: &ta, start_pos: 0, n_new: 100 },
                SeqAttn { block_table: &tb, start_pos: 0, n_new: 30 },
            ],
            0,
        );
        assert!(alone[..] == both[..alone.len()], "a sequence's rows changed when another shared the pass");
    }
}
