//! Tensor views (dims, element strides, element offset, dtype, data pointer) and strided
//! gathers/scatters between device memory and contiguous host vectors.

use crate::dtype::DType;

/// A validated view of device memory: every element it addresses lies in the allocation
/// `alloc_id` (checked by `State::check_view` when the view is created and again before work that
/// uses it is queued; a queued view's allocation cannot be freed before the work runs).
#[derive(Clone, Debug)]
pub(crate) struct View {
    pub dims: Vec<usize>,
    pub strides: Vec<usize>,
    pub offset: usize,
    pub dtype: DType,
    /// Address of `tensorData` (0 for an empty view without data).
    pub base: usize,
    /// Allocation the view lives in (0 for an empty view).
    pub alloc_id: u64,
    /// The aclTensor handle this view came from (for messages).
    pub handle: usize,
}

pub(crate) fn shape_str(dims: &[usize]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(","))
}

/// numpy broadcasting of two shapes; None when they do not broadcast.
pub(crate) fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db {
            da
        } else if da == 1 {
            db
        } else if db == 1 {
            da
        } else {
            return None;
        };
    }
    Some(out)
}

/// Merges adjacent dimensions that are laid out contiguously with respect to each other (and drops
/// size-1 dimensions), so that a contiguous view becomes one run. Same elements, same order.
fn coalesce(dims: &[usize], strides: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let (mut d, mut s): (Vec<usize>, Vec<usize>) = (Vec::with_capacity(dims.len()), Vec::with_capacity(dims.len()));
    for (&dim, &st) in dims.iter().zip(strides) {
        if dim == 1 {
            continue;
        }
        match (d.last_mut(), s.last_mut()) {
            (Some(pd), Some(ps)) if *ps == st * dim => {
                *pd *= dim;
                *ps = st;
            }
            _ => {
                d.push(dim);
                s.push(st);
            }
        }
    }
    (d, s)
}

/// Calls `f(linear_index, element_offset, len, stride)` for every innermost run of a (dims,
/// strides, offset) view in row-major order: the run's elements are at linear indices
/// `linear_index..linear_index + len` and element offsets `element_offset + j * stride`.
pub(crate) fn for_each_run(
    dims: &[usize],
    strides: &[usize],
    offset: usize,
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    if dims.contains(&0) {
        return;
    }
    let (dims, strides) = coalesce(dims, strides);
    let Some(last) = dims.len().checked_sub(1) else {
        f(0, offset, 1, 1);
        return;
    };
    let (dl, sl) = (dims[last], strides[last]);
    let mut idx = vec![0usize; last];
    let mut base = offset;
    let mut lin = 0;
    loop {
        f(lin, base, dl, sl);
        lin += dl;
        let mut d = last;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            base += strides[d];
            if idx[d] < dims[d] {
                break;
            }
            base -= strides[d] * dims[d];
            idx[d] = 0;
        }
    }
}

/// Calls `f(linear_index, element_offset)` for every element of a (dims, strides, offset) view in
/// row-major order.
#[inline]
pub(crate) fn for_each_offset(dims: &[usize], strides: &[usize], offset: usize, mut f: impl FnMut(usize, usize)) {
    for_each_run(dims, strides, offset, |lin, base, len, stride| {
        for j in 0..len {
            f(lin + j, base + j * stride);
        }
    });
}

impl View {
    pub(crate) fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    pub(crate) fn rank(&self) -> usize {
        self.dims.len()
    }

    pub(crate) fn shape(&self) -> String {
        shape_str(&self.dims)
    }

    /// Largest element offset addressed (None for an empty view).
    pub(crate) fn max_elem(&self) -> Option<usize> {
        if self.numel() == 0 {
            return None;
        }
        Some(self.offset + self.dims.iter().zip(&self.strides).map(|(d, s)| (d - 1) * s).sum::<usize>())
    }

    /// Byte range [lo, hi) of device memory the view may touch (None when empty).
    pub(crate) fn byte_range(&self) -> Option<(usize, usize)> {
        let es = self.dtype.size();
        self.max_elem().map(|m| (self.base + self.offset * es, self.base + (m + 1) * es))
    }

    /// This view broadcast (numpy rules) to `target`, with stride 0 on broadcast dimensions.
    /// The caller has checked that the shapes broadcast.
    pub(crate) fn broadcast_to(&self, target: &[usize]) -> View {
        let n = target.len();
        let r = self.rank();
        let mut strides = vec![0; n];
        for i in 0..n {
            if i + r >= n {
                let src = i + r - n;
                strides[i] = if self.dims[src] == 1 && target[i] != 1 { 0 } else { self.strides[src] };
            }
        }
        View { dims: target.to_vec(), strides, ..self.clone() }
    }

