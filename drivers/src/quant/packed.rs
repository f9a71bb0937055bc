//! Weights re-laid out once, when a model is loaded, for the 8-bit-activation kernel of the
//! simple formats (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) and the K formats (Q4_K, Q5_K, Q6_K) on CPUs
//! with AVX-512 VNNI.
//!
//! As stored in GGUF, a block holds 32 values of one weight row, so one `vpdpbusd` can only
//! multiply values of one weight row with values of one activation row: every 64 products then
//! need their own conversion, scaling and horizontal sum (`x86::tile`). Here 32 weight rows
//! (a panel) are interleaved block by block so that one 64-byte register holds 4 values of 16
//! rows: `vpdpbusd` against 4 values of an activation row broadcast to every lane adds 64
//! products into 16 per-row sums, and the sums are scaled once per block. llama.cpp repacks its
//! CPU weights the same way (its interleaved `Q4_0_8x8` and kin); the layout here is our own.
//!
//! A panel's block `b` is one record of exactly 32 times the format's block size, so a packed
//! weight takes the bytes the file's did:
//!
//! | format | values (step `t` = values `4t..4t + 4`) | fifth bits | scales `d` | minimums `m` |
//! |---|---|---|---|---|
//! | Q8_0 | `t · 128 + h · 64 + 4r + l`: `q + 128` | | 1024 | |
//! | Q4_0, Q4_1 | `t · 64 + 4r + l`, nibble `h` | | 512 | 576 (Q4_1) |
//! | Q5_0, Q5_1 | as Q4 | `512 + t · 16 + h · 8`, bit `4r + l` | 640 | 704 (Q5_1) |
//!
//! for value `4t + l` of panel row `16h + r`; scales and minimums are the file's `f16` bits,
//! 32 per record in row order. Rows past the tensor's end (its last panel) are zeros.
//!
//! The K formats have one record per super-block of 256 values, laid out the same way block by
//! block, with the 6-bit (Q4_K, Q5_K) or 8-bit (Q6_K) sub-block scales after the values:
//! `packed_k` has their table.
//!
//! The kernel (`x86::packed`) works each activation row through the same operations whatever
//! other rows share the call, so a row's result does not depend on the batch: decode passes
//! and prefill passes give each row the same bits.

use std::ops::Range;

use rayon::prelude::*;

use super::Q8Acts;
use super::packed_k::{self, klayout};
use crate::DType;

/// Weight rows per panel.
pub const PACK_ROWS: usize = 32;
/// Values per block.
const QK: usize = 32;
/// Bytes of panels packed between two calls of the `done` callback of
/// [`PackedWeights::pack_releasing`].
const RELEASE_BYTES: usize = 4 << 20;

/// A 2-D weight of a simple format re-laid out for the packed kernel (see the module
/// documentation).
pub struct PackedWeights {
    dtype: DType,
    n: usize,
    k: usize,
    pub(super) bytes: super::hugebuf::HugeBuf,
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeights({} [{}, {}], {} bytes)", self.dtype, self.n, self.k, self.bytes.len())
    }
}

/// Byte offsets within a record: fifth bits, scales, minimums, and the record's size. The one
/// description of the layout, used by the packing here and by the kernel (`x86::packed`).
#[derive(Clone, Copy)]
pub(super) struct Layout {
    pub(super) hb: usize,
    pub(super) d: usize,
    pub(super) m: usize,
    pub(super) size: usize,
}

/// The record layout of `dtype`, or `None` for a format that is not packed.
pub(super) const fn layout(dtype: DType) -> Option<Layout> {
    Some(match dtype {
        DType::Q8_0 => Layout { hb: 0, d: 1024, m: 0, size: 1088 },
        DType::Q4_0 => Layout { hb: 0, d: 512, m: 0, size: 576 },
        DType::Q4_1 => Layout { hb: 0, d: 512, m: 576, size: 640 },
        DType::Q5_0 => Layout { hb: 512, d: 640, m: 0, size: 704 },
        DType::Q5_1 => Layout { hb: 512, d: 640, m: 704, size: 768 },
        _ => return None,
    })
}

/// Bytes and values of one record of `dtype` (a block of 32 values for the simple formats, a
/// super-block of 256 for the K formats), or `None` for a format that is not packed.
fn record(dtype: DType) -> Option<(usize, usize)> {
    match (layout(dtype), klayout(dtype)) {
        (Some(l), _) => Some((l.size, QK)),
        (_, Some(l)) => Some((l.size, packed_k::QK_K)),
        _ => None,
    }
}

