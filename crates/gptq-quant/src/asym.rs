//! Asymmetric calibration: quantize a layer to reproduce the
//! full-precision model's outputs, not its own (already perturbed) inputs'
//! image.
//!
//! Textbook GPTQ minimizes `‖(W − Q)X̃‖²` where `X̃` are the layer's inputs
//! in the partly quantized model (earlier layers already quantized). The
//! error those earlier layers made is taken as given. With `X` the inputs
//! of the same tokens in the full-precision model, the objective that
//! matters is `‖WX − QX̃‖²` (the asymmetric objective of GPTAQ, Li et al.
//! 2025, arXiv 2504.02692). Writing `Δ = X − X̃`,
//!
//! `‖WX − QX̃‖² = ‖(W′ − Q)X̃‖² + const`, with `W′ = W + W·ΔX̃ᵀ·(X̃X̃ᵀ)⁻¹`,
//!
//! the least-squares optimum of the unconstrained problem (normal equations
//! `Q·X̃X̃ᵀ = W·XX̃ᵀ`). So GPTQ run on the target `W′` with the usual `H` of
//! `X̃` solves the asymmetric problem; nothing else in the solver changes.
//! In row-per-token layout (what the pipeline sees) the cross term is
//! `C = Σ_tokens (x − x̃)ᵀ x̃` (`[in, in]`, not symmetric), scaled like `H`
//! (`2/n` over `n` samples), and `W′ = W + W·C·(H + λI)⁻¹` with the solver's
//! damping `λ` (dead columns get `H_ii = 1` first, as in the solver).
//!
//! This file owns the cross term ([`CrossTerm`]) and the target
//! ([`asymmetric_targets`]); the pipeline runs the full-precision block
//! beside the quantized one to get `X`.

use crate::gptq::{column_order_from_diag, weight_dims, GptqParams, GptqResult, LayerSolver};
use crate::hessian::Hessian;
use crate::{Error, Result};
use gptq_core::Tensor;
use gptq_kernels::cpu::{matmul_strided, Mat, MatMut};
use rayon::prelude::*;

/// The running cross term `C = (2/n)·Σ_s (X_s − X̃_s)ᵀ X̃_s` over calibration
/// samples, `[in, in]` row-major f32, with [`Hessian`]'s running scaling.
#[derive(Clone, Debug)]
pub struct CrossTerm {
    c: Vec<f32>,
    columns: usize,
    nsamples: usize,
}

impl CrossTerm {
    /// An empty cross term for layers with `columns` inputs.
    pub fn new(columns: usize) -> Self {
        Self {
            c: vec![0.0; columns * columns],
            columns,
            nsamples: 0,
        }
    }

    /// A cross term from its matrix (`[columns, columns]` row-major, already
    /// scaled) and the number of samples it averages, e.g. one accumulated
    /// on a GPU.
    pub fn from_matrix(c: Vec<f32>, columns: usize, nsamples: usize) -> Result<Self> {
        if c.len() != columns * columns {
            return Err(Error::Shape(format!(
                "a cross term of {} values is not {columns}×{columns}",
                c.len()
            )));
        }
        Ok(Self {
            c,
            columns,
            nsamples,
        })
    }

    /// Input features.
    pub fn columns(&self) -> usize {
        self.columns
    }

    /// Samples added so far.
    pub fn nsamples(&self) -> usize {
        self.nsamples
    }

    /// `C`, `[in, in]` row-major: `C[i, j] = (2/n)·Σ_tokens (x − x̃)_i x̃_j`.
    pub fn matrix(&self) -> &[f32] {
        &self.c
    }

