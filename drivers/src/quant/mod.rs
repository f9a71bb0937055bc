//! Weight formats: de-quantisation, quantisation and dot products against `f32` activations.
//!
//! The formats are GGUF's (llama.cpp's `ggml_type`), byte for byte: see [`DType`] for the list
//! and the block sizes. Every format has a scalar reference in `scalar` and `kquants`; on
//! x86-64 the AVX2/FMA/F16C kernels in `x86` (and AVX-512 ones for the 4- and 5-bit formats)
//! are chosen at run time when the CPU has those features. They de-quantise bitwise as the
//! reference and agree with its dot products within float rounding. On aarch64 the NEON
//! kernels in `neon` are chosen the same way.
//!
//! Precision contract: [`vec_dot`] and [`vec_dot_multi`] compute as if the row were first
//! de-quantised to `f32` and then multiplied with the `f32` activations, accumulating in `f32`;
//! only the order of the additions (and fused multiply-adds) differs from the naive loop.
//! The CPU backend's matmul, however, uses [`matmul_packed`] (weights re-laid out at load, with
//! AVX-512 VNNI, for Q8_0, Q4_0/1, Q5_0/1, Q4_K, Q5_K and Q6_K) or [`matmul_q8`] (tiles of weight rows by activation
//! rows with AVX-512 VNNI, else [`vec_dot_q8`] row by row) for the formats of
//! [`int8_supported`] (Q8_0, Q4_0/1, Q5_0/1, Q4_K, Q5_K, Q6_K), like llama.cpp: the
//! activations are quantised to 8 bits once per matmul (blocks of 32 with an `f32` scale,
//! see `int8`), the integer products are summed exactly per block and the scales applied in
//! `f32`. Each activation then carries a rounding error of up to half its block's step
//! (`max|x| / 254`).
//! Each activation row is quantised on its own and every kernel sums a row in an order fixed
//! by the format alone, so a row's result does not depend on the other rows of the matmul
//! (the one exception is at [`matmul_q8`]).
//!
//! `U32` and `I64` are not weight formats. Passing them here is a programming error: debug
//! builds panic on a `debug_assert!`, release builds return zeros (or `0.0`) so that a bug can
//! never read out of bounds. [`quantize_row`] returns an error for them instead.

mod hugebuf;
mod int8;
mod kquants;
#[cfg(target_arch = "aarch64")]
mod neon;
mod packed;
mod packed_k;
mod quantize;
mod scalar;
#[cfg(test)]
mod testutil;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use crate::DType;

pub(crate) use hugebuf::HugeBuf;
pub use int8::{Q8Acts, supports as int8_supported};
pub use packed::{PACK_ROWS, PackedWeights, matmul_packed, packable};
pub use quantize::quantize_row;

/// How many activation vectors one pass of [`vec_dot_multi`] handles with the weight row's
/// blocks held in registers. Larger batches make several passes over the row (it is in L1).
const MULTI_CHUNK: usize = 4;

/// The kernel family picked for this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// Portable Rust, auto-vectorised at best.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// x86-64 with AVX-512F/BW/VL besides AVX2, FMA and F16C.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// aarch64 with NEON (Advanced SIMD).
    #[cfg(target_arch = "aarch64")]
    Neon,
}

/// Detects the best kernel family once and remembers it.
fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
                return Level::Avx512;
            }
            return Level::Avx2;
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        return Level::Neon;
    }
    Level::Scalar
}

/// The SIMD level chosen at run time: `"avx512"`, `"avx2"`, `"neon"` or `"scalar"`.
///
/// `"avx512"` means AVX-512 kernels for the 4- and 5-bit formats and AVX2 ones for the rest.
/// Targets other than x86-64 and aarch64 report `"scalar"` (auto-vectorised Rust).
pub fn simd_level() -> &'static str {
    match level() {
        Level::Scalar => "scalar",
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => "avx2",
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => "avx512",
        #[cfg(target_arch = "aarch64")]
        Level::Neon => "neon",
    }
}

/// Whether `dtype` is a format these kernels handle (everything but `U32` and `I64`).
fn is_weight_format(dtype: DType) -> bool {
    !matches!(dtype, DType::U32 | DType::I64)
}

/// Panics unless `bytes` holds exactly `n` values of `dtype`: the kernels rely on it.
fn check_row(op: &str, dtype: DType, bytes: usize, n: usize) {
    let expected = dtype.row_bytes(n);
    assert!(expected == Some(bytes), "quant::{op}: {n} values of {dtype} need {expected:?} bytes, got {bytes}");
}

