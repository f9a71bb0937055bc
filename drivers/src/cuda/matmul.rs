//! `matmul`: the `matvec` kernel for decode rows, cuBLAS SGEMM over f32 weight panels for
//! prefill (see the module doc of [`super`] for the precision this keeps).

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::{BACKEND, CudaBackend, blas_err, drv, dtype_code, elementwise_cfg, kernels, to_i32};
use crate::backend::MatmulShape;
use crate::{DType, DriverError, Result, Tensor};

/// Largest f32 panel a de-quantised weight takes on the prefill GEMM path.
const PANEL_BYTES: usize = 64 << 20;

impl CudaBackend {
    /// De-quantises rows `row0 .. row0 + nrows` of a weight with `k` values per row into `out`.
    pub(super) fn dequant(
        &self,
        w: &CudaSlice<u8>,
        code: i32,
        out: &mut CudaSlice<u8>,
        row0: usize,
        nrows: usize,
        k: usize,
    ) -> Result<()> {
        let total = nrows * k;
        if total == 0 {
            return Ok(());
        }
        let (row0, nrows, k) = (row0 as i64, nrows as i64, to_i32(k, "matmul", "row length")?);
        let f = self.func("dequant_rows")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(w).arg(&code).arg(out).arg(&row0).arg(&nrows).arg(&k);
        // SAFETY: the kernel writes `nrows * k` f32 values to `out` (callers size it so) and
        // reads rows below the weight's row count (callers check it).
        unsafe { b.launch(elementwise_cfg(total)) }.map_err(drv("cuLaunchKernel(dequant_rows)"))?;
        Ok(())
    }

    pub(super) fn matmul_impl(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let xb = self.f32_buf(x, "matmul")?;
        let MatmulShape { m, k, n, out: out_shape } = MatmulShape::check(x, w)?;
        let code = dtype_code(w.dtype()).ok_or(DriverError::DType { op: "matmul", dtype: w.dtype() })?;
        let wb = self.buf(w, "matmul")?;
        if m == 0 || n == 0 {
            return self.empty_f32(out_shape);
        }
        let mut out = self.alloc(m * n * 4)?;
        if k == 0 {
            self.stream.memset_zeros(&mut out).map_err(drv("cuMemsetD8Async"))?;
            return Ok(self.wrap(out, m * n * 4, DType::F32, out_shape));
        }
        let (mi, ni, ki) =
            (to_i32(m, "matmul", "rows")?, to_i32(n, "matmul", "outputs")?, to_i32(k, "matmul", "inputs")?);
        if m <= kernels::MATVEC_MAX_M {
            let f = self.func("matvec")?;
            let blocks = n.div_ceil(kernels::MATVEC_WARPS as usize);
            let cfg = LaunchConfig {
                grid_dim: (
                    u32::try_from(blocks)
                        .map_err(|_| DriverError::Shape { op: "matmul", detail: format!("{n} outputs") })?,
                    1,
                    1,
                ),
                block_dim: (kernels::MATVEC_WARPS * 32, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = self.stream.launch_builder(f);
            b.arg(xb).arg(&wb.data).arg(&code).arg(&mut out).arg(&mi).arg(&ni).arg(&ki);
            // SAFETY: x holds m * k f32 values, w n rows of k values of dtype `code` (checked at
            // upload), out m * n f32 values; the kernel's warps stop at row n.
            unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(matvec)"))?;
            return Ok(self.wrap(out, m * n * 4, DType::F32, out_shape));
        }
        // Prefill: cuBLAS SGEMM, on f32 panels of the weight when it is stored otherwise.
        // Row-major out [m, n] is column-major [n, m]; it is W [n, k] (column-major [k, n],
        // transposed) times x (column-major [k, m]).
        let panel_rows = if code == 0 { n } else { (PANEL_BYTES / (4 * k)).clamp(1, n) };
        let mut scratch = if code == 0 { None } else { Some(self.alloc(panel_rows * k * 4)?) };
        let blas = self.blas.lock().map_err(|_| DriverError::Device {
            backend: BACKEND,
            call: "cublasSgemm".into(),
            code: 0,
            message: "cuBLAS handle poisoned by an earlier panic".into(),
        })?;
        let handle = *blas.handle();
        let mut r0 = 0;
        while r0 < n {
            let pn = panel_rows.min(n - r0);
            let (wptr, _g) = match scratch.as_mut() {
                Some(s) => {
                    self.dequant(&wb.data, code, s, r0, pn, k)?;
                    let (p, g) = s.device_ptr(&self.stream);
                    (p, Some(g))
                }
                None => {
                    let (p, g) = wb.data.device_ptr(&self.stream);
                    (p, Some(g))
                }
            };
            let (xptr, _gx) = xb.device_ptr(&self.stream);
            let (optr, _go) = out.device_ptr_mut(&self.stream);
            let (alpha, beta) = (1.0f32, 0.0f32);
            // SAFETY: A is `pn` weight rows of k f32 values (lda k, transposed), B is x (k × m,
            // ldb k), C starts at output column r0 of the row-major [m, n] result (ldc n), so
            // it writes m rows of pn values inside `out`; all three live until the stream work
            // is done (they are freed stream-ordered).
            unsafe {
                cudarc::cublas::result::sgemm(
                    handle,
                    cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
                    cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
                    pn as i32,
                    mi,
                    ki,
                    &alpha,
                    wptr as *const f32,
                    ki,
                    xptr as *const f32,
                    ki,
                    &beta,
                    (optr as usize + r0 * 4) as *mut f32,
                    ni,
                )
            }
            .map_err(blas_err("cublasSgemm"))?;
            r0 += pn;
        }
        drop(blas);
        drop(scratch);
        Ok(self.wrap(out, m * n * 4, DType::F32, out_shape))
    }
}
