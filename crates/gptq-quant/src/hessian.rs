//! The layer Hessian `H = (2/n)·Σ_s X_sᵀX_s` of GPTQ's layer-wise objective
//! `‖WX − ŴX‖²` (Frantar et al. 2022, arXiv 2210.17323, eq. 1–2), accumulated
//! over calibration samples as the reference implementation's `add_batch`
//! does, and the proxy error `tr(ΔHΔᵀ)` of a weight perturbation `Δ`.
//!
//! This file owns the running average and the error metric; the solver
//! (`gptq.rs`) only reads `H`.
//!
//! # Numerics
//!
//! * Storage and accumulation are f32, as in the reference. Per sample
//!   (one calibration sequence of `t` tokens, `X ∈ ℝ^{t×in}`):
//!   `H ← H·(n/(n+1))`, `n ← n+1`, `X̃ = √(2/n)·X`, `H ← H + X̃ᵀX̃`, each
//!   step in that order and rounded in f32 (the scalar factors are computed
//!   in f64 and rounded to f32 once, as PyTorch does with Python scalars).
//!   `n` counts samples (sequences), not tokens.
//! * `X̃ᵀX̃` is computed as its upper triangle, in strips of rows, each one
//!   `gemm` call through `gptq_kernels::cpu::matmul_strided`, then mirrored;
//!   `gemm` splits the output among threads and reduces over tokens in a
//!   fixed `kc`-blocked order that depends on the shapes only, never on the
//!   thread count, and uses no atomics, so `H` is bit-identical for a given
//!   input whatever the thread count (tested below).
//! * [`Hessian::weighted_error`] evaluates `tr(ΔHΔᵀ) = Σ_r δ_r H δ_rᵀ` as
//!   `2·Σ_r δ_r T δ_rᵀ` with `T` the upper triangle of `H` whose diagonal is
//!   halved (valid as `H` is symmetric), which halves the GEMM work; the
//!   products are f32 GEMMs over column blocks, the final sums f64.

use crate::{Error, Result};
use gptq_kernels::cpu::{matmul_strided, Mat, MatMut};
use rayon::prelude::*;

/// Running `H = (2/n)·Σ_s X_sᵀX_s` of one linear layer's inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Hessian {
    /// `H`, `[in, in]` row-major, symmetric.
    h: Vec<f32>,
    /// Input features (`in`).
    columns: usize,
    /// Number of samples (sequences) accumulated.
    nsamples: usize,
}

impl Hessian {
    /// An empty Hessian (`H = 0`, `n = 0`) for a layer with `columns` inputs.
    pub fn new(columns: usize) -> Self {
        Self {
            h: vec![0.0; columns * columns],
            columns,
            nsamples: 0,
        }
    }

    /// Wraps a precomputed `H` (`[columns, columns]` row-major) that
    /// summarizes `nsamples` samples. `H` must be symmetric: the error and
    /// the solver each read one triangle only ([`Hessian::weighted_error`]
    /// the upper one; the solver, after act-order, either).
    pub fn from_matrix(h: Vec<f32>, columns: usize, nsamples: usize) -> Result<Self> {
        if h.len() != columns * columns {
            return Err(Error::Shape(format!(
                "a {columns}×{columns} Hessian needs {} values, got {}",
                columns * columns,
                h.len()
            )));
        }
        Ok(Self {
            h,
            columns,
            nsamples,
        })
    }

    /// Input features (side of `H`).
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// Samples accumulated so far (`n`).
    pub fn nsamples(&self) -> usize {
        self.nsamples
    }

    /// `H`, `[in, in]` row-major.
    pub fn matrix(&self) -> &[f32] {
        &self.h
    }

    /// The diagonal of `H`.
    pub fn diag(&self) -> Vec<f32> {
        (0..self.columns)
            .map(|i| self.h[i * (self.columns + 1)])
            .collect()
    }

    /// Adds one calibration sample: `x` holds the layer's inputs for the
    /// sample's `tokens` tokens, `[tokens, in]` row-major.
    pub fn add_batch(&mut self, x: &[f32], tokens: usize) -> Result<()> {
        self.add_samples(x, tokens, 1)
    }