/// Where a stored block keeps its parts: the scale, the minimum (if any), the fifth bits (if
/// any) and the values.
struct Stored {
    m: Option<usize>,
    qh: Option<usize>,
    qs: usize,
}

fn stored(dtype: DType) -> Stored {
    match dtype {
        DType::Q8_0 | DType::Q4_0 => Stored { m: None, qh: None, qs: 2 },
        DType::Q4_1 => Stored { m: Some(2), qh: None, qs: 4 },
        DType::Q5_0 => Stored { m: None, qh: Some(2), qs: 6 },
        _ => Stored { m: Some(2), qh: Some(4), qs: 8 },
    }
}

/// Whether this CPU runs the packed kernel and `dtype` is one of its formats.
pub fn packable(dtype: DType) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        record(dtype).is_some() && super::tile_level()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dtype;
        false
    }
}

impl PackedWeights {
    /// Packs the `n` rows of `k` values of `dtype` in `w` (in parallel on the current rayon
    /// pool). Returns `None`, having done nothing, where [`packable`] is false or the sizes do
    /// not match.
    pub fn pack(dtype: DType, w: &[u8], n: usize, k: usize) -> Option<Self> {
        Self::pack_releasing(dtype, w, n, k, |_| {})
    }

    /// [`Self::pack`], calling `done` with each range of `w` (in bytes) once it has been packed
    /// and will not be read again here, so that the caller can let its memory go while the rest
    /// is packed.
    pub fn pack_releasing(dtype: DType, w: &[u8], n: usize, k: usize, done: impl FnMut(Range<usize>)) -> Option<Self> {
        if !packable(dtype) {
            return None;
        }
        Self::pack_any_cpu(dtype, w, n, k, done)
    }

    /// [`Self::pack_releasing`] without the CPU check (for tests of the layout on any CPU).
    fn pack_any_cpu(dtype: DType, w: &[u8], n: usize, k: usize, mut done: impl FnMut(Range<usize>)) -> Option<Self> {
        let (size, values) = record(dtype)?;
        let rb = dtype.row_bytes(k)?;
        if k == 0 || n == 0 || n.checked_mul(rb)? != w.len() {
            return None;
        }
        let panel_bytes = k / values * size;
        let panels = n.div_ceil(PACK_ROWS);
        // Huge pages from the first byte (see `hugebuf`): a decode step streams all of it.
        let mut bytes = super::hugebuf::HugeBuf::zeroed(panels * panel_bytes);
        // Groups of about 4 MiB of panels, each packed in parallel and then handed to `done`.
        let group = (RELEASE_BYTES / panel_bytes).max(1);
        for (g, chunk) in bytes.chunks_mut(group * panel_bytes).enumerate() {
            let p0 = g * group;
            chunk.par_chunks_mut(panel_bytes).enumerate().for_each(|(i, panel)| {
                // Written before the rows are ORed in (the K formats' records are written
                // whole, the others' rows ORed in): a first touch that reads would map the
                // shared zero page, and the write after it would copy it and flush every CPU's
                // TLB for that page (the kernel's cost of a 7B load, not the packing's).
                panel.fill(0);
                let p = p0 + i;
                let r0 = p * PACK_ROWS;
                let rows: Vec<&[u8]> = w[r0 * rb..(n.min(r0 + PACK_ROWS)) * rb].chunks_exact(rb).collect();
                match (layout(dtype), klayout(dtype)) {
                    (Some(l), _) => rows.iter().enumerate().for_each(|(j, row)| pack_row(dtype, &l, row, j, panel)),
                    (_, Some(_)) => packed_k::pack_panel(dtype, &rows, panel),
                    _ => unreachable!("`record` found a layout"),
                }
            });
            let r1 = ((p0 + group) * PACK_ROWS).min(n);
            done(p0 * PACK_ROWS * rb..r1 * rb);
        }
        Some(Self { dtype, n, k, bytes })
    }