    /// Adds one sample: `x_fp` (the full-precision model's inputs) and
    /// `x_q` (the quantized model's), both `[tokens, in]` row-major.
    /// `C ← C·n/(n+1)`, `n ← n + 1`, `C += (2/n)·(X − X̃)ᵀX̃`.
    pub fn add_batch(&mut self, x_fp: &[f32], x_q: &[f32], tokens: usize) -> Result<()> {
        let n = self.columns;
        if x_fp.len() != tokens * n || x_q.len() != tokens * n {
            return Err(Error::Shape(format!(
                "cross-term inputs of {} and {} values are not [{tokens}, {n}]",
                x_fp.len(),
                x_q.len()
            )));
        }
        let old = self.nsamples;
        let new = old + 1;
        if old > 0 {
            let decay = (old as f64 / new as f64) as f32;
            self.c.iter_mut().for_each(|v| *v *= decay);
        }
        self.nsamples = new;
        if tokens == 0 || n == 0 {
            return Ok(());
        }
        // Both factors scaled by sqrt(2/n), as the Hessian's.
        let a = (2.0 / new as f64).sqrt() as f32;
        let d: Vec<f32> = x_fp
            .par_iter()
            .zip(x_q.par_iter())
            .map(|(f, q)| (f - q) * a)
            .collect();
        let q: Vec<f32> = x_q.par_iter().map(|v| v * a).collect();
        let dt = Mat {
            data: &d,
            rows: n,
            cols: tokens,
            row_stride: 1,
            col_stride: n,
        };
        let qm = Mat {
            data: &q,
            rows: tokens,
            cols: n,
            row_stride: n,
            col_stride: 1,
        };
        let dst = MatMut {
            data: &mut self.c,
            rows: n,
            cols: n,
            row_stride: n,
            col_stride: 1,
        };
        let beta = if old > 0 { 1.0 } else { 0.0 };
        matmul_strided(dst, dt, qm, beta, rayon::current_num_threads());
        Ok(())
    }
}

/// The asymmetric targets `W′ = W + W·C·(H + λI)⁻¹` of weights that share
/// `h` and `c`, with `λ = damp_percent·mean(diag H)` (after dead columns'
/// `H_ii ← 1`), raised ×10 up to [`crate::MAX_DAMP_RETRIES`] times when
/// `H + λI` is not positive definite, through the solver's own loop
/// ([`crate::ColumnOrder::damped`]). Computed in f64 (faer), rounded
/// once to f32.
pub fn asymmetric_targets(
    ws: &[&Tensor],
    h: &Hessian,
    c: &CrossTerm,
    damp_percent: f32,
) -> Result<Vec<Tensor>> {
    let inn = h.columns();
    if c.columns() != inn {
        return Err(Error::Shape(format!(
            "the cross term is {0}×{0} but the Hessian is {inn}×{inn}",
            c.columns()
        )));
    }
    let hm = h.matrix();
    let cm = c.matrix();
    if hm.iter().chain(cm).any(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: "Hessian or cross term",
        });
    }
    // Dead columns and the damping loop exactly as the solver's (same
    // λ, same retries and warnings): `ColumnOrder::damped`.
    let params = GptqParams {
        damp_percent,
        desc_act: false,
        ..GptqParams::default()
    };
    let order = column_order_from_diag(h.diag(), &params);
    let (llt, _) = order.damped(&params, |damp| {
        let hd = faer::Mat::<f64>::from_fn(inn, inn, |i, j| {
            if i == j {
                (order.diag[i] + damp) as f64
            } else {
                hm[i * inn + j] as f64
            }
        });
        Ok(hd.llt(faer::Side::Lower).ok())
    })?;
    let cmat = faer::Mat::<f64>::from_fn(inn, inn, |i, j| cm[i * inn + j] as f64);
    ws.iter()
        .map(|w| {
            let (out, win) = weight_dims(w)?;
            if win != inn {
                return Err(Error::Shape(format!(
                    "the Hessian is {inn}×{inn} but the weight has {win} input features"
                )));
            }
            let wd = w.data();
            if wd.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite { what: "weight" });
            }
            let wm = faer::Mat::<f64>::from_fn(out, inn, |r, i| wd[r * inn + i] as f64);
            // (W C)ᵀ = Cᵀ Wᵀ, solved in place: X = (H+λI)⁻¹ (W C)ᵀ, so
            // W′ = W + Xᵀ (H symmetric).
            let mut rhs = cmat.transpose() * wm.transpose();
            faer::linalg::solvers::Solve::solve_in_place(&llt, rhs.as_mut());
            let data: Vec<f32> = (0..out * inn)
                .map(|k| {
                    let (r, i) = (k / inn, k % inn);
                    (wd[k] as f64 + rhs[(i, r)]) as f32
                })
                .collect();
            Ok(Tensor::new(vec![out, inn], data)?)
        })
        .collect()
}

