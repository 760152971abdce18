//! The GPU calibration forward against the host forward on stories260K
//! (GQA: 8 query over 4 key/value heads), with sequences of different
//! lengths, and the OPT test models. Needs a CUDA GPU and the model folders
//! (`../shared`, or `GPTQ_STORIES_DIR`; `tests/data/models`, or
//! `GPTQ_TEST_MODELS`): `cargo test -p gptq-cuda --release --test
//! forward_gpu -- --ignored`.

use gptq_core::QLinear;
use gptq_cuda::{Cuda, GpuCalibration};
use gptq_pipeline::{BlockDevice, Method, PipelineOptions};
use gptq_quant::GptqParams;
use std::sync::Arc;

mod common;
use common::*;

/// Block by block, from the same inputs: the GPU's Hessian at every input
/// point and the block's output against the host's. The GPU rounds every
/// GEMM operand to f16 (relative 2⁻¹¹ ≈ 4.9e-4 per value); through norms,
/// attention and the MLP that stays within a few 1e-3 relative (Frobenius),
/// so 1e-2 is a safe bound that still catches any layout or indexing error
/// (those give O(1) differences). Also with the states on the host, passing
/// through the device in chunks of at most 200 tokens (3 chunks). The same
/// for the two OPT test models of `tests/data/models` (pre-LN, and post-LN
/// with embedding projections; 64 positions, so shorter sequences, and
/// chunks of at most 80 tokens).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_forward_matches_host_forward() {
    let lens: &[usize] = &[96, 128, 37, 128, 5];
    for chunk in [None, Some(200)] {
        forward_matches_host(&stories(), lens, 512, chunk);
    }
    let data = test_models();
    let lens: &[usize] = &[64, 40, 17, 64, 3];
    for (dir, vocab) in [("opt-preln", 112), ("opt-postln-proj", 104)] {
        for chunk in [None, Some(80)] {
            forward_matches_host(&data.join(dir), lens, vocab, chunk);
        }
    }
}

fn forward_matches_host(dir: &std::path::Path, lens: &[usize], vocab: u32, chunk: Option<usize>) {
    let files = gptq_io::source::open_dir(dir).expect("model folder");
    let model = gptq_models::layerwise(&files).unwrap();
    let hidden = model.hidden_size();
    let seqs = samples(lens, vocab);
    let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let dev = Arc::new(Cuda::new(0).expect("a CUDA device"));
    let mut gpu = GpuCalibration::new(dev).unwrap();
    if let Some(c) = chunk {
        gpu = gpu.with_max_chunk_tokens(c);
    }
    gpu.begin(&lens, hidden, false).unwrap();
    let mut host: Vec<Vec<f32>> = seqs.iter().map(|s| model.embed(s).unwrap()).collect();
    for x in &host {
        gpu.push_input(x).unwrap();
    }
    let points = model.arch().input_points.len();
    for b in 0..model.num_blocks() {
        let block = model.block(b).unwrap();
        gpu.load_block(block.as_ref(), false).unwrap();
        // Host: each point's inputs of every sequence, and the outputs.
        let mut inputs: Vec<Vec<f32>> = vec![Vec::new(); points];
        let mut widths = vec![0usize; points];
        for (x, &len) in host.iter_mut().zip(&lens) {
            let mut t = Vec::new();
            for s in 0..=points {
                block.segment(s, x, &mut t, len).unwrap();
                if s < points {
                    widths[s] = t.len() / len;
                    inputs[s].extend_from_slice(&t);
                }
            }
        }
        for p in 0..points {
            gpu.collect(&[p]).unwrap();
            let g = gpu.hessian_at(p).unwrap().expect("collected");
            let n = widths[p];
            let mut h = gptq_quant::Hessian::new(n);
            let tokens = inputs[p].len() / n;
            h.add_batch(&inputs[p], tokens).unwrap();
            // One batch of all tokens scales by 2/1; the GPU by 2/sequences.
            let scale = 1.0 / lens.len() as f32;
            let want: Vec<f32> = h.matrix().iter().map(|v| v * scale).collect();
            let e = rel(&g, &want);
            eprintln!("{dir:?} chunks {chunk:?} block {b} point {p}: H relative error {e:.2e}");
            assert!(e < 1e-2, "block {b} point {p}: H relative error {e}");
        }
        gpu.finish_block().unwrap();
        let got = gpu.residual().unwrap();
        let want: Vec<f32> = host.concat();
        let e = rel(&got, &want);
        eprintln!("{dir:?} chunks {chunk:?} block {b}: output relative error {e:.2e}");
        assert!(e < 1e-2, "block {b}: output relative error {e}");
    }
    if chunk.is_some() {
        assert!(gpu.describe().contains("3 chunks"), "{}", gpu.describe());
    }
}

