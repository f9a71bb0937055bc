//! `x · wᵀ` for f32 activations and weights of any dtype.
//!
//! Two paths:
//! - few rows (decode): each weight row is read once and dotted with every activation row, in
//!   parallel over weight rows. Decode is bound by memory bandwidth, so reading the weights once
//!   in their stored (quantised) form is what matters.
//! - many rows (prefill): weight rows are de-quantised a panel at a time into a per-thread f32
//!   buffer and multiplied with the `gemm` crate, in parallel over panels.

use rayon::prelude::*;

use super::{CpuData, check_f32, cpu_buf, f32_values, new_f32};
use crate::{DType, DriverError, Result, Tensor};

/// Below this many activation rows the row-by-row kernel wins over de-quantise + GEMM.
const SMALL_M: usize = 8;
/// From this many activation rows on, f32 weights go through one whole-matrix GEMM that the gemm
/// crate parallelises itself; below it, panels parallelised by us do better (measured on MiniLM:
/// a 24-row sentence and a 760-row batch).
const WHOLE_GEMM_M: usize = 128;
/// Weight rows per de-quantised panel on the GEMM path.
const PANEL: usize = 64;

pub(super) fn matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    check_f32(x, "matmul")?;
    let k = x.last_dim();
    let m = x.rows();
    if w.shape().len() != 2 || w.last_dim() != k {
        return Err(DriverError::Shape {
            op: "matmul",
            detail: format!("activations {:?} against weight {:?}", x.shape(), w.shape()),
        });
    }
    let n = w.shape()[0];
    let dt = w.dtype();
    if matches!(dt, DType::U32 | DType::I64) {
        return Err(DriverError::DType { op: "matmul", dtype: dt });
    }
    let xv = f32_values(x, "matmul")?;
    let wb = cpu_buf(w, "matmul")?;
    let (wbytes, dt): (&[u8], DType) = match &wb.data {
        CpuData::Host(h) => (h.as_slice(), dt),
        CpuData::F32(v) => (bytemuck::cast_slice(v.as_slice()), DType::F32),
    };
    let rb = dt.row_bytes(k).ok_or(DriverError::DType { op: "matmul", dtype: dt })?;
    let mut out_shape = x.shape().to_vec();
    if let Some(l) = out_shape.last_mut() {
        *l = n;
    }
    if m == 0 || n == 0 {
        return Ok(new_f32(vec![0.0; m * n], out_shape));
    }
    let out =
        if m <= SMALL_M { small_m(&xv, wbytes, dt, rb, m, n, k) } else { gemm_path(&xv, wbytes, dt, rb, m, n, k) };
    Ok(new_f32(out, out_shape))
}

fn small_m(x: &[f32], w: &[u8], dt: DType, rb: usize, m: usize, n: usize, k: usize) -> Vec<f32> {
    // Output computed transposed, [n, m], so that each weight row's results are contiguous.
    let mut t = vec![0f32; n * m];
    let chunk_rows = (n / (rayon::current_num_threads() * 8)).clamp(16, 512);
    t.par_chunks_mut(chunk_rows * m).enumerate().for_each(|(ci, tc)| {
        let r0 = ci * chunk_rows;
        for (j, o) in tc.chunks_exact_mut(m).enumerate() {
            let row = &w[(r0 + j) * rb..(r0 + j + 1) * rb];
            if m == 1 {
                o[0] = crate::quant::vec_dot(dt, row, x);
            } else {
                crate::quant::vec_dot_multi(dt, row, x, k, o);
            }
        }
    });
    if m == 1 {
        return t;
    }
    let mut out = vec![0f32; m * n];
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = t[j * m + i];
        }
    }
    out
}

