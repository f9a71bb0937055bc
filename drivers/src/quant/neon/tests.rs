//! Property tests: the NEON kernels against the scalar references on random rows.
//!
//! On an x86 host they run under qemu user-mode emulation (`scripts/check-aarch64.sh`), once
//! with `-cpu max` (dotprod: both 8-bit builds run) and once with `-cpu cortex-a53` (ARMv8.0:
//! only the plain one can).

#![allow(clippy::unwrap_used)]

use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::DType;
use crate::quant::int8::{ActRow, dot_ref};
use crate::quant::testutil::{FORMATS, INT8_FORMATS, magnitude, random_row, random_x, scale_offsets};
use crate::quant::{Q8Acts, scalar};

fn have_neon() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

/// The NEON dot kernel, after checking the feature.
fn neon_dot<const M: usize>(dtype: DType, row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    assert!(have_neon());
    // SAFETY: NEON was detected just above.
    unsafe { super::dot(dtype, row, xs) }
}

/// The NEON de-quantisation kernel, after checking the feature.
fn neon_dequant(dtype: DType, row: &[u8], out: &mut [f32]) {
    assert!(have_neon());
    // SAFETY: NEON was detected just above.
    unsafe { super::dequantize_row(dtype, row, out) }
}

/// Row lengths to try: whole blocks (multiples of 32, or of 256 for the K formats), partial and
/// several scale chunks, and float tails.
fn lengths(dtype: DType) -> Vec<usize> {
    let bl = dtype.block_len();
    if bl == 1 { vec![0, 1, 7, 31, 32, 33, 100, 256, 1000] } else { [1, 2, 3, 4, 5, 8, 9, 17].map(|b| b * bl).to_vec() }
}

#[test]
fn f16_conversion_matches_half_for_every_bit_pattern() {
    for start in (0..=u16::MAX).step_by(8) {
        let bits: [u16; 8] = std::array::from_fn(|i| start + i as u16);
        let mut got = [0f32; 8];
        // SAFETY: NEON is asserted first; the helpers only touch registers and `got`.
        unsafe {
            assert!(have_neon());
            let v = std::arch::aarch64::vld1q_u16(bits.as_ptr());
            let [lo, hi] = super::f16x8_to_f32(v);
            super::store_f32(&mut got[..4], lo);
            super::store_f32(&mut got[4..], hi);
        }
        // SAFETY: as above.
        let four = unsafe { super::f16x4_to_f32([bits[0], bits[1], bits[2], bits[3]]) };
        for (i, (&h, g)) in bits.iter().zip(got).enumerate() {
            let want = f16::from_bits(h).to_f32().to_bits();
            assert_eq!(g.to_bits(), want, "f16 {h:#06x}: {g} vs {}", f32::from_bits(want));
            if i < 4 {
                assert_eq!(four[i].to_bits(), want, "f16 {h:#06x} (4-wide)");
            }
        }
    }
}

#[test]
fn float_rows_convert_bitwise_for_every_bit_pattern() {
    // Every f16 and bf16 bit pattern (NaNs, infinities, subnormals included) through the row
    // conversion kernels, against the scalar reference.
    let row: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
    for dtype in [DType::F16, DType::BF16] {
        let mut want = vec![0f32; 65536];
        let mut got = vec![1f32; 65536];
        scalar::dequantize_row(dtype, &row, &mut want);
        neon_dequant(dtype, &row, &mut got);
        for (h, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(w.to_bits(), g.to_bits(), "{dtype} {h:#06x}: {w} vs {g}");
        }
    }
}

#[test]
fn dequantize_matches_scalar_bitwise() {
    let mut rng = StdRng::seed_from_u64(1);
    for dtype in FORMATS {
        for n in lengths(dtype) {
            for _ in 0..5 {
                let row = random_row(dtype, n, &mut rng);
                let mut want = vec![0f32; n];
                let mut got = vec![1f32; n];
                scalar::dequantize_row(dtype, &row, &mut want);
                neon_dequant(dtype, &row, &mut got);
                for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                    assert_eq!(w.to_bits(), g.to_bits(), "{dtype} n={n} value {i}: {w} vs {g}");
                }
            }
        }
    }
}

