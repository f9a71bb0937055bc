//! Tiled causal attention over the paged pool (flash-attention style): each query row walks its
//! positions a tile of [`TILE`] at a time with an online softmax (a running maximum, a running
//! sum of weights and running weighted values, rescaled when the maximum grows), so no `[seq,
//! seq]` score matrix and no copy of the whole cache are ever made.
//!
//! A job is a run of up to [`ROW_BLOCK`] query rows of one sequence and one KV head with all the
//! query heads that share it (grouped-query attention): each tile's keys and values are read
//! from the pool once, in its stored type, widened into a small `f32` scratch (the keys also
//! transposed, so that a query's scores for the whole tile are one run of vector multiply-adds
//! over the dimensions), and used by every query of the job while in cache. A decode step is a
//! job of one row.
//!
//! Determinism: tiles are aligned to absolute positions (tile `t` holds positions
//! `t·TILE..(t+1)·TILE`, cut to the row's own range), and every operation on a query (each
//! score, each tile's maximum, sum and weighted values, the final division) depends only on that
//! query, its own positions and the cache, never on the other rows, heads or sequences of its
//! pass. A row's output is therefore bitwise the same whether it comes in a prefill, after a
//! cached prefix or as a decode step, and whatever else shares the batch.

use super::kv_pool::Pool;
use super::simd::{self, simd_kernel};

/// Positions per tile, aligned to absolute positions.
pub(super) const TILE: usize = 64;
/// Query rows of one sequence a job takes together.
pub(super) const ROW_BLOCK: usize = 16;

/// Where a job's keys and values are: the layer's pools, the sequence's block table and the KV
/// head.
#[derive(Clone, Copy)]
pub(super) struct Kv<'a> {
    pub k: &'a Pool,
    pub v: &'a Pool,
    pub block_table: &'a [u32],
    pub block_size: usize,
    /// Values per slot (`n_kv_heads · head_dim`).
    pub stride: usize,
    /// The KV head.
    pub head: usize,
    pub head_dim: usize,
}

impl Kv<'_> {
    /// The first value of position `p`'s key (or value) of this head (the block table was
    /// checked for every position before the pass).
    #[inline]
    fn at(&self, p: usize) -> usize {
        let slot = self.block_table[p / self.block_size] as usize * self.block_size + p % self.block_size;
        slot * self.stride + self.head * self.head_dim
    }
}

/// The query rows of a job: row `i`'s `heads` query heads are `heads · head_dim` values of `q`
/// from `i · q_stride` on; row `i` attends to positions up to `end + i` (exclusive), and only to
/// the last `window` of them when set.
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub q: &'a [f32],
    pub q_stride: usize,
    pub n: usize,
    pub heads: usize,
    pub end: usize,
    pub window: Option<usize>,
    pub scale: f32,
}

impl Rows<'_> {
    /// Row `i`'s positions.
    #[inline]
    fn range(&self, i: usize) -> std::ops::Range<usize> {
        let end = self.end + i;
        self.window.map_or(0, |w| end.saturating_sub(w.max(1)))..end
    }
}

/// A job's working memory (kept per thread between jobs).
#[derive(Default)]
pub(super) struct Scratch {
    keys: Vec<f32>,
    /// The tile's keys transposed: dimension `d` of the key at tile index `j` at `d · TILE + j`.
    keys_t: Vec<f32>,
    values: Vec<f32>,
    scores: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    sets: Vec<f32>,
}

