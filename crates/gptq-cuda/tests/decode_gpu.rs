//! GPU generation ([`GpuDecoder`]) against the CPU model, step by step:
//! a prompt, then one token at a time, on stories260K in full precision
//! (every layer an f16 cuBLAS GEMM), quantized to 4 bits with act-order
//! (attention layers on the fused int4 kernel with its column gather, the
//! 172-wide MLP left dense) and to 8 bits (every layer dequantize-then-GEMM).
//! Needs a CUDA GPU and `../shared` (or `GPTQ_STORIES_DIR`): `cargo test
//! -p gptq-cuda --release --test decode_gpu -- --ignored`.

use gptq_core::QLinear;
use gptq_cuda::{Cuda, GpuDecoder};
use gptq_infer::generate::{CpuDecoder, Decoder};
use gptq_io::gptq::QuantizeConfig;
use gptq_pipeline::{Method, PipelineOptions};
use gptq_quant::GptqParams;
use std::path::Path;
use std::sync::Arc;

mod common;
use common::*;
#[path = "../../gptq-pipeline/tests/support/checkpoint.rs"]
mod checkpoint;
use checkpoint::quantize_to_checkpoint;

/// Quantizes stories260K (`bits`, groups of 32, act-order) into `out` as a
/// GPTQ v1 checkpoint; layers the packing cannot hold stay dense.
fn quantize(out: &Path, bits: u32, method: Method) {
    let params = GptqParams {
        bits,
        group_size: Some(32),
        sym: false,
        desc_act: method == Method::Gptq,
        ..GptqParams::default()
    };
    let opts = PipelineOptions::new(params, method);
    let calib: Vec<Vec<u32>> = (0..4).map(|i| tokens(128, 512, 7 + i)).collect();
    let mut qcfg = QuantizeConfig::new(bits, Some(32));
    qcfg.sym = false;
    qcfg.desc_act = opts.params.desc_act;
    quantize_to_checkpoint(
        &stories(),
        &opts,
        &calib,
        &qcfg,
        gptq_core::pack::Format::V1,
        out,
    );
}

