//! Row-wise and elementwise ops of a transformer block, on row-major f32
//! buffers whose rows are the last dimension. Parallel over rows with rayon.

use rayon::prelude::*;

/// Rows per rayon task: small rows are batched so task overhead stays low.
fn chunk_rows(cols: usize) -> usize {
    (16384 / cols.max(1)).max(1)
}

/// RMSNorm (Zhang & Sennrich 2019): `y = x / sqrt(mean(x²) + eps) · w`,
/// in f32 as transformers computes it (lane-parallel sum of squares).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    assert_eq!(x.len(), out.len());
    assert_eq!(x.len() % h, 0);
    let cr = chunk_rows(h);
    out.par_chunks_mut(h * cr)
        .zip(x.par_chunks(h * cr))
        .for_each(|(o, xi)| {
            for (o, xi) in o.chunks_mut(h).zip(xi.chunks(h)) {
                let ms = xi.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / h as f64;
                let r = (1.0 / (ms + eps as f64).sqrt()) as f32;
                for ((o, &v), &g) in o.iter_mut().zip(xi).zip(w) {
                    *o = v * r * g;
                }
            }
        });
}

/// LayerNorm (Ba et al. 2016): `y = (x − mean) / sqrt(var + eps) · w + b`
/// (biased variance, as torch).
pub fn layer_norm(
    x: &[f32],
    w: Option<&[f32]>,
    b: Option<&[f32]>,
    h: usize,
    eps: f32,
    out: &mut [f32],
) {
    assert_eq!(x.len(), out.len());
    assert_eq!(x.len() % h, 0);
    let cr = chunk_rows(h);
    out.par_chunks_mut(h * cr)
        .zip(x.par_chunks(h * cr))
        .for_each(|(o, xi)| {
            for (o, xi) in o.chunks_mut(h).zip(xi.chunks(h)) {
                let mean = xi.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
                let var = xi.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
                let r = 1.0 / (var + eps as f64).sqrt();
                for (j, (o, &v)) in o.iter_mut().zip(xi).enumerate() {
                    let mut y = ((v as f64 - mean) * r) as f32;
                    if let Some(w) = w {
                        y *= w[j];
                    }
                    if let Some(b) = b {
                        y += b[j];
                    }
                    *o = y;
                }
            }
        });
}

/// Adds `bias` to every row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    assert_eq!(x.len() % n, 0);
    x.par_chunks_mut(n * chunk_rows(n)).for_each(|c| {
        for row in c.chunks_mut(n) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    });
}

/// `x += y` elementwise.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len());
    x.par_chunks_mut(16384)
        .zip(y.par_chunks(16384))
        .for_each(|(a, b)| {
            for (a, b) in a.iter_mut().zip(b) {
                *a += b;
            }
        });
}

/// SiLU-gated product of a SwiGLU MLP: `gate ← silu(gate) · up`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    gate.par_chunks_mut(16384)
        .zip(up.par_chunks(16384))
        .for_each(|(g, u)| {
            for (g, &u) in g.iter_mut().zip(u) {
                let s = *g / (1.0 + (-*g).exp());
                *g = s * u;
            }
        });
}

/// ReLU in place.
pub fn relu(x: &mut [f32]) {
    x.par_chunks_mut(16384).for_each(|c| {
        for v in c {
            *v = v.max(0.0);
        }
    });
}

/// GELU (tanh approximation off: the exact erf form, as torch's default).
pub fn gelu(x: &mut [f32]) {
    x.par_chunks_mut(16384).for_each(|c| {
        for v in c {
            let t = *v as f64;
            *v = (0.5 * t * (1.0 + erf(t / std::f64::consts::SQRT_2))) as f32;
        }
    });
}

/// erf via Abramowitz–Stegun 7.1.26 refined — max error 1.5e-7, below f32 eps.
fn erf(x: f64) -> f64 {
    let s = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.3275911 * x);
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
            + 0.254829592)
            * t
            * (-x * x).exp();
    s * y
}

/// Rotary embedding, HF "rotate_half" layout, in place on `x` with rows of
/// `n_heads × head_dim`. `cos`/`sin` are `[rows, head_dim/2]`, one row per
/// position of the matching row of `x`: for each head and `i < d/2`,
/// `(x_i, x_{i+d/2}) ← (x_i·c − x_{i+d/2}·s, x_{i+d/2}·c + x_i·s)`.
pub fn rope_rotate_half(x: &mut [f32], n_heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    let row = n_heads * head_dim;
    assert_eq!(x.len() % row, 0);
    let rows = x.len() / row;
    assert_eq!(cos.len(), rows * half);
    assert_eq!(sin.len(), rows * half);
    x.par_chunks_mut(row).enumerate().for_each(|(r, xr)| {
        let c = &cos[r * half..(r + 1) * half];
        let s = &sin[r * half..(r + 1) * half];
        for h in xr.chunks_mut(head_dim) {
            let (a, b) = h.split_at_mut(half);
            for i in 0..half {
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * c[i] - x1 * s[i];
                b[i] = x1 * c[i] + x0 * s[i];
            }
        }
    });
}

/// Softmax of one row in place (max-subtracted, f32).
pub fn softmax_row(x: &mut [f32]) {
    super::simd::softmax(x)
}

/// `log Σ exp(x)` of a row (block sums in f64).
pub fn log_sum_exp(x: &[f32]) -> f64 {
    super::simd::log_sum_exp(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_definition() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let w = [1.0f32, 0.5];
        let mut o = [0.0; 4];
        rms_norm(&x, &w, 0.0, &mut o);
        let r0 = (2.5f32).sqrt();
        assert!((o[0] - 1.0 / r0).abs() < 1e-6 && (o[1] - 0.5 * 2.0 / r0).abs() < 1e-6);
    }

    #[test]
    fn layer_norm_zero_mean_unit_var() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut o = [0.0; 4];
        layer_norm(&x, None, None, 4, 0.0, &mut o);
        let mean: f32 = o.iter().sum::<f32>() / 4.0;
        let var: f32 = o.iter().map(|v| v * v).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
    }

    #[test]
    fn erf_is_accurate() {
        // Reference values of erf.
        for (x, e) in [
            (0.0, 0.0),
            (0.5, 0.5204998778),
            (1.0, 0.8427007929),
            (-2.0, -0.9953222650),
        ] {
            assert!((erf(x) - e).abs() < 2e-7, "erf({x})");
        }
    }

    #[test]
    fn rope_rotates_pairs() {
        // one head of dim 4, angle 90°: (a, b, c, d) -> (-c, -d, a, b)
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope_rotate_half(&mut x, 1, 4, &[0.0, 0.0], &[1.0, 1.0]);
        assert_eq!(x, [-3.0, -4.0, 1.0, 2.0]);
    }

    #[test]
    fn softmax_and_lse_agree() {
        let x = [0.5f32, -1.0, 2.0];
        let mut p = x;
        softmax_row(&mut p);
        let lse = log_sum_exp(&x);
        for (pi, xi) in p.iter().zip(x) {
            assert!(((*pi as f64).ln() - (xi as f64 - lse)).abs() < 1e-6);
        }
    }
}
