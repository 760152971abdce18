//! End-to-end properties of the GPTQ solver (arXiv 2210.17323) on seeded
//! random layers: GPTQ beats round-to-nearest on the layer objective across
//! every setting, group layouts and `g_idx` are consistent, dead columns and
//! degenerate Hessians are handled without panics or NaN.

use gptq_core::Tensor;
use gptq_quant::{
    gptq_quantize, gptq_quantize_many, rtn_quantize, Error, GptqParams, Hessian, MseSearch,
    QuantGrid, MAX_DAMP_RETRIES,
};

/// xorshift64* → roughly normal values (sum of 4 uniforms, variance 1/3).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.uniform()).sum::<f32>() * 1.7
    }
}

/// A layer `[out, in]` and the Hessian of `samples` sequences of `tokens`
/// inputs with a few large-magnitude channels (every 23rd ×30), correlated
/// features (a shared component per token and neighbour mixing) and
/// optionally always-zero (dead) channels.
fn layer(
    out: usize,
    inn: usize,
    samples: usize,
    tokens: usize,
    seed: u64,
    dead: &[usize],
) -> (Tensor, Hessian) {
    let mut rng = Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let w: Vec<f32> = (0..out * inn).map(|_| rng.normal() * 0.05).collect();
    let mut h = Hessian::new(inn);
    for _ in 0..samples {
        let mut x = vec![0.0f32; tokens * inn];
        for t in 0..tokens {
            let shared = rng.normal();
            for i in 0..inn {
                let mut v = rng.normal() + 0.7 * shared;
                if i % 23 == 5 {
                    v *= 30.0;
                }
                if i % 4 != 0 && i > 0 {
                    v = 0.6 * v + 0.8 * x[t * inn + i - 1];
                }
                x[t * inn + i] = v;
            }
            for &d in dead {
                x[t * inn + d] = 0.0;
            }
        }
        h.add_batch(&x, tokens).unwrap();
    }
    (Tensor::new(vec![out, inn], w).unwrap(), h)
}

/// `tr(ΔHΔᵀ)` for `Δ = W − Ŵ`.
fn error(w: &Tensor, q: &gptq_core::QLinear, h: &Hessian) -> f64 {
    let d: Vec<f32> = w
        .data()
        .iter()
        .zip(q.dequantize().data())
        .map(|(a, b)| a - b)
        .collect();
    h.weighted_error(&d, q.out_features).unwrap()
}

/// The act-order permutation the solver uses: stable argsort of diag(H)
/// (dead entries counted as 1), descending.
fn act_order(h: &Hessian) -> Vec<usize> {
    let d: Vec<f32> = h
        .diag()
        .into_iter()
        .map(|v| if v == 0.0 { 1.0 } else { v })
        .collect();
    let mut perm: Vec<usize> = (0..d.len()).collect();
    perm.sort_by(|&a, &b| d[b].total_cmp(&d[a]));
    perm
}

#[test]
fn gptq_beats_rtn_in_every_setting() {
    let (w, h) = layer(64, 256, 8, 64, 7, &[]);
    let mut worst_ratio = 0.0f64;
    let mut n = 0;
    for bits in [2u32, 3, 4, 8] {
        for group_size in [None, Some(32), Some(64), Some(128)] {
            for desc_act in [false, true] {
                for static_groups in [false, true] {
                    for sym in [false, true] {
                        let p = GptqParams {
                            bits,
                            group_size,
                            sym,
                            desc_act,
                            static_groups,
                            ..GptqParams::default()
                        };
                        let r = gptq_quantize(&w, &h, &p).unwrap();
                        r.q.validate().unwrap();
                        assert_eq!(r.dead_columns, 0);
                        assert_eq!(r.damp_used, 0.01);
                        // The reported errors are tr(ΔHΔᵀ) of the returned
                        // layer and of RTN with the same settings.
                        let eg = error(&w, &r.q, &h);
                        let er = error(&w, &rtn_quantize(&w, &p).unwrap(), &h);
                        assert!(
                            (eg - r.error_gptq).abs() <= 1e-4 * eg,
                            "{eg} vs {}",
                            r.error_gptq
                        );
                        assert!(
                            (er - r.error_rtn).abs() <= 1e-4 * er,
                            "{er} vs {}",
                            r.error_rtn
                        );
                        assert!(r.error_gptq.is_finite() && r.error_gptq > 0.0);
                        assert!(
                            r.error_gptq <= r.error_rtn,
                            "{p:?}: GPTQ {} > RTN {}",
                            r.error_gptq,
                            r.error_rtn
                        );
                        worst_ratio = worst_ratio.max(r.error_gptq / r.error_rtn);
                        n += 1;
                    }
                }
            }
        }
    }
    assert_eq!(n, 128);
    eprintln!("worst GPTQ/RTN error ratio over {n} settings: {worst_ratio:.3}");
}

