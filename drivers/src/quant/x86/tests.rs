//! Property tests: the AVX2 kernels against the scalar reference on random rows.

#![allow(clippy::unwrap_used)]

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::DType;
use crate::quant::scalar;
use crate::quant::testutil::{FORMATS, INT8_FORMATS, magnitude, random_row, random_x};

/// The kernel sets this CPU can run: AVX2 (`false`) and AVX-512 (`true`).
fn levels() -> Vec<bool> {
    let mut l = Vec::new();
    if have_avx2() {
        l.push(false);
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            l.push(true);
        } else {
            eprintln!("skipping the AVX-512 kernels: this CPU lacks AVX-512F/BW/VL");
        }
    }
    l
}

/// The SIMD dot kernel, after checking the features.
fn simd_dot<const M: usize>(avx512: bool, dtype: DType, row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    assert!(levels().contains(&avx512));
    // SAFETY: the features were detected just above.
    unsafe { super::dot(avx512, dtype, row, xs) }
}

/// The SIMD de-quantisation kernel, after checking the features.
fn simd_dequant(avx512: bool, dtype: DType, row: &[u8], out: &mut [f32]) {
    assert!(levels().contains(&avx512));
    // SAFETY: the features were detected just above.
    unsafe { super::dequantize_row(avx512, dtype, row, out) }
}

fn have_avx2() -> bool {
    let ok = std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c");
    if !ok {
        eprintln!("skipping: this CPU lacks AVX2/FMA/F16C");
    }
    ok
}

/// Row lengths to try: whole blocks, more than one scale chunk, and float tails.
fn lengths(dtype: DType) -> Vec<usize> {
    let bl = dtype.block_len();
    if bl == 1 { vec![0, 1, 7, 31, 32, 33, 100, 256, 1000] } else { [1, 2, 3, 8, 9, 17].map(|b| b * bl).to_vec() }
}

#[test]
fn dequantize_matches_scalar_bitwise() {
    let mut rng = StdRng::seed_from_u64(1);
    for (avx512, dtype) in levels().into_iter().flat_map(|l| FORMATS.map(|f| (l, f))) {
        for n in lengths(dtype) {
            for _ in 0..5 {
                let row = random_row(dtype, n, &mut rng);
                let mut want = vec![0f32; n];
                let mut got = vec![1f32; n];
                scalar::dequantize_row(dtype, &row, &mut want);
                simd_dequant(avx512, dtype, &row, &mut got);
                for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                    assert_eq!(w.to_bits(), g.to_bits(), "{dtype} avx512={avx512} n={n} value {i}: {w} vs {g}");
                }
            }
        }
    }
}

#[test]
fn dot_matches_scalar() {
    let mut rng = StdRng::seed_from_u64(2);
    for (avx512, dtype) in levels().into_iter().flat_map(|l| FORMATS.map(|f| (l, f))) {
        for n in lengths(dtype) {
            for _ in 0..5 {
                let row = random_row(dtype, n, &mut rng);
                let x = random_x(n, &mut rng);
                let mut w = vec![0f32; n];
                scalar::dequantize_row(dtype, &row, &mut w);
                let scale: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
                let [want] = scalar::dot(dtype, &row, [&x]);
                let [got] = simd_dot(avx512, dtype, &row, [&x]);
                assert!(
                    (want - got).abs() <= 1e-5 * scale.max(f32::MIN_POSITIVE),
                    "{dtype} avx512={avx512} n={n}: scalar {want} vs simd {got} (Σ|w·x| = {scale})"
                );
            }
        }
    }
}