/// De-quantises one row of `dst.len()` values stored as `dtype` in `src`.
///
/// The caller guarantees `src.len() == dtype.row_bytes(dst.len())`; the function panics
/// otherwise. The result is exactly what gguf-py's `gguf.quants.dequantize` computes (same
/// `f32` operations, no fused multiply-add). `U32`/`I64` are not weight formats: see the
/// module documentation.
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) {
    if !is_weight_format(dtype) {
        debug_assert!(false, "quant::dequantize_row: {dtype} is not a weight format");
        dst.fill(0.0);
        return;
    }
    check_row("dequantize_row", dtype, src.len(), dst.len());
    match level() {
        Level::Scalar => scalar::dequantize_row(dtype, src, dst),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level()` reports `Avx2` or `Avx512` only after detecting AVX2, FMA and
        // F16C, and `Avx512` only after detecting AVX-512F/BW/VL too.
        l @ (Level::Avx2 | Level::Avx512) => unsafe { x86::dequantize_row(l == Level::Avx512, dtype, src, dst) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `level()` reports `Neon` only after detecting NEON.
        Level::Neon => unsafe { neon::dequantize_row(dtype, src, dst) },
    }
}

/// Dot product of one row stored as `dtype` with `x` (`x.len()` values).
///
/// The caller guarantees `row.len() == dtype.row_bytes(x.len())`; the function panics
/// otherwise. `U32`/`I64` give `0.0`: see the module documentation.
pub fn vec_dot(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    if !is_weight_format(dtype) {
        debug_assert!(false, "quant::vec_dot: {dtype} is not a weight format");
        return 0.0;
    }
    check_row("vec_dot", dtype, row.len(), x.len());
    let [r] = dot_n(dtype, row, [x]);
    r
}

/// Computes `out[j] = vec_dot(dtype, row, xs[j])` for several activation vectors at once,
/// reading the weight row once (for small-batch decode). `xs` are rows of a row-major
/// `[m, k]` slice, where `m = out.len()`.
///
/// The results are bitwise equal to [`vec_dot`]'s. Panics unless `xs.len() == m * k` and
/// `row.len() == dtype.row_bytes(k)`. `U32`/`I64` give zeros: see the module documentation.
pub fn vec_dot_multi(dtype: DType, row: &[u8], xs: &[f32], k: usize, out: &mut [f32]) {
    if !is_weight_format(dtype) {
        debug_assert!(false, "quant::vec_dot_multi: {dtype} is not a weight format");
        out.fill(0.0);
        return;
    }
    check_row("vec_dot_multi", dtype, row.len(), k);
    assert!(
        xs.len() == out.len() * k,
        "quant::vec_dot_multi: {} activation values are not {} rows of {k}",
        xs.len(),
        out.len()
    );
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let mut rows = xs.chunks_exact(k);
    for o in out.chunks_mut(MULTI_CHUNK) {
        // `rows` yields exactly `out.len()` slices, so each `next()` below succeeds.
        let mut next = || rows.next().unwrap_or(&[]);
        match o {
            [a, b, c, d] => [*a, *b, *c, *d] = dot_n(dtype, row, [next(), next(), next(), next()]),
            [a, b, c] => [*a, *b, *c] = dot_n(dtype, row, [next(), next(), next()]),
            [a, b] => [*a, *b] = dot_n(dtype, row, [next(), next()]),
            [a] => [*a] = dot_n(dtype, row, [next()]),
            _ => {}
        }
    }
}

/// Dots one row with `M` activation vectors, each `row`'s length in values (checked by the
/// callers), with the kernels of this CPU.
fn dot_n<const M: usize>(dtype: DType, row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    match level() {
        Level::Scalar => scalar::dot(dtype, row, xs),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `level()` reports `Avx2` or `Avx512` only after detecting AVX2, FMA and
        // F16C, and `Avx512` only after detecting AVX-512F/BW/VL too.
        l @ (Level::Avx2 | Level::Avx512) => unsafe { x86::dot(l == Level::Avx512, dtype, row, xs) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `level()` reports `Neon` only after detecting NEON.
        Level::Neon => unsafe { neon::dot(dtype, row, xs) },
    }
}

/// Which 8-bit-activation kernels this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Int8Level {
    /// The portable reference.
    Scalar,
    /// AVX2 `vpmaddubsw`/`vpmaddwd`.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 VNNI `vpdpbusd` (on 256-bit registers).
    #[cfg(target_arch = "x86_64")]
    Vnni,
    /// aarch64 NEON with the dotprod extension's `sdot`.
    #[cfg(target_arch = "aarch64")]
    NeonDot,
    /// aarch64 NEON `smull`/`sadalp` (ARMv8.0 cores without dotprod).
    #[cfg(target_arch = "aarch64")]
    Neon,
}

fn int8_level() -> Int8Level {
    static LEVEL: OnceLock<Int8Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                if has!("avx512vnni") && has!("avx512vl") {
                    return Int8Level::Vnni;
                }
                return Int8Level::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            use std::arch::is_aarch64_feature_detected as has;
            if has!("neon") {
                return if has!("dotprod") { Int8Level::NeonDot } else { Int8Level::Neon };
            }
        }
        Int8Level::Scalar
    })
}

/// `out[i] =` the dot product of `row` (stored as `dtype`) with activation row `i` of `acts`,
/// for the formats of [`int8_supported`], with integer multiply-adds.
///
/// Panics unless `row.len() == dtype.row_bytes(acts.row_len())` and `out.len() ==
/// acts.rows()`. Formats without an 8-bit kernel give zeros (a programming error: debug
/// builds panic).
pub fn vec_dot_q8(dtype: DType, row: &[u8], acts: &Q8Acts, out: &mut [f32]) {
    if !int8_supported(dtype) {
        debug_assert!(false, "quant::vec_dot_q8: {dtype} has no 8-bit-activation kernel");
        out.fill(0.0);
        return;
    }
    check_row("vec_dot_q8", dtype, row.len(), acts.row_len());
    assert!(out.len() == acts.rows(), "quant::vec_dot_q8: {} outputs for {} activation rows", out.len(), acts.rows());
    let level = int8_level();
    for (i, o) in out.iter_mut().enumerate() {
        let a = acts.row(i);
        *o = match level {
            Int8Level::Scalar => int8::dot_ref(dtype, row, a),
            // SAFETY: `int8_level()` reports `Vnni` only after detecting AVX2, FMA, F16C,
            // AVX-512 VNNI and AVX-512VL, the features of these kernels.
            #[cfg(target_arch = "x86_64")]
            Int8Level::Vnni => unsafe { x86::int8::vnni::dot(dtype, row, a) }.unwrap_or(0.0),
            // SAFETY: `int8_level()` reports `Avx2` only after detecting AVX2, FMA and F16C.
            #[cfg(target_arch = "x86_64")]
            Int8Level::Avx2 => unsafe { x86::int8::avx2::dot(dtype, row, a) }.unwrap_or(0.0),
            // SAFETY: `int8_level()` reports `NeonDot` only after detecting NEON and dotprod.
            #[cfg(target_arch = "aarch64")]
            Int8Level::NeonDot => unsafe { neon::int8::dotprod::dot(dtype, row, a) }.unwrap_or(0.0),
            // SAFETY: `int8_level()` reports `Neon` only after detecting NEON.
            #[cfg(target_arch = "aarch64")]
            Int8Level::Neon => unsafe { neon::int8::plain::dot(dtype, row, a) }.unwrap_or(0.0),
        };
    }
}

/// `out[j · m + i] =` weight row `j` of `w` (whole rows of `dtype`, as many values as each row
/// of `acts`) dotted with activation row `i` of `acts` (`m` rows): the transposed product, for
/// the formats of [`int8_supported`].
///
/// With AVX-512 VNNI the rows go through tiles of four weight rows by up to four activation rows
/// (`x86::tile`), decoding each weight block once for all of them; with AVX2 alone, Q8_0 goes
/// through tiles of four weight rows by up to two activation rows (`x86::tile_avx2`) from two
/// activation rows on, whose sums are those of [`vec_dot_q8`] bitwise; elsewhere each row goes
/// through [`vec_dot_q8`]. Either way a result depends only on its own weight row
/// and activation row, so it is the same whatever other rows come with them. The one exception:
/// Q4_K and Q5_K weights with AVX-512 VNNI and at least [`PANEL_MIN_M`] activation rows
/// (prefill) are re-laid out in panels of 32 rows (`x86::panel`, about three times the prefill
/// speed), whose sums run in another order: those results agree with the tile kernel's within
/// rounding, not bitwise, unless `invariant` is set: then Q4_K and Q5_K passes of fewer rows
/// take tiles that sum in the panels' order (`x86::ktile`, about 13 % slower decode), and every
/// row's result is the same in any batch.
///
/// Panics unless `w` holds whole rows and `out.len()` is their count times `acts.rows()`.
pub fn matmul_q8(dtype: DType, w: &[u8], acts: &Q8Acts, out: &mut [f32], invariant: bool) {
    let (k, m) = (acts.row_len(), acts.rows());
    let rb = dtype.row_bytes(k).unwrap_or(0);
    assert!(
        rb > 0 && w.len().is_multiple_of(rb) && out.len() == w.len() / rb * m,
        "quant::matmul_q8: {} bytes of {dtype} rows of {k} values against {m} activation rows, {} outputs",
        w.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    if tile_level() {
        let rows: Vec<_> = (0..m).map(|i| acts.row(i)).collect();
        // SAFETY: `tile_level()` holds only after detecting AVX-512F/BW/VL/DQ/VNNI, AVX2, FMA
        // and F16C, the features of the tile and panel kernels.
        if m >= PANEL_MIN_M && panel_formats(dtype) && unsafe { x86::panel::rows(dtype, w, rb, &rows, out) } {
            return;
        }
        // SAFETY: as above. (Q4_K and Q5_K: tiles that sum in the panel kernel's order.)
        if invariant && unsafe { x86::ktile::rows(dtype, w, rb, &rows, out) } {
            return;
        }
        // SAFETY: as above.
        if unsafe { x86::tile::rows(dtype, w, rb, &rows, out) } {
            return;
        }
    }
    // (One activation row, a decode step's, goes through the row kernel below: it streams the
    // weights from memory faster than the tiles do, and sums Q8_0 in the tiles' order.)
    #[cfg(target_arch = "x86_64")]
    if int8_level() == Int8Level::Avx2 && m > 1 {
        let rows: Vec<_> = (0..m).map(|i| acts.row(i)).collect();
        // SAFETY: `int8_level()` reports `Avx2` only after detecting AVX2, FMA and F16C, the
        // features of this kernel.
        if unsafe { x86::tile_avx2::rows(dtype, w, rb, &rows, out) } {
            return;
        }
    }
    for (j, o) in out.chunks_exact_mut(m.max(1)).enumerate() {
        let row = &w[j * rb..(j + 1) * rb];
        if let Some(ahead) = w.get((j + 2) * rb..(j + 3) * rb) {
            prefetch(ahead);
        }
        vec_dot_q8(dtype, row, acts, o);
    }
}

/// The formats [`matmul_q8`] gives to the panel kernel from [`PANEL_MIN_M`] rows on: Q4_K and
/// Q5_K. Every 8-bit-activation format is packed at upload where this kernel exists (`packed`),
/// so weights reach [`matmul_q8`] unpacked only on CPUs without it, as unpackable shapes or from
/// callers that do not upload; for the simple formats and Q6_K the tile kernel then takes every
/// number of rows, and their rows stay the same in any batch.
#[cfg(target_arch = "x86_64")]
fn panel_formats(dtype: DType) -> bool {
    matches!(dtype, DType::Q4K | DType::Q5K)
}

/// From this many activation rows on, [`matmul_q8`] takes the panel kernel for Q4_K and Q5_K
/// (see there): a caller that wants whole panels gives it chunks of weight rows that are
/// multiples of [`PANEL_ROWS`]. (Only x86-64 has a panel kernel; elsewhere the chunking is
/// harmless.)
pub const PANEL_MIN_M: usize = 32;
/// Weight rows per panel of the panel kernel.
pub const PANEL_ROWS: usize = 32;

/// Whether this CPU runs the tile kernels of [`matmul_q8`].
#[cfg(target_arch = "x86_64")]
fn tile_level() -> bool {
    static TILE: OnceLock<bool> = OnceLock::new();
    *TILE.get_or_init(|| {
        use std::arch::is_x86_feature_detected as has;
        int8_level() == Int8Level::Vnni && has!("avx512f") && has!("avx512bw") && has!("avx512dq")
    })
}

/// Asks the CPU to start loading `bytes` into its caches (one request per 64-byte line), so
/// that a row can be fetched while the one before it is being multiplied. A no-op where there
/// is no prefetch instruction.
#[inline]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: SSE is part of the x86-64 baseline, and a prefetch is only a hint: it never
        // faults and reads nothing into the program (the pointer is in bounds anyway).
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) };
    }
    #[cfg(target_arch = "aarch64")]
    for line in bytes.chunks(64) {
        // SAFETY: PRFM is only a hint: it never faults and loads nothing into the program (the
        // pointer is in bounds anyway); it touches no flags and no stack.
        unsafe {
            std::arch::asm!("prfm pldl1keep, [{p}]", p = in(reg) line.as_ptr(), options(nostack, preserves_flags, readonly))
        };
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = bytes;
}
