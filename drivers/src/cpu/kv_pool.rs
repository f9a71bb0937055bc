//! One layer's keys (or values) in the pool's stored type, and reading them back as `f32`.
//!
//! * `f32`: as computed.
//! * `f16`: rounded to nearest even on write; widened on read with AVX-512's `vcvtph2ps`
//!   (`_mm512_cvtph_ps`, sixteen at a time) or `half`'s portable conversion (the same bits: the
//!   widening is exact).
//! * `q8_0`: GGUF's `block_q8_0`, 32 values as `i8` with one `f16` scale (34 bytes), quantised
//!   on write exactly as llama.cpp's `quantize_row_q8_0_ref` ([`crate::quant::quantize_row`]) and
//!   de-quantised on read as [`crate::quant::dequantize_row`] does (`q · d` is exact in `f32`, so
//!   every SIMD level gives the same bits).
//!
//! Attention reads a tile of positions at a time into an `f32` scratch (see
//! `attention::KvTile`), never the whole pool.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::simd;
use crate::{DType, KvDType};

/// Values per `q8_0` block.
pub(super) const Q8_BLOCK: usize = 32;
/// Bytes per `q8_0` block: an `f16` scale and 32 `i8`.
const Q8_BYTES: usize = 34;

/// One layer's keys (or values) for every slot, in the pool's stored type.
#[derive(Debug)]
pub(super) enum Pool {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// `block_q8_0`s, value `i` in block `i / 32`.
    Q8_0(Vec<u8>),
}

impl Pool {
    /// A pool of `n` zero values (`n` a multiple of [`Q8_BLOCK`] for `q8_0`).
    pub(super) fn zeroed(dtype: KvDType, n: usize) -> Self {
        match dtype {
            KvDType::F32 => Pool::F32(vec![0.0; n]),
            KvDType::F16 => Pool::F16(vec![f16::ZERO; n]),
            // All-zero bytes are a zero scale and zero values.
            KvDType::Q8_0 => Pool::Q8_0(vec![0; n / Q8_BLOCK * Q8_BYTES]),
        }
    }

    /// Bytes the pool takes.
    pub(super) fn bytes(&self) -> usize {
        match self {
            Pool::F32(p) => std::mem::size_of_val(p.as_slice()),
            Pool::F16(p) => std::mem::size_of_val(p.as_slice()),
            Pool::Q8_0(p) => p.len(),
        }
    }

    /// Stores `src` from value `at` on, rounded to the stored type (`at` and `src.len()`
    /// multiples of [`Q8_BLOCK`] for `q8_0`, which the cache's spec guarantees).
    pub(super) fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            Pool::F32(p) => p[at..at + src.len()].copy_from_slice(src),
            Pool::F16(p) => p[at..at + src.len()].convert_from_f32_slice(src),
            Pool::Q8_0(p) => {
                let mut bytes = Vec::with_capacity(src.len() / Q8_BLOCK * Q8_BYTES);
                // Cannot fail: whole blocks of a supported format.
                if crate::quant::quantize_row(DType::Q8_0, src, &mut bytes).is_ok() {
                    let b = at / Q8_BLOCK * Q8_BYTES;
                    p[b..b + bytes.len()].copy_from_slice(&bytes);
                }
            }
        }
    }

    /// Values `at..at + dst.len()` widened into `dst` (block-aligned for `q8_0`).
    #[inline]
    pub(super) fn read(&self, at: usize, dst: &mut [f32]) {
        match self {
            Pool::F32(p) => dst.copy_from_slice(&p[at..at + dst.len()]),
            Pool::F16(p) => to_f32(&p[at..at + dst.len()], dst),
            Pool::Q8_0(p) => {
                // `dequantize_row`'s arithmetic (`q · d`, exact in f32), written out so that it
                // inlines into the attention kernel's AVX-512 copy instead of dispatching per
                // row (a decode step reads a few blocks per position).
                let b = at / Q8_BLOCK * Q8_BYTES;
                for (blk, out) in p[b..].chunks_exact(Q8_BYTES).zip(dst.chunks_exact_mut(Q8_BLOCK)) {
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    for (o, &q) in out.iter_mut().zip(&blk[2..]) {
                        *o = f32::from(q as i8) * d;
                    }
                }
            }
        }
    }
}

/// `dst[i] = src[i]` widened, for the first `min(len)` values.
pub(super) fn to_f32(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd::avx512() {
        // SAFETY: the CPU has AVX-512F/BW/VL, AVX2 and FMA (checked just now).
        unsafe { x86::to_f32(src, dst) };
        return;
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) fn to_f32(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (mut sc, mut dc) = (src[..n].chunks_exact(16), dst[..n].chunks_exact_mut(16));
        for (s, d) in (&mut sc).zip(&mut dc) {
            // SAFETY: `s` holds exactly 16 f16 values, 32 bytes: one unaligned 256-bit load;
            // `d` holds 16 f32 values: one unaligned 512-bit store.
            unsafe {
                let h = _mm256_loadu_si256(s.as_ptr().cast::<__m256i>());
                _mm512_storeu_ps(d.as_mut_ptr(), _mm512_cvtph_ps(h));
            }
        }
        for (s, d) in sc.remainder().iter().zip(dc.into_remainder()) {
            *d = s.to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The AVX-512 widening (where this CPU has it) gives `half`'s bits, whole vectors and a tail.
    #[test]
    fn f16_widening_is_exact() {
        let v: Vec<f16> = (0..1000).map(|i| f16::from_f32((((i * 7919) % 1000) as f32 / 250.0) - 2.0)).collect();
        let mut wide = vec![0f32; v.len() - 3];
        to_f32(&v, &mut wide);
        assert!(wide.iter().zip(&v).all(|(a, b)| *a == b.to_f32()), "to_f32 widened a value wrongly");
    }

    /// A `q8_0` pool stores GGUF blocks: written values come back within half a step of their
    /// block's scale (`amax / 127`) plus the scale's rounding to `f16` (2^-11 relative), a block
    /// of zeros stays zero, a read gives `quant::dequantize_row`'s bits, and a copy moves whole
    /// blocks.
    #[test]
    fn q8_0_pool_round_trips_within_half_a_step() {
        let n = 4 * Q8_BLOCK;
        let mut pool = Pool::zeroed(KvDType::Q8_0, 2 * n);
        assert_eq!(pool.bytes(), 8 * Q8_BYTES);
        let src: Vec<f32> =
            (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 * (1 + i / Q8_BLOCK) as f32).collect();
        pool.write(n, &src);
        let mut got = vec![1f32; n];
        pool.read(n, &mut got);
        for (b, (g, s)) in got.chunks(Q8_BLOCK).zip(src.chunks(Q8_BLOCK)).enumerate() {
            let step = s.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            for (i, (a, x)) in g.iter().zip(s).enumerate() {
                assert!(
                    (a - x).abs() <= step * 0.5 + x.abs() / 2048.0,
                    "block {b} value {i}: {a} vs {x} (step {step})"
                );
            }
        }
        let mut bytes = Vec::new();
        crate::quant::quantize_row(DType::Q8_0, &src, &mut bytes).unwrap();
        let mut want = vec![0f32; n];
        crate::quant::dequantize_row(DType::Q8_0, &bytes, &mut want);
        assert!(got == want, "the pool's q8_0 read differs from quant::dequantize_row");
        pool.read(0, &mut got);
        assert!(got.iter().all(|&x| x == 0.0), "an unwritten q8_0 block is not zero");
    }
}
