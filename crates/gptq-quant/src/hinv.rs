//! The upper Cholesky factor of the inverse Hessian that drives GPTQ's
//! updates (Frantar et al. 2022, arXiv 2210.17323, §3 "Step 3: Cholesky
//! reformulation"): `U` upper triangular with `H⁻¹ = UᵀU`.
//!
//! This file owns the factorization only; damping and retries are the
//! solver's (`gptq.rs`).
//!
//! # Numerics
//!
//! The reference computes `L = chol(H)`, `H⁻¹ = L⁻ᵀL⁻¹`
//! (`cholesky_inverse`), `U = chol(H⁻¹, upper)` in f32: three `O(n³)` steps.
//! Here the same `U` (the upper Cholesky factor of `H⁻¹` is unique) comes
//! from one Cholesky factorization and one triangular inverse, in f64 with
//! faer, then rounded to f32 once:
//!
//! with `J` the exchange (reversal) matrix, `JHJ = MMᵀ` (`M` lower), so
//! `H = (JMJ)(JMJ)ᵀ` with `JMJ` upper, hence
//! `H⁻¹ = (JM⁻¹J)ᵀ(JM⁻¹J)` and `U = JM⁻¹J`.
//!
//! In f64 the relative error of `U` stays near f32's rounding
//! (`κ·2⁻⁵³ ≲ 2⁻²⁴`) for damped condition numbers `κ` up to ~10⁸, where the
//! reference's f32 pipeline already loses digits. The factorization fails
//! when a pivot is non-positive or NaN in f64 arithmetic (the damped `H` is
//! not numerically positive definite), and a factor with a non-finite entry
//! is rejected the same way. `U` does not depend on the
//! thread count (tested bitwise for n = 700 with 1 to 8 threads).

use faer::linalg::cholesky::llt::factor::{
    cholesky_in_place, cholesky_in_place_scratch, LltRegularization,
};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Mat, Par};

/// Cholesky failure: the matrix is not (numerically) positive definite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotPd;

fn par(n: usize) -> Par {
    if n >= 256 && rayon::current_num_threads() > 1 {
        Par::rayon(0)
    } else {
        Par::Seq
    }
}