/// Whole-model GPTQ with the GPU calibration against the host pipeline:
/// same layers, every layer's GPTQ error below its round-to-nearest error,
/// and the total error within 10 % of the host's (the f16 forward changes
/// the Hessians in the last bits, which GPTQ turns into a different but
/// equally good quantization; the fraction of differing codes is printed).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_pipeline_matches_host_pipeline_quality() {
    let files = gptq_io::source::open_dir(&stories()).expect("stories260K");
    let model = gptq_models::layerwise(&files).unwrap();
    let calib = samples(&[256; 16], 512);
    for (true_sequential, asym_calib) in [(true, false), (false, false), (true, true)] {
        let opts = PipelineOptions {
            params: GptqParams {
                bits: 8,
                group_size: Some(32),
                sym: false,
                desc_act: true,
                static_groups: false,
                damp_percent: 0.01,
                block_size: 128,
                mse: false,
            },
            method: Method::Gptq,
            true_sequential,
            skip: vec![],
            state_budget: None,
            token_clip: None,
            asym_calib,
            solver: None,
        };
        let run = |dev: Option<&mut GpuCalibration>| pipeline(model.as_ref(), &calib, &opts, dev);
        let dev = Arc::new(Cuda::new(0).expect("a CUDA device"));
        let mut gpu = GpuCalibration::new(dev.clone()).unwrap();
        let (g, gr) = run(Some(&mut gpu));
        let (h, hr) = run(None);
        // The same on the GPU with the states on the host, 3 sequences
        // per chunk: same quality (other GEMM shapes round differently).
        let mut chunked = GpuCalibration::new(dev)
            .unwrap()
            .with_max_chunk_tokens(3 * 256);
        let (_, cr) = run(Some(&mut chunked));
        assert!(
            chunked.describe().contains("6 chunks"),
            "{}",
            chunked.describe()
        );
        let ec: f64 = cr.iter().map(|r| r.error).sum();
        assert_eq!(g.len(), 35);
        assert_eq!(g.len(), h.len());
        let (mut diff, mut total) = (0usize, 0usize);
        for ((n1, q1), (n2, q2)) in g.iter().zip(&h) {
            assert_eq!(n1, n2);
            diff += q1
                .codes
                .iter()
                .zip(&q2.codes)
                .filter(|(a, b)| a != b)
                .count();
            total += q1.codes.len();
        }
        for r in &gr {
            assert!(
                r.error <= r.error_rtn,
                "{}: GPTQ {} > RTN {}",
                r.name,
                r.error,
                r.error_rtn
            );
        }
        let (eg, eh): (f64, f64) = (
            gr.iter().map(|r| r.error).sum(),
            hr.iter().map(|r| r.error).sum(),
        );
        eprintln!(
            "true_sequential {true_sequential} asym {asym_calib}: total error GPU {eg:.4e} \
             host {eh:.4e}; \
             {diff} of {total} codes differ ({:.3} %)",
            100.0 * diff as f64 / total as f64
        );
        assert!((eg / eh - 1.0).abs() < 0.1, "GPU {eg} vs host {eh}");
        eprintln!("  states on the host in chunks: total error {ec:.4e}");
        assert!((ec / eh - 1.0).abs() < 0.1, "GPU chunked {ec} vs host {eh}");
    }
}

