//! Run-time selection of AVX-512 or AVX2 code generation for the element-wise and attention
//! kernels.
//!
//! The crate is built for baseline x86-64, where the auto-vectoriser may use SSE2 only and
//! `f32::mul_add` is a call to the C library's `fmaf`. [`simd_kernel!`] compiles a kernel body
//! three times: as written, inside a function with AVX-512 (and FMA) enabled, and inside one with
//! AVX2 and FMA enabled, and calls the widest that the CPU has. The three give the same results
//! bitwise: the compiler does not reorder floating-point operations, and `mul_add` is one fused
//! operation in each (an instruction, or `fmaf`). The AVX2 build is for CPUs without AVX-512,
//! such as AMD's Zen 1 and 2 and the Hygon C86 processors derived from them: on a 2-core AMD
//! EPYC (Zen 1) VM, `fmaf` calls from the attention and `exp` took 7 % of a Qwen2.5-1.5B Q8_0
//! pp128 under `perf` before it.

use std::sync::OnceLock;

/// Whether this CPU has AVX-512F/BW/VL and FMA (checked once).
pub(crate) fn avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx2") && has!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether this CPU has AVX2 and FMA (checked once).
pub(crate) fn avx2_fma() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            has!("avx2") && has!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Defines `fn name(args) -> ret { body }` that runs `body` compiled for AVX-512 when the CPU
/// has it, else for AVX2 and FMA when it has those, and as plain code otherwise. The body must be
/// safe code; it is inlined into all three.
macro_rules! simd_kernel {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident : $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn generic($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                fn wide($($a: $t),*) $(-> $r)? {
                    generic($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($a: $t),*) $(-> $r)? {
                    generic($($a),*)
                }
                if $crate::cpu::simd::avx512() {
                    // SAFETY: `wide` only differs from `generic` in being compiled for
                    // AVX-512F/BW/VL, AVX2 and FMA, and the CPU was checked to have all of them.
                    return unsafe { wide($($a),*) };
                }
                if $crate::cpu::simd::avx2_fma() {
                    // SAFETY: `avx2` only differs from `generic` in being compiled for AVX2 and
                    // FMA, and the CPU was checked to have both.
                    return unsafe { avx2($($a),*) };
                }
            }
            generic($($a),*)
        }
    };
}
pub(crate) use simd_kernel;

/// `e^x` for `x` in about `[-87, 88]` (clamped outside), within 2 ulp: Cephes' polynomial after
/// reduction by `ln 2`, with only arithmetic and bit operations so that loops over it vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let t = x.mul_add(LOG2E, MAGIC);
    let n = t - MAGIC;
    let ni = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let r = n.mul_add(-C2, n.mul_add(-C1, x));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = (p * r).mul_add(r, r) + 1.0;
    y * f32::from_bits((ni.wrapping_add(127) as u32) << 23)
}

/// Sum of a slice with 16 independent accumulators (vectorisable; a single running sum is a
/// sequential chain of dependent adds).
#[inline(always)]
pub(crate) fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let c = a.chunks_exact(16);
    let tail: f32 = c.remainder().iter().sum();
    for x in c {
        for i in 0..16 {
            acc[i] += x[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_close_to_libm() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (super::exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.013;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(-1000.0) < 1e-37 && super::exp(-1000.0) >= 0.0);
    }
}
