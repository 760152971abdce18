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
use gptq_io::gptq::{CheckpointWriter, QuantizeConfig, TensorData};
use gptq_pipeline::{Method, PipelineOptions};
use gptq_quant::GptqParams;
use std::path::Path;
use std::sync::Arc;

mod common;
use common::*;

/// Quantizes stories260K (`bits`, groups of 32, act-order) into `out` as a
/// GPTQ v1 checkpoint; layers the packing cannot hold stay dense.
fn quantize(out: &Path, bits: u32, method: Method) {
    let dir = stories();
    let files = gptq_io::source::open_dir(&dir).unwrap();
    let model = gptq_models::layerwise(&files).unwrap();
    let opts = PipelineOptions {
        params: GptqParams {
            bits,
            group_size: Some(32),
            sym: false,
            desc_act: method == Method::Gptq,
            static_groups: false,
            damp_percent: 0.01,
            block_size: 128,
            mse: false,
        },
        method,
        true_sequential: true,
        skip: vec![],
        state_budget: None,
        token_clip: None,
        asym_calib: false,
        solver: None,
    };
    let calib: Vec<Vec<u32>> = (0..4).map(|i| tokens(128, 512, 7 + i)).collect();
    let mut qcfg = QuantizeConfig::new(bits, Some(32));
    qcfg.sym = false;
    qcfg.desc_act = opts.params.desc_act;
    let mut writer = CheckpointWriter::create(out, true, None).unwrap();
    let mut names = std::collections::HashSet::new();
    let mut sink = |_: usize, qs: Vec<(String, QLinear)>, _| -> gptq_pipeline::Result<()> {
        for (n, q) in qs {
            let p = gptq_core::pack::pack(&q, gptq_core::pack::Format::V1).unwrap();
            writer.add_packed(&n, &p).unwrap();
            names.insert(n);
        }
        Ok(())
    };
    let reports =
        gptq_pipeline::quantize(model.as_ref(), &calib, &opts, &mut (), &mut sink).unwrap();
    let mut cfg = qcfg.clone();
    for r in reports.iter().filter(|r| r.skipped.is_some()) {
        cfg.dynamic.push(
            gptq_io::gptq::DynamicRule::new(
                &format!("-:^{}$", r.name.replace('.', "\\.")),
                Default::default(),
            )
            .unwrap(),
        );
    }
    for n in files.weights.names() {
        let base = n.trim_end_matches(".weight").trim_end_matches(".bias");
        if !names.contains(base) {
            writer
                .add(
                    n.clone(),
                    TensorData::from_raw(files.weights.load_raw(&n).unwrap()),
                )
                .unwrap();
        }
    }
    let extra = gptq_io::gptq::auxiliary_files(&dir);
    writer.finish(&files.config, &cfg, &extra).unwrap();
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
