//! The device KV cache and the attention ops over it.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{CudaBackend, drv, elementwise_cfg, kernels, to_i32};
use crate::{DType, DenseAttn, DriverError, KvCache, KvDType, KvSpec, PagedAttn, Result, SeqAttn, Tensor};

/// A paged KV pool in device memory: K and V each one allocation of
/// `[n_layers, n_blocks, block_size, n_kv_heads, head_dim]` values of the spec's type (`f32`, or
/// `f16` rounded to nearest even on write and widened as attention reads it), the CPU cache's
/// layout per layer. No GPU was at hand when the `f16` kernels were written: NVRTC 13.2 compiled
/// the source (`--gpu-architecture=compute_90`, no device needed), but they have not run; CI
/// checks only the Rust around them.
pub struct CudaKvCache {
    spec: KvSpec,
    k: CudaSlice<u8>,
    v: CudaSlice<u8>,
    counter: Arc<AtomicU64>,
    /// The device's ordinal, so that a cache is never used by another device's backend.
    ordinal: usize,
}

impl std::fmt::Debug for CudaKvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaKvCache").field("spec", &self.spec).field("device", &self.ordinal).finish()
    }
}

impl CudaKvCache {
    pub(super) fn new(be: &CudaBackend, spec: KvSpec) -> Result<Self> {
        if spec.block_size == 0 {
            return Err(DriverError::KvCache("block size 0".into()));
        }
        // The kernels (kernels.rs) store f32 or f16 slots; q8_0 blocks have no kernels yet.
        // Refused here, before any allocation.
        if spec.dtype == KvDType::Q8_0 {
            return Err(DriverError::KvDType { dtype: spec.dtype, backend: "cuda", supported: "f32, f16" });
        }
        let slots = spec.n_blocks.checked_mul(spec.block_size);
        let bytes = spec
            .values_per_layer()
            .and_then(|a| a.checked_mul(spec.n_layers))
            .and_then(|a| spec.dtype.bytes_for(a))
            .ok_or_else(|| DriverError::KvCache(format!("{spec:?} overflows")))?;
        // Slot numbers travel to the kernels as u32.
        if slots.is_none_or(|s| s > u32::MAX as usize) {
            return Err(DriverError::KvCache(format!("{spec:?}: more than 2^32 token slots")));
        }
        let mut k = be.alloc(bytes)?;
        let mut v = be.alloc(bytes)?;
        be.stream.memset_zeros(&mut k).map_err(drv("cuMemsetD8Async"))?;
        be.stream.memset_zeros(&mut v).map_err(drv("cuMemsetD8Async"))?;
        be.used.fetch_add((k.len() + v.len()) as u64, Ordering::Relaxed);
        Ok(Self { spec, k, v, counter: be.used.clone(), ordinal: be.ctx.ordinal() })
    }
}

impl Drop for CudaKvCache {
    fn drop(&mut self) {
        self.counter.fetch_sub((self.k.len() + self.v.len()) as u64, Ordering::Relaxed);
    }
}

impl KvCache for CudaKvCache {
    fn spec(&self) -> KvSpec {
        self.spec
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Where each new row goes and what it reads, for the kernels: the slot of each new row, the
/// used prefix of every sequence's block table (concatenated), and for each row the offset of
/// its table in that array and its position.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    slots: Vec<u32>,
    tables: Vec<u32>,
    row_table: Vec<u32>,
    row_pos: Vec<u32>,
}

/// Checks that every position a row reads or writes has a block of the pool, so that the
/// kernels index nothing outside the cache, and lays out what they need.
fn plan(seqs: &[SeqAttn<'_>], spec: KvSpec) -> Result<Plan> {
    let bs = spec.block_size;
    let rows: usize = seqs.iter().map(|s| s.n_new).sum();
    let mut p = Plan {
        slots: Vec::with_capacity(rows),
        tables: Vec::new(),
        row_table: Vec::with_capacity(rows),
        row_pos: Vec::with_capacity(rows),
    };
    for s in seqs {
        if s.n_new == 0 {
            continue;
        }
        let last = s.start_pos + s.n_new - 1;
        let needed = last / bs + 1;
        if s.block_table.len() < needed {
            let pos = s.block_table.len() * bs;
            return Err(DriverError::KvCache(format!("position {pos} has no block")));
        }
        let table = &s.block_table[..needed];
        if let Some(&b) = table.iter().find(|&&b| b as usize >= spec.n_blocks) {
            return Err(DriverError::KvCache(format!("block {b} of {}", spec.n_blocks)));
        }
        let off = to_u32(p.tables.len(), "block table offset")?;
        p.tables.extend_from_slice(table);
        for i in 0..s.n_new {
            let pos = s.start_pos + i;
            p.slots.push(to_u32(table[pos / bs] as usize * bs + pos % bs, "slot")?);
            p.row_table.push(off);
            p.row_pos.push(to_u32(pos, "position")?);
        }
    }
    Ok(p)
}

fn to_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| DriverError::KvCache(format!("{what} {v} exceeds 2^32")))
}