#[test]
fn act_order_g_idx_is_consistent_with_groups() {
    let (w, h) = layer(48, 256, 4, 64, 11, &[]);
    let perm = act_order(&h);
    assert_ne!(
        perm,
        (0..256).collect::<Vec<_>>(),
        "the test needs a non-trivial order"
    );
    for gs in [32usize, 64, 128] {
        for static_groups in [false, true] {
            let p = GptqParams {
                bits: 4,
                group_size: Some(gs),
                desc_act: true,
                static_groups,
                ..GptqParams::default()
            };
            let q = gptq_quantize(&w, &h, &p).unwrap().q;
            let groups = 256 / gs;
            assert_eq!(q.num_groups(), groups);
            assert_eq!(q.group_size, Some(gs));
            for g in 0..groups {
                let members: Vec<usize> = (0..256).filter(|&c| q.g_idx[c] as usize == g).collect();
                assert_eq!(members.len(), gs, "group {g}");
                let mut expected: Vec<usize> = if static_groups {
                    // Static groups follow the original column order.
                    (g * gs..(g + 1) * gs).collect()
                } else {
                    // Group g = the g-th run of gs columns in act-order.
                    perm[g * gs..(g + 1) * gs].to_vec()
                };
                expected.sort_unstable();
                assert_eq!(members, expected, "group {g}");
            }
            assert!(q.g_idx.iter().all(|&g| (g as usize) < groups));
        }
    }
    // Without act-order, g_idx is c / gs; per-channel, all zero.
    let p = GptqParams {
        group_size: Some(64),
        ..GptqParams::default()
    };
    let q = gptq_quantize(&w, &h, &p).unwrap().q;
    assert!(q
        .g_idx
        .iter()
        .enumerate()
        .all(|(c, &g)| g as usize == c / 64));
    let p = GptqParams {
        group_size: None,
        desc_act: true,
        ..GptqParams::default()
    };
    let q = gptq_quantize(&w, &h, &p).unwrap().q;
    assert_eq!(q.num_groups(), 1);
    assert!(q.g_idx.iter().all(|&g| g == 0));
}

#[test]
fn dead_columns_become_zero_without_nan() {
    let dead = [0usize, 17, 18, 100, 255];
    let (w, h) = layer(32, 256, 4, 64, 3, &dead);
    for &d in &dead {
        assert_eq!(h.diag()[d], 0.0);
    }
    for (sym, desc_act, group_size) in [
        (true, false, Some(64)),
        (false, true, Some(32)),
        (false, false, None),
    ] {
        let p = GptqParams {
            bits: 3,
            sym,
            desc_act,
            group_size,
            ..GptqParams::default()
        };
        let r = gptq_quantize(&w, &h, &p).unwrap();
        assert_eq!(r.dead_columns, dead.len());
        let deq = r.q.dequantize();
        assert!(deq.data().iter().all(|v| v.is_finite()));
        for row in 0..32 {
            for &d in &dead {
                assert_eq!(deq.data()[row * 256 + d], 0.0, "row {row} col {d}");
            }
        }
        assert!(r.error_gptq.is_finite() && r.error_rtn.is_finite());
        assert!(r.error_gptq <= r.error_rtn);
    }
    // Every column dead: H = 0 becomes I, W becomes 0.
    let h = Hessian::new(16);
    let w = Tensor::new(vec![4, 16], vec![0.3; 64]).unwrap();
    let r = gptq_quantize(&w, &h, &GptqParams::default()).unwrap();
    assert_eq!(r.dead_columns, 16);
    assert!(r.q.dequantize().data().iter().all(|&v| v == 0.0));
    assert_eq!(r.error_gptq, 0.0);
}

#[test]
fn indefinite_hessian_is_a_typed_error_after_retries() {
    let n = 8;
    let minus_i: Vec<f32> = (0..n * n)
        .map(|k| if k / n == k % n { -1.0 } else { 0.0 })
        .collect();
    let h = Hessian::from_matrix(minus_i, n, 1).unwrap();
    let w = Tensor::new(vec![3, n], vec![0.5; 3 * n]).unwrap();
    match gptq_quantize(&w, &h, &GptqParams::default()) {
        Err(Error::NotPositiveDefinite { damp, tries }) => {
            assert_eq!(tries, MAX_DAMP_RETRIES + 1);
            assert!(damp > 0.01);
        }
        other => panic!("expected NotPositiveDefinite, got {other:?}"),
    }
    // NaN in H or W: a typed error, not a panic.
    let mut m = vec![0.0f32; n * n];
    m[3] = f32::NAN;
    let h = Hessian::from_matrix(m, n, 1).unwrap();
    assert!(matches!(
        gptq_quantize(&w, &h, &GptqParams::default()),
        Err(Error::NonFinite { what: "Hessian" })
    ));
    // Mismatched sizes.
    assert!(matches!(
        gptq_quantize(&w, &Hessian::new(n + 1), &GptqParams::default()),
        Err(Error::Shape(_))
    ));
    assert!(Hessian::from_matrix(vec![0.0; 5], 2, 1).is_err());
}

