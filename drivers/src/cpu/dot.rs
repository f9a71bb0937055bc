//! `x · wᵀ` for F32, F16 and BF16 weights with AVX-512, for any number of activation rows, in one
//! order of operations per output element.
//!
//! Every output `(i, j)` (activation row `i`, weight row `j`) is one 16-lane accumulator:
//! `acc = fma(x[i][c..c + 16], w[j][c..c + 16], acc)` for `c = 0, 16, 32, …` (the last step
//! masked, its missing lanes zero), then [`hsum`]'s fixed tree of adds. Only how the outputs are
//! grouped into tiles (4 weight rows by up to 6 activation rows, all sharing each weight load)
//! and shared between threads depends on the number of rows, never the sums: a row's result is
//! bitwise the same alone, in a decode batch or in a prefill pass of hundreds of rows.
//!
//! Decode passes (a few rows) convert each F16/BF16 weight vector in registers as it is read
//! (the weights are read once: memory bandwidth is what counts). Passes of more rows convert a
//! thread's chunk of weight rows to `f32` once and then run the same tiles on it: the values,
//! and so the sums, are the same either way (the conversion is exact).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use crate::DType;

/// Above this many activation rows, F16 and BF16 weight rows are converted to `f32` once per
/// call rather than once per tile.
const CONVERT_ABOVE_M: usize = 8;
/// Activation rows per tile (at most): 6 by 4 weight rows is 24 accumulators, and each step
/// loads 10 vectors for 24 multiply-adds.
const A: usize = 6;

/// The stored weight formats of this kernel.
#[cfg(target_arch = "x86_64")]
const F32: u8 = 0;
#[cfg(target_arch = "x86_64")]
const F16: u8 = 1;
#[cfg(target_arch = "x86_64")]
const BF16: u8 = 2;

/// `[m, n]` = `x [m, k] · wᵀ` for `w` `n` rows of `k` values of `dt` (F32, F16 or BF16). `None`
/// for any other format or where the CPU lacks AVX-512 (the caller then takes another kernel).
pub(super) fn matmul(x: &[f32], w: &[u8], dt: DType, m: usize, n: usize, k: usize) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx512() && matches!(dt, DType::F32 | DType::F16 | DType::BF16) {
        return Some(matmul_avx512(x, w, dt, m, n, k));
    }
    let _ = (x, w, dt, m, n, k);
    None
}

#[cfg(target_arch = "x86_64")]
fn matmul_avx512(x: &[f32], w: &[u8], dt: DType, m: usize, n: usize, k: usize) -> Vec<f32> {
    let rb = dt.row_bytes(k).unwrap_or(0);
    assert!(
        x.len() == m * k && w.len() == n * rb,
        "cpu::dot: {} activations for [{m}, {k}], {} weight bytes for {n} rows of {k} {dt}",
        x.len(),
        w.len()
    );
    // Transposed result [n, m]: each chunk of weight rows writes a contiguous slice.
    let mut t = vec![0f32; n * m];
    if n == 0 || m == 0 {
        return t;
    }
    let threads = rayon::current_num_threads();
    let rows = (n / (threads * 4)).clamp(8, 256).next_multiple_of(4);
    let convert = dt != DType::F32 && m > CONVERT_ABOVE_M;
    let chunk = |ci: usize, tc: &mut [f32], scratch: &mut Vec<f32>| {
        let r0 = ci * rows;
        let nr = tc.len() / m;
        let wc = &w[r0 * rb..(r0 + nr) * rb];
        if convert {
            scratch.resize(nr * k, 0.0);
            for (src, dst) in wc.chunks_exact(rb).zip(scratch.chunks_exact_mut(k)) {
                crate::quant::dequantize_row(dt, src, dst);
            }
            // SAFETY: the CPU has AVX-512F/BW/VL, AVX2 and FMA (checked by `matmul`).
            unsafe { tiles::<F32>(x, bytemuck::cast_slice(scratch.as_slice()), m, k, tc) };
        } else {
            // SAFETY: as above.
            unsafe {
                match dt {
                    DType::F16 => tiles::<F16>(x, wc, m, k, tc),
                    DType::BF16 => tiles::<BF16>(x, wc, m, k, tc),
                    _ => tiles::<F32>(x, wc, m, k, tc),
                }
            }
        }
    };
    if threads == 1 || n * m * k < 1 << 18 {
        let mut scratch = Vec::new();
        t.chunks_mut(rows * m).enumerate().for_each(|(ci, tc)| chunk(ci, tc, &mut scratch));
    } else {
        t.par_chunks_mut(rows * m).enumerate().for_each_init(Vec::new, |scratch, (ci, tc)| chunk(ci, tc, scratch));
    }
    t
}

