//! Row-wise ops: normalisation, rotary embedding, softmax, GELU.

use rayon::prelude::*;

use super::simd::{self, simd_kernel};
use super::{check_f32, f32_values, new_f32};
use crate::{DriverError, Result, Rope, RopeStyle, Tensor};

fn row_weight(w: &Tensor, n: usize, op: &'static str) -> Result<Vec<f32>> {
    let v = f32_values(w, op)?;
    if v.len() != n {
        return Err(DriverError::Shape { op, detail: format!("weight of {} values for rows of {n}", v.len()) });
    }
    Ok(v.into_owned())
}

pub(super) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    check_f32(x, "rms_norm")?;
    let n = x.last_dim();
    let w = row_weight(weight, n, "rms_norm")?;
    let mut out = f32_values(x, "rms_norm")?.into_owned();
    out.par_chunks_mut(n.max(1)).for_each(|row| {
        let ss: f64 = row.iter().map(|&a| (a as f64) * (a as f64)).sum();
        let inv = 1.0 / ((ss / n as f64) as f32 + eps).sqrt();
        row.iter_mut().zip(&w).for_each(|(a, &g)| *a = *a * inv * g);
    });
    Ok(new_f32(out, x.shape().to_vec()))
}

pub(super) fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    check_f32(x, "layer_norm")?;
    let n = x.last_dim();
    let w = row_weight(weight, n, "layer_norm")?;
    let b = row_weight(bias, n, "layer_norm")?;
    let mut out = f32_values(x, "layer_norm")?.into_owned();
    if n > 0 {
        for_row_blocks(&mut out, n, |rows| layer_norm_rows(rows, n, &w, &b, eps));
    }
    Ok(new_f32(out, x.shape().to_vec()))
}

/// Values below which a row-wise op runs on the calling thread: waking the pool costs more.
pub(crate) const PAR_MIN_VALUES: usize = 1 << 15;

/// Calls `f` on blocks of whole rows (`n` values each) of `data`, in parallel when it is large.
pub(crate) fn for_row_blocks(data: &mut [f32], n: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    if data.len() < PAR_MIN_VALUES || n == 0 {
        f(data);
        return;
    }
    let rows_per_block = (PAR_MIN_VALUES / 4 / n).max(1);
    data.par_chunks_mut(rows_per_block * n).for_each(f);
}

/// LayerNorm of `a + r`.
pub(super) fn add_layer_norm(a: &Tensor, r: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    check_f32(a, "add_layer_norm")?;
    check_f32(r, "add_layer_norm")?;
    let n = a.last_dim();
    if a.shape() != r.shape() {
        return Err(DriverError::Shape {
            op: "add_layer_norm",
            detail: format!("{:?} and {:?} differ", a.shape(), r.shape()),
        });
    }
    let w = row_weight(weight, n, "add_layer_norm")?;
    let b = row_weight(bias, n, "add_layer_norm")?;
    let rv = f32_values(r, "add_layer_norm")?;
    let mut out = f32_values(a, "add_layer_norm")?.into_owned();
    if n > 0 {
        let f = |(rows, res): (&mut [f32], &[f32])| {
            add_in_place(rows, res);
            layer_norm_rows(rows, n, &w, &b, eps);
        };
        if out.len() < PAR_MIN_VALUES {
            f((&mut out, &rv));
        } else {
            let block = (PAR_MIN_VALUES / 4).div_ceil(n) * n;
            out.par_chunks_mut(block).zip(rv.par_chunks(block)).for_each(f);
        }
    }
    Ok(new_f32(out, a.shape().to_vec()))
}

simd_kernel! {
    /// `a += b`, element by element.
    pub(super) fn add_in_place(a: &mut [f32], b: &[f32]) {
        a.iter_mut().zip(b).for_each(|(x, &y)| *x += y);
    }
}

simd_kernel! {
    /// LayerNorm of each `n`-value row of `rows` in place (two passes in `f32`: mean, then the
    /// variance of the deviations).
    fn layer_norm_rows(rows: &mut [f32], n: usize, w: &[f32], b: &[f32], eps: f32) {
        for row in rows.chunks_exact_mut(n) {
            let mean = simd::sum(row) / n as f32;
            let mut acc = [0f32; 16];
            let c = row.chunks_exact(16);
            let tail: f32 = c.remainder().iter().map(|&a| (a - mean) * (a - mean)).sum();
            for x in c {
                for i in 0..16 {
                    let d = x[i] - mean;
                    acc[i] += d * d;
                }
            }
            let var = (acc.iter().sum::<f32>() + tail) / n as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((a, &g), &c) in row.iter_mut().zip(w).zip(b) {
                *a = ((*a - mean) * inv) * g + c;
            }
        }
    }
}

pub(super) fn rope(x: &Tensor, r: &Rope<'_>) -> Result<Tensor> {
    check_f32(x, "rope")?;
    let width = r.check(x)?;
    let half = r.inv_freq.len();
    let mut out = f32_values(x, "rope")?.into_owned();
    out.par_chunks_mut(width.max(1)).zip(r.positions.par_iter()).for_each(|(row, &pos)| {
        let (cos, sin): (Vec<f32>, Vec<f32>) = r
            .inv_freq
            .iter()
            .map(|&f| {
                let a = pos as f32 * f;
                (a.cos(), a.sin())
            })
            .unzip();
        for head in row.chunks_exact_mut(r.head_dim) {
            for i in 0..half {
                let (a, b) = match r.style {
                    RopeStyle::Half => (i, i + half),
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x1 * cos[i] + x0 * sin[i];
            }
        }
    });
    Ok(new_f32(out, x.shape().to_vec()))
}

/// GELU with erf, `x/2 · (1 + erf(x/√2))`, as PyTorch's default `gelu`.
#[inline(always)]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

simd_kernel! {
    /// [`gelu_erf`] of every value, in place.
    pub(crate) fn gelu_in_place(v: &mut [f32]) {
        for a in v.iter_mut() {
            *a = gelu_erf(*a);
        }
    }
}

/// erf to within 1.5e-7 absolute (Abramowitz & Stegun 7.1.26): one exp and one division, which
/// matters because BERT's MLP applies it to every activation. The error is at the level of f32
/// rounding of values near 1. Branch-free so that loops over it vectorise.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_7, -1.453_152_1, 1.061_405_4];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let r = 1.0 - poly * simd::exp(-ax * ax);
    r.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Values from the Abramowitz & Stegun tables.
        for (x, e) in [(0.0f32, 0.0f32), (0.5, 0.520_499_9), (1.0, 0.842_700_8), (2.0, 0.995_322_3), (3.0, 0.999_977_9)]
        {
            assert!((erf(x) - e).abs() < 3e-7, "erf({x}) = {} not {e}", erf(x));
            assert!((erf(-x) + e).abs() < 3e-7);
        }
        // gelu(1) = 0.8413447460685429 (PyTorch, float64).
        assert!((gelu_erf(1.0) - 0.841_344_8).abs() < 1e-6);
    }
}