/// GPTQ by `solver` of weights sharing `h`: towards their asymmetric
/// targets ([`asymmetric_targets`], with the solver's damping) when the
/// cross term `c` is given, towards the weights themselves otherwise.
pub fn quantize_towards(
    solver: &dyn LayerSolver,
    ws: &[&Tensor],
    h: &Hessian,
    c: Option<&CrossTerm>,
    params: &GptqParams,
) -> Result<Vec<GptqResult>> {
    match c {
        Some(c) => {
            let targets = asymmetric_targets(ws, h, c, params.damp_percent)?;
            solver.quantize_many(&targets.iter().collect::<Vec<_>>(), h, params)
        }
        None => solver.quantize_many(ws, h, params),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// With no damping, `W′` solves the normal equations
    /// `W′·X̃ᵀX̃ = W·XᵀX̃` (row-per-token layout), checked in f64.
    #[test]
    fn target_solves_the_normal_equations() {
        let (tokens, inn, out) = (64, 12, 5);
        let mut s = 7u64;
        let xq: Vec<f32> = (0..tokens * inn).map(|_| lcg(&mut s)).collect();
        let xf: Vec<f32> = xq.iter().map(|v| v + 0.1 * lcg(&mut s)).collect();
        let w = Tensor::new(
            vec![out, inn],
            (0..out * inn).map(|_| lcg(&mut s)).collect(),
        )
        .expect("shape");
        let mut h = Hessian::new(inn);
        h.add_batch(&xq, tokens).expect("h");
        let mut c = CrossTerm::new(inn);
        c.add_batch(&xf, &xq, tokens).expect("c");
        let t = asymmetric_targets(&[&w], &h, &c, 0.0).expect("solve");
        let wp = t[0].data();
        for r in 0..out {
            for j in 0..inn {
                // lhs = Σ_i W′[r,i] (X̃ᵀX̃)[i,j], rhs = Σ_i W[r,i] (XᵀX̃)[i,j]
                let (mut lhs, mut rhs) = (0.0f64, 0.0f64);
                for i in 0..inn {
                    let (mut g, mut x) = (0.0f64, 0.0f64);
                    for k in 0..tokens {
                        g += xq[k * inn + i] as f64 * xq[k * inn + j] as f64;
                        x += xf[k * inn + i] as f64 * xq[k * inn + j] as f64;
                    }
                    lhs += wp[r * inn + i] as f64 * g;
                    rhs += w.data()[r * inn + i] as f64 * x;
                }
                // f32 accumulation of H and C over 64 tokens: ~1e-5 relative.
                assert!(
                    (lhs - rhs).abs() <= 1e-3 * rhs.abs().max(1.0),
                    "{lhs} vs {rhs}"
                );
            }
        }
    }

    /// Identical inputs (no upstream error): the target is `W` itself.
    #[test]
    fn no_upstream_error_keeps_the_weight() {
        let (tokens, inn, out) = (32, 8, 3);
        let mut s = 3u64;
        let x: Vec<f32> = (0..tokens * inn).map(|_| lcg(&mut s)).collect();
        let w = Tensor::new(
            vec![out, inn],
            (0..out * inn).map(|_| lcg(&mut s)).collect(),
        )
        .expect("shape");
        let mut h = Hessian::new(inn);
        h.add_batch(&x, tokens).expect("h");
        let mut c = CrossTerm::new(inn);
        c.add_batch(&x, &x, tokens).expect("c");
        assert!(c.matrix().iter().all(|&v| v == 0.0));
        let t = asymmetric_targets(&[&w], &h, &c, 0.01).expect("solve");
        assert_eq!(t[0].data(), w.data());
    }

    #[test]
    fn mismatched_inputs_are_errors() {
        let mut c = CrossTerm::new(4);
        assert!(c.add_batch(&[0.0; 8], &[0.0; 7], 2).is_err());
        let h = Hessian::new(5);
        let w = Tensor::new(vec![1, 4], vec![0.0; 4]).expect("shape");
        assert!(asymmetric_targets(&[&w], &h, &CrossTerm::new(4), 0.01).is_err());
    }
}
