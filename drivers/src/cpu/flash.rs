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
                for (d, &k) in s.keys[i..i + hd].iter().enumerate() {
                    s.keys_t[d * TILE + p - t0] = k;
                }
            }
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
