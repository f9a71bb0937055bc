//! The elementwise, row and lookup ops: each checks its arguments, then launches one kernel of
//! [`super::kernels`] on the backend's stream.

use cudarc::driver::PushKernelArg;
use rayon::prelude::*;

use super::{CudaBackend, Operand, drv, dtype_code, elementwise_cfg, rows_cfg, to_i32};
use crate::{DType, DriverError, HostBytes, Result, Rope, RopeStyle, Tensor};

impl CudaBackend {
    /// Uploads `data` as `dtype`: the formats the kernels read are kept as they are, every
    /// other block format is de-quantised to BF16 here, once.
    pub(super) fn upload_impl(&self, data: HostBytes, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        crate::backend::check_upload(dtype, shape, data.len())?;
        let keep = dtype_code(dtype).is_some() || matches!(dtype, DType::U32 | DType::I64);
        if keep {
            let d = self.htod(data.as_slice())?;
            return Ok(self.wrap(d, data.len(), dtype, shape.to_vec()));
        }
        let last = shape.last().copied().unwrap_or(1);
        let rb = dtype.row_bytes(last).unwrap_or(0);
        let mut bf = vec![half::bf16::ZERO; shape.iter().product()];
        if last > 0 && rb > 0 {
            bf.par_chunks_mut(last).zip(data.as_slice().par_chunks(rb)).for_each_init(
                || vec![0f32; last],
                |tmp, (o, r)| {
                    crate::quant::dequantize_row(dtype, r, tmp);
                    o.iter_mut().zip(tmp.iter()).for_each(|(o, &v)| *o = half::bf16::from_f32(v));
                },
            );
        }
        self.note(format!("{} weights de-quantised to BF16 at upload", dtype.name().to_uppercase()));
        let bytes: &[u8] = bytemuck::cast_slice(&bf);
        let d = self.htod(bytes)?;
        Ok(self.wrap(d, bytes.len(), DType::BF16, shape.to_vec()))
    }

    /// A row-weight operand of `n` values as f32 on the device.
    fn row_operand<'a>(&self, w: &'a Tensor, n: usize, op: &'static str) -> Result<Operand<'a>> {
        if w.elem_count() != n {
            return Err(DriverError::Shape {
                op,
                detail: format!("weight of {} values for rows of {n}", w.elem_count()),
            });
        }
        self.as_f32(w, op)
    }

    pub(super) fn binary_impl(&self, a: &Tensor, b: &Tensor, op: &'static str, code: i32) -> Result<Tensor> {
        let ab = self.f32_buf(a, op)?;
        let total = a.elem_count();
        let n = a.last_dim();
        let bn = b.elem_count();
        if !(bn == total || (bn == n && n > 0)) {
            return Err(DriverError::Shape {
                op,
                detail: format!("{:?} and {:?} neither match nor broadcast by row", a.shape(), b.shape()),
            });
        }
        let bv = self.as_f32(b, op)?;
        if total == 0 {
            return self.empty_f32(a.shape().to_vec());
        }
        let mut out = self.alloc(total * 4)?;
        let (t, bn) = (total as i64, bn as i64);
        let f = self.func("binary")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(ab).arg(bv.as_ref()).arg(&mut out).arg(&t).arg(&bn).arg(&code);
        // SAFETY: a and out hold `total` f32 values, b holds `bn` (total or one row).
        unsafe { l.launch(elementwise_cfg(total)) }.map_err(drv("cuLaunchKernel(binary)"))?;
        Ok(self.wrap(out, total * 4, DType::F32, a.shape().to_vec()))
    }

    pub(super) fn unary_impl(&self, x: &Tensor, op: &'static str, code: i32, s: f32) -> Result<Tensor> {
        let xb = self.f32_buf(x, op)?;
        let total = x.elem_count();
        if total == 0 {
            return self.empty_f32(x.shape().to_vec());
        }
        let mut out = self.alloc(total * 4)?;
        let t = total as i64;
        let f = self.func("unary")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(xb).arg(&mut out).arg(&t).arg(&code).arg(&s);
        // SAFETY: x and out hold `total` f32 values.
        unsafe { l.launch(elementwise_cfg(total)) }.map_err(drv("cuLaunchKernel(unary)"))?;
        Ok(self.wrap(out, total * 4, DType::F32, x.shape().to_vec()))
    }

    pub(super) fn layer_norm_impl(
        &self,
        x: &Tensor,
        r: Option<&Tensor>,
        w: &Tensor,
        bias: &Tensor,
        eps: f32,
        op: &'static str,
    ) -> Result<Tensor> {
        let xb = self.f32_buf(x, op)?;
        let n = x.last_dim();
        let rb = match r {
            Some(r) => {
                if r.shape() != x.shape() {
                    return Err(DriverError::Shape {
                        op,
                        detail: format!("{:?} and {:?} differ", x.shape(), r.shape()),
                    });
                }
                Some(self.f32_buf(r, op)?)
            }
            None => None,
        };
        let wv = self.row_operand(w, n, op)?;
        let bv = self.row_operand(bias, n, op)?;
        let rows = x.rows();
        if rows == 0 || n == 0 {
            return self.empty_f32(x.shape().to_vec());
        }
        let mut out = self.alloc(rows * n * 4)?;
        let (has_r, ni) = (i32::from(rb.is_some()), to_i32(n, op, "row length")?);
        let f = self.func("layer_norm")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(xb).arg(rb.unwrap_or(xb)).arg(&has_r).arg(wv.as_ref()).arg(bv.as_ref()).arg(&mut out).arg(&ni).arg(&eps);
        // SAFETY: x, r (or x again, unread) and out hold rows * n f32 values, w and b n each.
        unsafe { l.launch(rows_cfg(rows, op)?) }.map_err(drv("cuLaunchKernel(layer_norm)"))?;
        Ok(self.wrap(out, rows * n * 4, DType::F32, x.shape().to_vec()))
    }