    /// The stored format.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Weight rows.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Values per row.
    pub fn row_len(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Panels of [`PACK_ROWS`] rows (the last may be partly padding).
    pub fn panels(&self) -> usize {
        self.n.div_ceil(PACK_ROWS)
    }

    fn panel_bytes(&self) -> usize {
        record(self.dtype).map_or(0, |(size, values)| self.k / values * size)
    }

    /// Writes row `r` as the file stored it (`dtype.row_bytes(k)` bytes) into `out`.
    ///
    /// Panics when `r` is out of range or `out` has another length.
    pub fn stored_row(&self, r: usize, out: &mut [u8]) {
        let rb = self.dtype.row_bytes(self.k).unwrap_or(0);
        assert!(
            r < self.n && out.len() == rb,
            "quant::PackedWeights::stored_row: row {r} of {} into {}",
            self.n,
            out.len()
        );
        let pb = self.panel_bytes();
        let p = r / PACK_ROWS;
        let panel = &self.bytes[p * pb..(p + 1) * pb];
        match (layout(self.dtype), klayout(self.dtype)) {
            (Some(l), _) => unpack_row(self.dtype, &l, panel, r % PACK_ROWS, out),
            (_, Some(l)) => packed_k::unpack_row(self.dtype, &l, panel, r % PACK_ROWS, out),
            _ => unreachable!("a packed weight always has a packed format"),
        }
    }

    /// De-quantises row `r` into `out` (`k` values), bitwise as `dequantize_row` of the stored
    /// row.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let mut row = vec![0u8; self.dtype.row_bytes(self.k).unwrap_or(0)];
        self.stored_row(r, &mut row);
        super::dequantize_row(self.dtype, &row, out);
    }
}

/// Bit `i` of the little-endian bytes `b`.
fn bit(b: &[u8], i: usize) -> bool {
    b[i / 8] >> (i % 8) & 1 == 1
}

/// Value `v` of a stored 4- or 5-bit block `blk`.
fn stored_value(s: &Stored, blk: &[u8], v: usize) -> u8 {
    let q = blk[s.qs + v % 16];
    let nib = if v < 16 { q & 15 } else { q >> 4 };
    match s.qh {
        Some(h) if bit(&blk[h..h + 4], v) => nib | 16,
        _ => nib,
    }
}

/// Writes the stored row `row` as row `j` of the packed `panel`.
fn pack_row(dtype: DType, l: &Layout, row: &[u8], j: usize, panel: &mut [u8]) {
    let s = stored(dtype);
    let bb = dtype.block_bytes();
    let (h, r) = (j / 16, j % 16);
    for (b, blk) in row.chunks_exact(bb).enumerate() {
        let rec = &mut panel[b * l.size..(b + 1) * l.size];
        rec[l.d + 2 * j..l.d + 2 * j + 2].copy_from_slice(&blk[..2]);
        if let Some(m) = s.m {
            rec[l.m + 2 * j..l.m + 2 * j + 2].copy_from_slice(&blk[m..m + 2]);
        }
        if dtype == DType::Q8_0 {
            // Four values at a time, each shifted to unsigned.
            for (t, q) in blk[s.qs..s.qs + QK].chunks_exact(4).enumerate() {
                let u = u32::from_le_bytes([q[0], q[1], q[2], q[3]]) ^ 0x8080_8080;
                rec[t * 128 + h * 64 + 4 * r..][..4].copy_from_slice(&u.to_le_bytes());
            }
            continue;
        }
        for v in 0..QK {
            let u = stored_value(&s, blk, v);
            let (t, lane) = (v / 4, 4 * r + v % 4);
            rec[t * 64 + lane] |= (u & 15) << (4 * h);
            if u & 16 != 0 {
                let i = t * 128 + h * 64 + lane;
                rec[l.hb + i / 8] |= 1 << (i % 8);
            }
        }
    }
}

/// Reads row `j` of the packed `panel` back into its stored form `out`.
fn unpack_row(dtype: DType, l: &Layout, panel: &[u8], j: usize, out: &mut [u8]) {
    let s = stored(dtype);
    let bb = dtype.block_bytes();
    let (h, r) = (j / 16, j % 16);
    for (b, blk) in out.chunks_exact_mut(bb).enumerate() {
        let rec = &panel[b * l.size..(b + 1) * l.size];
        blk.fill(0);
        blk[..2].copy_from_slice(&rec[l.d + 2 * j..l.d + 2 * j + 2]);
        if let Some(m) = s.m {
            blk[m..m + 2].copy_from_slice(&rec[l.m + 2 * j..l.m + 2 * j + 2]);
        }
        for v in 0..QK {
            let (t, lane) = (v / 4, 4 * r + v % 4);
            if dtype == DType::Q8_0 {
                blk[s.qs + v] = rec[t * 128 + h * 64 + lane] ^ 0x80;
                continue;
            }
            let nib = rec[t * 64 + lane] >> (4 * h) & 15;
            blk[s.qs + v % 16] |= if v < 16 { nib } else { nib << 4 };
            if let Some(qh) = s.qh
                && bit(&rec[l.hb..], t * 128 + h * 64 + lane)
            {
                blk[qh + v / 8] |= 1 << (v % 8);
            }
        }
    }
}