#[test]
fn dot_matches_scalar_for_one_to_four_vectors() {
    let mut rng = StdRng::seed_from_u64(2);
    for dtype in FORMATS {
        for n in lengths(dtype) {
            for _ in 0..3 {
                let row = random_row(dtype, n, &mut rng);
                let xs: Vec<Vec<f32>> = (0..4).map(|_| random_x(n, &mut rng)).collect();
                let want: Vec<f32> = xs.iter().map(|x| scalar::dot(dtype, &row, [x])[0]).collect();
                let got: Vec<Vec<f32>> = vec![
                    neon_dot(dtype, &row, [&xs[0]]).to_vec(),
                    neon_dot(dtype, &row, [&xs[0], &xs[1]]).to_vec(),
                    neon_dot(dtype, &row, [&xs[0], &xs[1], &xs[2]]).to_vec(),
                    neon_dot(dtype, &row, [&xs[0], &xs[1], &xs[2], &xs[3]]).to_vec(),
                ];
                for (m, g) in got.iter().enumerate() {
                    for (j, (&w, &g)) in want.iter().zip(g).enumerate() {
                        let scale = magnitude(dtype, &row, &xs[j]);
                        assert!(
                            (w - g).abs() <= 1e-5 * scale.max(f32::MIN_POSITIVE),
                            "{dtype} n={n} M={} vector {j}: scalar {w} vs neon {g} (Σ|w·x| = {scale})",
                            m + 1
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn multi_equals_single_bitwise() {
    let mut rng = StdRng::seed_from_u64(3);
    for dtype in FORMATS {
        for n in lengths(dtype) {
            let row = random_row(dtype, n, &mut rng);
            let xs: Vec<Vec<f32>> = (0..4).map(|_| random_x(n, &mut rng)).collect();
            let single: Vec<f32> = xs.iter().map(|x| neon_dot(dtype, &row, [x])[0]).collect();
            let four = neon_dot(dtype, &row, [&xs[0], &xs[1], &xs[2], &xs[3]]);
            let three = neon_dot(dtype, &row, [&xs[1], &xs[2], &xs[3]]);
            let two = neon_dot(dtype, &row, [&xs[2], &xs[3]]);
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

#[test]
fn k_scale_unpacking_matches_scale_min_k4() {
    let mut rng = StdRng::seed_from_u64(6);
    for _ in 0..1000 {
        let s: [u8; 12] = rng.random();
        let (sc, mn) = super::kquants::unpack_scales_mins(&s);
        for j in 0..8 {
            let want = crate::quant::kquants::scale_min_k4(j, &s);
            assert_eq!(((sc >> (8 * j)) as u8, (mn >> (8 * j)) as u8), want, "{s:?} j={j}");
        }
    }
}

/// The 8-bit-activation kernel builds this CPU can run, by name: `plain` always, `dotprod`
/// where the CPU has the extension.
fn int8_builds() -> Vec<&'static str> {
    let mut b = vec!["plain"];
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        b.push("dotprod");
    } else {
        eprintln!("skipping the dotprod (SDOT) kernels: this CPU lacks the dotprod extension");
    }
    b
}

fn int8_dot(build: &str, dtype: DType, row: &[u8], a: ActRow<'_>) -> f32 {
    assert!(have_neon() && int8_builds().contains(&build));
    // SAFETY: the features of `build` were detected just above.
    let r = unsafe {
        match build {
            "dotprod" => super::int8::dotprod::dot(dtype, row, a),
            _ => super::int8::plain::dot(dtype, row, a),
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
                    let acts = Q8Acts::quantize(&x, n);
                    let want = dot_ref(dtype, &row, acts.row(0));
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
fn int8_kernels_are_exact_on_integer_blocks() {
    // Scales of 1 (and K sub-block scales of 1) and activations that quantise to themselves
    // (127 in every block): every sum is an integer below 2^24, so the reference and both builds
    // must agree exactly, including the extreme products (-128 · ±127 for Q8_0).
    let one = f16::from_f32(1.0).to_le_bytes();
    for build in int8_builds() {
        for dtype in INT8_FORMATS {
            let n = dtype.block_len() * 4;
            let mut row: Vec<u8> = (0..dtype.row_bytes(n).unwrap()).map(|i| (i * 37 + 11) as u8).collect();
            for block in row.chunks_exact_mut(dtype.block_bytes()) {
                for &off in scale_offsets(dtype) {
                    block[off..off + 2].copy_from_slice(&one);
                }
                match dtype {
                    DType::Q8_0 => block[2..34].fill(0x80),
                    DType::Q4K | DType::Q5K => block[4..16].fill(1),
                    DType::Q6K => block[192..208].fill(1),
                    _ => {}
                }
            }
            let x: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { 127.0 } else { -((i % 128) as f32) }).collect();
            let acts = Q8Acts::quantize(&x, n);
            let want = dot_ref(dtype, &row, acts.row(0));
            let got = int8_dot(build, dtype, &row, acts.row(0));
            assert_eq!(want.to_bits(), got.to_bits(), "{dtype} {build}: reference {want} vs kernel {got}");
        }
    }
}

#[test]
fn int8_builds_agree_with_each_other() {
    let builds = int8_builds();
    if builds.len() < 2 {
        return;
    }
    let mut rng = StdRng::seed_from_u64(7);
    for dtype in INT8_FORMATS {
        let n = 8 * dtype.block_len();
        let row = random_row(dtype, n, &mut rng);
        let x = random_x(n, &mut rng);
        let acts = Q8Acts::quantize(&x, n);
        let a = int8_dot("plain", dtype, &row, acts.row(0));
        let b = int8_dot("dotprod", dtype, &row, acts.row(0));
        // The same products summed into differently grouped lanes: only f32 rounding differs.
        let scale = magnitude(dtype, &row, &x);
        assert!((a - b).abs() <= 1e-5 * scale.max(f32::MIN_POSITIVE), "{dtype}: plain {a} vs dotprod {b}");
    }
}

#[test]
fn detection_matches_the_emulated_cpu() {
    // qemu-aarch64 passes QEMU_CPU on to the program: check that run-time detection sees the
    // model that scripts/check-aarch64.sh asked for, so that both 8-bit builds really ran.
    let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
    match std::env::var("QEMU_CPU").as_deref() {
        Ok("max") => assert!(dotprod, "qemu -cpu max has dotprod"),
        Ok("cortex-a53") => assert!(!dotprod, "qemu -cpu cortex-a53 lacks dotprod"),
        _ => eprintln!("not under a known qemu CPU model; dotprod detected: {dotprod}"),
    }
    assert!(have_neon());
}