    /// The same memory with dims and strides given explicitly (a sub-view or a reinterpretation).
    pub(crate) fn reshaped(&self, dims: Vec<usize>, strides: Vec<usize>, offset: usize) -> View {
        View { dims, strides, offset, ..self.clone() }
    }

    fn ptr(&self) -> *mut u8 {
        std::ptr::with_exposed_provenance_mut::<u8>(self.base)
    }

    /// The elements in row-major order as f32.
    pub(crate) fn gather_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        let (p, dt, es) = (self.ptr(), self.dtype, self.dtype.size());
        for_each_run(&self.dims, &self.strides, self.offset, |i, o, len, s| {
            let dst = &mut out[i..i + len];
            if dt == DType::F32 && s == 1 {
                // SAFETY: View invariant: the run's `len` f32 elements lie in a live allocation;
                // `dst` is host memory of the same length (never overlapping device memory).
                unsafe { std::ptr::copy_nonoverlapping(p.add(o * es), dst.as_mut_ptr().cast::<u8>(), len * es) };
                return;
            }
            for (j, v) in dst.iter_mut().enumerate() {
                // SAFETY: View invariant: every element offset lies in a live allocation.
                *v = unsafe { dt.load_f32(p.add((o + j * s) * es)) };
            }
        });
        out
    }

    /// The view as a borrowed row-major f32 slice when it is f32, densely laid out in row-major
    /// order and f32-aligned (no copy); None otherwise (use `gather_f32`).
    ///
    /// The slice aliases device memory: the caller must not write through this view (or an
    /// overlapping one) while it holds the slice.
    pub(crate) fn as_f32_slice(&self) -> Option<&[f32]> {
        if self.dtype != DType::F32 {
            return None;
        }
        let n = self.numel();
        if n == 0 {
            return Some(&[]);
        }
        let (_, s) = coalesce(&self.dims, &self.strides);
        if s.len() > 1 || s.first().is_some_and(|&x| x != 1) {
            return None;
        }
        // SAFETY: offset lies in the view's allocation (View invariant).
        let p = unsafe { self.ptr().add(self.offset * 4) };
        if !p.cast::<f32>().is_aligned() {
            return None;
        }
        // SAFETY: View invariant: the `n` densely laid out, aligned f32 elements lie in a live
        // allocation, which cannot be freed while the work using this view is pending; the caller
        // does not write them while the slice lives.
        Some(unsafe { std::slice::from_raw_parts(p.cast::<f32>(), n) })
    }

    /// The elements in row-major order as f64.
    pub(crate) fn gather_f64(&self) -> Vec<f64> {
        let mut out = vec![0f64; self.numel()];
        let (p, dt, es) = (self.ptr(), self.dtype, self.dtype.size());
        for_each_run(&self.dims, &self.strides, self.offset, |i, o, len, s| {
            let dst = &mut out[i..i + len];
            if dt == DType::F32 {
                for (j, v) in dst.iter_mut().enumerate() {
                    // SAFETY: View invariant: every element offset lies in a live allocation.
                    *v = f64::from(unsafe { p.add((o + j * s) * es).cast::<f32>().read_unaligned() });
                }
                return;
            }
            for (j, v) in dst.iter_mut().enumerate() {
                // SAFETY: View invariant: every element offset lies in a live allocation.
                *v = unsafe { dt.load_f64(p.add((o + j * s) * es)) };
            }
        });
        out
    }

    /// The elements in row-major order as exact integers (for index tensors).
    pub(crate) fn gather_i64(&self) -> Vec<i64> {
        let mut out = vec![0i64; self.numel()];
        let (p, dt, es) = (self.ptr(), self.dtype, self.dtype.size());
        for_each_offset(&self.dims, &self.strides, self.offset, |i, o| {
            // SAFETY: View invariant: every element offset lies in a live allocation.
            out[i] = unsafe { dt.load_i64(p.add(o * es)) };
        });
        out
    }

    /// The raw element bytes in row-major order (element size `dtype.size()`).
    pub(crate) fn gather_raw(&self) -> Vec<u8> {
        let es = self.dtype.size();
        let mut out = vec![0u8; self.numel() * es];
        let p = self.ptr();
        for_each_run(&self.dims, &self.strides, self.offset, |i, o, len, s| {
            if s == 1 {
                // SAFETY: View invariant: the run's `len * es` bytes lie in a live allocation;
                // `out` has them at `i * es`; host vector and device heap never overlap.
                unsafe { std::ptr::copy_nonoverlapping(p.add(o * es), out.as_mut_ptr().add(i * es), len * es) };
                return;
            }
            for j in 0..len {
                // SAFETY: View invariant: `es` bytes at every element offset lie in a live
                // allocation; `out` has `es` bytes at `(i + j) * es`; no overlap (host vs device).
                unsafe {
                    std::ptr::copy_nonoverlapping(p.add((o + j * s) * es), out.as_mut_ptr().add((i + j) * es), es)
                };
            }
        });
        out
    }

    /// Writes `vals` (row-major, converted to the view's dtype) through the strides.
    pub(crate) fn scatter_f64(&self, vals: impl Fn(usize) -> f64) {
        let (p, dt, es) = (self.ptr(), self.dtype, self.dtype.size());
        for_each_run(&self.dims, &self.strides, self.offset, |i, o, len, s| {
            if dt == DType::F32 {
                for j in 0..len {
                    // SAFETY: View invariant: every element offset lies in a live allocation.
                    unsafe { p.add((o + j * s) * es).cast::<f32>().write_unaligned(vals(i + j) as f32) };
                }
                return;
            }
            for j in 0..len {
                // SAFETY: View invariant: every element offset lies in a live allocation.
                unsafe { dt.store_f64(p.add((o + j * s) * es), vals(i + j)) };
            }
        });
    }

    /// Writes integers (row-major) through the strides, exactly for integer dtypes.
    pub(crate) fn scatter_i64(&self, vals: &[i64]) {
        let (p, dt, es) = (self.ptr(), self.dtype, self.dtype.size());
        for_each_offset(&self.dims, &self.strides, self.offset, |i, o| {
            // SAFETY: View invariant: every element offset lies in a live allocation.
            unsafe { dt.store_i64(p.add(o * es), vals[i]) };
        });
    }

    /// Writes raw element bytes (row-major, `dtype.size()` each) through the strides.
    pub(crate) fn scatter_raw(&self, bytes: &[u8]) {
        let es = self.dtype.size();
        assert!(bytes.len() >= self.numel() * es, "scatter_raw: {} bytes for {} elements", bytes.len(), self.numel());
        let p = self.ptr();
        for_each_run(&self.dims, &self.strides, self.offset, |i, o, len, s| {
            if s == 1 {
                // SAFETY: View invariant: the run's `len * es` bytes lie in a live allocation;
                // `bytes` holds `numel * es` bytes (asserted above) and is host memory.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr().add(i * es), p.add(o * es), len * es) };
                return;
            }
            for j in 0..len {
                // SAFETY: as above, one element at a time.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr().add((i + j) * es), p.add((o + j * s) * es), es) };
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_rules() {
        assert_eq!(broadcast_shapes(&[2, 3], &[3]), Some(vec![2, 3]));
        assert_eq!(broadcast_shapes(&[4, 1, 3], &[2, 1]), Some(vec![4, 2, 3]));
        assert_eq!(broadcast_shapes(&[2, 3], &[2]), None);
    }

    #[test]
    fn offsets_follow_strides() {
        let mut seen = vec![];
        for_each_offset(&[2, 3], &[1, 2], 5, |i, o| seen.push((i, o)));
        assert_eq!(seen, vec![(0, 5), (1, 7), (2, 9), (3, 6), (4, 8), (5, 10)]);
    }

    #[test]
    fn runs_merge_contiguous_dims_only() {
        let mut runs = vec![];
        for_each_run(&[2, 1, 3, 4], &[12, 99, 4, 1], 7, |i, o, n, s| runs.push((i, o, n, s)));
        assert_eq!(runs, vec![(0, 7, 24, 1)]);
        runs.clear();
        // A row-sliced view: rows of 3 at stride 5 stay separate runs.
        for_each_run(&[2, 3], &[5, 1], 1, |i, o, n, s| runs.push((i, o, n, s)));
        assert_eq!(runs, vec![(0, 1, 3, 1), (3, 6, 3, 1)]);
        runs.clear();
        // Broadcast (stride 0) and transposed views.
        for_each_run(&[2, 3], &[0, 1], 0, |i, o, n, s| runs.push((i, o, n, s)));
        assert_eq!(runs, vec![(0, 0, 3, 1), (3, 0, 3, 1)]);
        runs.clear();
        for_each_run(&[3, 2], &[1, 3], 0, |i, o, n, s| runs.push((i, o, n, s)));
        assert_eq!(runs, vec![(0, 0, 2, 3), (2, 1, 2, 3), (4, 2, 2, 3)]);
        runs.clear();
        for_each_run(&[1, 1], &[4, 4], 2, |i, o, n, s| runs.push((i, o, n, s)));
        assert_eq!(runs, vec![(0, 2, 1, 1)]);
    }
}