simd_kernel! {
    /// Attention of `rows` over `kv`: `out` (`rows.n · rows.heads · head_dim` values, laid out
    /// as the queries) gets `softmax(scale · q·K) · V` for every query.
    pub(super) fn attend(kv: Kv<'_>, rows: Rows<'_>, scratch: &mut Scratch, out: &mut [f32]) {
        let hd = kv.head_dim;
        let nq = rows.n * rows.heads;
        out.fill(0.0);
        if rows.n == 0 {
            return;
        }
        let s = scratch;
        s.keys.resize(TILE * hd, 0.0);
        s.keys_t.resize(TILE * hd, 0.0);
        s.values.resize(TILE * hd, 0.0);
        s.scores.resize(TILE, 0.0);
        s.sets.resize(2 * hd, 0.0);
        s.max.clear();
        s.max.resize(nq, f32::NEG_INFINITY);
        s.sum.clear();
        s.sum.resize(nq, 0.0);
        // Rows' ranges only move forward, so the job needs positions from the first row's start
        // to the last row's end.
        let (lo, hi) = (rows.range(0).start, rows.range(rows.n - 1).end);
        for t0 in (lo / TILE * TILE..hi).step_by(TILE) {
            // 1. This tile's keys and values, widened, at index `position - t0`.
            let (a, b) = (t0.max(lo), (t0 + TILE).min(hi));
            for p in a..b {
                let (at, i) = (kv.at(p), (p - t0) * hd);
                kv.k.read(at, &mut s.keys[i..i + hd]);
                kv.v.read(at, &mut s.values[i..i + hd]);
            }
            transpose_keys(&s.keys, hd, a - t0..b - t0, &mut s.keys_t);
            // 2. Every query whose range meets the tile.
            for r in 0..rows.n {
                let range = rows.range(r);
                let (a, b) = (t0.max(range.start), (t0 + TILE).min(range.end));
                if a >= b {
                    continue;
                }
                let values = &s.values[(a - t0) * hd..(b - t0) * hd];
                for h in 0..rows.heads {
                    let qi = r * rows.heads + h;
                    let q = &rows.q[r * rows.q_stride + h * hd..][..hd];
                    let scores = &mut s.scores[..b - a];
                    let dots = dots(q, &s.keys_t);
                    for (sc, &d) in scores.iter_mut().zip(&dots[a - t0..b - t0]) {
                        *sc = d * rows.scale;
                    }
                    let tile_max = max(scores);
                    let m = if tile_max > s.max[qi] { tile_max } else { s.max[qi] };
                    // exp(-inf) clamps to about 1e-38: the first tile multiplies zeros by it.
                    let c = simd::exp(s.max[qi] - m);
                    s.max[qi] = m;
                    for x in scores.iter_mut() {
                        *x = simd::exp(*x - m);
                    }
                    s.sum[qi] = s.sum[qi].mul_add(c, simd::sum(scores));
                    let acc = &mut out[qi * hd..(qi + 1) * hd];
                    match hd {
                        64 => values_held::<64>(scores, values, c, acc),
                        128 => values_held::<128>(scores, values, c, acc),
                        256 => values_held::<256>(scores, values, c, acc),
                        _ => values_in_memory(scores, values, c, acc, &mut s.sets),
                    }
                }
            }
        }
        for (o, &l) in out.chunks_exact_mut(hd).zip(&s.sum) {
            let inv = 1.0 / l;
            o.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

/// Copies keys `used` of a tile (`keys`: a key of `hd` values per tile index) into `keys_t`
/// transposed (dimension `d` of key `j` at `d · TILE + j`). With AVX-512 and a head size that is
/// a multiple of 16, in blocks of 16 keys by 16 dimensions held in registers (the keys of a
/// block outside `used` are copied too: the scratch holds stale values there, which no query
/// reads); a key at a time through memory was a fifth of a decode step at a 2k depth on Gemma 3
/// 1B's 256-value heads. A copy either way, so the scores do not change.
fn transpose_keys(keys: &[f32], hd: usize, used: std::ops::Range<usize>, keys_t: &mut [f32]) {
    assert!(keys.len() >= TILE * hd && keys_t.len() >= TILE * hd && used.end <= TILE, "flash: tile scratch");
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(16) && simd::avx512() {
        // SAFETY: AVX-512F is present (checked above); the sizes were asserted.
        unsafe { x86::transpose_blocks(keys, hd, used.start / 16 * 16..used.end, keys_t) };
        return;
    }
    for j in used {
        for (d, &k) in keys[j * hd..(j + 1) * hd].iter().enumerate() {
            keys_t[d * TILE + j] = k;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::TILE;

    /// [`super::transpose_keys`] for the keys of the 16-key blocks from `keys.start` (a multiple
    /// of 16) up to `keys.end`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `hd` must be a multiple of 16, `keys` and `out` at least
    /// `TILE · hd` values and `keys.end <= TILE` (the caller asserts it).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_blocks(src: &[f32], hd: usize, keys: std::ops::Range<usize>, out: &mut [f32]) {
        for j0 in keys.step_by(16) {
            for d0 in (0..hd).step_by(16) {
                // SAFETY: `j0 + 16 <= TILE` and `d0 + 16 <= hd`: every load is inside `src`
                // (`TILE · hd` values) and every store inside `out`.
                unsafe {
                    let r: [__m512; 16] =
                        std::array::from_fn(|i| _mm512_loadu_ps(src.as_ptr().add((j0 + i) * hd + d0)));
                    for (c, col) in block(r).iter().enumerate() {
                        _mm512_storeu_ps(out.as_mut_ptr().add((d0 + c) * TILE + j0), *col);
                    }
                }
            }
        }
    }

    /// The 16 × 16 transpose of the rows `r`: column `c` of the result holds element `c` of
    /// every row, in row order. Pairs of rows are interleaved by 32 and then 64 bits within each
    /// 128-bit lane, which leaves element `4L + k` of rows `4g..4g + 4` in lane `L` of `u[4g +
    /// k]`; two rounds of lane shuffles then gather each column's four lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn block(r: [__m512; 16]) -> [__m512; 16] {
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let (a, b, c, d) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
            let (t0, t1) = (_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
            let (t2, t3) = (_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
            let pd = _mm512_castps_pd;
            u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t0), pd(t2)));
            u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t0), pd(t2)));
            u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t1), pd(t3)));
            u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t1), pd(t3)));
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for k in 0..4 {
            let v = _mm512_shuffle_f32x4::<0x88>(u[k], u[4 + k]);
            let w = _mm512_shuffle_f32x4::<0xDD>(u[k], u[4 + k]);
            let x = _mm512_shuffle_f32x4::<0x88>(u[8 + k], u[12 + k]);
            let y = _mm512_shuffle_f32x4::<0xDD>(u[8 + k], u[12 + k]);
            out[k] = _mm512_shuffle_f32x4::<0x88>(v, x);
            out[8 + k] = _mm512_shuffle_f32x4::<0xDD>(v, x);
            out[4 + k] = _mm512_shuffle_f32x4::<0x88>(w, y);
            out[12 + k] = _mm512_shuffle_f32x4::<0xDD>(w, y);
        }
        out
    }
}