    /// Adds `samples` calibration samples at once (the reference's
    /// `add_batch` with a batch of `samples` sequences): `x` is
    /// `[tokens, in]`, all the batch's tokens. `H ← H·n/(n+samples)`,
    /// `n ← n + samples`, `H += (2/n)·XᵀX`. With `samples = 1` per call this
    /// is the usual calibration loop.
    pub fn add_samples(&mut self, x: &[f32], tokens: usize, samples: usize) -> Result<()> {
        let n = self.columns;
        if x.len() != tokens * n {
            return Err(Error::Shape(format!(
                "inputs of {} values are not [{tokens}, {n}]",
                x.len()
            )));
        }
        if samples == 0 {
            return Err(Error::InvalidParams(
                "a batch must hold at least one sample".into(),
            ));
        }
        let old = self.nsamples;
        let new = old + samples;
        let decay = (old as f64 / new as f64) as f32;
        if old > 0 {
            self.h.iter_mut().for_each(|v| *v *= decay);
        }
        self.nsamples = new;
        if tokens == 0 || n == 0 {
            return Ok(());
        }
        let a = (2.0 / new as f64).sqrt() as f32;
        let xs: Vec<f32> = x.par_iter().map(|v| v * a).collect();
        let beta = if old > 0 { 1.0 } else { 0.0 };
        let threads = rayon::current_num_threads();
        // H is symmetric: only the upper triangle is computed, one strip of
        // HESSIAN_STRIP rows at a time (`H[I, i0..] += X[:, I]ᵀ X[:, i0..]`,
        // about half the work of the full product), then mirrored.
        for i0 in (0..n).step_by(HESSIAN_STRIP) {
            let i1 = (i0 + HESSIAN_STRIP).min(n);
            let xi = Mat {
                data: &xs[i0..],
                rows: i1 - i0,
                cols: tokens,
                row_stride: 1,
                col_stride: n,
            };
            let xj = Mat {
                data: &xs[i0..],
                rows: tokens,
                cols: n - i0,
                row_stride: n,
                col_stride: 1,
            };
            let dst = MatMut {
                data: &mut self.h[i0 * n + i0..],
                rows: i1 - i0,
                cols: n - i0,
                row_stride: n,
                col_stride: 1,
            };
            matmul_strided(dst, xi, xj, beta, threads);
        }
        mirror_upper(&mut self.h, n);
        Ok(())
    }

    /// `tr(ΔHΔᵀ) = Σ_r δ_r H δ_rᵀ` for a perturbation `Δ` (`[rows, in]`
    /// row-major), e.g. `Δ = W − Ŵ`. Since `H = (2/n)·Σ_s X_sᵀX_s`, this is
    /// `(2/n)·Σ_tokens ‖Δx‖²`: twice the mean over samples of the summed
    /// squared output error of the layer.
    pub fn weighted_error(&self, delta: &[f32], rows: usize) -> Result<f64> {
        let n = self.columns;
        if delta.len() != rows * n {
            return Err(Error::Shape(format!(
                "a perturbation of {} values is not [{rows}, {n}]",
                delta.len()
            )));
        }
        Ok(weighted_error(&self.h, n, delta, rows))
    }
}

/// Copies the upper triangle of `h` (`[n, n]`) onto the lower one, in
/// tiles so that the transposed reads stay in cache.
fn mirror_upper(h: &mut [f32], n: usize) {
    const T: usize = 32;
    for bi in (0..n).step_by(T) {
        for bj in (0..=bi).step_by(T) {
            for i in bi..(bi + T).min(n) {
                for j in bj..(bj + T).min(i) {
                    h[i * n + j] = h[j * n + i];
                }
            }
        }
    }
}

/// Rows per strip of the triangular Hessian update in
/// [`Hessian::add_samples`].
const HESSIAN_STRIP: usize = 128;

/// Columns per block of the triangular product in [`weighted_error`].
const ERR_BLOCK: usize = 256;