#[test]
fn multi_equals_single_bitwise() {
    let mut rng = StdRng::seed_from_u64(3);
    for (l, dtype) in levels().into_iter().flat_map(|l| FORMATS.map(|f| (l, f))) {
        for n in lengths(dtype) {
            let row = random_row(dtype, n, &mut rng);
            let xs: Vec<Vec<f32>> = (0..4).map(|_| random_x(n, &mut rng)).collect();
            let single: Vec<f32> = xs.iter().map(|x| simd_dot(l, dtype, &row, [x])[0]).collect();
            let four = simd_dot(l, dtype, &row, [&xs[0], &xs[1], &xs[2], &xs[3]]);
            let three = simd_dot(l, dtype, &row, [&xs[1], &xs[2], &xs[3]]);
            let two = simd_dot(l, dtype, &row, [&xs[2], &xs[3]]);
            for j in 0..4 {
                assert_eq!(four[j].to_bits(), single[j].to_bits(), "{dtype} n={n} M=4 vector {j}");
            }
            for j in 0..3 {
                assert_eq!(three[j].to_bits(), single[j + 1].to_bits(), "{dtype} n={n} M=3");
            }
            for j in 0..2 {
                assert_eq!(two[j].to_bits(), single[j + 2].to_bits(), "{dtype} n={n} M=2");
            }
        }
    }
}

/// The formats with 8-bit-activation kernels.
/// The 8-bit-activation kernel builds this CPU can run, by name.
fn int8_builds() -> Vec<&'static str> {
    let mut b = Vec::new();
    if have_avx2() {
        b.push("avx2");
        if std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512vl") {
            b.push("vnni");
        } else {
            eprintln!("skipping the VNNI kernels: this CPU lacks AVX-512 VNNI/VL");
        }
    }
    b
}

fn int8_dot(build: &str, dtype: DType, row: &[u8], a: crate::quant::int8::ActRow<'_>) -> f32 {
    assert!(int8_builds().contains(&build));
    // SAFETY: the features of `build` were detected just above.
    let r = unsafe {
        match build {
            "vnni" => super::int8::vnni::dot(dtype, row, a),
            _ => super::int8::avx2::dot(dtype, row, a),
        }
    };
    r.unwrap()
}

#[test]
fn int8_kernels_match_reference() {
    let mut rng = StdRng::seed_from_u64(4);
    for build in int8_builds() {
        for dtype in INT8_FORMATS {
            for n in lengths(dtype) {
                for _ in 0..5 {
                    let row = random_row(dtype, n, &mut rng);
                    let mut x = random_x(n, &mut rng);
                    // Some all-zero and some large activation blocks.
                    x[..32].fill(0.0);
                    if n > 64 {
                        x[32..64].iter_mut().for_each(|v| *v *= 300.0);
                    }
                    let acts = crate::quant::Q8Acts::quantize(&x, n);
                    let want = crate::quant::int8::dot_ref(dtype, &row, acts.row(0));
                    let got = int8_dot(build, dtype, &row, acts.row(0));
                    let scale = magnitude(dtype, &row, &x);
                    assert!(
                        (want - got).abs() <= 1e-5 * scale.max(f32::MIN_POSITIVE),
                        "{dtype} {build} n={n}: reference {want} vs kernel {got} (Σ|w·x| = {scale})"
                    );
                }
            }
        }
    }
}

#[test]
fn int8_reference_is_within_quantization_error() {
    let mut rng = StdRng::seed_from_u64(5);
    for dtype in INT8_FORMATS {
        for n in lengths(dtype) {
            let row = random_row(dtype, n, &mut rng);
            let x = random_x(n, &mut rng);
            let acts = crate::quant::Q8Acts::quantize(&x, n);
            let mut w = vec![0f32; n];
            scalar::dequantize_row(dtype, &row, &mut w);
            let exact: f64 = w.iter().zip(&x).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            // Each activation moves by at most half a step of its block.
            let mut bound = 0f64;
            for (wb, xb) in w.chunks_exact(32).zip(x.chunks_exact(32)) {
                let step = f64::from(xb.iter().fold(0f32, |m, v| m.max(v.abs()))) / 127.0;
                bound += wb.iter().map(|&v| f64::from(v).abs()).sum::<f64>() * step * 0.5;
            }
            let scale: f64 = w.iter().zip(&x).map(|(&a, &b)| f64::from((a * b).abs())).sum();
            let got = f64::from(crate::quant::int8::dot_ref(dtype, &row, acts.row(0)));
            assert!(
                (got - exact).abs() <= bound * 1.001 + 1e-5 * scale,
                "{dtype} n={n}: 8-bit {got} vs exact {exact} (bound {bound})"
            );
        }
    }
}

