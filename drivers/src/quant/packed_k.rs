//! The packed records of the 256-value K formats (Q4_K, Q5_K, Q6_K): one record per panel of
//! 32 weight rows and super-block, exactly 32 times the format's super-block size, so a packed
//! weight again takes the bytes the file's did. Part of `packed` (see the table there); the
//! kernel is `x86::packed_k`.
//!
//! A record holds the super-block's `d` and `dmin` and scales first, then its 8 blocks of 32
//! values, `blk` bytes each, from byte `vals`:
//!
//! | format | `d` | `dmin` | scales | `vals` | `blk` | values of block `b` (step `t` = values `4t..4t + 4`) | top bits |
//! |---|---|---|---|---|---|---|---|
//! | Q4_K | 0 | 64 | 128 | 512 | 512 | `vals + b · 512 + t · 64 + 4r + l`, nibble `h` | |
//! | Q5_K | 0 | 64 | 128 | 512 | 640 | as Q4_K | fifth: `vals + b · 640 + 512 + t · 16 + h · 8`, bit `4r + l` |
//! | Q6_K | 0 | | 64 | 576 | 768 | as Q4_K | fifth and sixth: `vals + b · 768 + 512 + (2 · (t / 4) + h) · 64 + 4r + l`, bits `2 · (t % 4)..` |
//!
//! for value `4t + l` of block `b` of panel row `16h + r`; `d` and `dmin` are the file's `f16`
//! bits, 32 in row order. Scales of Q4_K and Q5_K (6 bits, one scale `sc` and one minimum `m`
//! per block) take three runs of 128 bytes, 16 per block `b`: byte `scales + 16b + r` holds the
//! low 4 bits of `sc` of row `r` (low nibble) and of row `16 + r` (high nibble), byte
//! `scales + 128 + 16b + r` the same for `m`, and byte `scales + 256 + 16b + r` the top 2 bits
//! of `sc` of rows `r` and `16 + r` (bits 0–1, 2–3) and of `m` (bits 4–5, 6–7); the kernel
//! takes four blocks' scales apart per 64-byte operation. Q6_K's `i8` scales (one per 16
//! values) take 64 bytes per block `b` at `scales + 64b`: those of values `0..16`, 32 in row
//! order, then those of values `16..32`. Rows past the tensor's end are zeros.
//!
//! What the kernel reads first comes first. A decode step reads a panel's records front to
//! back, so its prefetches of the record ahead (and the hardware's) run in one ascending stream
//! and the record's first load, `d`, was asked for a whole record earlier. With the scales at
//! the tail, where they were until December 2026, that first load was the last line the
//! prefetches reached, and it took a fifth of the Q4_K kernel's samples in a profile of a
//! Qwen2.5-1.5B Q4_K_M decode.

use super::kquants::scale_min_k4;
use crate::DType;

/// Values per super-block.
pub(super) const QK_K: usize = 256;

/// Byte offsets within a K record: the first block of values and bytes per block, scales,
/// `d`, `dmin`, and the record's size. The one description of the layout, used by the packing here and by the
/// kernel (`x86::packed_k`).
#[derive(Clone, Copy)]
pub(super) struct KLayout {
    pub(super) vals: usize,
    pub(super) blk: usize,
    pub(super) sc: usize,
    pub(super) d: usize,
    pub(super) m: usize,
    pub(super) size: usize,
}

/// The record layout of K format `dtype`, or `None` for any other format.
pub(super) const fn klayout(dtype: DType) -> Option<KLayout> {
    Some(match dtype {
        DType::Q4K => KLayout { vals: 512, blk: 512, sc: 128, d: 0, m: 64, size: 4608 },
        DType::Q5K => KLayout { vals: 512, blk: 640, sc: 128, d: 0, m: 64, size: 5632 },
        DType::Q6K => KLayout { vals: 576, blk: 768, sc: 64, d: 0, m: 0, size: 6720 },
        _ => return None,
    })
}

/// A stored super-block taken apart: its 256 unsigned values, its scales (Q6_K: 16 `i8` as
/// bytes; Q4_K/Q5_K: 8 six-bit scales) and minimums (Q4_K/Q5_K), and its `d`/`dmin` bits.
struct Super {
    u: [u8; QK_K],
    sc: [u8; 16],
    m: [u8; 8],
    d: [u8; 2],
    dmin: [u8; 2],
}