/// `tr(ΔHΔᵀ)` for `H` `[n, n]` and `Δ` `[rows, n]`, through
/// `P[:, J] = Δ[:, :j1]·H[:j1, J] + Δ[:, J]·T_JJ` per column block
/// `J = j1..j2` (`T_JJ` the block's upper triangle, diagonal halved) and
/// `2·Σ P∘Δ`.
pub(crate) fn weighted_error(h: &[f32], n: usize, delta: &[f32], rows: usize) -> f64 {
    if rows == 0 || n == 0 {
        return 0.0;
    }
    let threads = rayon::current_num_threads();
    let mut total = 0.0f64;
    let mut p = vec![0.0f32; rows * ERR_BLOCK.min(n)];
    let mut tjj = vec![0.0f32; ERR_BLOCK * ERR_BLOCK];
    for j1 in (0..n).step_by(ERR_BLOCK) {
        let j2 = (j1 + ERR_BLOCK).min(n);
        let bw = j2 - j1;
        for a in 0..bw {
            for b in 0..bw {
                let v = h[(j1 + a) * n + j1 + b];
                tjj[a * bw + b] = match a.cmp(&b) {
                    std::cmp::Ordering::Less => v,
                    std::cmp::Ordering::Equal => 0.5 * v,
                    std::cmp::Ordering::Greater => 0.0,
                };
            }
        }
        let p = &mut p[..rows * bw];
        let dm = |c0: usize, cols: usize| Mat {
            data: &delta[c0..],
            rows,
            cols,
            row_stride: n,
            col_stride: 1,
        };
        matmul_strided(
            MatMut::row_major(p, rows, bw),
            dm(j1, bw),
            Mat::row_major(&tjj[..bw * bw], bw, bw),
            0.0,
            threads,
        );
        if j1 > 0 {
            let hb = Mat {
                data: &h[j1..],
                rows: j1,
                cols: bw,
                row_stride: n,
                col_stride: 1,
            };
            matmul_strided(MatMut::row_major(p, rows, bw), dm(0, j1), hb, 1.0, threads);
        }
        total += p
            .par_chunks(bw)
            .enumerate()
            .map(|(r, pr)| {
                let dr = &delta[r * n + j1..r * n + j2];
                pr.iter()
                    .zip(dr)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
            })
            .collect::<Vec<f64>>()
            .iter()
            .sum::<f64>();
    }
    2.0 * total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn accumulation_matches_naive_f64() {
        // 37: one strip; 300: three strips of the triangular update.
        for n in [37, 300] {
            accumulation_matches_naive_f64_at(n);
        }
    }

    fn accumulation_matches_naive_f64_at(n: usize) {
        let mut h = Hessian::new(n);
        let mut naive = vec![0.0f64; n * n];
        let lens = [5usize, 64, 1, 200, 33];
        for (s, &t) in lens.iter().enumerate() {
            let x = data(t * n, s as u64);
            h.add_batch(&x, t).unwrap();
            for i in 0..n {
                for j in 0..n {
                    let mut acc = 0.0f64;
                    for k in 0..t {
                        acc += x[k * n + i] as f64 * x[k * n + j] as f64;
                    }
                    naive[i * n + j] += acc;
                }
            }
        }
        assert_eq!(h.nsamples(), lens.len());
        let scale = 2.0 / lens.len() as f64;
        for (a, b) in h.matrix().iter().zip(&naive) {
            let b = b * scale;
            assert!(
                (*a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{a} vs {b}"
            );
        }
        // Symmetric.
        for i in 0..n {
            for j in 0..n {
                assert_eq!(h.matrix()[i * n + j], h.matrix()[j * n + i]);
            }
        }
    }

    #[test]
    fn batched_samples_average_by_sequence_count() {
        let n = 8;
        let x = data(10 * n, 3);
        let mut a = Hessian::new(n);
        a.add_samples(&x, 10, 2).unwrap();
        assert_eq!(a.nsamples(), 2);
        let mut b = Hessian::new(n);
        b.add_batch(&x, 10).unwrap();
        // Same X, one sample: H = 2·XᵀX; as two samples: H = XᵀX.
        for (u, v) in a.matrix().iter().zip(b.matrix()) {
            assert!((2.0 * u - v).abs() <= 1e-6 * (1.0 + v.abs()));
        }
        assert!(a.add_batch(&x[1..], 10).is_err());
        assert!(a.add_samples(&x, 10, 0).is_err());
    }

    #[test]
    fn accumulation_is_bitwise_deterministic_across_thread_counts() {
        let n = 300;
        let t = 700;
        let xs: Vec<Vec<f32>> = (0..3).map(|s| data(t * n, 10 + s)).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut h = Hessian::new(n);
                for x in &xs {
                    h.add_batch(x, t).unwrap();
                }
                h
            })
        };
        let one = run(1);
        assert_eq!(one, run(3));
        assert_eq!(one, run(8));
    }

    #[test]
    fn weighted_error_matches_naive() {
        for (rows, n) in [(3usize, 5usize), (7, 256), (5, 300), (2, 600)] {
            let x = data(40 * n, n as u64);
            let mut h = Hessian::new(n);
            h.add_batch(&x, 40).unwrap();
            let d = data(rows * n, 99);
            let got = h.weighted_error(&d, rows).unwrap();
            let m = h.matrix();
            let mut want = 0.0f64;
            for r in 0..rows {
                for i in 0..n {
                    for j in 0..n {
                        want += d[r * n + i] as f64 * m[i * n + j] as f64 * d[r * n + j] as f64;
                    }
                }
            }
            assert!(
                (got - want).abs() <= 1e-4 * want.abs(),
                "{rows}×{n}: {got} vs {want}"
            );
            // Equals (2/n_s)·Σ_tokens ‖Δx‖² with n_s = 1.
            let mut direct = 0.0f64;
            for k in 0..40 {
                for r in 0..rows {
                    let y: f64 = (0..n)
                        .map(|i| d[r * n + i] as f64 * x[k * n + i] as f64)
                        .sum();
                    direct += y * y;
                }
            }
            assert!((got - 2.0 * direct).abs() <= 1e-4 * got.abs());
        }
        assert!(Hessian::new(4).weighted_error(&[0.0; 7], 2).is_err());
    }
}
