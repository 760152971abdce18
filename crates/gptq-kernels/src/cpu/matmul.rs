//! Dense f32 matrix products on top of the `gemm` crate, with the
//! bounds checks that make its raw-pointer API safe to call.

use gemm::Parallelism;

/// A read-only strided matrix view.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    /// Backing storage.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between consecutive rows.
    pub row_stride: usize,
    /// Distance between consecutive columns.
    pub col_stride: usize,
}

/// A mutable strided matrix view.
pub struct MatMut<'a> {
    /// Backing storage.
    pub data: &'a mut [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Distance between consecutive rows.
    pub row_stride: usize,
    /// Distance between consecutive columns.
    pub col_stride: usize,
}

fn last_index(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` view of `data`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn check(&self) {
        assert!(
            last_index(self.rows, self.cols, self.row_stride, self.col_stride) <= self.data.len(),
            "matrix view out of bounds"
        );
    }
}

impl<'a> MatMut<'a> {
    /// A row-major `rows × cols` view of `data`.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }
}

/// `dst = beta·dst + a·b` on strided views (`beta` 0 overwrites `dst`).
/// `threads > 1` splits the work over rayon.
///
/// # Panics
/// When the shapes disagree or a view runs past its slice (programming errors,
/// never data-dependent).
pub fn matmul_strided(dst: MatMut<'_>, a: Mat<'_>, b: Mat<'_>, beta: f32, threads: usize) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    assert_eq!(
        (dst.rows, dst.cols),
        (a.rows, b.cols),
        "output shape differs"
    );
    a.check();
    b.check();
    assert!(
        last_index(dst.rows, dst.cols, dst.row_stride, dst.col_stride) <= dst.data.len(),
        "output view out of bounds"
    );
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: every view was checked to lie inside its slice above, and `dst`
    // is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            a.cols,
            dst.data.as_mut_ptr(),
            dst.col_stride as isize,
            dst.row_stride as isize,
            beta != 0.0,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            beta,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Rows of `x` up to which [`matmul_nt`] streams `w` row by row (dot
/// products) instead of calling gemm: at decode sizes the product is bound by
/// reading `w`, and gemm's packing of `w` would read it twice.
const GEMV_MAX_ROWS: usize = 4;

/// `out[m×n] = x[m×k] · wᵀ` for small `m`: each task takes a band of `w`'s
/// rows and reads it once for all `m` inputs.
fn gemv_nt(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    use rayon::prelude::*;
    const BAND: usize = 64;
    let bands: Vec<Vec<f32>> = w
        .par_chunks(BAND * k)
        .map(|wb| {
            let rows = wb.len() / k;
            let mut o = vec![0.0f32; m * rows];
            for (j, wr) in wb.chunks_exact(k).enumerate() {
                for i in 0..m {
                    o[i * rows + j] = super::simd::dot(&x[i * k..(i + 1) * k], wr);
                }
            }
            o
        })
        .collect();
    for (b, o) in bands.iter().enumerate() {
        let rows = o.len() / m;
        for i in 0..m {
            out[i * n + b * BAND..i * n + b * BAND + rows]
                .copy_from_slice(&o[i * rows..(i + 1) * rows]);
        }
    }
}

/// `out[m×n] = x[m×k] · wᵀ` with `w` row-major `[n, k]` (a linear layer's
/// weight), using all rayon threads.
pub fn matmul_nt(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    assert_eq!(x.len(), m * k, "x is not m×k");
    assert_eq!(w.len(), n * k, "w is not n×k");
    assert_eq!(out.len(), m * n, "out is not m×n");
    if m <= GEMV_MAX_ROWS && k > 0 {
        return gemv_nt(x, w, m, k, n, out);
    }
    matmul_strided(
        MatMut::row_major(out, m, n),
        Mat::row_major(x, m, k),
        Mat::row_major(w, n, k).t(),
        0.0,
        rayon::current_num_threads(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut o = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for l in 0..k {
                    s += x[i * k + l] as f64 * w[j * k + l] as f64;
                }
                o[i * n + j] = s as f32;
            }
        }
        o
    }

    proptest! {
        #[test]
        fn matches_naive(m in 1usize..20, k in 1usize..70, n in 1usize..40, seed in 0u32..1000) {
            let f = |i: usize| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32 / 500.0 - 1.0;
            let x: Vec<f32> = (0..m * k).map(f).collect();
            let w: Vec<f32> = (0..n * k).map(|i| f(i + 7)).collect();
            let mut o = vec![0.0; m * n];
            matmul_nt(&x, &w, m, k, n, &mut o);
            let r = naive(&x, &w, m, k, n);
            // f32 accumulation over k ≤ 70 terms of magnitude ≤ 1: error ≤ k·eps·|sum| bound, 1e-4 is generous.
            for (a, b) in o.iter().zip(&r) { prop_assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs())); }
        }
    }
}