fn have_tile() -> bool {
    let ok = have_avx2()
        && ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni"].iter().all(|f| match *f {
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
            "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
            "avx512dq" => std::arch::is_x86_feature_detected!("avx512dq"),
            _ => std::arch::is_x86_feature_detected!("avx512vnni"),
        });
    if !ok {
        eprintln!("skipping the tile kernels: this CPU lacks AVX-512F/BW/VL/DQ/VNNI");
    }
    ok
}

/// A matmul kernel of `x86` (`tile::rows` or `panel::rows`).
type MatmulKernel = unsafe fn(DType, &[u8], usize, &[crate::quant::int8::ActRow<'_>], &mut [f32]) -> bool;

/// Runs `kernel` on random rows of every 8-bit-activation format, `n` weight rows by `m`
/// activation rows for each shape, and checks each result against the reference; with `alone`,
/// also that each result equals, bitwise, the same pair computed alone. Returns the formats the
/// kernel declined.
fn check_matmul_kernel(
    name: &str,
    kernel: MatmulKernel,
    shapes: &[(usize, usize)],
    seed: u64,
    alone: bool,
) -> Vec<DType> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut declined = Vec::new();
    for dtype in INT8_FORMATS {
        for k in lengths(dtype) {
            let rb = dtype.row_bytes(k).unwrap();
            for &(n, m) in shapes {
                let w: Vec<u8> = (0..n).flat_map(|_| random_row(dtype, k, &mut rng)).collect();
                let mut x = random_x(m * k, &mut rng);
                x[..32].fill(0.0);
                if k > 64 {
                    x[32..64].iter_mut().for_each(|v| *v *= 300.0);
                }
                let acts = crate::quant::Q8Acts::quantize(&x, k);
                let rows: Vec<_> = (0..m).map(|i| acts.row(i)).collect();
                let mut out = vec![f32::NAN; n * m];
                // SAFETY: the callers detect the features first (`have_tile`).
                if !unsafe { kernel(dtype, &w, rb, &rows, &mut out) } {
                    declined.push(dtype);
                    continue;
                }
                for j in 0..n {
                    let row = &w[j * rb..(j + 1) * rb];
                    for i in 0..m {
                        let want = crate::quant::int8::dot_ref(dtype, row, acts.row(i));
                        let got = out[j * m + i];
                        let scale = magnitude(dtype, row, &x[i * k..(i + 1) * k]);
                        assert!(
                            (want - got).abs() <= 1e-5 * scale.max(f32::MIN_POSITIVE),
                            "{dtype} k={k} n={n} m={m} row {j} act {i}: reference {want} vs {name} {got}"
                        );
                        if alone {
                            let mut one = [f32::NAN];
                            // SAFETY: as above.
                            assert!(unsafe { kernel(dtype, row, rb, &rows[i..=i], &mut one) });
                            assert_eq!(one[0].to_bits(), got.to_bits(), "{dtype} k={k}: row {j} act {i} alone");
                        }
                    }
                }
            }
        }
    }
    declined.dedup();
    declined
}

/// The tile kernel of every format against the reference, for tiles cut every way (weight rows
/// not a multiple of 4, 1 to 9 activation rows, odd block counts), and each result equal
/// bitwise to the same row computed alone.
#[test]
fn tile_kernels_match_reference_and_do_not_depend_on_the_batch() {
    if !have_tile() {
        return;
    }
    let shapes = [(1, 1), (3, 2), (4, 4), (5, 9), (9, 3), (6, 7)];
    let declined = check_matmul_kernel("tile", super::tile::rows, &shapes, 6, true);
    assert!(declined.is_empty(), "the tile kernel declined {declined:?}");
}

/// The AVX2 tile kernel (Q8_0 only) against the reference, for tiles cut every way (weight
/// rows not a multiple of 4, odd numbers of activation rows and of blocks), each result equal
/// bitwise to the same row computed alone; it declines every other format.
#[test]
fn avx2_tile_kernel_matches_reference_and_does_not_depend_on_the_batch() {
    if !have_avx2() {
        return;
    }
    let shapes = [(1, 1), (3, 2), (4, 4), (5, 9), (9, 3), (6, 7), (8, 70)];
    let declined = check_matmul_kernel("tile_avx2", super::tile_avx2::rows, &shapes, 11, true);
    let others: Vec<DType> = INT8_FORMATS.iter().copied().filter(|&d| d != DType::Q8_0).collect();
    assert_eq!(declined, others, "the AVX2 tile kernel takes Q8_0 alone");
}

/// The AVX2 tile kernel's Q8_0 results are bitwise those of the AVX2 row kernel, which
/// `matmul_q8` takes for a single activation row: a decode row gets the same result alone as in
/// a batch.
#[test]
fn avx2_tile_kernel_sums_as_the_row_kernel() {
    if !have_avx2() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(12);
    let dtype = DType::Q8_0;
    for k in lengths(dtype) {
        let rb = dtype.row_bytes(k).unwrap();
        let (n, m) = (7, 5);
        let w: Vec<u8> = (0..n).flat_map(|_| random_row(dtype, k, &mut rng)).collect();
        let acts = crate::quant::Q8Acts::quantize(&random_x(m * k, &mut rng), k);
        let rows: Vec<_> = (0..m).map(|i| acts.row(i)).collect();
        let mut out = vec![f32::NAN; n * m];
        // SAFETY: AVX2, FMA and F16C were detected above.
        assert!(unsafe { super::tile_avx2::rows(dtype, &w, rb, &rows, &mut out) });
        for (j, row) in w.chunks_exact(rb).enumerate() {
            for (i, &a) in rows.iter().enumerate() {
                // SAFETY: as above.
                let one = unsafe { super::int8::avx2::dot(dtype, row, a) }.unwrap();
                assert_eq!(
                    one.to_bits(),
                    out[j * m + i].to_bits(),
                    "k={k}: row {j} act {i}: {one} vs {}",
                    out[j * m + i]
                );
            }
        }
    }
}

/// The packed kernel in the signature of `check_matmul_kernel`: packs `w` (declining the
/// formats `PackedWeights` does not take) and runs the kernel on every panel. Q4_K and Q5_K
/// results are also checked bitwise against the panel kernel's (and so the K tiles').
///
/// # Safety
/// As `packed::rows`.
unsafe fn packed_kernel(
    dtype: DType,
    w: &[u8],
    rb: usize,
    acts: &[crate::quant::int8::ActRow<'_>],
    out: &mut [f32],
) -> bool {
    let (n, nb) = (w.len() / rb, acts[0].qs.len());
    let Some(p) = crate::quant::PackedWeights::pack(dtype, w, n, nb * 32) else { return false };
    // The packed kernel writes row-major `[m, n]`; the check takes `[n, m]`.
    let m = acts.len();
    let mut by_act = vec![f32::NAN; n * m];
    // SAFETY: as the caller guarantees.
    unsafe { super::packed::rows(dtype, &p.bytes, nb, n, acts, &mut by_act) };
    for (i, row) in by_act.chunks_exact(n).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[j * m + i] = v;
        }
    }
    if matches!(dtype, DType::Q4K | DType::Q5K) {
        let mut panel = vec![f32::NAN; out.len()];
        // SAFETY: as above.
        assert!(unsafe { super::panel::rows(dtype, w, rb, acts, &mut panel) }, "{dtype}: the panel kernel declined");
        for (i, (a, b)) in out.iter().zip(&panel).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{dtype}: result {i}, packed {a} vs panel {b}");
        }
    }
    true
}