/// The GPTQ pipeline on `model`: on the GPU with `dev`, else on the host;
/// the quantized layers and the per-layer reports.
fn pipeline(
    model: &dyn gptq_models::LayerwiseModel,
    calib: &[Vec<u32>],
    opts: &PipelineOptions,
    dev: Option<&mut GpuCalibration>,
) -> (Vec<(String, QLinear)>, Vec<gptq_pipeline::LayerReport>) {
    let mut out: Vec<(String, QLinear)> = Vec::new();
    let mut sink = |_: usize, qs: Vec<(String, QLinear)>, _| -> gptq_pipeline::Result<()> {
        out.extend(qs);
        Ok(())
    };
    let reports = match dev {
        Some(d) => {
            gptq_pipeline::quantize_on_device(model, calib, opts, &mut (), &mut sink, &(), d)
        }
        None => gptq_pipeline::quantize(model, calib, opts, &mut (), &mut sink),
    }
    .unwrap();
    (out, reports)
}

/// OPT (the pre-LN and post-LN test models) quantized with the GPU
/// calibration forward against the host pipeline: the same layers, and the
/// total GPTQ error within 10 % of the host's (as for stories260K above)
/// and below round-to-nearest's.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_pipeline_quantizes_opt_like_the_host() {
    let dev = Arc::new(Cuda::new(0).expect("a CUDA device"));
    for (dir, vocab) in [("opt-preln", 112), ("opt-postln-proj", 104)] {
        let files = gptq_io::source::open_dir(&test_models().join(dir)).expect("OPT test model");
        let model = gptq_models::layerwise(&files).unwrap();
        let calib = samples(&[64; 12], vocab);
        let params = GptqParams {
            bits: 4,
            group_size: Some(16),
            sym: false,
            ..GptqParams::default()
        };
        let opts = PipelineOptions::new(params, Method::Gptq);
        let mut gpu = GpuCalibration::new(dev.clone()).unwrap();
        let (g, gr) = pipeline(model.as_ref(), &calib, &opts, Some(&mut gpu));
        let (h, hr) = pipeline(model.as_ref(), &calib, &opts, None);
        let names = |v: &[(String, QLinear)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&g), names(&h));
        assert_eq!(g.len(), 12, "six linears in each of two blocks");
        let total = |r: &[gptq_pipeline::LayerReport], rtn: bool| -> f64 {
            r.iter()
                .map(|r| if rtn { r.error_rtn } else { r.error })
                .sum()
        };
        let (eg, eh, rg) = (total(&gr, false), total(&hr, false), total(&gr, true));
        eprintln!("{dir}: total GPTQ error GPU {eg:.4e}, host {eh:.4e}; RTN on the GPU's Hessians {rg:.4e}");
        assert!((eg / eh - 1.0).abs() < 0.1, "{dir}: GPU {eg} vs host {eh}");
        assert!(eg < rg, "{dir}: GPTQ {eg} is not below RTN {rg}");
    }
}

