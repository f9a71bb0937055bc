//! Portable reference de-quantisation of the 256-value "K" formats: Q4_K, Q5_K and Q6_K.
//!
//! Each function handles one super-block and repeats gguf-py's numpy arithmetic exactly: the
//! sub-block scale `d * sc` and offset `dmin * m` are rounded to `f32` first, then each value is
//! `scale * q - offset` with the product and the difference rounded separately.

use super::scalar::f16_at;

/// Byte offsets inside `block_q4_K` / `block_q5_K`.
pub(super) const K_SCALES: usize = 4;

/// Unpacks the 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes `s`
/// (llama.cpp's `get_scale_min_k4`).
///
/// Bytes 0..4 hold scales 0..4 in their low six bits, bytes 4..8 the mins 0..4; bytes 8..12
/// hold the low four bits of scale (low nibble) and min (high nibble) 4..8, whose top two bits
/// are the top bits of bytes 0..4 (scales) and 4..8 (mins).
#[inline]
pub(super) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// The eight sub-block scales `d * sc` and offsets `dmin * m` of a Q4_K/Q5_K super-block.
#[inline]
pub(super) fn scales_mins(b: &[u8]) -> ([f32; 8], [f32; 8]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let s = &b[K_SCALES..K_SCALES + 12];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, s);
        scales[j] = d * f32::from(sc);
        mins[j] = dmin * f32::from(m);
    }
    (scales, mins)
}

/// `block_q4_K`: `f16 d; f16 dmin; u8 scales[12]; u8 qs[128]`.
///
/// Bytes `qs[32c..32c + 32]` hold sub-block `2c` in their low nibbles and `2c + 1` in their
/// high nibbles; value `v` of sub-block `s` is `d * sc[s] * q - dmin * m[s]`.
pub(super) fn q4_k(b: &[u8], out: &mut [f32]) {
    let (scales, mins) = scales_mins(b);
    let qs = &b[16..144];
    for (c, (o, q)) in out.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
        let (lo, hi) = o.split_at_mut(32);
        let (s0, m0, s1, m1) = (scales[2 * c], mins[2 * c], scales[2 * c + 1], mins[2 * c + 1]);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(q) {
            *l = s0 * f32::from(q & 15) - m0;
            *h = s1 * f32::from(q >> 4) - m1;
        }
    }
}

/// `block_q5_K`: `f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]`.
///
/// As Q4_K, with bit `s` of `qh[i]` as the fifth bit of value `i` of sub-block `s`.
pub(super) fn q5_k(b: &[u8], out: &mut [f32]) {
    let (scales, mins) = scales_mins(b);
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (c, (o, q)) in out.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
        let (lo, hi) = o.split_at_mut(32);
        let (s0, m0, s1, m1) = (scales[2 * c], mins[2 * c], scales[2 * c + 1], mins[2 * c + 1]);
        for (((l, h), &q), &h5) in lo.iter_mut().zip(hi).zip(q).zip(qh) {
            let ql = (q & 15) | (((h5 >> (2 * c)) & 1) << 4);
            let qu = (q >> 4) | (((h5 >> (2 * c + 1)) & 1) << 4);
            *l = s0 * f32::from(ql) - m0;
            *h = s1 * f32::from(qu) - m1;
        }
    }
}

/// `block_q6_K`: `u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d`.
///
/// Each half `h` of 128 values uses `ql[64h..64h + 64]` and `qh[32h..32h + 32]`: value
/// `32t + l` of the half takes its low four bits from `ql[64h + l + 32 (t & 1)]` (low nibble
/// for `t < 2`, high nibble otherwise) and its top two bits from bits `2t..2t + 2` of
/// `qh[32h + l]`. Value `v` of the block is `d * scales[v / 16] * (q - 32)`.
pub(super) fn q6_k(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 208);
    let mut scales = [0f32; 16];
    for (s, &q) in scales.iter_mut().zip(&b[192..208]) {
        *s = d * f32::from(q as i8);
    }
    for (h, o) in out.chunks_exact_mut(128).enumerate() {
        let ql = &b[64 * h..64 * h + 64];
        let qh = &b[128 + 32 * h..128 + 32 * h + 32];
        for (t, ot) in o.chunks_exact_mut(32).enumerate() {
            let low = &ql[32 * (t & 1)..32 * (t & 1) + 32];
            let shift = if t < 2 { 0 } else { 4 };
            for (l, v) in ot.iter_mut().enumerate() {
                let q = ((low[l] >> shift) & 15) | (((qh[l] >> (2 * t)) & 3) << 4);
                *v = scales[8 * h + (32 * t + l) / 16] * f32::from(q as i8 - 32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_unpacking() {
        // Scales 0..8 = 1, 2, .., 8 plus 48 (to set the top bits); mins = 63 - scale.
        let sc: Vec<u8> = (0..8).map(|j| j + 1 + 48).collect();
        let mn: Vec<u8> = sc.iter().map(|s| 63 - s).collect();
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
        }
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &s), (sc[j], mn[j]), "sub-block {j}");
        }
    }
}
