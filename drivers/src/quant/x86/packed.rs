//! The kernel for weights packed by `quant::packed` (see there for the layout), with AVX-512
//! VNNI.
//!
//! Per panel of 32 weight rows and block of 32 values, one activation row costs 16 `vpdpbusd`
//! (8 steps of 4 values, two registers of 16 rows each) plus, once per 16 rows, one conversion
//! and two fused multiply-adds: `acc += cvt(Σ u·q) · (d · dₓ) + c · s`, with `c` the block's
//! minimum (Q4_1, Q5_1) or `-k · d` for a format stored with the constant offset `k` (128 for
//! Q8_0's shifted bytes, 8 for Q4_0, 16 for Q5_0) and `s = dₓ · Σ q` the activation block sum.
//! The integer sums are exact, and the float operations of a row are the same whatever other
//! activation rows come with it: a row's result does not depend on the batch.
//!
//! With one or two activation rows the integer sums of even and odd steps go into separate
//! registers, so that the chain of dependent `vpdpbusd` is half as long; their sum is the same
//! integer either way.

use std::arch::x86_64::*;

use super::tile::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use crate::DType;
use crate::quant::int8::ActRow;
use crate::quant::packed::{Layout, layout};

/// Weight rows per panel.
const ROWS: usize = crate::quant::packed::PACK_ROWS;
/// Activation rows per micro-tile (at most).
const A: usize = 4;
/// Records ahead that the kernel prefetches.
const PF_RECORDS: usize = 4;

/// The record layout (`quant::packed::layout`) of the format with tile code `f`.
const fn record(f: u8) -> Layout {
    let dtype = match f {
        Q8_0 => DType::Q8_0,
        Q4_0 => DType::Q4_0,
        Q4_1 => DType::Q4_1,
        Q5_0 => DType::Q5_0,
        _ => DType::Q5_1,
    };
    match layout(dtype) {
        Some(l) => l,
        None => panic!("quant::packed: every format code here has a layout"),
    }
}

