//! The paged KV pool in device memory: how new rows go in and how a sequence's rows come back
//! out as `f32`.
//!
//! Per layer, K and V each hold `n_blocks * block_size` slots of `n_kv_heads * head_dim` values
//! in the spec's [`KvDType`]:
//!
//! * `f32`, `f16`: `[slots, width]` of that type. `aclnnInplaceCopy` rounds new rows to it (to
//!   nearest even, as the CPU's `half`); attention gathers a sequence's rows with
//!   `aclnnIndexSelect` in the stored type and widens only those to `f32`.
//! * `q8_0`: GGUF's `block_q8_0`, the CPU pool's bytes exactly: each slot is `width / 32`
//!   blocks of 34 bytes, an `f16` scale `d` then 32 `i8`. New rows are quantised by
//!   `aclnnDynamicQuant` over the rows seen as `[blocks, 32]` (one "token" per block, so its
//!   per-token scale is the block's `max |x| / 127`), then the `i8` values and the scale
//!   (rounded to `f16` by `aclnnInplaceCopy`) go into the blocks through strided views. Reading
//!   gathers whole slots as bytes, widens `q` and `d` to `f32` (`aclnnInplaceCopy`) and
//!   multiplies (`aclnnMul`; `q · d` is exact in `f32`, as on the CPU).
//!
//! What a real CANN runtime lacks for `q8_0`: its `aclnnDynamicQuant` takes `x` in f16/bf16 only
//! (Atlas A2/A3 documentation) and writes `yOut`/`scaleOut` contiguously, so the `f32` rows
//! that llama.cpp's rounding starts from would have to be rounded to `f16` first (other bits
//! than the CPU's), and nothing of this has run on an NPU. The pool therefore takes `q8_0`
//! only on govbox's simulator, which accepts `f32` rows, and refuses it on a vendor runtime
//! with [`DriverError::KvDType`]. The simulator rounds `x / scale` (CANN's documented formula)
//! where llama.cpp rounds `x · (1 / d)`: the two differ only when a value falls within an
//! `f32` ulp of a half step.

use std::any::Any;
use std::sync::Arc;

use super::ops::{F16, F32, I8, copy, index_select, mul, vf};
use super::runtime::{DevMem, Device, Launch, View, aclnn};
use super::sys;
use crate::{DriverError, KvCache, KvDType, KvSpec, Result};

/// Values per `q8_0` block, and its bytes (an `f16` scale and 32 `i8`).
const Q8_BLOCK: usize = 32;
const Q8_BYTES: usize = 34;

/// A paged KV pool in device memory (the layout in the module's doc).
#[derive(Debug)]
pub(crate) struct AscendKvCache {
    pub(super) spec: KvSpec,
    k: Vec<DevMem>,
    v: Vec<DevMem>,
}

impl AscendKvCache {
    pub(super) fn new(dev: &Arc<Device>, spec: KvSpec) -> Result<Self> {
        if spec.block_size == 0 {
            return Err(DriverError::KvCache("block size 0".into()));
        }
        spec.check_whole_blocks()?;
        if spec.dtype == KvDType::Q8_0 {
            if dev.libs.sim.is_none() {
                return Err(DriverError::KvDType {
                    dtype: spec.dtype,
                    backend: "ascend",
                    supported: "f32, f16; q8_0 only on govbox's simulator: CANN's aclnnDynamicQuant takes \
                                f16/bf16 rows, not the f32 rows q8_0's rounding starts from",
                });
            }
            // Before any allocation: a runtime without the op cannot write the pool.
            dev.sym(&dev.libs.op.aclnnDynamicQuantGetWorkspaceSize, "aclnnDynamicQuantGetWorkspaceSize")?;
        }
        let bytes = spec
            .values_per_layer()
            .and_then(|a| spec.dtype.bytes_for(a))
            .ok_or_else(|| DriverError::KvCache(format!("{spec:?} overflows")))?;
        let mut k = Vec::with_capacity(spec.n_layers);
        let mut v = Vec::with_capacity(spec.n_layers);
        for _ in 0..spec.n_layers {
            for pool in [&mut k, &mut v] {
                let m = dev.alloc(bytes)?;
                // Zero bytes are zeros in every type (a q8_0 block of scale 0).
                dev.memset(&m, 0)?;
                pool.push(m);
            }
        }
        Ok(Self { spec, k, v })
    }

