//! `gptq bench solve --device cuda`: the per-layer GPTQ solve (Hessian
//! given) on Llama-shaped layers, timed on the GPU. The data follow the
//! PyTorch reference's benchmark (`scripts/research/gptq_torch.py
//! --bench-solve`) so the two can run side by side: 4096 tokens of
//! normal inputs whose first 8 channels are 30× larger, `H = (2/4096)·XᵀX`,
//! `W ~ N(0, 0.02²)`, 4-bit groups of 128, asymmetric, 1 % damping.

use crate::solve::Solver;
use crate::{Cuda, Result};
use gptq_quant::GptqParams;
use std::sync::Arc;
use std::time::Instant;

/// One timed shape and setting.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SolveRow {
    /// Input features (the Hessian's side).
    pub cols: usize,
    /// Output features.
    pub rows: usize,
    pub act_order: bool,
    /// Mean seconds of dead columns + order + damped `U` (cuSOLVER).
    pub prepare_s: f64,
    /// Mean seconds of the column loop (codes, scales, zeros on the device).
    pub loop_s: f64,
    /// `prepare_s + loop_s`: what the reference's `fasterquant` does.
    pub solve_s: f64,
    /// Seconds of the two error evaluations (GPTQ and RTN), not in `solve_s`.
    pub errors_s: f64,
    pub error_gptq: f64,
    pub error_rtn: f64,
}

/// Roughly normal values (sum of four uniforms, scaled to unit variance)
/// from a seeded xorshift.
pub fn normal_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let k = scale * 3.0f32.sqrt();
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u: f32 = (0..4)
                .map(|j| ((s.rotate_left(16 * j) >> 40) as f32 / (1u64 << 24) as f32) - 0.5)
                .sum();
            u * k
        })
        .collect()
}

/// Times `reps` solves per shape `(cols, rows)`, act-order off and on,
/// after one warm-up each.
pub fn bench_solve(
    dev: &Arc<Cuda>,
    shapes: &[(usize, usize)],
    reps: usize,
) -> Result<Vec<SolveRow>> {
    let solver = Solver::new(dev.clone())?;
    let tokens = 4096;
    let mut out = Vec::new();
    for (si, &(cols, rows)) in shapes.iter().enumerate() {
        let mut x = normal_values(tokens * cols, 1 + si as u64, 1.0);
        for row in x.chunks_exact_mut(cols) {
            for v in &mut row[..8.min(cols)] {
                *v *= 30.0;
            }
        }
        let xd = dev.upload(&x)?;
        drop(x);
        let mut h = dev.zeros::<f32>(cols * cols)?;
        solver.accumulate_hessian(&mut h, &xd, tokens, cols, 2.0 / tokens as f32, 0.0)?;
        drop(xd);
        let w = dev.upload(&normal_values(rows * cols, 100 + si as u64, 0.02))?;
        for act in [false, true] {
            let params = GptqParams {
                bits: 4,
                group_size: Some(128),
                sym: false,
                desc_act: act,
                ..Default::default()
            };
            let once = || -> Result<(f64, f64, crate::solve::DeviceSolved)> {
                dev.synchronize()?;
                let t0 = Instant::now();
                let prep = solver.prepare(&h, cols, &params)?;
                dev.synchronize()?;
                let t1 = Instant::now();
                let s = solver.solve(&w, rows, &prep, &params)?;
                dev.synchronize()?;
                let t2 = Instant::now();
                Ok(((t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64(), s))
            };
            let (_, _, solved) = once()?; // warm-up (and the result for the errors)
            let (mut p, mut l) = (0.0, 0.0);
            for _ in 0..reps.max(1) {
                let (a, b, _) = once()?;
                p += a;
                l += b;
            }
            let n = reps.max(1) as f64;
            let t0 = Instant::now();
            let (eg, er) = solver.errors(&w, &h, &solved, &params)?;
            dev.synchronize()?;
            let row = SolveRow {
                cols,
                rows,
                act_order: act,
                prepare_s: p / n,
                loop_s: l / n,
                solve_s: (p + l) / n,
                errors_s: t0.elapsed().as_secs_f64(),
                error_gptq: eg,
                error_rtn: er,
            };
            eprintln!(
                "solve {cols}x{rows} act-order {act}: {:.4} s (prepare {:.4} + loop {:.4})",
                row.solve_s, row.prepare_s, row.loop_s
            );
            out.push(row);
        }
    }
    Ok(out)
}