/// `U` (upper, `[n, n]` row-major f32, zeros below the diagonal) with
/// `A⁻¹ = UᵀU`, for the symmetric `A` given by `a(i, j)` (only `i ≥ j` is
/// read).
pub(crate) fn upper_inverse_factor(
    n: usize,
    a: impl Fn(usize, usize) -> f64,
) -> Result<Vec<f32>, NotPd> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let par = par(n);
    // Lower triangle of JAJ: (JAJ)[i, j] = A[n-1-i, n-1-j] = A[n-1-j, n-1-i]
    // by symmetry, and for i ≥ j that is a(first ≥ second): A's lower
    // triangle, the only part `a` is asked for.
    let mut m = Mat::<f64>::from_fn(
        n,
        n,
        |i, j| if i >= j { a(n - 1 - j, n - 1 - i) } else { 0.0 },
    );
    let mut mem = faer::dyn_stack::MemBuffer::new(cholesky_in_place_scratch::<f64>(
        n,
        par,
        Default::default(),
    ));
    let stack = faer::dyn_stack::MemStack::new(&mut mem);
    cholesky_in_place(
        m.as_mut(),
        LltRegularization::default(),
        par,
        stack,
        Default::default(),
    )
    .map_err(|_| NotPd)?;
    // cholesky_in_place leaves the strict upper triangle untouched; clear it.
    for j in 1..n {
        for i in 0..j {
            m[(i, j)] = 0.0;
        }
    }
    let mut minv = Mat::<f64>::zeros(n, n);
    invert_lower_triangular(minv.as_mut(), m.as_ref(), par);
    drop(m);
    // U[i, j] = M⁻¹[n-1-i, n-1-j]: a reversed transpose of a column-major
    // matrix into a row-major one, in tiles so both sides stay in cache.
    const TILE: usize = 32;
    let mut u = vec![0.0f32; n * n];
    for i0 in (0..n).step_by(TILE) {
        for j0 in (i0..n).step_by(TILE) {
            for j in j0.max(i0)..(j0 + TILE).min(n) {
                let col = minv.col(n - 1 - j);
                for i in i0..(i0 + TILE).min(j + 1) {
                    u[i * n + j] = col[n - 1 - i] as f32;
                }
            }
        }
    }
    if u.iter().any(|v| !v.is_finite()) || (0..n).any(|i| u[i * n + i] <= 0.0) {
        return Err(NotPd);
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive f64 Cholesky, lower: A = LLᵀ.
    fn chol(a: &[f64], n: usize) -> Option<Vec<f64>> {
        let mut l = vec![0.0; n * n];
        for j in 0..n {
            let mut d = a[j * n + j];
            for k in 0..j {
                d -= l[j * n + k] * l[j * n + k];
            }
            if d.is_nan() || d <= 0.0 {
                return None;
            }
            let d = d.sqrt();
            l[j * n + j] = d;
            for i in j + 1..n {
                let mut s = a[i * n + j];
                for k in 0..j {
                    s -= l[i * n + k] * l[j * n + k];
                }
                l[i * n + j] = s / d;
            }
        }
        Some(l)
    }

    fn inverse_spd(a: &[f64], n: usize) -> Vec<f64> {
        // Gauss-Jordan, fine for small well-conditioned test matrices.
        let mut m = a.to_vec();
        let mut inv: Vec<f64> = (0..n * n)
            .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
            .collect();
        for c in 0..n {
            let p = m[c * n + c];
            for j in 0..n {
                m[c * n + j] /= p;
                inv[c * n + j] /= p;
            }
            for r in 0..n {
                if r != c {
                    let f = m[r * n + c];
                    for j in 0..n {
                        m[r * n + j] -= f * m[c * n + j];
                        inv[r * n + j] -= f * inv[c * n + j];
                    }
                }
            }
        }
        inv
    }

    #[test]
    fn matches_the_reference_pipeline() {
        for n in [1usize, 2, 7, 40, 300] {
            // A = BᵀB + I, well conditioned.
            let b: Vec<f64> = (0..n * n)
                .map(|k| ((k * 7919 % 1009) as f64 / 1009.0) - 0.5)
                .collect();
            let mut a = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] =
                        (0..n).map(|k| b[k * n + i] * b[k * n + j]).sum::<f64>() / n as f64;
                }
                a[i * n + i] += 1.0;
            }
            let u = upper_inverse_factor(n, |i, j| a[i * n + j]).unwrap();
            // Reference: U = chol(A⁻¹, upper) = chol(A⁻¹, lower)ᵀ.
            let l = chol(&inverse_spd(&a, n), n).unwrap();
            for i in 0..n {
                for j in 0..n {
                    let want = if j >= i { l[j * n + i] } else { 0.0 };
                    let got = u[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                        "n {n} ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_indefinite_and_nan() {
        assert_eq!(
            upper_inverse_factor(3, |i, j| if i == j { -1.0 } else { 0.0 }),
            Err(NotPd)
        );
        assert_eq!(upper_inverse_factor(2, |_, _| f64::NAN), Err(NotPd));
        // Singular PSD: [[1,1],[1,1]].
        assert_eq!(upper_inverse_factor(2, |_, _| 1.0), Err(NotPd));
    }

    #[test]
    fn factor_is_bitwise_independent_of_thread_count() {
        let n = 700;
        let b: Vec<f64> = (0..n * n)
            .map(|k| ((k * 7919 % 1009) as f64 / 1009.0) - 0.5)
            .collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let v = (0..n).map(|k| b[k * n + i] * b[k * n + j]).sum::<f64>() / n as f64;
                a[i * n + j] = v;
                a[j * n + i] = v;
            }
            a[i * n + i] += 0.01;
        }
        let run = |t: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| upper_inverse_factor(n, |i, j| a[i * n + j]).unwrap())
        };
        let one = run(1);
        for t in [2usize, 3, 8] {
            assert!(one == run(t), "{t} threads");
        }
    }
}