/// `out[i · n + j] =` weight row `r0 + j` of `w` dotted with activation row `i` of `acts`
/// (`m` rows), where `r0..r0 + n` are the real rows of panels `panels` (the last panel's padding
/// has none): the product of that slice of `w`, row-major `[m, n]`, so that each activation
/// row's results are written side by side (`matmul_q8` gives the transposed `[n, m]`).
///
/// Panics when the panels are out of range or the sizes do not match.
pub fn matmul_packed(w: &PackedWeights, panels: Range<usize>, acts: &Q8Acts, out: &mut [f32]) {
    let m = acts.rows();
    let r0 = panels.start * PACK_ROWS;
    let r1 = (panels.end * PACK_ROWS).min(w.n);
    assert!(
        panels.start <= panels.end
            && panels.end <= w.panels()
            && acts.row_len() == w.k
            && out.len() == r1.saturating_sub(r0) * m,
        "quant::matmul_packed: panels {panels:?} of {} against {m} rows of {} values, {} outputs",
        w.panels(),
        acts.row_len(),
        out.len()
    );
    if m == 0 || panels.is_empty() {
        return;
    }
    let pb = w.panel_bytes();
    #[cfg(target_arch = "x86_64")]
    {
        let rows: Vec<_> = (0..m).map(|i| acts.row(i)).collect();
        let bytes = &w.bytes[panels.start * pb..panels.end * pb];
        // SAFETY: `PackedWeights::pack` makes a value only when `packable` holds, which needs
        // `tile_level()`: AVX-512F/BW/VL/DQ/VNNI, AVX2, FMA and F16C, the kernel's features.
        unsafe { super::x86::packed::rows(w.dtype, bytes, w.k / QK, r1 - r0, &rows, out) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = pb;
        unreachable!("PackedWeights exist only on x86-64");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::quant::testutil::random_row;

    const PACKED: [DType; 8] =
        [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4K, DType::Q5K, DType::Q6K];

    /// Packing keeps every byte: each row reads back as stored, for tensors whose rows end
    /// mid-panel, and the packed size is the stored size rounded up to whole panels.
    #[test]
    fn packed_rows_read_back_as_stored() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut done: Vec<Range<usize>> = Vec::new();
        for dtype in PACKED {
            let bl = dtype.block_len();
            for (n, k) in [(1, bl), (31, 2 * bl), (32, 3 * bl), (70, 10 * bl)] {
                let rb = dtype.row_bytes(k).unwrap();
                let w: Vec<u8> = (0..n).flat_map(|_| random_row(dtype, k, &mut rng)).collect();
                let p = PackedWeights::pack_any_cpu(dtype, &w, n, k, |r| done.push(r)).unwrap();
                let handed: Vec<usize> = done.iter().cloned().flatten().collect();
                assert_eq!(handed, (0..w.len()).collect::<Vec<_>>(), "{dtype}: every byte handed back once, in order");
                done.clear();
                assert_eq!(p.size_bytes(), n.div_ceil(PACK_ROWS) * PACK_ROWS * rb, "{dtype}");
                let mut row = vec![0u8; rb];
                for r in 0..n {
                    p.stored_row(r, &mut row);
                    assert_eq!(row, w[r * rb..(r + 1) * rb], "{dtype} n={n} k={k} row {r}");
                }
            }
        }
        assert!(PackedWeights::pack_any_cpu(DType::F16, &[0; 64], 1, 32, |_| {}).is_none(), "an unpacked format");
        assert!(
            PackedWeights::pack_any_cpu(DType::Q4K, &[0; 144], 1, 256 + 32, |_| {}).is_none(),
            "a part super-block"
        );
        assert!(PackedWeights::pack_any_cpu(DType::Q8_0, &[0; 33], 1, 32, |_| {}).is_none(), "a short tensor");
    }
}