/// Asymmetric calibration: the full-precision lane beside a quantized one
/// (every layer round-to-nearest 3-bit), block by block from the same
/// embeddings, against the host running both models. The cross term
/// `C = (2/n)·Σ (x − x̃)ᵀx̃` is a difference of the two lanes, so the
/// GPU's f16 rounding (≈ 1e-3 of the activations, see above) is relative
/// to the quantization noise (a few percent of them at 3 bits): ≈ 2e-2;
/// 0.1 still catches a wrong lane, transpose or scaling (O(1)).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_cross_term_matches_host() {
    let files = gptq_io::source::open_dir(&stories()).expect("stories260K");
    let model = gptq_models::layerwise(&files).unwrap();
    let hidden = model.hidden_size();
    let seqs = samples(&[96, 128, 37, 128], 512);
    let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let dev = Arc::new(Cuda::new(0).expect("a CUDA device"));
    let mut gpu = GpuCalibration::new(dev).unwrap();
    gpu.begin(&lens, hidden, true).unwrap();
    let mut xq: Vec<Vec<f32>> = seqs.iter().map(|s| model.embed(s).unwrap()).collect();
    let mut xf = xq.clone();
    for x in &xq {
        gpu.push_input(x).unwrap();
    }
    let params = GptqParams {
        bits: 3,
        group_size: Some(32),
        sym: false,
        ..Default::default()
    };
    let arch = model.arch();
    let points = arch.input_points.len();
    for b in 0..model.num_blocks() {
        let fp = model.block(b).unwrap();
        let mut qb = model.block(b).unwrap();
        gpu.load_block(fp.as_ref(), false).unwrap();
        for name in arch.linear_layers() {
            let lin = qb.linear_mut(name).unwrap();
            let q = gptq_quant::rtn_quantize(&lin.weight, &params).unwrap();
            let q = gptq_core::pack::round_to_f16(&q);
            lin.weight = Arc::new(q.dequantize());
            gpu.set_weight(name, &q).unwrap();
        }
        // Host: both models' inputs at every point, per sequence.
        let mut hs: Vec<Option<gptq_quant::Hessian>> = (0..points).map(|_| None).collect();
        let mut cs: Vec<Option<gptq_quant::CrossTerm>> = (0..points).map(|_| None).collect();
        for ((q, f), &len) in xq.iter_mut().zip(xf.iter_mut()).zip(&lens) {
            let (mut tq, mut tf) = (Vec::new(), Vec::new());
            for s in 0..=points {
                qb.segment(s, q, &mut tq, len).unwrap();
                fp.segment(s, f, &mut tf, len).unwrap();
                if s < points {
                    let n = tq.len() / len;
                    hs[s]
                        .get_or_insert_with(|| gptq_quant::Hessian::new(n))
                        .add_batch(&tq, len)
                        .unwrap();
                    cs[s]
                        .get_or_insert_with(|| gptq_quant::CrossTerm::new(n))
                        .add_batch(&tf, &tq, len)
                        .unwrap();
                }
            }
        }
        for p in 0..points {
            gpu.collect(&[p]).unwrap();
            let gh = gpu.hessian_at(p).unwrap().expect("H");
            let gc = gpu.cross_at(p).unwrap().expect("C");
            let eh = rel(&gh, hs[p].as_ref().unwrap().matrix());
            let ec = rel(&gc, cs[p].as_ref().unwrap().matrix());
            eprintln!("block {b} point {p}: H relative error {eh:.2e}, C {ec:.2e}");
            assert!(eh < 1e-2, "block {b} point {p}: H {eh}");
            assert!(ec < 0.1, "block {b} point {p}: C {ec}");
        }
        gpu.finish_block().unwrap();
        let e = rel(&gpu.residual().unwrap(), &xq.concat());
        eprintln!("block {b}: quantized lane output relative error {e:.2e}");
        assert!(e < 1e-2, "block {b}: output {e}");
    }
}

