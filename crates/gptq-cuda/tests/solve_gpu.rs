//! The GPU solver against the CPU solver on random layers: every bit width,
//! group size, act-order, static groups, sym/asym, dead columns. Needs a
//! CUDA GPU: `cargo test -p gptq-cuda --release --test solve_gpu -- --ignored`
//! (see `bench/cuda_solve.sh`, which runs it on the GPU machine).

use gptq_core::Tensor;
use gptq_cuda::bench_solve::normal_values;
use gptq_cuda::{Cuda, Solver};
use gptq_quant::{gptq_quantize_many, GptqParams, Hessian};
use std::sync::Arc;

/// A layer and the Hessian of inputs with a few large channels, correlated
/// features and `dead` always-zero input columns.
fn layer(out: usize, inn: usize, tokens: usize, dead: &[usize], seed: u64) -> (Tensor, Hessian) {
    let w = normal_values(out * inn, seed, 0.05);
    let mut x = normal_values(tokens * inn, seed + 1, 1.0);
    for row in x.chunks_exact_mut(inn) {
        for v in row.iter_mut().take(4) {
            *v *= 20.0;
        }
        for c in 1..inn {
            row[c] += 0.5 * row[c - 1];
        }
        for &c in dead {
            row[c] = 0.0;
        }
    }
    let mut h = Hessian::new(inn);
    for s in x.chunks(tokens / 4 * inn) {
        h.add_batch(s, s.len() / inn).expect("hessian");
    }
    (Tensor::new(vec![out, inn], w).expect("tensor"), h)
}

/// Fraction of differing codes allowed. The trailing GEMM (cuBLAS vs the
/// CPU's `gemm`) and U (cuSOLVER vs faer) round differently in the last
/// bit; a value that lands on the other side of a rounding boundary changes
/// one code and, through its error, the row's later columns. Measured on
/// these layers: see the printed fractions (well under this bound); a real
/// divergence (wrong group, order or update) changes most codes.
const MAX_CODE_DIFF: f64 = 0.02;

