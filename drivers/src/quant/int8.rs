//! Weight rows dotted with activations quantised to 8 bits, as llama.cpp does.
//!
//! [`Q8Acts::quantize`] turns `m` activation rows into blocks of 32 signed bytes with one `f32`
//! scale each (llama.cpp's `block_q8_0`, but with an `f32` scale instead of an `f16` one, and
//! blocks of 32 for the K formats too where llama.cpp uses 256-value `block_q8_K`):
//! `d = max|x| / 127`, `q = round(x / d)`. A matmul quantises its activations once and then
//! dots every weight row with them using integer multiply-adds: the products of the integer
//! weights with the integer activations of a 32-block are summed exactly in `i32`, and only
//! then scaled by the weight and activation scales in `f32`.
//!
//! [`dot_ref`] is the portable reference. The x86 kernels (`x86::int8`) compute the same integer
//! sums and differ from it only in the order of the `f32` operations that combine them.

use super::kquants::scale_min_k4;
use super::scalar::f16_at;
use crate::DType;

/// Values per activation block.
pub(super) const QK: usize = 32;

/// Activation rows quantised to 8 bits in blocks of 32 values.
#[derive(Clone, Debug, Default)]
pub struct Q8Acts {
    k: usize,
    qs: Vec<[i8; QK]>,
    d: Vec<f32>,
    s: Vec<f32>,
}

/// One quantised activation row: its blocks, their scales, and `d · Σ q` per block.
#[derive(Clone, Copy, Debug)]
pub(super) struct ActRow<'a> {
    /// The 8-bit values, 32 per block.
    pub(super) qs: &'a [[i8; QK]],
    /// The scale of each block.
    pub(super) d: &'a [f32],
    /// `d · Σ q` of each block (the block's sum as the quantised values give it).
    pub(super) s: &'a [f32],
}

impl Q8Acts {
    /// Quantises the rows of the row-major `[m, k]` slice `xs` (`m = xs.len() / k`).
    ///
    /// Panics unless `k` is a non-zero multiple of 32 dividing `xs.len()`.
    pub fn quantize(xs: &[f32], k: usize) -> Self {
        assert!(
            k > 0 && k.is_multiple_of(QK) && xs.len().is_multiple_of(k),
            "quant::Q8Acts::quantize: rows of {k} values (a multiple of {QK}) for {} values",
            xs.len()
        );
        let blocks = xs.len() / QK;
        let mut a = Self { k, qs: vec![[0; QK]; blocks], d: vec![0.0; blocks], s: vec![0.0; blocks] };
        #[cfg(target_arch = "x86_64")]
        if super::tile_level() {
            // SAFETY: `tile_level()` holds only after detecting the features of the tile module.
            unsafe { super::x86::tile::quantize(xs, &mut a.qs, &mut a.d, &mut a.s) };
            return a;
        }
        a.fill_ref(xs);
        a
    }

    /// [`Q8Acts::quantize`] in portable Rust: the reference the SIMD version equals bitwise.
    #[cfg(all(test, target_arch = "x86_64"))]
    pub(super) fn quantize_ref(xs: &[f32], k: usize) -> Self {
        assert!(k > 0 && k.is_multiple_of(QK) && xs.len().is_multiple_of(k), "quant::Q8Acts::quantize_ref: bad rows");
        let blocks = xs.len() / QK;
        let mut a = Self { k, qs: vec![[0; QK]; blocks], d: vec![0.0; blocks], s: vec![0.0; blocks] };
        a.fill_ref(xs);
        a
    }

    /// Quantises `xs` (as many values as `self` has blocks times 32) into `self`.
    fn fill_ref(&mut self, xs: &[f32]) {
        for (((x, q), d), s) in xs.chunks_exact(QK).zip(&mut self.qs).zip(&mut self.d).zip(&mut self.s) {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in q.iter_mut().zip(x) {
                *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
                sum += i32::from(*q);
            }
            *d = scale;
            *s = scale * sum as f32;
        }
    }

    /// The quantised blocks, their scales and their sums, for tests that compare two of them.
    #[cfg(all(test, target_arch = "x86_64"))]
    pub(super) fn parts(&self) -> (&[[i8; QK]], &[f32], &[f32]) {
        (&self.qs, &self.d, &self.s)
    }

    /// How many rows there are.
    pub fn rows(&self) -> usize {
        self.d.len() / (self.k / QK).max(1)
    }

    /// Values per row.
    pub fn row_len(&self) -> usize {
        self.k
    }

    /// Row `i` (panics when out of range).
    pub(super) fn row(&self, i: usize) -> ActRow<'_> {
        let nb = self.k / QK;
        let r = i * nb..(i + 1) * nb;
        ActRow { qs: &self.qs[r.clone()], d: &self.d[r.clone()], s: &self.s[r] }
    }
}

/// Whether `dtype` has an 8-bit-activation kernel.
pub fn supports(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q4K | DType::Q5K | DType::Q6K
    )
}

/// `Σ w[i] · q[i]` in exact integer arithmetic.
#[inline]
fn idot(w: &[i32; QK], q: &[i8; QK]) -> i32 {
    w.iter().zip(q).map(|(&a, &b)| a * i32::from(b)).sum()
}

/// The unsigned 4-bit values of a 32-block stored as 16 bytes (low nibbles first).
fn nibbles16(qs: &[u8]) -> [i32; QK] {
    let mut w = [0i32; QK];
    for (i, &q) in qs[..16].iter().enumerate() {
        w[i] = i32::from(q & 15);
        w[i + 16] = i32::from(q >> 4);
    }
    w
}