#[test]
fn damping_retries_until_positive_definite() {
    // diag(1, −0.5): mean 0.25; λ = 0.25·damp must exceed 0.5, so damp
    // 0.01, 0.1, 1 fail and 10 succeeds.
    let h = Hessian::from_matrix(vec![1.0, 0.0, 0.0, -0.5], 2, 1).unwrap();
    let w = Tensor::new(vec![2, 2], vec![0.1, -0.2, 0.3, 0.4]).unwrap();
    let r = gptq_quantize(&w, &h, &GptqParams::default()).unwrap();
    assert!((r.damp_used - 10.0).abs() < 1e-4, "{}", r.damp_used);
    assert!(r.q.dequantize().data().iter().all(|v| v.is_finite()));
    // Singular PSD H with no damping: 0 becomes 0.01 on retry.
    let h = Hessian::from_matrix(vec![1.0, 1.0, 1.0, 1.0], 2, 1).unwrap();
    let p = GptqParams {
        damp_percent: 0.0,
        ..GptqParams::default()
    };
    let r = gptq_quantize(&w, &h, &p).unwrap();
    assert_eq!(r.damp_used, 0.01);
}

#[test]
fn mse_search_never_increases_row_error() {
    let (w, _) = layer(32, 256, 1, 4, 5, &[]);
    let m = MseSearch::default();
    for bits in [2u32, 3, 4, 8] {
        for sym in [false, true] {
            for group_size in [None, Some(64)] {
                let base = GptqParams {
                    bits,
                    sym,
                    group_size,
                    ..GptqParams::default()
                };
                let mse = GptqParams { mse: true, ..base };
                let a = rtn_quantize(&w, &base).unwrap().dequantize();
                let b = rtn_quantize(&w, &mse).unwrap().dequantize();
                let gs = group_size.unwrap_or(256);
                for r in 0..32 {
                    for g in 0..256 / gs {
                        let cols = r * 256 + g * gs..r * 256 + (g + 1) * gs;
                        let e = |d: &Tensor| -> f64 {
                            cols.clone()
                                .map(|k| {
                                    ((d.data()[k] - w.data()[k]).abs() as f64).powf(m.norm as f64)
                                })
                                .sum()
                        };
                        // Relative slack for the search's fast pow (< 4e-6).
                        assert!(
                            e(&b) <= e(&a) * (1.0 + 1e-5),
                            "bits {bits} sym {sym} row {r} group {g}"
                        );
                    }
                }
                // And with the grid's own error function, exactly.
                let grid = QuantGrid::new(bits, sym);
                for r in 0..32 {
                    let row = &w.data()[r * 256..r * 256 + gs];
                    let p0 = grid.row_params(row);
                    let p1 = grid.with_mse(m).row_params(row);
                    assert!(grid.row_error(row, p1, m.norm) <= grid.row_error(row, p0, m.norm));
                }
                // GPTQ with the MSE grid still beats RTN with it.
                let (w2, h2) = layer(16, 128, 4, 32, 9, &[]);
                let r = gptq_quantize(&w2, &h2, &mse).unwrap();
                assert!(r.error_gptq <= r.error_rtn);
            }
        }
    }
}

#[test]
fn shared_hessian_gives_the_same_results_as_separate_calls() {
    let (w1, h) = layer(40, 128, 4, 32, 21, &[9]);
    let (w2, _) = layer(72, 128, 1, 1, 22, &[]);
    for desc_act in [false, true] {
        let p = GptqParams {
            bits: 4,
            group_size: Some(32),
            desc_act,
            ..GptqParams::default()
        };
        let many = gptq_quantize_many(&[&w1, &w2], &h, &p).unwrap();
        assert_eq!(many.len(), 2);
        assert!(many[0] == gptq_quantize(&w1, &h, &p).unwrap());
        assert!(many[1] == gptq_quantize(&w2, &h, &p).unwrap());
        assert_eq!(many[1].dead_columns, 1);
    }
    // A mismatched weight is rejected before any work.
    let bad = Tensor::new(vec![2, 64], vec![0.0; 128]).unwrap();
    assert!(matches!(
        gptq_quantize_many(&[&w1, &bad], &h, &GptqParams::default()),
        Err(Error::Shape(_))
    ));
}