/// `t [rows, m] = w [rows, k] · xᵀ` for `x [m, k]`, `w` whole rows of `k` values stored as `W`.
///
/// # Safety
/// The CPU must have AVX-512F/BW/VL, AVX2 and FMA. Sizes are checked (a mismatch panics).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn tiles<const W: u8>(x: &[f32], w: &[u8], m: usize, k: usize, t: &mut [f32]) {
    let rb = k * if W == F32 { 4 } else { 2 };
    let rows = t.len() / m.max(1);
    assert!(x.len() >= m * k && w.len() == rows * rb && t.len() == rows * m, "cpu::dot::tiles: sizes");
    // Up to A activation rows stay in L1 while the chunk's weight rows stream past them.
    for i0 in (0..m).step_by(A) {
        let na = (m - i0).min(A);
        let xs: [&[f32]; A] = std::array::from_fn(|a| {
            let i = i0 + a.min(na - 1);
            &x[i * k..(i + 1) * k]
        });
        for j0 in (0..rows).step_by(4) {
            let nw = (rows - j0).min(4);
            // Missing rows of the last quad repeat its last row; their results are dropped.
            let ws: [&[u8]; 4] = std::array::from_fn(|b| {
                let j = j0 + b.min(nw - 1);
                &w[j * rb..(j + 1) * rb]
            });
            // The next quad's rows (a hint: past the end it is harmless).
            let ahead = w.as_ptr().wrapping_add((j0 + 4) * rb);
            let mut res = [[0f32; A]; 4];
            match na {
                1 => tile::<W, 1>(xs, ws, ahead, k, &mut res),
                2 => tile::<W, 2>(xs, ws, ahead, k, &mut res),
                3 => tile::<W, 3>(xs, ws, ahead, k, &mut res),
                4 => tile::<W, 4>(xs, ws, ahead, k, &mut res),
                5 => tile::<W, 5>(xs, ws, ahead, k, &mut res),
                _ => tile::<W, 6>(xs, ws, ahead, k, &mut res),
            }
            for (b, r) in res.iter().enumerate().take(nw) {
                t[(j0 + b) * m + i0..(j0 + b) * m + i0 + na].copy_from_slice(&r[..na]);
            }
        }
    }
}

/// Values `c..c + 16` of a weight row stored as `W` from `p`, as `f32`: all 16 when `mask` is
/// `None`, else the lanes of the mask (the others zero, not read).
///
/// # Safety
/// The values to be read must be readable at `p` (value `c` at byte `c · size`).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn load_w<const W: u8>(p: *const u8, c: usize, mask: Option<__mmask16>) -> __m512 {
    // SAFETY: the caller guarantees the values are readable; no alignment needed.
    unsafe {
        if W == F32 {
            let q = p.add(4 * c).cast::<f32>();
            return match mask {
                None => _mm512_loadu_ps(q),
                Some(mk) => _mm512_maskz_loadu_ps(mk, q),
            };
        }
        let q = p.add(2 * c);
        let h = match mask {
            None => _mm256_loadu_si256(q.cast()),
            Some(mk) => _mm256_maskz_loadu_epi16(mk, q.cast()),
        };
        widen::<W>(h)
    }
}

/// 16 F16 or BF16 values as `f32` (exact).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn widen<const W: u8>(h: __m256i) -> __m512 {
    if W == F16 {
        _mm512_cvtph_ps(h)
    } else {
        // A bf16 is the high half of an f32.
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
}

/// The 16 lanes of `v` summed in one fixed order: halves, then quarters, then pairs.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn hsum(v: __m512) -> f32 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    let h = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
    let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
    let p = _mm_add_ps(q, _mm_movehl_ps(q, q));
    _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)))
}

/// One tile: the 4 weight rows `ws` against the first `N` activation rows of `xs`, into
/// `res[b][a]`. Every pair has its own accumulator, summed as the module describes. The
/// `4 · k` values from `ahead` on (the next tile's rows) are prefetched meanwhile.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn tile<const W: u8, const N: usize>(
    xs: [&[f32]; A],
    ws: [&[u8]; 4],
    ahead: *const u8,
    k: usize,
    res: &mut [[f32; A]; 4],
) {
    let size = if W == F32 { 4 } else { 2 };
    assert!(xs.iter().all(|x| x.len() >= k) && ws.iter().all(|w| w.len() >= k * size), "cpu::dot::tile: sizes");
    let xp: [*const f32; N] = std::array::from_fn(|a| xs[a].as_ptr());
    let wp = ws.map(<[u8]>::as_ptr);
    let mut acc = [[_mm512_setzero_ps(); N]; 4];
    let k16 = k / 16 * 16;
    let mut c = 0;
    while c < k16 {
        // One line of the next tile's rows per 64 bytes of this one's.
        if c % (64 / size) == 0 {
            let off = 4 * c * size;
            for r in 0..4 {
                // A prefetch is only a hint: it never faults.
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(off + r * 64).cast());
            }
        }
        // SAFETY: every row holds `k` values (checked above) and `c + 16 <= k`.
        unsafe { step::<W, N>(&mut acc, xp, wp, c, None) };
        c += 16;
    }
    if k16 < k {
        // SAFETY: the mask selects values `k16..k`, which every row holds.
        unsafe { step::<W, N>(&mut acc, xp, wp, k16, Some(((1u32 << (k - k16)) - 1) as u16)) };
    }
    for b in 0..4 {
        for a in 0..N {
            res[b][a] = hsum(acc[b][a]);
        }
    }
}

/// One step of [`tile`]: values `c..c + 16` (or those of `mask`) of every pair.
///
/// # Safety
/// Those values must be readable in each of the rows `xp` (f32) and `wp` (stored as `W`).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn step<const W: u8, const N: usize>(
    acc: &mut [[__m512; N]; 4],
    xp: [*const f32; N],
    wp: [*const u8; 4],
    c: usize,
    mask: Option<__mmask16>,
) {
    // SAFETY: the caller guarantees the values are readable; no alignment needed.
    unsafe {
        let wv = [
            load_w::<W>(wp[0], c, mask),
            load_w::<W>(wp[1], c, mask),
            load_w::<W>(wp[2], c, mask),
            load_w::<W>(wp[3], c, mask),
        ];
        for a in 0..N {
            let xv = match mask {
                None => _mm512_loadu_ps(xp[a].add(c)),
                Some(mk) => _mm512_maskz_loadu_ps(mk, xp[a].add(c)),
            };
            for b in 0..4 {
                acc[b][a] = _mm512_fmadd_ps(xv, wv[b], acc[b][a]);
            }
        }
    }
}