/// Whole-model perplexity on the GPU (`windows_nll`: blocks, final norm,
/// output layer and NLL on the device) against the CPU model's, with the
/// states on the device and in host chunks. The f16 GEMM operands move
/// each token's NLL in the last bits; summed over 4 × 128 tokens the
/// totals agree to 1e-3 relative (a wrong norm, head or target is off by
/// far more).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_perplexity_matches_cpu() {
    let files = gptq_io::source::open_dir(&stories()).expect("stories260K");
    let model = gptq_models::load(&files).unwrap();
    let lw = gptq_models::layerwise(&files).unwrap();
    let wins = samples(&[128, 128, 128, 128], 512);
    let mut want = 0f64;
    for w in &wins {
        let len = [w.len()];
        let mut cache = model.new_cache(1);
        let hid = model
            .forward_hidden(&gptq_models::Batch::single(w, &len), &mut cache)
            .unwrap();
        let d = hid.len() / w.len();
        want += gptq_infer::eval::nll_sum(model.as_ref(), &hid[..(w.len() - 1) * d], &w[1..]);
    }
    let refs: Vec<&[u32]> = wins.iter().map(Vec::as_slice).collect();
    let dev = Arc::new(Cuda::new(0).expect("a CUDA device"));
    for chunk in [None, Some(200)] {
        let mut cal = GpuCalibration::new(dev.clone()).unwrap();
        if let Some(c) = chunk {
            cal = cal.with_max_chunk_tokens(c);
        }
        let got = gptq_cuda::forward::windows_nll(cal, lw.as_ref(), &refs, |_, _| {}).unwrap();
        assert_eq!(got.scored, 4 * 127);
        let e = (got.nll / want - 1.0).abs();
        eprintln!(
            "chunks {chunk:?}: NLL {:.4} vs CPU {want:.4} ({e:.2e} relative)",
            got.nll
        );
        assert!(e < 1e-3, "chunks {chunk:?}: NLL {} vs {want}", got.nll);
    }
}

/// The norm kernels alone against f64, at widths on both sides of the plain
/// kernels' 8192 (wider rows take the `_wide` twins) and not multiples of
/// the 16 values a thread holds. The kernels sum in f64, scale in f32 and
/// round once to f16: each output is within half an f16 ulp (relative
/// 2⁻¹¹ ≈ 4.9e-4) of the exact value plus f32 roundings (≈ 1e-7), so 1e-3
/// relative with a 1e-6 floor passes a right kernel and fails a wrong
/// column, row or weight (errors of order one).
#[test]
#[ignore = "needs a CUDA GPU"]
fn norm_kernels_match_f64() {
    let cal = GpuCalibration::new(Arc::new(Cuda::new(0).expect("a CUDA GPU"))).unwrap();
    // Values in [-1, 1] from the tokens' LCG.
    let vals = |n: usize, seed: u64| -> Vec<f32> {
        tokens(n, 2001, seed)
            .into_iter()
            .map(|t| t as f32 / 1000.0 - 1.0)
            .collect()
    };
    for h in [64, 100, 4096, 8192, 8200, 12288, 16384] {
        let rows = 3;
        // A few large channels, as in real residual streams.
        let x: Vec<f32> = vals(rows * h, 1)
            .iter()
            .enumerate()
            .map(|(i, v)| v * if i % h % 97 == 5 { 20.0 } else { 1.0 })
            .collect();
        let w: Vec<f32> = vals(h, 2).iter().map(|v| 1.0 + 0.5 * v).collect();
        let b: Vec<f32> = vals(h, 3).iter().map(|v| 0.1 * v).collect();
        for layer in [false, true] {
            let got = cal
                .norm_rows(&x, &w, layer.then_some(&b[..]), 1e-5)
                .unwrap();
            assert_eq!(got.len(), rows * h);
            for r in 0..rows {
                let xr: Vec<f64> = x[r * h..(r + 1) * h].iter().map(|&v| v as f64).collect();
                let mean = if layer {
                    xr.iter().sum::<f64>() / h as f64
                } else {
                    0.0
                };
                let var = xr.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / h as f64;
                let rs = 1.0 / (var + 1e-5).sqrt();
                for c in 0..h {
                    let want =
                        (xr[c] - mean) * rs * w[c] as f64 + if layer { b[c] as f64 } else { 0.0 };
                    let g = got[r * h + c].to_f64();
                    assert!(
                        (g - want).abs() <= 1e-3 * want.abs() + 1e-6,
                        "h {h} layer {layer} row {r} column {c}: {g} vs {want}"
                    );
                }
            }
        }
    }
}