/// Writes `s` as a stored super-block of `dtype` into `blk` (what [`pack_panel`] reads).
fn write_super(dtype: DType, s: &Super, blk: &mut [u8]) {
    blk.fill(0);
    if dtype == DType::Q6K {
        for (i, &u) in s.u.iter().enumerate() {
            let (half, t4, l) = (i / 128, i % 128 / 32, i % 32);
            blk[64 * half + 32 * (t4 & 1) + l] |= if t4 < 2 { u & 15 } else { (u & 15) << 4 };
            blk[128 + 32 * half + l] |= (u >> 4) << (2 * t4);
        }
        blk[192..208].copy_from_slice(&s.sc);
        blk[208..210].copy_from_slice(&s.d);
        return;
    }
    let qs = if dtype == DType::Q5K { 48 } else { 16 };
    for (i, &u) in s.u.iter().enumerate() {
        let (j, l) = (i / 32, i % 32);
        blk[qs + 32 * (j / 2) + l] |= if j % 2 == 0 { u & 15 } else { (u & 15) << 4 };
        if dtype == DType::Q5K {
            blk[16 + l] |= (u >> 4 & 1) << j;
        }
    }
    // The inverse of `scale_min_k4`.
    let (sc, m) = (&s.sc, &s.m);
    for j in 0..4 {
        blk[4 + j] = sc[j] | (sc[j + 4] >> 4) << 6;
        blk[8 + j] = m[j] | (m[j + 4] >> 4) << 6;
        blk[12 + j] = (sc[j + 4] & 15) | (m[j + 4] & 15) << 4;
    }
    blk[0..2].copy_from_slice(&s.d);
    blk[2..4].copy_from_slice(&s.dmin);
}

/// Where value `v` (0..32) of block `b` of panel row `j` lives in a record: the byte of its
/// low nibble and the nibble's shift, the fifth bit's index from `blk · b + 512` (Q5_K), and
/// the top two bits' byte from there and their shift (Q6_K).
fn place(l: &KLayout, b: usize, j: usize, v: usize) -> (usize, u32, usize, usize, u32) {
    let (h, r, t) = (j / 16, j % 16, v / 4);
    let lane = 4 * r + v % 4;
    let base = l.vals + b * l.blk;
    (
        base + t * 64 + lane,
        4 * h as u32,
        t * 128 + h * 64 + lane,
        base + 512 + (2 * (t / 4) + h) * 64 + lane,
        2 * (t % 4) as u32,
    )
}