/// Relative difference allowed between the two backends' `tr(ΔHΔᵀ)`: the
/// same codes up to the fraction above, errors summed in f32 GEMMs of
/// different order.
const MAX_ERR_REL: f64 = 0.02;

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_solver_matches_cpu_solver() {
    let dev = Arc::new(Cuda::new(0).expect("a CUDA device"));
    let solver = Solver::new(dev.clone()).expect("solver");
    let shapes: &[(usize, usize, &[usize])] = &[
        (96, 256, &[]),
        (130, 300, &[5, 77]),
        (64, 517, &[0, 200, 516]),
    ];
    let mut worst: f64 = 0.0;
    let mut cases = 0;
    for (si, &(out, inn, dead)) in shapes.iter().enumerate() {
        let (w, h) = layer(out, inn, 1024, dead, 7 + si as u64);
        let w2 = Tensor::new(
            vec![out, inn],
            w.data().iter().map(|v| v * 0.5 + 0.01).collect(),
        )
        .expect("tensor");
        for bits in [2u32, 3, 4, 8] {
            for gs in [None, Some(32), Some(128)] {
                for (desc_act, static_groups) in [(false, false), (true, false), (true, true)] {
                    for sym in [true, false] {
                        if gs.is_none() && static_groups {
                            continue;
                        }
                        let params = GptqParams {
                            bits,
                            group_size: gs,
                            sym,
                            desc_act,
                            static_groups,
                            ..Default::default()
                        };
                        let cpu = gptq_quantize_many(&[&w, &w2], &h, &params).expect("cpu");
                        let gpu = solver.quantize_many(&[&w, &w2], &h, &params).expect("gpu");
                        for (c, g) in cpu.iter().zip(&gpu) {
                            let what = format!("{out}x{inn} {params:?}");
                            assert_eq!(c.q.g_idx, g.q.g_idx, "{what}");
                            assert_eq!(c.dead_columns, g.dead_columns, "{what}");
                            assert_eq!(c.damp_used, g.damp_used, "{what}");
                            let diff =
                                c.q.codes
                                    .iter()
                                    .zip(&g.q.codes)
                                    .filter(|(a, b)| a != b)
                                    .count() as f64
                                    / c.q.codes.len() as f64;
                            worst = worst.max(diff);
                            assert!(diff <= MAX_CODE_DIFF, "{what}: {diff} of the codes differ");
                            let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(1e-30);
                            assert!(
                                rel(c.error_gptq, g.error_gptq) <= MAX_ERR_REL,
                                "{what}: GPTQ error cpu {} gpu {}",
                                c.error_gptq,
                                g.error_gptq
                            );
                            assert!(
                                rel(c.error_rtn, g.error_rtn) <= 1e-3,
                                "{what}: RTN error cpu {} gpu {}",
                                c.error_rtn,
                                g.error_rtn
                            );
                            // Static and per-channel grids come from the
                            // unchanged W: they agree exactly.
                            if gs.is_none() || static_groups {
                                assert_eq!(c.q.scales, g.q.scales, "{what}");
                                assert_eq!(c.q.zeros, g.q.zeros, "{what}");
                            }
                            cases += 1;
                        }
                    }
                }
            }
        }
    }
    eprintln!("{cases} layers; largest fraction of differing codes {worst:.5}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_solver_reports_not_positive_definite_like_the_cpu() {
    let dev = Arc::new(Cuda::new(0).expect("a CUDA device"));
    let solver = Solver::new(dev.clone()).expect("solver");
    let n = 64;
    // Negative definite: no damping in the retry range helps.
    let mut m = vec![0.0f32; n * n];
    for i in 0..n {
        m[i * n + i] = -1.0;
    }
    let h = Hessian::from_matrix(m, n, 1).expect("hessian");
    let w = Tensor::new(vec![8, n], normal_values(8 * n, 3, 0.1)).expect("tensor");
    let params = GptqParams::default();
    let cpu = gptq_quantize_many(&[&w], &h, &params)
        .map(|_| ())
        .unwrap_err();
    let gpu = solver
        .quantize_many(&[&w], &h, &params)
        .map(|_| ())
        .unwrap_err();
    assert_eq!(cpu.to_string(), gpu.to_string());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_hessian_matches_cpu() {
    let dev = Arc::new(Cuda::new(0).expect("a CUDA device"));
    let solver = Solver::new(dev.clone()).expect("solver");
    let (tokens, n) = (300, 200);
    let x = normal_values(tokens * n, 11, 1.0);
    let mut h = Hessian::new(n);
    h.add_batch(&x, tokens).expect("hessian");
    let xd = dev.upload(&x).expect("upload");
    let mut hd = dev.zeros::<f32>(n * n).expect("alloc");
    solver
        .accumulate_hessian(&mut hd, &xd, tokens, n, 2.0, 0.0)
        .expect("gemm");
    let g = dev.download(&hd).expect("download");
    for (a, b) in h.matrix().iter().zip(&g) {
        // f32 sums of 300 products in different orders.
        assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
    }
}

/// `H` and the cross term accumulated on the GPU over several samples equal
/// the host's up to f32 summation order, and `H` comes back symmetric.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_stats_match_host_stats() {
    use gptq_quant::{HostStats, LayerSolver, LayerStats};
    let dev = Arc::new(Cuda::new(0).expect("a CUDA device"));
    let gpu = gptq_cuda::GpuLayerSolver::new(dev, true).expect("solver");
    let (tokens, n) = (257, 96);
    let mut host: Box<dyn LayerStats> = Box::new(HostStats::new(n, true));
    let mut dev_stats = gpu.stats(n, true).expect("stats");
    for s in 0..3u64 {
        let xq = normal_values(tokens * n, 20 + s, 1.0);
        let xf: Vec<f32> = xq
            .iter()
            .zip(normal_values(tokens * n, 40 + s, 0.1))
            .map(|(a, b)| a + b)
            .collect();
        host.add(&xq, Some(&xf), tokens).expect("host");
        dev_stats.add(&xq, Some(&xf), tokens).expect("gpu");
    }
    let (hh, hc) = host.finish().expect("host");
    let (gh, gc) = dev_stats.finish().expect("gpu");
    assert_eq!(hh.nsamples(), gh.nsamples());
    let close = |a: &[f32], b: &[f32], what: &str| {
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (x, y) in a.iter().zip(b) {
            // f32 sums of 3 × 257 products in different orders.
            assert!((x - y).abs() <= 1e-4 * scale, "{what}: {x} vs {y}");
        }
    };
    close(hh.matrix(), gh.matrix(), "H");
    close(
        hc.expect("cross").matrix(),
        gc.expect("cross").matrix(),
        "C",
    );
    let m = gh.matrix();
    for i in 0..n {
        for j in 0..i {
            assert_eq!(m[i * n + j], m[j * n + i]);
        }
    }
}

/// The asymmetric target `W′ = W + W·C·(H + λI)⁻¹` on the GPU (f32 GEMMs
/// through `U`) against the host's (f64 Cholesky solve), with dead columns
/// and act-order: the corrections `W′ − W` agree to 1e-3 relative
/// (Frobenius). `H + λI` has condition number ≲ 1e4 here (20× channels,
/// 1 % damping), so f32 products through `U` lose at most ~1e4 × 6e-8 ≈
/// 6e-4 of the correction; a wrong order or transpose gives O(1).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_asym_target_matches_host() {
    let dev = Arc::new(Cuda::new(0).expect("a CUDA device"));
    let solver = Solver::new(dev.clone()).expect("solver");
    for (out, inn, dead) in [(64usize, 200usize, &[][..]), (48, 333, &[3usize, 100][..])] {
        let tokens = 800;
        let (w, _) = layer(out, inn, tokens, dead, 11);
        // Quantized-model inputs x̃ and full-precision inputs x = x̃ + noise.
        let mut xq = normal_values(tokens * inn, 5, 1.0);
        for row in xq.chunks_exact_mut(inn) {
            for v in row.iter_mut().take(4) {
                *v *= 20.0;
            }
            for &c in dead {
                row[c] = 0.0;
            }
        }
        let xf: Vec<f32> = xq
            .iter()
            .zip(normal_values(tokens * inn, 6, 0.05))
            .map(|(a, b)| a + b)
            .collect();
        let mut h = Hessian::new(inn);
        let mut c = gptq_quant::CrossTerm::new(inn);
        for (sq, sf) in xq.chunks(tokens / 4 * inn).zip(xf.chunks(tokens / 4 * inn)) {
            h.add_batch(sq, sq.len() / inn).expect("h");
            c.add_batch(sf, sq, sq.len() / inn).expect("c");
        }
        for desc_act in [false, true] {
            let params = GptqParams {
                bits: 4,
                group_size: Some(32),
                desc_act,
                ..Default::default()
            };
            let host = gptq_quant::asymmetric_targets(&[&w], &h, &c, params.damp_percent)
                .expect("host target");
            let hd = dev.upload(h.matrix()).expect("upload");
            let cd = dev.upload(c.matrix()).expect("upload");
            let prep = solver.prepare(&hd, inn, &params).expect("prepare");
            let mut wd = dev.upload(w.data()).expect("upload");
            solver
                .asym_target(&mut wd, out, &cd, &prep)
                .expect("gpu target");
            let got = dev.download(&wd).expect("download");
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for ((&g, &t), &w0) in got.iter().zip(host[0].data()).zip(w.data()) {
                let want = (t - w0) as f64;
                let have = (g - w0) as f64;
                num += (want - have).powi(2);
                den += want.powi(2);
            }
            let e = (num / den.max(1e-30)).sqrt();
            eprintln!("{out}x{inn} desc_act {desc_act}: correction relative error {e:.2e}");
            assert!(den > 0.0, "no correction at all");
            assert!(e < 1e-3, "{out}x{inn} desc_act {desc_act}: {e}");
        }
    }
}