/// The GPU's logits after a 40-token prompt and after each of 20 more
/// tokens fed one at a time, against the CPU model's (f32 throughout). The
/// GPU rounds GEMM operands and the KV cache to f16 (2⁻¹¹ relative per
/// value), which stays within a few 1e-3 of the logits (Frobenius); 1e-2
/// still catches any cache, position or layout error (those give O(1)).
/// The graph-replayed steps must equal the kernel-by-kernel ones exactly
/// (same kernels, same arguments), also after a reset.
fn matches_cpu(dir: &Path, what: &str) {
    let files = gptq_io::source::open_dir(dir).unwrap();
    let cpu = gptq_models::load(&files).unwrap();
    let lw = gptq_models::layerwise(&files).unwrap();
    let vocab = cpu.info().vocab_size as u32;
    let ids = tokens(60, vocab, 0x2545_f491_4f6c_dd1d);
    let dev = Arc::new(Cuda::new(0).expect("a CUDA device"));
    let mut want = Vec::new();
    let mut c = CpuDecoder::new(cpu.as_ref());
    want.push(c.next_logits(&ids[..40]).unwrap());
    for t in &ids[40..] {
        want.push(c.next_logits(&[*t]).unwrap());
    }
    let mut runs: Vec<Vec<Vec<f32>>> = Vec::new();
    for graph in [false, true, true] {
        let mut g = GpuDecoder::new(dev.clone(), lw.as_ref(), 512, 64, |_, _| {}).unwrap();
        g.set_graph(graph);
        for _ in 0..2 {
            g.reset();
            let mut got = vec![g.step(&ids[..40]).unwrap()];
            for t in &ids[40..] {
                got.push(g.step(&[*t]).unwrap());
            }
            assert_eq!(g.len(), 60);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                let e = rel(a, b);
                assert!(e < 1e-2, "{what}, graph {graph}, step {i}: {e:.2e}");
            }
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| rel(a, b))
                .fold(0.0, f64::max);
            eprintln!("{what}, graph {graph}: worst step {worst:.2e} relative");
            runs.push(got);
        }
        // Four more positions would overflow the cache of 64.
        let e = g.step(&ids[..5]).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
    }
    for r in &runs[1..] {
        assert_eq!(
            r, &runs[0],
            "{what}: graph replay or reset changed the logits"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_generation_matches_cpu() {
    matches_cpu(&stories(), "fp");
    // q/k/v and gate/up as separate layers too (set before any decoder of
    // this test process loads; read at load).
    std::env::set_var(gptq_cuda::decode::STACK_ENV, "0");
    matches_cpu(&stories(), "fp, unstacked");
    std::env::remove_var(gptq_cuda::decode::STACK_ENV);
    let root = std::env::temp_dir().join(format!("gptq-decode-{}", std::process::id()));
    for (bits, method) in [(4, Method::Gptq), (8, Method::Rtn)] {
        let out = root.join(format!("w{bits}"));
        quantize(&out, bits, method);
        matches_cpu(&out, &format!("w{bits}"));
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// A random 4-bit layer `[out, k]` with groups of `gs` columns (`None`:
/// per channel), in act-order (a shuffled `g_idx`) or not, with a bias or
/// not; `g_idx` depends only on `(k, gs, act)`, so two such layers stack.
fn random_w4(out: usize, k: usize, gs: Option<usize>, act: bool, bias: bool, seed: u64) -> QLinear {
    let r = |n: usize, s: u64| tokens(n, 1 << 16, s);
    let groups = gs.map_or(1, |g| k.div_ceil(g));
    let mut cols: Vec<usize> = (0..k).collect();
    if act {
        let keys = r(k, 7);
        cols.sort_by_key(|&c| keys[c]);
    }
    let mut g_idx = vec![0u32; k];
    for (p, &c) in cols.iter().enumerate() {
        g_idx[c] = gs.map_or(0, |g| (p / g) as u32);
    }
    let unit = |v: u32| v as f32 / 65536.0;
    QLinear {
        out_features: out,
        in_features: k,
        bits: 4,
        group_size: gs,
        codes: r(out * k, seed).iter().map(|&v| (v % 16) as u8).collect(),
        scales: r(groups * out, seed + 1)
            .iter()
            .map(|&v| 0.002 + 0.01 * unit(v))
            .collect(),
        zeros: r(groups * out, seed + 2)
            .iter()
            .map(|&v| (v % 16) as u8)
            .collect(),
        g_idx,
        bias: bias.then(|| r(out, seed + 3).iter().map(|&v| unit(v) - 0.5).collect()),
    }
}

/// SwiGLU in the fused int4 kernel's epilogue (gate/up stacked in
/// `swiglu_row_order`) against f64 on the dequantized weights, for
/// one-token and multi-row steps, per-channel and grouped, act-order and
/// bias. Tolerance: the kernel rounds each dequantized weight to f16 and
/// sums in f32, so gate and up are each off by at most
/// e = (2^-11 + k·2^-23)·Σ|x·ŵ| (the bound `gptq bench kernels --check`
/// holds every path to); silu has slope below 1.1, so the product is off
/// by at most 1.1·|up|·e_gate + |silu(gate)|·e_up, plus the f16 rounding
/// of the output (2^-11 relative, doubled for slack).
#[test]
#[ignore = "needs a CUDA GPU"]
fn swiglu_epilogue_matches_f64() {
    let dev = Cuda::new(0).expect("a CUDA device");
    let mut ws = gptq_cuda::Workspace::default();
    let cases = [
        (48, 256, Some(64), false, false),
        (40, 128, Some(32), true, true),
        (64, 512, None, false, true),
        (128, 1024, Some(128), true, false),
    ];
    for (inter, k, gs, act, bias) in cases {
        let gate = random_w4(inter, k, gs, act, bias, 11);
        let up = random_w4(inter, k, gs, act, bias, 23);
        let stacked = QLinear::stack_rows(&[&gate, &up]).expect("same groups");
        let order = gptq_cuda::swiglu_row_order(inter).expect("inter is a multiple of 8");
        let l = dev
            .load_qlinear(&stacked.permute_rows(&order).expect("a permutation"), false)
            .expect("load");
        let (wg, wu) = (gate.dequantize(), up.dequantize());
        for m in [1usize, 3, 8, 16] {
            let x: Vec<half::f16> = tokens(m * k, 1 << 16, 5 + m as u64)
                .iter()
                .map(|&v| half::f16::from_f32(v as f32 / 32768.0 - 1.0))
                .collect();
            let xd = dev.upload(&x).expect("upload");
            let mut yd = dev.zeros::<half::f16>(m * inter).expect("alloc");
            // The fused path by name (what Path::Auto takes at these
            // sizes), so GPTQ_CUDA_DQ_FROM cannot route it elsewhere.
            let fused = gptq_cuda::Path::Fused(dev.pick_variant(&l, m));
            let ran = dev
                .matmul_swiglu_path(&l, &xd, m, &mut yd, &mut ws, fused)
                .expect("matmul_swiglu");
            assert!(ran, "the fused kernel runs a 4-bit layer");
            let y = dev.download(&yd).expect("download");
            let dot = |w: &gptq_core::Tensor, b: &Option<Vec<f32>>, r: usize, n: usize| {
                let row = &w.data()[n * k..(n + 1) * k];
                let (mut s, mut a) = (0f64, 0f64);
                for (c, &wv) in row.iter().enumerate() {
                    let p = x[r * k + c].to_f64() * wv as f64;
                    s += p;
                    a += p.abs();
                }
                (s + b.as_ref().map_or(0.0, |b| b[n] as f64), a)
            };
            let e = |a: f64| (2f64.powi(-11) + k as f64 * 2f64.powi(-23)) * a;
            for r in 0..m {
                for n in 0..inter {
                    let (g, ag) = dot(&wg, &gate.bias, r, n);
                    let (u, au) = dot(&wu, &up.bias, r, n);
                    let silu = g / (1.0 + (-g).exp());
                    let want = silu * u;
                    let tol = 1.1 * u.abs() * e(ag)
                        + silu.abs() * e(au)
                        + 2f64.powi(-10) * want.abs()
                        + 1e-6;
                    let got = y[r * inter + n].to_f64();
                    assert!(
                        (got - want).abs() <= tol,
                        "inter {inter} k {k} gs {gs:?} act {act} bias {bias} m {m} [{r}][{n}]: {got} vs {want} (tol {tol:.3e})"
                    );
                }
            }
        }
    }
}
