//! Reading an `f16` KV pool: keys and values are widened to `f32` as they are loaded (AVX-512's
//! `vcvtph2ps`, `_mm512_cvtph_ps`, sixteen at a time), never by expanding the pool in memory.
//!
//! Every function here has a portable twin with the same order of operations, so a CPU without
//! AVX-512 computes the same bits (the widening is exact and `mul_add` is fused in both).

use half::f16;

use super::simd;

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

/// `o += Σ_s (p_s · inv) · v_s`, where slot `s`'s value is `v[s · stride + off..][..o.len()]`:
/// the values step of attention over an `f16` pool (the `f32` pool's twin is
/// `attention::weighted_sum`, with the same order of operations).
pub(super) fn weighted_sum(
    slots: &[usize],
    v: &[f16],
    stride: usize,
    off: usize,
    scores: &[f32],
    inv: f32,
    o: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if simd::avx512() {
        // SAFETY: the CPU has AVX-512F/BW/VL, AVX2 and FMA (checked just now).
        unsafe { x86::weighted_sum(slots, v, stride, off, scores, inv, o) };
        return;
    }
    let hd = o.len();
    let row = |s: usize| &v[s * stride + off..][..hd];
    match hd {
        64 => portable_held::<4>(slots, row, scores, inv, o),
        128 => portable_held::<8>(slots, row, scores, inv, o),
        _ => portable_in_memory(slots, row, scores, inv, o),
    }
}

/// [`weighted_sum`] for a head of `16 · C` values with the sums held in two sets of
/// accumulators, for alternate positions (as the `f32` kernel does).
fn portable_held<'a, const C: usize>(
    slots: &[usize],
    row: impl Fn(usize) -> &'a [f16],
    scores: &[f32],
    inv: f32,
    o: &mut [f32],
) {
    let add = |a: &mut [[f32; 16]; C], r: &[f16], p: f32| {
        for c in 0..C {
            for i in 0..16 {
                a[c][i] = p.mul_add(r[16 * c + i].to_f32(), a[c][i]);
            }
        }
    };
    let (mut a0, mut a1) = ([[0f32; 16]; C], [[0f32; 16]; C]);
    let (sp, st) = slots.as_chunks::<2>();
    for (s2, p2) in sp.iter().zip(scores.chunks_exact(2)) {
        add(&mut a0, row(s2[0]), p2[0] * inv);
        add(&mut a1, row(s2[1]), p2[1] * inv);
    }
    if let [s] = st {
        add(&mut a0, row(*s), scores[slots.len() - 1] * inv);
    }
    for (c, oc) in o.chunks_exact_mut(16).enumerate() {
        for i in 0..16 {
            oc[i] += a0[c][i] + a1[c][i];
        }
    }
}