/// The packed kernel of every 8-bit-activation format against the reference, for panels cut
/// every way (weight rows not a multiple of 32, 1 to 17 activation rows, odd block and
/// super-block counts), and each result equal bitwise to the same row computed alone: decode
/// and prefill rows agree.
#[test]
fn packed_kernels_match_reference_and_do_not_depend_on_the_batch() {
    if !have_tile() {
        return;
    }
    let shapes = [(1, 1), (33, 5), (32, 4), (70, 9), (5, 2), (3, 3), (40, 17)];
    let declined = check_matmul_kernel("packed", packed_kernel, &shapes, 8, true);
    assert!(declined.is_empty(), "the packed kernel declined {declined:?}");
}

/// The panel kernel of every format it takes (all but Q6_K) against the reference, for panels
/// cut every way (weight rows not a multiple of 32, activation rows not a multiple of 4, odd
/// block counts).
#[test]
fn panel_kernels_match_reference() {
    if !have_tile() {
        return;
    }
    let shapes = [(1, 1), (33, 5), (32, 4), (70, 9), (5, 34)];
    let declined = check_matmul_kernel("panel", super::panel::rows, &shapes, 7, false);
    assert_eq!(declined, [DType::Q6K], "only Q6_K stays with the tile kernel");
}

/// The AVX-512 activation quantisation equals the portable one bitwise, ties included.
#[test]
fn simd_quantization_equals_reference_bitwise() {
    if !have_tile() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(8);
    for k in [32, 64, 96, 896] {
        let mut xs = random_x(5 * k, &mut rng);
        // Exact halves after scaling (block max 127 gives scale 1): ties must round away from 0.
        xs[..32].iter_mut().enumerate().for_each(|(i, v)| *v = (i as f32 - 16.0) + 0.5);
        xs[0] = 127.0;
        xs[32..64].fill(0.0);
        if k > 64 {
            xs[64..96].iter_mut().for_each(|v| *v *= 1e-30);
        }
        let a = crate::quant::Q8Acts::quantize(&xs, k);
        let b = crate::quant::Q8Acts::quantize_ref(&xs, k);
        let ((qa, da, sa), (qb, db, sb)) = (a.parts(), b.parts());
        assert_eq!(qa, qb, "k={k}: quantised values");
        assert!(da.iter().zip(db).all(|(x, y)| x.to_bits() == y.to_bits()), "k={k}: scales");
        assert!(sa.iter().zip(sb).all(|(x, y)| x.to_bits() == y.to_bits()), "k={k}: sums");
        assert_eq!(qa[0][1], -15, "k={k}: -14.5 rounds to -15");
        assert_eq!(qa[0][17], 2, "k={k}: 1.5 rounds to 2");
    }
}