/// `out[i · n + j] =` row `j` (of the first `n` rows) of the packed panels `w` (`nb` blocks per
/// row) dotted with activation row `i` of `acts` (`m` rows).
///
/// # Safety
///
/// The CPU must support AVX-512F/BW/VL/DQ/VNNI, AVX2, FMA and F16C. Sizes are checked here
/// (a mismatch panics), so they are not a safety condition.
pub(in crate::quant) unsafe fn rows(dtype: DType, w: &[u8], nb: usize, n: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
    // SAFETY: the caller guarantees the features these functions enable.
    unsafe {
        match dtype {
            DType::Q8_0 => rows_f::<Q8_0>(w, nb, n, acts, out),
            DType::Q4_0 => rows_f::<Q4_0>(w, nb, n, acts, out),
            DType::Q4_1 => rows_f::<Q4_1>(w, nb, n, acts, out),
            DType::Q5_0 => rows_f::<Q5_0>(w, nb, n, acts, out),
            DType::Q5_1 => rows_f::<Q5_1>(w, nb, n, acts, out),
            DType::Q4K | DType::Q5K | DType::Q6K => super::packed_k::rows(dtype, w, nb, n, acts, out),
            _ => panic!("quant::packed: {dtype} is not a packed format"),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn rows_f<const F: u8>(w: &[u8], nb: usize, n: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
    let m = acts.len();
    let pb = nb * record(F).size;
    assert!(
        pb > 0
            && w.len().is_multiple_of(pb)
            && n <= w.len() / pb * ROWS
            && out.len() == n * m
            && acts.iter().all(|a| a.qs.len() == nb && a.d.len() == nb && a.s.len() == nb),
        "quant::packed: {} bytes of panels of {nb} blocks for {n} rows against {m} activation rows, {} outputs",
        w.len(),
        out.len()
    );
    for (p, panel) in w.chunks_exact(pb).enumerate() {
        let j0 = p * ROWS;
        if j0 >= n {
            break;
        }
        let nr = (n - j0).min(ROWS);
        by_quads!(rows: acts, out, n, j0, nr, |quad, res, first| micro::<F, _>(panel, nb, quad, &mut res, first));
    }
}

/// The 64 values of step `t` of a record: rows 0..16 and rows 16..32, as unsigned bytes.
///
/// # Safety
/// `rec` must point to a whole record of format `F`, and `t < 8`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
unsafe fn step<const F: u8>(rec: *const u8, t: usize) -> (__m512i, __m512i) {
    // SAFETY: by the contract every offset below is inside the record (`quant::packed`).
    unsafe {
        if F == Q8_0 {
            return (_mm512_loadu_si512(rec.add(t * 128).cast()), _mm512_loadu_si512(rec.add(t * 128 + 64).cast()));
        }
        let low4 = _mm512_set1_epi8(15);
        let p = _mm512_loadu_si512(rec.add(t * 64).cast());
        let w0 = _mm512_and_si512(p, low4);
        let w1 = _mm512_and_si512(_mm512_srli_epi16::<4>(p), low4);
        if matches!(F, Q5_0 | Q5_1) {
            let hb = rec.add(record(F).hb + t * 16);
            let k0 = hb.cast::<u64>().read_unaligned();
            let k1 = hb.add(8).cast::<u64>().read_unaligned();
            let sixteen = _mm512_set1_epi8(16);
            return (_mm512_mask_add_epi8(w0, k0, w0, sixteen), _mm512_mask_add_epi8(w1, k1, w1, sixteen));
        }
        (w0, w1)
    }
}

/// The 32 rows of `panel` (`nb` records) against the `N` activation rows `acts`, into
/// `res[i][j]`; with `prefetch`, the records ahead are asked for as these are read.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn micro<const F: u8, const N: usize>(
    panel: &[u8],
    nb: usize,
    acts: [ActRow<'_>; N],
    res: &mut [[f32; ROWS]; A],
    prefetch: bool,
) {
    let Layout { size, d: doff, m: moff, .. } = record(F);
    assert!(
        panel.len() >= nb * size && acts.iter().all(|a| a.qs.len() >= nb && a.d.len() >= nb && a.s.len() >= nb),
        "quant::packed::micro: sizes"
    );
    let zero = _mm512_setzero_si512();
    let mut acc = [[_mm512_setzero_ps(); 2]; N];
    // Separate sums for odd steps when the chains are few (see the module documentation).
    let split = N <= 2;
    let base = panel.as_ptr();
    for b in 0..nb {
        // SAFETY: `b < nb` and the assertion above: record `b` is inside `panel`, and every
        // activation row has block `b` (32 bytes, 8 words) and its scale and sum.
        unsafe {
            let rec = base.add(b * size);
            let mut s = [[[zero; 2]; N]; 2];
            for t in 0..8 {
                // The first pass over a panel reads it from memory: lines of the record
                // PF_RECORDS ahead, an eighth per step, into the L2 cache (`T1`: see
                // `packed_k`). A prefetch is a hint that never faults, so an address past the
                // panel (from its last records) is harmless.
                if prefetch {
                    let ahead = rec.wrapping_add(PF_RECORDS * size);
                    for l in (t * size.div_ceil(64)) / 8..((t + 1) * size.div_ceil(64)) / 8 {
                        _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * l).cast());
                    }
                }
                let (w0, w1) = step::<F>(rec, t);
                let e = if split { t & 1 } else { 0 };
                for i in 0..N {
                    let x = _mm512_set1_epi32(acts[i].qs.as_ptr().add(b).cast::<i32>().add(t).read_unaligned());
                    s[e][i][0] = _mm512_dpbusd_epi32(s[e][i][0], w0, x);
                    s[e][i][1] = _mm512_dpbusd_epi32(s[e][i][1], w1, x);
                }
            }
            let d = [
                _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(doff).cast())),
                _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(doff + 32).cast())),
            ];
            let c = match F {
                Q4_1 | Q5_1 => [
                    _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(moff).cast())),
                    _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(moff + 32).cast())),
                ],
                _ => {
                    let k = _mm512_set1_ps(match F {
                        Q8_0 => -128.0,
                        Q4_0 => -8.0,
                        _ => -16.0,
                    });
                    [_mm512_mul_ps(d[0], k), _mm512_mul_ps(d[1], k)]
                }
            };
            for i in 0..N {
                let dx = _mm512_set1_ps(*acts[i].d.as_ptr().add(b));
                let sx = _mm512_set1_ps(*acts[i].s.as_ptr().add(b));
                for h in 0..2 {
                    let si = if split { _mm512_add_epi32(s[0][i][h], s[1][i][h]) } else { s[0][i][h] };
                    let v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(si), _mm512_mul_ps(d[h], dx), acc[i][h]);
                    acc[i][h] = _mm512_fmadd_ps(c[h], sx, v);
                }
            }
        }
    }
    for i in 0..N {
        for h in 0..2 {
            let dst = &mut res[i][16 * h..16 * h + 16];
            // SAFETY: `dst` is 16 writable `f32`; no alignment needed.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), acc[i][h]) };
        }
    }
}