    fn width(&self) -> usize {
        self.spec.n_kv_heads * self.spec.head_dim
    }

    fn slots(&self) -> usize {
        self.spec.n_blocks * self.spec.block_size
    }

    /// How aclnn sees one slot: its element type, that type's size and the elements per slot
    /// (a float type and `width`, or `q8_0`'s blocks as `i8` bytes).
    fn stored(&self) -> (sys::aclDataType, usize, usize) {
        match self.spec.dtype {
            KvDType::F32 => (F32, 4, self.width()),
            KvDType::F16 => (F16, 2, self.width()),
            KvDType::Q8_0 => (I8, 1, self.width() / Q8_BLOCK * Q8_BYTES),
        }
    }

    /// `rows` slots of memory `m` as `[rows, elements per slot]` of the stored type.
    fn slot_view(&self, m: &DevMem, rows: usize) -> View {
        let (dt, es, cols) = self.stored();
        View::contiguous(m, dt, es, &[rows, cols])
    }

    /// Writes rows `row0..row0 + slots.len()` of the new keys and values (`f32` `[rows, width]`
    /// in `k` and `v`) into `slots` of `layer`, one copy per run of consecutive slots.
    pub(super) fn store(
        &self,
        dev: &Arc<Device>,
        layer: usize,
        (k, v): (&DevMem, &DevMem),
        row0: usize,
        slots: &[usize],
    ) -> Result<()> {
        let (w, n) = (self.width(), slots.len());
        let pools = [&self.k[layer], &self.v[layer]];
        let news = [vf(k, &[0]), vf(v, &[0])];
        let runs = runs(slots);
        if self.spec.dtype != KvDType::Q8_0 {
            let mut l = dev.launch()?;
            for (pool, new) in pools.into_iter().zip(&news) {
                let pv = self.slot_view(pool, self.slots());
                for &(i, first, run) in &runs {
                    let at = |v: &View, off: usize| v.strided(&[run, w], &[w, 1], off * w);
                    copy(&mut l, &at(&pv, first), &at(new, row0 + i))?;
                }
            }
            return Ok(());
        }
        // q8_0: quantise the n rows as [blocks, 32], then place each run's blocks.
        let (nb, per_slot) = (n * w / Q8_BLOCK, w / Q8_BLOCK);
        let scratch =
            [(dev.alloc(nb * Q8_BLOCK)?, dev.alloc(nb * 4)?), (dev.alloc(nb * Q8_BLOCK)?, dev.alloc(nb * 4)?)];
        let mut l = dev.launch()?;
        for ((pool, new), (q, d)) in pools.into_iter().zip(&news).zip(&scratch) {
            let (qv, dv) = (View::contiguous(q, I8, 1, &[nb, Q8_BLOCK]), vf(d, &[nb]));
            dynamic_quant(&mut l, &new.strided(&[nb, Q8_BLOCK], &[Q8_BLOCK, 1], row0 * w), &qv, &dv)?;
            let (bytes, scales) = (View::contiguous(pool, I8, 1, &[0]), View::contiguous(pool, F16, 2, &[0]));
            for &(i, first, run) in &runs {
                let (blocks, b0, s0) = (run * per_slot, first * per_slot, i * per_slot);
                let pq = bytes.strided(&[blocks, Q8_BLOCK], &[Q8_BYTES, 1], b0 * Q8_BYTES + 2);
                copy(&mut l, &pq, &qv.strided(&[blocks, Q8_BLOCK], &[Q8_BLOCK, 1], s0 * Q8_BLOCK))?;
                let pd = scales.strided(&[blocks], &[Q8_BYTES / 2], b0 * Q8_BYTES / 2);
                copy(&mut l, &pd, &dv.strided(&[blocks], &[1], s0))?;
            }
        }
        Ok(())
    }