/// The K-format tiles (`ktile`) in the signature of `check_matmul_kernel`, each result also
/// checked bitwise against the panel kernel's for the same pair.
///
/// # Safety
/// As `ktile::rows`.
unsafe fn ktile_against_panel(
    dtype: DType,
    w: &[u8],
    rb: usize,
    acts: &[crate::quant::int8::ActRow<'_>],
    out: &mut [f32],
) -> bool {
    // SAFETY: as the caller guarantees.
    if !unsafe { super::ktile::rows(dtype, w, rb, acts, out) } {
        return false;
    }
    let mut panel = vec![f32::NAN; out.len()];
    // SAFETY: as above.
    assert!(unsafe { super::panel::rows(dtype, w, rb, acts, &mut panel) }, "{dtype}: the panel kernel declined");
    for (i, (a, b)) in out.iter().zip(&panel).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "{dtype}: result {i}, tile {a} vs panel {b}");
    }
    true
}

/// Q4_K and Q5_K tiles against the reference, each result equal bitwise to the same pair alone
/// and to the panel kernel's: decode rows and prefill rows agree.
#[test]
fn k_tiles_match_reference_and_the_panels_bitwise() {
    if !have_tile() {
        return;
    }
    let shapes = [(1, 1), (3, 2), (4, 4), (5, 9), (9, 3), (6, 7), (33, 5)];
    let declined = check_matmul_kernel("ktile", ktile_against_panel, &shapes, 9, true);
    let want: Vec<DType> = INT8_FORMATS.into_iter().filter(|d| !matches!(d, DType::Q4K | DType::Q5K)).collect();
    assert_eq!(declined, want, "only Q4_K and Q5_K have K-format tiles");
}