fn gemm_path(x: &[f32], w: &[u8], dt: DType, rb: usize, m: usize, n: usize, k: usize) -> Vec<f32> {
    if dt == DType::F32
        && m >= WHOLE_GEMM_M
        && let Ok(wf) = bytemuck::try_cast_slice::<u8, f32>(w)
    {
        // Plain f32 weights need no conversion: one GEMM over the whole output, parallelised by
        // the gemm crate itself inside our pool.
        let mut out = vec![0f32; m * n];
        gemm_whole(&mut out, x, wf, m, n, k);
        return out;
    }
    // Result computed transposed, as [n, m] = W · xᵀ, so each panel writes a contiguous slice.
    let mut t = vec![0f32; n * m];
    t.par_chunks_mut(PANEL * m).enumerate().for_each_init(Vec::new, |panel, (pi, tc)| {
        let r0 = pi * PANEL;
        let rows = tc.len() / m;
        let wf: &[f32] = if dt == DType::F32 {
            match bytemuck::try_cast_slice::<u8, f32>(&w[r0 * rb..(r0 + rows) * rb]) {
                Ok(s) => s,
                Err(_) => {
                    panel.resize(rows * k, 0f32);
                    crate::quant::dequantize_row(dt, &w[r0 * rb..(r0 + rows) * rb], panel);
                    panel
                }
            }
        } else {
            panel.resize(rows * k, 0f32);
            for (r, dst) in panel.chunks_exact_mut(k).enumerate().take(rows) {
                crate::quant::dequantize_row(dt, &w[(r0 + r) * rb..(r0 + r + 1) * rb], dst);
            }
            panel
        };
        gemm_nt(tc, wf, x, rows, m, k);
    });
    let mut out = vec![0f32; m * n];
    // Transpose [n, m] -> [m, n] in cache-friendly tiles.
    const T: usize = 32;
    for j0 in (0..n).step_by(T) {
        for i0 in (0..m).step_by(T) {
            for j in j0..(j0 + T).min(n) {
                for i in i0..(i0 + T).min(m) {
                    out[i * n + j] = t[j * m + i];
                }
            }
        }
    }
    out
}

/// `out [m, n] = x [m, k] · wᵀ` for `w [n, k]`, parallel over the current rayon pool.
fn gemm_whole(out: &mut [f32], x: &[f32], w: &[f32], m: usize, n: usize, k: usize) {
    assert!(out.len() >= m * n && x.len() >= m * k && w.len() >= n * k, "gemm_whole: buffer sizes");
    // SAFETY: the assertion proves every index the strides form is in bounds: out is m×n
    // row-major (row stride n, column stride 1), x is m×k row-major, and wᵀ is read as k×n with
    // row stride 1 and column stride k from w's n×k row-major storage. `out` is exclusively
    // borrowed; read_dst=false means its old contents are never read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

/// `dst [rows, m] = a [rows, k] · bᵀ` for `b [m, k]`, single-threaded (the caller parallelises).
fn gemm_nt(dst: &mut [f32], a: &[f32], b: &[f32], rows: usize, m: usize, k: usize) {
    assert!(dst.len() >= rows * m && a.len() >= rows * k && b.len() >= m * k, "gemm_nt: buffer sizes");
    // SAFETY: the assertion above proves that every index the strides below can form lies inside
    // `dst`, `a` and `b`: dst is rows×m row-major (row stride m, column stride 1), a is rows×k
    // row-major, and bᵀ is read as k×m with row stride 1 and column stride k from b's m×k
    // row-major storage. `dst` is exclusively borrowed, so nothing else reads or writes it, and
    // read_dst=false means its prior contents are never read.
    unsafe {
        gemm::gemm(
            rows,
            m,
            k,
            dst.as_mut_ptr(),
            1,
            m as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut o = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                o[i * n + j] = (0..k).map(|p| x[i * k + p] * w[j * k + p]).sum();
            }
        }
        o
    }

    #[test]
    fn both_paths_match_naive_f32() {
        for &(m, n, k) in &[(1, 70, 64), (3, 33, 32), (9, 130, 96), (40, 65, 64)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 9.0).collect();
            let wb: &[u8] = bytemuck::cast_slice(&w);
            let rb = k * 4;
            let e = naive(&x, &w, m, n, k);
            let a = small_m(&x, wb, DType::F32, rb, m, n, k);
            let b = gemm_path(&x, wb, DType::F32, rb, m, n, k);
            for i in 0..m * n {
                assert!((a[i] - e[i]).abs() < 1e-4 && (b[i] - e[i]).abs() < 1e-4, "({m},{n},{k}) at {i}");
            }
        }
    }
}