    /// The keys and values of `slots` (an `i64` index view `[total]`) of `layer`, widened into
    /// `kc` and `vc` (`f32`, `[total, width]` each).
    pub(super) fn load(
        &self,
        dev: &Arc<Device>,
        layer: usize,
        idx: &View,
        total: usize,
        kc: &DevMem,
        vc: &DevMem,
    ) -> Result<()> {
        let w = self.width();
        let pools = [&self.k[layer], &self.v[layer]];
        let outs = [vf(kc, &[total, w]), vf(vc, &[total, w])];
        if self.spec.dtype == KvDType::F32 {
            let mut l = dev.launch()?;
            for (pool, out) in pools.into_iter().zip(&outs) {
                index_select(&mut l, &self.slot_view(pool, self.slots()), idx, out)?;
            }
            return Ok(());
        }
        // The gathered slots in the stored type, then widened (only this sequence's rows).
        let (_, es, cols) = self.stored();
        let raw = [dev.alloc(total * cols * es)?, dev.alloc(total * cols * es)?];
        let nb = total * w / Q8_BLOCK;
        let q8 = if self.spec.dtype == KvDType::Q8_0 {
            Some([
                (dev.alloc(nb * Q8_BLOCK * 4)?, dev.alloc(nb * 4)?),
                (dev.alloc(nb * Q8_BLOCK * 4)?, dev.alloc(nb * 4)?),
            ])
        } else {
            None
        };
        let mut l = dev.launch()?;
        for (j, (pool, out)) in pools.into_iter().zip(&outs).enumerate() {
            let gathered = self.slot_view(&raw[j], total);
            index_select(&mut l, &self.slot_view(pool, self.slots()), idx, &gathered)?;
            match &q8 {
                None => copy(&mut l, out, &gathered)?,
                Some(s) => {
                    let (q, d) = (&s[j].0, &s[j].1);
                    let bytes = View::contiguous(&raw[j], I8, 1, &[0]);
                    let scales = View::contiguous(&raw[j], F16, 2, &[0]);
                    let (qf, df) = (vf(q, &[nb, Q8_BLOCK]), vf(d, &[nb, 1]));
                    copy(&mut l, &qf, &bytes.strided(&[nb, Q8_BLOCK], &[Q8_BYTES, 1], 2))?;
                    copy(&mut l, &df, &scales.strided(&[nb, 1], &[Q8_BYTES / 2, 1], 0))?;
                    mul(&mut l, &qf, &df, &out.strided(&[nb, Q8_BLOCK], &[Q8_BLOCK, 1], 0))?;
                }
            }
        }
        Ok(())
    }
}

impl KvCache for AscendKvCache {
    fn spec(&self) -> KvSpec {
        self.spec
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// `(first new row, first slot, length)` of each run of consecutive slots.
fn runs(slots: &[usize]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < slots.len() {
        let mut run = 1;
        while i + run < slots.len() && slots[i + run] == slots[i] + run {
            run += 1;
        }
        out.push((i, slots[i], run));
        i += run;
    }
    out
}

/// `aclnnDynamicQuant` without smooth scales: per row of `x`, `scale = max |x| / 127` and
/// `y = round(x / scale)` as `i8`.
fn dynamic_quant(l: &mut Launch<'_>, x: &View, y: &View, scale: &View) -> Result<()> {
    let (x, y, s) = (l.tensor(x)?, l.tensor(y)?, l.tensor(scale)?);
    let none: *const sys::aclTensor = std::ptr::null();
    aclnn!(l, aclnnDynamicQuant, aclnnDynamicQuantGetWorkspaceSize(x, none, y, s));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn runs_split_where_slots_stop_being_consecutive() {
        assert_eq!(runs(&[4, 5, 6, 20, 21, 3]), [(0, 4, 3), (3, 20, 2), (5, 3, 1)]);
        assert!(runs(&[]).is_empty());
    }
}