/// `q · k` for every key of a tile, from the transposed keys `kt` (`q.len()` rows of [`TILE`]):
/// for each key one chain of multiply-adds over the dimensions in order, the keys side by side
/// in vector lanes (contiguous loads; a key per lane of a gather was the slow way). Lanes of
/// positions outside the row's range hold whatever the scratch held and are not used. A key's
/// score depends only on `q` and that key: the same in a prefill and a decode step.
#[inline(always)]
fn dots(q: &[f32], kt: &[f32]) -> [f32; TILE] {
    let mut acc = [0f32; TILE];
    for (&x, row) in q.iter().zip(kt.chunks_exact(TILE)) {
        for j in 0..TILE {
            acc[j] = x.mul_add(row[j], acc[j]);
        }
    }
    acc
}

/// The largest of `x` (not empty), lane by lane over sixteen lanes (a select per lane
/// vectorises; `f32::max` does not), then across them.
#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let mut m = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for c in chunks {
        for i in 0..16 {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    for l in lanes {
        m = if l > m { l } else { m };
    }
    m
}

/// `acc = acc · c + Σ_j p_j · v_j` over a tile (`values` the tile's rows, `p` their weights),
/// for a head of `HD` values: the sum in two sets of registers (even and odd positions, so that
/// twice as many multiply-adds are in flight), added, then fused with the rescaled `acc`.
/// Each lane runs over the positions in order, with the dimensions side by side in vector
/// lanes (fixed-size arrays, so the compiler keeps the sets in registers).
#[inline(always)]
fn values_held<const HD: usize>(p: &[f32], values: &[f32], c: f32, acc: &mut [f32]) {
    let (mut a0, mut a1) = ([0f32; HD], [0f32; HD]);
    let (pairs, last) = p.as_chunks::<2>();
    let (rows, _) = values.as_chunks::<HD>();
    for (p2, v) in pairs.iter().zip(rows.chunks_exact(2)) {
        for d in 0..HD {
            a0[d] = p2[0].mul_add(v[0][d], a0[d]);
        }
        for d in 0..HD {
            a1[d] = p2[1].mul_add(v[1][d], a1[d]);
        }
    }
    if let ([x], Some(v)) = (last, rows.get(p.len() - 1)) {
        for d in 0..HD {
            a0[d] = x.mul_add(v[d], a0[d]);
        }
    }
    for (d, o) in acc[..HD].iter_mut().enumerate() {
        *o = o.mul_add(c, a0[d] + a1[d]);
    }
}

/// [`values_held`] for any head size, the two sets in `sets` (`2 · head_dim` values).
#[inline(always)]
fn values_in_memory(p: &[f32], values: &[f32], c: f32, acc: &mut [f32], sets: &mut [f32]) {
    let hd = acc.len();
    let (a0, a1) = sets.split_at_mut(hd);
    a0.fill(0.0);
    a1.fill(0.0);
    let (pairs, last) = p.as_chunks::<2>();
    for (j, p2) in pairs.iter().enumerate() {
        for (a, &v) in a0.iter_mut().zip(&values[2 * j * hd..][..hd]) {
            *a = p2[0].mul_add(v, *a);
        }
        for (a, &v) in a1.iter_mut().zip(&values[(2 * j + 1) * hd..][..hd]) {
            *a = p2[1].mul_add(v, *a);
        }
    }
    if let [x] = last {
        for (a, &v) in a0.iter_mut().zip(&values[(p.len() - 1) * hd..][..hd]) {
            *a = x.mul_add(v, *a);
        }
    }
    for ((o, x0), x1) in acc.iter_mut().zip(a0.iter()).zip(a1.iter()) {
        *o = o.mul_add(c, x0 + x1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The register-block transpose puts every key of the used range where the plain loop does,
    /// for head sizes it takes (multiples of 16) and one it leaves to the loop, and for ranges
    /// that start and end inside a 16-key block.
    #[test]
    fn transposed_keys_match_the_plain_copy() {
        for hd in [16, 64, 80, 128, 256, 40] {
            let keys: Vec<f32> = (0..TILE * hd).map(|i| i as f32 * 0.5 - 7.0).collect();
            for used in [0..TILE, 3..37, 17..18, 48..64, 0..1] {
                let mut got = vec![f32::NAN; TILE * hd];
                transpose_keys(&keys, hd, used.clone(), &mut got);
                for j in used.clone() {
                    for d in 0..hd {
                        assert_eq!(
                            got[d * TILE + j].to_bits(),
                            keys[j * hd + d].to_bits(),
                            "hd {hd}, {used:?}: key {j}, dim {d}"
                        );
                    }
                }
            }
        }
    }
}