pub(super) fn paged(
    be: &CudaBackend,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cache: &mut dyn KvCache,
    a: &PagedAttn<'_>,
) -> Result<Tensor> {
    let (qb, kb, vb) = (be.f32_buf(q, "attention")?, be.f32_buf(k, "attention")?, be.f32_buf(v, "attention")?);
    let cache = cache
        .as_any_mut()
        .downcast_mut::<CudaKvCache>()
        .ok_or(DriverError::ForeignTensor { op: "attention (kv cache)" })?;
    if cache.ordinal != be.ctx.ordinal() {
        return Err(DriverError::ForeignTensor { op: "attention (kv cache of another device)" });
    }
    let spec = cache.spec;
    let rows = a.check(&spec, q, k, v)?;
    let (hd, nh, nkv) = (a.head_dim, a.n_heads, a.n_kv_heads);
    if hd > kernels::ATT_MAX_HEAD_DIM {
        return Err(DriverError::Shape {
            op: "attention",
            detail: format!("head_dim {hd}: the CUDA kernels take at most {}", kernels::ATT_MAX_HEAD_DIM),
        });
    }
    if rows == 0 || hd == 0 || nh == 0 {
        return be.empty_f32(vec![rows, nh * hd]);
    }
    let bs = spec.block_size;
    let Plan { slots, tables, row_table, row_pos } = plan(a.seqs, spec)?;
    let width = nkv * hd;
    let layer_off = (a.layer * spec.n_blocks * bs) as i64;
    // 1. The new keys and values.
    let slots_d = be.htod_u32(&slots)?;
    {
        let (r, w) = (rows as i64, to_i32(width, "attention", "kv width")?);
        let f = be.func(if spec.dtype == KvDType::F16 { "kv_write_f16" } else { "kv_write" })?;
        let mut l = be.stream.launch_builder(f);
        l.arg(&mut cache.k).arg(&mut cache.v).arg(kb).arg(vb).arg(&slots_d).arg(&r).arg(&w).arg(&layer_off);
        // SAFETY: k and v hold rows * width f32 values; every slot is below n_blocks *
        // block_size (checked above), so writes stay inside layer `layer` of the pool, whose
        // elements are of the kernel's type (f16 for kv_write_f16, `new` refuses the others).
        unsafe { l.launch(elementwise_cfg(rows * width)) }.map_err(drv("cuLaunchKernel(kv_write)"))?;
    }
    // 2. Attention of every (row, head).
    let tables_d = be.htod_u32(&tables)?;
    let row_table_d = be.htod_u32(&row_table)?;
    let row_pos_d = be.htod_u32(&row_pos)?;
    let mut out = be.alloc(rows * nh * hd * 4)?;
    let grid = u32::try_from(rows * nh)
        .ok()
        .filter(|&g| g < i32::MAX as u32)
        .ok_or_else(|| DriverError::Shape { op: "attention", detail: format!("{rows} rows x {nh} heads") })?;
    let (nhi, nkvi, hdi, bsi) = (
        to_i32(nh, "attention", "heads")?,
        to_i32(nkv, "attention", "kv heads")?,
        hd as i32,
        to_i32(bs, "attention", "block size")?,
    );
    let f = be.func(if spec.dtype == KvDType::F16 { "paged_attention_f16" } else { "paged_attention" })?;
    let mut l = be.stream.launch_builder(f);
    l.arg(qb)
        .arg(&cache.k)
        .arg(&cache.v)
        .arg(&mut out)
        .arg(&tables_d)
        .arg(&row_table_d)
        .arg(&row_pos_d)
        .arg(&nhi)
        .arg(&nkvi)
        .arg(&hdi)
        .arg(&bsi)
        .arg(&layer_off)
        .arg(&a.scale);
    let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (kernels::ATT_THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: q and out hold rows * nh * hd f32 values; each row's table covers positions
    // 0 ..= row_pos (checked above) with blocks of the pool, whose elements are of the
    // kernel's type (f16 for paged_attention_f16); hd <= 256 as the kernel needs.
    unsafe { l.launch(cfg) }.map_err(drv("cuLaunchKernel(paged_attention)"))?;
    Ok(be.wrap(out, rows * nh * hd * 4, DType::F32, vec![rows, nh * hd]))
}

pub(super) fn dense(be: &CudaBackend, q: &Tensor, k: &Tensor, v: &Tensor, a: &DenseAttn<'_>) -> Result<Tensor> {
    let op = "attention_dense";
    let (qb, kb, vb) = (be.f32_buf(q, op)?, be.f32_buf(k, op)?, be.f32_buf(v, op)?);
    let (b, l, nh, hd) = (a.batch, a.seq_len, a.n_heads, a.head_dim);
    let shape = [b * l, nh * hd];
    if q.shape() != shape || k.shape() != shape || v.shape() != shape || a.key_mask.len() != b * l {
        return Err(DriverError::Shape {
            op,
            detail: format!(
                "q {:?} k {:?} v {:?} mask {} for batch {b} x {l}, {nh} heads of {hd}",
                q.shape(),
                k.shape(),
                v.shape(),
                a.key_mask.len()
            ),
        });
    }
    if hd > kernels::ATT_MAX_HEAD_DIM {
        return Err(DriverError::Shape {
            op,
            detail: format!("head_dim {hd}: the CUDA kernels take at most {}", kernels::ATT_MAX_HEAD_DIM),
        });
    }
    if b * l * nh * hd == 0 {
        return be.empty_f32(shape.to_vec());
    }
    let mask: Vec<u8> = a.key_mask.iter().map(|&m| u8::from(m)).collect();
    let mask_d = be.htod(&mask)?;
    let mut out = be.alloc(b * l * nh * hd * 4)?;
    let grid = u32::try_from(b * l * nh)
        .ok()
        .filter(|&g| g < i32::MAX as u32)
        .ok_or_else(|| DriverError::Shape { op, detail: format!("{} rows x {nh} heads", b * l) })?;
    let (li, nhi, hdi) = (to_i32(l, op, "seq_len")?, to_i32(nh, op, "heads")?, hd as i32);
    let f = be.func("dense_attention")?;
    let mut lb = be.stream.launch_builder(f);
    lb.arg(qb).arg(kb).arg(vb).arg(&mut out).arg(&mask_d).arg(&li).arg(&nhi).arg(&hdi).arg(&a.scale);
    let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (kernels::ATT_THREADS, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: q, k, v and out hold b * l * nh * hd f32 values, the mask b * l bytes; keys are
    // read only within the query's own sequence; hd <= 256 as the kernel needs.
    unsafe { lb.launch(cfg) }.map_err(drv("cuLaunchKernel(dense_attention)"))?;
    Ok(be.wrap(out, b * l * nh * hd * 4, DType::F32, shape.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: KvSpec =
        KvSpec { n_layers: 1, n_kv_heads: 1, head_dim: 4, block_size: 4, n_blocks: 10, dtype: KvDType::F32 };

    #[test]
    fn plan_lays_out_slots_tables_and_positions() {
        let (a, b) = ([3u32, 7, 1, 9], [5u32, 2]);
        let seqs = [
            SeqAttn { block_table: &a, start_pos: 3, n_new: 3 },
            SeqAttn { block_table: &b, start_pos: 0, n_new: 0 },
            SeqAttn { block_table: &b, start_pos: 4, n_new: 1 },
        ];
        let p = plan(&seqs, SPEC).unwrap();
        // Sequence a: positions 3, 4, 5 are block 3 slot 3, block 7 slots 0 and 1; it reads
        // blocks 3 and 7 only. Sequence b: position 4 is block 2 slot 0.
        assert_eq!(p.slots, [15, 28, 29, 8]);
        assert_eq!(p.tables, [3, 7, 5, 2]);
        assert_eq!(p.row_table, [0, 0, 0, 2]);
        assert_eq!(p.row_pos, [3, 4, 5, 4]);
    }

    #[test]
    fn plan_rejects_positions_without_blocks_and_blocks_outside_the_pool() {
        let short = [SeqAttn { block_table: &[1], start_pos: 3, n_new: 2 }];
        assert!(matches!(plan(&short, SPEC), Err(DriverError::KvCache(m)) if m == "position 4 has no block"));
        let outside = [SeqAttn { block_table: &[1, 10], start_pos: 4, n_new: 1 }];
        assert!(matches!(plan(&outside, SPEC), Err(DriverError::KvCache(m)) if m == "block 10 of 10"));
        // A bad block after the used prefix is never read, as on the CPU.
        let unused = [SeqAttn { block_table: &[1, 99], start_pos: 0, n_new: 2 }];
        assert_eq!(plan(&unused, SPEC).unwrap().tables, [1]);
    }
}