/// The little-endian `u32` at byte `at` of `b`.
#[inline(always)]
fn word<const N: usize>(b: &[u8; N], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The low nibble of each byte of a word.
const LOW: u32 = 0x0F0F_0F0F;

/// Writes the little-endian `u32` `x` at byte `at` of `b`.
#[inline(always)]
fn put_word<const N: usize>(b: &mut [u8; N], at: usize, x: u32) {
    b[at..at + 4].copy_from_slice(&x.to_le_bytes());
}

/// Writes the stored rows `rows` (at most 32, each a whole row of `dtype`) as the packed
/// `panel` (records of [`klayout`]'s `size` bytes); row `j` of the panel is `rows[j]`, and rows past
/// `rows.len()` are zeros. Every byte of the panel is written.
///
/// One record at a time, all 32 rows together: values `4t..4t + 4` of a block are four
/// consecutive bytes of the stored `qs` (`ql` for Q6_K), and rows `r` and `16 + r` share the
/// four bytes of the record that hold them (low and high nibbles), so each word of the record
/// is computed from two word reads and written once. This runs over every K-format weight at
/// load time (4.7 GB for a 7B Q4_K_M file), so it is written for speed: one function per
/// format on fixed-size arrays, whose indices the compiler can see are in bounds, and a record
/// (4.5 to 6.6 KiB) stays in the L1 cache while it is written. `unpack_row` is the plain
/// value-by-value inverse the tests read it back with.
pub(super) fn pack_panel(dtype: DType, rows: &[&[u8]], panel: &mut [u8]) {
    match dtype {
        DType::Q4K => records::<144, 4608>(rows, panel, pack_q45::<144, 4608, 512, 16>),
        DType::Q5K => records::<176, 5632>(rows, panel, pack_q45::<176, 5632, 640, 48>),
        DType::Q6K => records::<210, 6720>(rows, panel, pack_q6),
        _ => {}
    }
}

/// Calls `pack` for each record of `panel` with the 32 stored super-blocks (`B` bytes each)
/// it holds: block `sb` of each of `rows`, then zeros.
#[inline(always)]
fn records<const B: usize, const S: usize>(rows: &[&[u8]], panel: &mut [u8], pack: fn(&[&[u8; B]; 32], &mut [u8; S])) {
    const { assert!(B <= 256) };
    static ZERO: [u8; 256] = [0; 256];
    let zero: &[u8; B] = match ZERO[..B].try_into() {
        Ok(z) => z,
        Err(_) => return,
    };
    debug_assert!(rows.len() <= 32);
    for (sb, rec) in panel.chunks_exact_mut(S).enumerate() {
        let blocks: [&[u8; B]; 32] = std::array::from_fn(|j| {
            rows.get(j).and_then(|row| row.get(sb * B..(sb + 1) * B)).and_then(|b| b.try_into().ok()).unwrap_or(zero)
        });
        if let Ok(rec) = rec.try_into() {
            pack(&blocks, rec);
        }
    }
}

/// `pack_q45` and `pack_q6` spell the offsets of [`klayout`] as constants so that the compiler
/// sees every index is in bounds; this holds them to the one description.
const _: () = {
    const fn check(dtype: DType, blk: usize, size: usize, m: bool) {
        let Some(l) = klayout(dtype) else { panic!("a K format") };
        assert!(l.blk == blk && l.d == 0 && l.size == size && l.vals + 8 * blk == size);
        let (sc, vals) = if m { (128, 512) } else { (64, 576) };
        assert!(l.sc == sc && l.vals == vals && l.sc + if m { 384 } else { 512 } == vals && (!m || l.m == 64));
    }
    check(DType::Q4K, 512, 4608, true);
    check(DType::Q5K, 640, 5632, true);
    check(DType::Q6K, 768, 6720, false);
};

/// 32 stored Q4_K (`BLK` 512, `QS` 16) or Q5_K (640, 48) super-blocks, one per panel row, as
/// one record (`S` bytes: `d` at 0, `dmin` at 64, scales at 128, values from 512).
#[inline(always)]
fn pack_q45<const B: usize, const S: usize, const BLK: usize, const QS: usize>(b: &[&[u8; B]; 32], rec: &mut [u8; S]) {
    // Blocks 2p and 2p + 1 are the low and high nibbles of the same 32 stored bytes.
    for p in 0..4 {
        let (even, odd) = (512 + 2 * p * BLK, 512 + (2 * p + 1) * BLK);
        for t in 0..8 {
            for r in 0..16 {
                let lo = word(b[r], QS + 32 * p + 4 * t);
                let hi = word(b[16 + r], QS + 32 * p + 4 * t);
                put_word(rec, even + t * 64 + 4 * r, (lo & LOW) | (hi & LOW) << 4);
                put_word(rec, odd + t * 64 + 4 * r, (lo >> 4 & LOW) | (hi & !LOW));
            }
        }
    }
    if QS == 48 {
        // Q5_K: the fifth bits of values 4t..4t + 4 of block `blk` are bit `blk` of the four
        // stored bytes `16 + 4t..`, gathered into a nibble; rows 2i and 2i + 1 share a byte.
        for t in 0..8 {
            for h in 0..2 {
                for i in 0..8 {
                    let x0 = word(b[16 * h + 2 * i], 16 + 4 * t);
                    let x1 = word(b[16 * h + 2 * i + 1], 16 + 4 * t);
                    for blk in 0..8 {
                        let f = |x: u32| {
                            let x = x >> blk & 0x0101_0101;
                            ((x | x >> 7 | x >> 14 | x >> 21) & 15) as u8
                        };
                        rec[512 + blk * BLK + 512 + t * 16 + h * 8 + i] = f(x0) | f(x1) << 4;
                    }
                }
            }
        }
    }
    for (j, blk) in b.iter().enumerate() {
        rec[2 * j..2 * j + 2].copy_from_slice(&blk[0..2]);
        rec[64 + 2 * j..64 + 2 * j + 2].copy_from_slice(&blk[2..4]);
    }
    for r in 0..16 {
        for blk in 0..8 {
            let (sc0, m0) = scale_min_k4(blk, &b[r][4..16]);
            let (sc1, m1) = scale_min_k4(blk, &b[16 + r][4..16]);
            let at = 128 + 16 * blk + r;
            rec[at] = (sc0 & 15) | (sc1 & 15) << 4;
            rec[at + 128] = (m0 & 15) | (m1 & 15) << 4;
            rec[at + 256] = (sc0 >> 4) | (sc1 >> 4) << 2 | (m0 >> 4) << 4 | (m1 >> 4) << 6;
        }
    }
}

/// 32 stored Q6_K super-blocks, one per panel row, as one record.
#[inline(always)]
fn pack_q6(b: &[&[u8; 210]; 32], rec: &mut [u8; 6720]) {
    for blk in 0..8 {
        let (base, half, t4) = (576 + blk * 768, blk / 4, blk % 4);
        let (ql, qh) = (64 * half + 32 * (t4 & 1), 128 + 32 * half);
        for t in 0..8 {
            for r in 0..16 {
                let (lo, hi) = (word(b[r], ql + 4 * t), word(b[16 + r], ql + 4 * t));
                let w = if t4 < 2 { (lo & LOW) | (hi & LOW) << 4 } else { (lo >> 4 & LOW) | (hi & !LOW) };
                put_word(rec, base + t * 64 + 4 * r, w);
            }
        }
        // The top two bits of values 4t..4t + 4, for t = 4g..4g + 4, share a word per row.
        for g in 0..2 {
            for h in 0..2 {
                for r in 0..16 {
                    let mut acc = 0;
                    for tt in 0..4 {
                        let top = word(b[16 * h + r], qh + 4 * (4 * g + tt)) >> (2 * t4) & 0x0303_0303;
                        acc |= top << (2 * tt);
                    }
                    put_word(rec, base + 512 + (2 * g + h) * 64 + 4 * r, acc);
                }
            }
        }
    }
    for (j, blk) in b.iter().enumerate() {
        rec[2 * j..2 * j + 2].copy_from_slice(&blk[208..210]);
        for (q, &sc) in blk[192..208].iter().enumerate() {
            rec[64 + 64 * (q / 2) + 32 * (q % 2) + j] = sc;
        }
    }
}

/// Reads row `j` of the packed `panel` back into its stored form `out`.
pub(super) fn unpack_row(dtype: DType, l: &KLayout, panel: &[u8], j: usize, out: &mut [u8]) {
    let (h, r) = (j / 16, j % 16);
    for (sb, blk) in out.chunks_exact_mut(dtype.block_bytes()).enumerate() {
        let rec = &panel[sb * l.size..(sb + 1) * l.size];
        let mut s = Super { u: [0; QK_K], sc: [0; 16], m: [0; 8], d: [0; 2], dmin: [0; 2] };
        for (i, u) in s.u.iter_mut().enumerate() {
            let (lo, shift, fifth, top, top_shift) = place(l, i / 32, j, i % 32);
            *u = rec[lo] >> shift & 15;
            match dtype {
                DType::Q5K => *u |= (rec[l.vals + (i / 32) * l.blk + 512 + fifth / 8] >> (fifth % 8) & 1) << 4,
                DType::Q6K => *u |= (rec[top] >> top_shift & 3) << 4,
                _ => {}
            }
        }
        s.d.copy_from_slice(&rec[l.d + 2 * j..l.d + 2 * j + 2]);
        if dtype == DType::Q6K {
            for (q, sc) in s.sc.iter_mut().enumerate() {
                *sc = rec[l.sc + 64 * (q / 2) + 32 * (q % 2) + j];
            }
        } else {
            s.dmin.copy_from_slice(&rec[l.m + 2 * j..l.m + 2 * j + 2]);
            for b in 0..8 {
                let at = l.sc + 16 * b + r;
                let top = rec[at + 256];
                s.sc[b] = (rec[at] >> (4 * h) & 15) | (top >> (2 * h) & 3) << 4;
                s.m[b] = (rec[at + 128] >> (4 * h) & 15) | (top >> (4 + 2 * h) & 3) << 4;
            }
        }
        write_super(dtype, &s, blk);
    }
}