/// Adds the fifth bits of a Q5_0/Q5_1 block (bit `i` of `qh` for value `i`).
fn with_high_bits(mut w: [i32; QK], qh: &[u8]) -> [i32; QK] {
    let h = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    for (i, v) in w.iter_mut().enumerate() {
        *v |= (((h >> i) & 1) as i32) << 4;
    }
    w
}

/// The reference dot product of one weight row of `dtype` with one quantised activation row.
///
/// Per 32-value block the integer sum `Σ q_w · q_x` is exact; the scales are applied in `f32`.
/// Panics unless the row holds exactly as many values as `a`.
pub(super) fn dot_ref(dtype: DType, row: &[u8], a: ActRow<'_>) -> f32 {
    let n = a.qs.len() * QK;
    assert!(dtype.row_bytes(n) == Some(row.len()), "quant::int8: {n} values of {dtype} against {} bytes", row.len());
    let mut sum = 0f32;
    match dtype {
        DType::Q8_0 => {
            for (i, b) in row.chunks_exact(34).enumerate() {
                let w: [i32; QK] = std::array::from_fn(|j| i32::from(b[2 + j] as i8));
                sum += f16_at(b, 0) * a.d[i] * idot(&w, &a.qs[i]) as f32;
            }
        }
        DType::Q4_0 | DType::Q5_0 => {
            let (bb, off) = if dtype == DType::Q4_0 { (18, 8) } else { (22, 16) };
            for (i, b) in row.chunks_exact(bb).enumerate() {
                let w =
                    if dtype == DType::Q4_0 { nibbles16(&b[2..]) } else { with_high_bits(nibbles16(&b[6..]), &b[2..]) };
                let w = w.map(|v| v - off);
                sum += f16_at(b, 0) * a.d[i] * idot(&w, &a.qs[i]) as f32;
            }
        }
        DType::Q4_1 | DType::Q5_1 => {
            let bb = if dtype == DType::Q4_1 { 20 } else { 24 };
            for (i, b) in row.chunks_exact(bb).enumerate() {
                let w =
                    if dtype == DType::Q4_1 { nibbles16(&b[4..]) } else { with_high_bits(nibbles16(&b[8..]), &b[4..]) };
                sum += f16_at(b, 0) * a.d[i] * idot(&w, &a.qs[i]) as f32 + f16_at(b, 2) * a.s[i];
            }
        }
        DType::Q4K | DType::Q5K => {
            let q5 = dtype == DType::Q5K;
            let bb = if q5 { 176 } else { 144 };
            for (sb, b) in row.chunks_exact(bb).enumerate() {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let qs = if q5 { &b[48..176] } else { &b[16..144] };
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, &b[4..16]);
                    let c = j / 2;
                    let w: [i32; QK] = std::array::from_fn(|l| {
                        let q = qs[32 * c + l];
                        let v = if j % 2 == 0 { q & 15 } else { q >> 4 };
                        let h = if q5 { ((b[16 + l] >> j) & 1) << 4 } else { 0 };
                        i32::from(v | h)
                    });
                    let ai = 8 * sb + j;
                    sum += d * f32::from(sc) * a.d[ai] * idot(&w, &a.qs[ai]) as f32 - dmin * f32::from(m) * a.s[ai];
                }
            }
        }
        DType::Q6K => {
            for (sb, b) in row.chunks_exact(210).enumerate() {
                let d = f16_at(b, 208);
                for h in 0..2 {
                    for t in 0..4 {
                        let ai = 8 * sb + 4 * h + t;
                        for half in 0..2 {
                            let mut isum = 0i32;
                            for l in 16 * half..16 * half + 16 {
                                let low = b[64 * h + 32 * (t & 1) + l];
                                let low = if t < 2 { low & 15 } else { low >> 4 };
                                let q = low | (((b[128 + 32 * h + l] >> (2 * t)) & 3) << 4);
                                isum += (i32::from(q) - 32) * i32::from(a.qs[ai][l]);
                            }
                            let sc = f32::from(b[192 + 8 * h + 2 * t + half] as i8);
                            sum += d * sc * a.d[ai] * isum as f32;
                        }
                    }
                }
            }
        }
        _ => {
            debug_assert!(false, "quant::int8: {dtype} has no 8-bit-activation kernel");
            return 0.0;
        }
    }
    sum
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn quantization_round_trips_within_half_a_step() {
        let mut rng = StdRng::seed_from_u64(7);
        let xs: Vec<f32> = (0..3 * 64).map(|_| rng.random_range(-3.0..3.0f32)).collect();
        let a = Q8Acts::quantize(&xs, 64);
        assert_eq!((a.rows(), a.row_len()), (3, 64));
        for (bi, x) in xs.chunks_exact(QK).enumerate() {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(a.qs[bi].iter().any(|&q| q.abs() == 127), "block {bi} uses the full range");
            let mut sum = 0f32;
            for (&v, &q) in x.iter().zip(&a.qs[bi]) {
                assert!((v - a.d[bi] * f32::from(q)).abs() <= a.d[bi] * 0.5001, "block {bi}");
                sum += f32::from(q);
            }
            assert!((a.d[bi] - amax / 127.0).abs() <= f32::EPSILON * amax);
            assert!((a.s[bi] - a.d[bi] * sum).abs() <= 1e-6 * amax * 32.0);
        }
    }

    #[test]
    fn zero_blocks_quantize_to_zero() {
        let a = Q8Acts::quantize(&[0.0; 32], 32);
        assert_eq!((a.d[0], a.s[0]), (0.0, 0.0));
        assert!(a.qs[0].iter().all(|&q| q == 0));
    }

    #[test]
    #[should_panic(expected = "multiple of 32")]
    fn rows_must_be_whole_blocks() {
        let _ = Q8Acts::quantize(&[0.0; 48], 48);
    }
}