    pub(super) fn rms_norm_impl(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        let xb = self.f32_buf(x, "rms_norm")?;
        let n = x.last_dim();
        let wv = self.row_operand(weight, n, "rms_norm")?;
        let rows = x.rows();
        if rows == 0 || n == 0 {
            return self.empty_f32(x.shape().to_vec());
        }
        let mut out = self.alloc(rows * n * 4)?;
        let ni = to_i32(n, "rms_norm", "row length")?;
        let f = self.func("rms_norm")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(xb).arg(wv.as_ref()).arg(&mut out).arg(&ni).arg(&eps);
        // SAFETY: x and out hold rows * n f32 values, w n; one block per row.
        unsafe { l.launch(rows_cfg(rows, "rms_norm")?) }.map_err(drv("cuLaunchKernel(rms_norm)"))?;
        Ok(self.wrap(out, rows * n * 4, DType::F32, x.shape().to_vec()))
    }

    pub(super) fn rope_impl(&self, x: &Tensor, rope: &Rope<'_>) -> Result<Tensor> {
        let xb = self.f32_buf(x, "rope")?;
        let width = rope.check(x)?;
        let half = rope.inv_freq.len();
        let rows = x.rows();
        if rows == 0 || width == 0 {
            return self.empty_f32(x.shape().to_vec());
        }
        let pos = self.htod_u32(rope.positions)?;
        let freq = self.htod(bytemuck::cast_slice(rope.inv_freq))?;
        let mut out = self.alloc(rows * width * 4)?;
        let (nh, hd, hf) = (
            to_i32(rope.n_heads, "rope", "heads")?,
            to_i32(rope.head_dim, "rope", "head_dim")?,
            to_i32(half, "rope", "frequencies")?,
        );
        let inter = i32::from(rope.style == RopeStyle::Interleaved);
        let f = self.func("rope")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(xb).arg(&mut out).arg(&pos).arg(&freq).arg(&nh).arg(&hd).arg(&hf).arg(&inter);
        // SAFETY: x and out hold rows * n_heads * head_dim f32 values, pos one u32 per row,
        // freq `half` f32 with 2 * half <= head_dim (checked above).
        unsafe { l.launch(rows_cfg(rows, "rope")?) }.map_err(drv("cuLaunchKernel(rope)"))?;
        Ok(self.wrap(out, rows * width * 4, DType::F32, x.shape().to_vec()))
    }

    pub(super) fn embedding_impl(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        let vocab = table.rows();
        let dim = table.last_dim();
        let code = dtype_code(table.dtype()).ok_or(DriverError::DType { op: "embedding", dtype: table.dtype() })?;
        let tb = self.buf(table, "embedding")?;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(DriverError::TokenOutOfRange { id, vocab });
        }
        if ids.is_empty() || dim == 0 {
            return self.empty_f32(vec![ids.len(), dim]);
        }
        let idb = self.htod_u32(ids)?;
        let mut out = self.alloc(ids.len() * dim * 4)?;
        let di = to_i32(dim, "embedding", "dim")?;
        let f = self.func("embedding")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&tb.data).arg(&code).arg(&idb).arg(&mut out).arg(&di);
        // SAFETY: every id is below the table's row count (checked above), out holds
        // ids.len() * dim f32 values; one block per id.
        unsafe { l.launch(rows_cfg(ids.len(), "embedding")?) }.map_err(drv("cuLaunchKernel(embedding)"))?;
        Ok(self.wrap(out, ids.len() * dim * 4, DType::F32, vec![ids.len(), dim]))
    }

    pub(super) fn gather_rows_impl(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        let xb = self.f32_buf(x, "gather_rows")?;
        let n = x.last_dim();
        let total = x.rows();
        let mut idx = Vec::with_capacity(rows.len());
        for &r in rows {
            if r >= total {
                return Err(DriverError::Shape { op: "gather_rows", detail: format!("row {r} of {total}") });
            }
            idx.push(
                u32::try_from(r).map_err(|_| DriverError::Shape { op: "gather_rows", detail: format!("row {r}") })?,
            );
        }
        if rows.is_empty() || n == 0 {
            return self.empty_f32(vec![rows.len(), n]);
        }
        let ib = self.htod_u32(&idx)?;
        let mut out = self.alloc(rows.len() * n * 4)?;
        let ni = to_i32(n, "gather_rows", "row length")?;
        let f = self.func("gather_rows")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(xb).arg(&ib).arg(&mut out).arg(&ni);
        // SAFETY: every index is below x's row count (checked above); out holds
        // rows.len() * n f32 values.
        unsafe { l.launch(rows_cfg(rows.len(), "gather_rows")?) }.map_err(drv("cuLaunchKernel(gather_rows)"))?;
        Ok(self.wrap(out, rows.len() * n * 4, DType::F32, vec![rows.len(), n]))
    }
}