/// [`weighted_sum`] for any head size, accumulating into `o` position by position.
fn portable_in_memory<'a>(slots: &[usize], row: impl Fn(usize) -> &'a [f16], scores: &[f32], inv: f32, o: &mut [f32]) {
    for (&s, &p) in slots.iter().zip(scores) {
        let p = p * inv;
        for (a, x) in o.iter_mut().zip(row(s)) {
            *a = p.mul_add(x.to_f32(), *a);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    /// The first 16 values of `v` (which must hold 16), widened.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    #[inline]
    fn load16(v: &[f16]) -> __m512 {
        let v = &v[..16];
        // SAFETY: `v` holds exactly 16 f16 values, 32 bytes: one unaligned 256-bit load.
        let h = unsafe { _mm256_loadu_si256(v.as_ptr().cast::<__m256i>()) };
        _mm512_cvtph_ps(h)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) fn to_f32(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (mut sc, mut dc) = (src[..n].chunks_exact(16), dst[..n].chunks_exact_mut(16));
        for (s, d) in (&mut sc).zip(&mut dc) {
            let x = load16(s);
            // SAFETY: `d` holds 16 f32 values: one unaligned 512-bit store.
            unsafe { _mm512_storeu_ps(d.as_mut_ptr(), x) };
        }
        for (s, d) in sc.remainder().iter().zip(dc.into_remainder()) {
            *d = s.to_f32();
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    pub(super) fn weighted_sum(
        slots: &[usize],
        v: &[f16],
        stride: usize,
        off: usize,
        scores: &[f32],
        inv: f32,
        o: &mut [f32],
    ) {
        let hd = o.len();
        let row = |s: usize| &v[s * stride + off..][..hd];
        match hd {
            64 => held::<4>(slots, row, scores, inv, o),
            128 => held::<8>(slots, row, scores, inv, o),
            _ if hd.is_multiple_of(16) => in_memory(slots, row, scores, inv, o),
            _ => super::portable_in_memory(slots, row, scores, inv, o),
        }
    }

    /// `a[c] += p · r[16c..16c + 16]` for each of the `C` vectors of a value row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    #[inline]
    fn add<const C: usize>(a: &mut [__m512; C], r: &[f16], p: f32) {
        let p = _mm512_set1_ps(p);
        for (c, a) in a.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(p, load16(&r[16 * c..]), *a);
        }
    }

    /// See `super::portable_held`: the same sums, in registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    #[inline]
    fn held<'a, const C: usize>(
        slots: &[usize],
        row: impl Fn(usize) -> &'a [f16],
        scores: &[f32],
        inv: f32,
        o: &mut [f32],
    ) {
        let (mut a0, mut a1) = ([_mm512_setzero_ps(); C], [_mm512_setzero_ps(); C]);
        let (sp, st) = slots.as_chunks::<2>();
        for (s2, p2) in sp.iter().zip(scores.chunks_exact(2)) {
            add(&mut a0, row(s2[0]), p2[0] * inv);
            add(&mut a1, row(s2[1]), p2[1] * inv);
        }
        if let [s] = st {
            add(&mut a0, row(*s), scores[slots.len() - 1] * inv);
        }
        for (c, oc) in o.chunks_exact_mut(16).take(C).enumerate() {
            // SAFETY: `oc` holds 16 f32 values: one unaligned 512-bit load and store.
            unsafe {
                let sum = _mm512_add_ps(_mm512_loadu_ps(oc.as_ptr()), _mm512_add_ps(a0[c], a1[c]));
                _mm512_storeu_ps(oc.as_mut_ptr(), sum);
            }
        }
    }

    /// See `super::portable_in_memory`: the same sums, 16 lanes at a time (`o.len()` a multiple
    /// of 16).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    #[inline]
    fn in_memory<'a>(slots: &[usize], row: impl Fn(usize) -> &'a [f16], scores: &[f32], inv: f32, o: &mut [f32]) {
        for (&s, &p) in slots.iter().zip(scores) {
            let (p, r) = (_mm512_set1_ps(p * inv), row(s));
            for (c, oc) in o.chunks_exact_mut(16).enumerate() {
                let x = load16(&r[16 * c..]);
                // SAFETY: `oc` holds 16 f32 values: one unaligned 512-bit load and store.
                unsafe { _mm512_storeu_ps(oc.as_mut_ptr(), _mm512_fmadd_ps(p, x, _mm512_loadu_ps(oc.as_ptr()))) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The AVX-512 kernels (where this CPU has them) give the portable code's bits, for the
    /// register-held head sizes, a multiple of 16 and an odd size.
    #[test]
    fn simd_and_portable_agree_bitwise() {
        let val = |i: usize| f16::from_f32((((i * 7919) % 1000) as f32 / 250.0) - 2.0);
        for hd in [64, 128, 96, 24] {
            let (stride, off, n) = (2 * hd + 8, hd + 8, 37);
            let v: Vec<f16> = (0..stride * 50).map(val).collect();
            let slots: Vec<usize> = (0..n).map(|i| (i * 13) % 50).collect();
            let scores: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.1 + 0.01).collect();
            let mut got = vec![0.5f32; hd];
            weighted_sum(&slots, &v, stride, off, &scores, 0.7, &mut got);
            let mut want = vec![0.5f32; hd];
            let row = |s: usize| &v[s * stride + off..][..hd];
            match hd {
                64 => portable_held::<4>(&slots, row, &scores, 0.7, &mut want),
                128 => portable_held::<8>(&slots, row, &scores, 0.7, &mut want),
                _ => portable_in_memory(&slots, row, &scores, 0.7, &mut want),
            }
            assert!(got == want, "head_dim {hd}: {got:?} vs {want:?}");
            let mut wide = vec![0f32; v.len()];
            to_f32(&v, &mut wide);
            assert!(wide.iter().zip(&v).all(|(a, b)| *a == b.to_f32()), "to_f32 widened a value wrongly");
        }
    }
}
