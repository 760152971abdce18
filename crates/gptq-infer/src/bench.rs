//! CPU throughput of a model's forward pass against the ceilings of the same
//! machine, measured in one run:
//!
//! - **prefill**: one `seqlen` window (forward + all logits) in GFLOP/s,
//!   against the plain GEMM throughput of the same library on the model's own
//!   linear shapes at `M = seqlen`;
//! - **decode**: tokens/s at batch 1 with a KV cache, as bytes of weights
//!   read per token (as stored: f32, f16 or packed int) ÷ a measured
//!   memory-copy bandwidth;
//! - **kernels** ([`kernels`]): single GEMV timings of the int4 (GPTQ g128),
//!   f16 and f32 kernels on SmolLM2-135M's shapes and a 4096×14336 one, with
//!   the bytes streamed per second against the same copy bandwidth.

use crate::Result;
use gptq_kernels::cpu;
use gptq_models::{Batch, CausalLm};
use std::time::Instant;

/// Results of [`run`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Window length of the prefill.
    pub seqlen: usize,
    /// Threads used.
    pub threads: usize,
    /// GEMM throughput on the model's linear shapes, GFLOP/s.
    pub gemm_gflops: f64,
    /// Forward throughput (linears + attention + output layer), GFLOP/s.
    pub forward_gflops: f64,
    /// `forward_gflops / gemm_gflops`.
    pub forward_vs_gemm: f64,
    /// Prefill tokens per second.
    pub prefill_tokens_per_second: f64,
    /// Memory-copy bandwidth, GB/s (bytes read + written).
    pub copy_gbps: f64,
    /// Weight bytes read per decoded token.
    pub weight_bytes_per_token: usize,
    /// Decode tokens per second.
    pub decode_tokens_per_second: f64,
    /// Achieved weight-read bandwidth while decoding, GB/s.
    pub decode_gbps: f64,
    /// `decode_gbps / copy_gbps`.
    pub decode_vs_copy: f64,
    /// Read-only bandwidth, GB/s.
    pub read_gbps: f64,
    /// `decode_gbps / read_gbps`.
    pub decode_vs_read: f64,
}

/// Pseudo-random ids in `[3, vocab)` (avoids special tokens at 0..2).
fn ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = crate::generate::Rng::new(seed);
    (0..n)
        .map(|_| 3 + (rng.next_u64() % (vocab as u64 - 3)) as u32)
        .collect()
}

/// Memory-copy bandwidth: the best of several copies of a 256 MiB buffer,
/// split over the rayon threads, counting bytes read and written.
pub fn copy_bandwidth() -> f64 {
    use rayon::prelude::*;
    let n = 64 << 20; // f32s = 256 MiB
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.par_chunks_mut(1 << 20)
            .zip(src.par_chunks(1 << 20))
            .for_each(|(d, s)| d.copy_from_slice(s));
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&dst);
    }
    (2 * n * 4) as f64 / best / 1e9
}

/// Read-only bandwidth: the best of several parallel sums over a 256 MiB
/// buffer (what a memory-bound GEMV does with its weights).
pub fn read_bandwidth() -> f64 {
    use rayon::prelude::*;
    let n = 64 << 20;
    let src: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let s: f32 = src.par_chunks(1 << 20).map(|c| cpu::simd::dot(c, c)).sum();
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(s);
    }
    (n * 4) as f64 / best / 1e9
}

/// Runs the benchmark.
pub fn run(model: &dyn CausalLm, seqlen: usize, decode_tokens: usize) -> Result<BenchReport> {
    let info = model.info().clone();
    let (h, v, layers) = (info.hidden_size, info.vocab_size, info.num_layers);
    let seqlen = seqlen.min(info.max_position_embeddings);

    // GEMM ceiling: every linear of block 0 and the output layer at M = seqlen.
    let mut shapes: Vec<(usize, usize, usize)> = model
        .block_linears(0)
        .iter()
        .map(|(_, l)| (l.out_dim(), l.in_dim(), layers))
        .collect();
    shapes.push((model.lm_head().out_dim(), model.lm_head().in_dim(), 1));
    let mut gemm_flops = 0.0;
    let mut gemm_time = 0.0;
    for &(n, k, count) in &shapes {
        let x = vec![0.01f32; seqlen * k];
        let w = vec![0.02f32; n * k];
        let mut out = vec![0.0f32; seqlen * n];
        cpu::matmul_nt(&x, &w, seqlen, k, n, &mut out); // warm-up
        let reps = 3;
        let t = Instant::now();
        for _ in 0..reps {
            cpu::matmul_nt(&x, &w, seqlen, k, n, &mut out);
        }
        let per = t.elapsed().as_secs_f64() / reps as f64;
        gemm_flops += 2.0 * (seqlen * n * k) as f64 * count as f64;
        gemm_time += per * count as f64;
    }
    let gemm_gflops = gemm_flops / gemm_time / 1e9;

    // Prefill: one window, all logits (as perplexity evaluation does).
    let tokens = ids(seqlen, v, 1);
    let len = [seqlen];
    let run_window = || -> Result<f64> {
        let t = Instant::now();
        let mut cache = model.new_cache(1);
        let hidden = model.forward_hidden(&Batch::single(&tokens, &len), &mut cache)?;
        for c in hidden.chunks(128 * h) {
            std::hint::black_box(model.logits(c, c.len() / h));
        }
        Ok(t.elapsed().as_secs_f64())
    };
    run_window()?; // warm-up
    let prefill = run_window()?;
    let attn_flops = 4.0
        * (info.num_attention_heads * info.head_dim) as f64
        * (seqlen * (seqlen + 1) / 2) as f64
        * layers as f64;
    let forward_gflops = (gemm_flops + attn_flops) / prefill / 1e9;

    // Decode: batch 1 after a short prompt.
    let copy_gbps = copy_bandwidth();
    let read_gbps = read_bandwidth();
    let weight_bytes_per_token = model
        .block_linears(0)
        .iter()
        .map(|(_, l)| l.weight_bytes())
        .sum::<usize>()
        * layers
        + model.lm_head().weight_bytes();
    let prompt = ids(16, v, 2);
    let plen = [prompt.len()];
    let mut cache = model.new_cache(1);
    model.forward_hidden(&Batch::single(&prompt, &plen), &mut cache)?;
    let steps = decode_tokens
        .min(
            info.max_position_embeddings
                .saturating_sub(prompt.len() + 1),
        )
        .max(1);
    let greedy = crate::generate::SamplingOptions {
        max_new_tokens: steps,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        ignore_eos: false,
    };
    let mut rng = crate::generate::Rng::new(0);
    let t = Instant::now();
    let mut next = prompt[0];
    for _ in 0..steps {
        let one = [next];
        let hid = model.forward_hidden(&Batch::single(&one, &[1]), &mut cache)?;
        let logits = model.logits(&hid, 1);
        next = crate::generate::sample(&logits, &greedy, &mut rng);
    }
    let decode_s = t.elapsed().as_secs_f64();
    let decode_tps = steps as f64 / decode_s;
    let decode_gbps = weight_bytes_per_token as f64 * decode_tps / 1e9;
    Ok(BenchReport {
        seqlen,
        threads: rayon::current_num_threads(),
        gemm_gflops,
        forward_gflops,
        forward_vs_gemm: forward_gflops / gemm_gflops,
        prefill_tokens_per_second: seqlen as f64 / prefill,
        copy_gbps,
        weight_bytes_per_token,
        decode_tokens_per_second: decode_tps,
        decode_gbps,
        decode_vs_copy: decode_gbps / copy_gbps,
        read_gbps,
        decode_vs_read: decode_gbps / read_gbps,
    })
}

/// One shape of [`kernels`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelRow {
    /// Input width.
    pub k: usize,
    /// Output width.
    pub n: usize,
    /// int4 GEMV time with f32 activations, µs.
    pub int4_us: f64,
    /// Bytes the int4 GEMV streams (codes + f32 scales and zero terms).
    pub int4_bytes: usize,
    /// `int4_bytes / int4_us`, GB/s.
    pub int4_gbps: f64,
    /// `int4_gbps / copy_gbps`.
    pub int4_vs_copy: f64,
    /// int4 GEMV time with int8 activations, µs (`None` when this CPU has
    /// no integer kernel for 4 bits).
    pub int4_i8_us: Option<f64>,
    /// `int4_bytes / int4_i8_us`, relative to `copy_gbps`.
    pub int4_i8_vs_copy: Option<f64>,
    /// f16 GEMV time, µs.
    pub f16_us: f64,
    /// f16 GB/s.
    pub f16_gbps: f64,
    /// f32 GEMV time, µs.
    pub f32_us: f64,
    /// f32 GB/s.
    pub f32_gbps: f64,
}

/// Results of [`kernels`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelsReport {
    /// Kernel level used (`avx512`, `avx2`, `scalar`).
    pub isa: String,
    /// Threads used.
    pub threads: usize,
    /// Group size of the int4 weights.
    pub group_size: usize,
    /// Memory-copy bandwidth, GB/s (bytes read + written).
    pub copy_gbps: f64,
    /// One row per shape.
    pub rows: Vec<KernelRow>,
}

/// SmolLM2-135M's linear shapes `(k, n)` (q/o, k/v, gate/up, down, the
/// output layer) and a Llama-3-8B-sized MLP shape.
pub const KERNEL_SHAPES: &[(usize, usize)] = &[
    (576, 576),
    (576, 192),
    (576, 1536),
    (1536, 576),
    (576, 49152),
    (4096, 14336),
];

/// Bytes cycled through per measurement, so every call streams its weights
/// from memory (well above the last-level cache), as decoding a whole
/// model does.
const COLD_BYTES: usize = 96 << 20;

/// Best time of one call, in seconds, over `rounds` passes through `mats`
/// (one call each, so each call finds its weights out of cache).
fn time_cold<T>(mats: &[T], rounds: usize, mut call: impl FnMut(&T)) -> f64 {
    for m in mats.iter().take(2) {
        call(m);
    }
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        for m in mats {
            call(m);
        }
        best = best.min(t.elapsed().as_secs_f64() / mats.len() as f64);
    }
    best
}

/// Times single-row products (GEMV) of random int4 g128 (asymmetric,
/// act-order off; f32 and, where the CPU has the kernels, int8
/// activations), f16 and f32 weights for each of [`KERNEL_SHAPES`].
pub fn kernels(copy_gbps: f64, rounds: usize) -> Result<KernelsReport> {
    let group_size = 128;
    let mut rows = Vec::new();
    let mut rng = crate::generate::Rng::new(7);
    for &(k, n) in KERNEL_SHAPES {
        let groups = k.div_ceil(group_size);
        let q = gptq_core::QLinear {
            out_features: n,
            in_features: k,
            bits: 4,
            group_size: Some(group_size),
            codes: (0..n * k).map(|_| (rng.next_u64() % 16) as u8).collect(),
            scales: (0..groups * n)
                .map(|_| 0.001 + (rng.next_u64() % 1000) as f32 * 1e-5)
                .collect(),
            zeros: (0..groups * n)
                .map(|_| (rng.next_u64() % 16) as u8)
                .collect(),
            g_idx: gptq_core::pack::default_g_idx(k, Some(group_size)),
            bias: None,
        };
        let base = cpu::QMatrix::from_qlinear(&q).map_err(gptq_io::Error::from)?;
        drop(q);
        let x: Vec<f32> = (0..k)
            .map(|_| (rng.next_u64() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let mut y = vec![0f32; n];
        let copies = |bytes: usize| COLD_BYTES.div_ceil(bytes).clamp(1, 256);
        let int4_bytes = base.bytes();
        let mats: Vec<cpu::QMatrix> = (0..copies(int4_bytes)).map(|_| base.clone()).collect();
        drop(base);
        let isa = cpu::Isa::detect();
        let act = |a: cpu::Activations, y: &mut [f32]| {
            time_cold(&mats, rounds, |m| m.matmul_act(isa, a, &x, 1, y))
        };
        let int4 = act(cpu::Activations::F32, &mut y);
        let int4_i8 = cpu::int8_available(4).then(|| act(cpu::Activations::Int8, &mut y));
        drop(mats);

        let w: Vec<f32> = (0..n * k)
            .map(|_| (rng.next_u64() % 2001) as f32 / 1e5 - 0.01)
            .collect();
        let f16 = cpu::F16Matrix::from_f32(&w, n, k).map_err(gptq_io::Error::from)?;
        let mats: Vec<cpu::F16Matrix> = (0..copies(f16.bytes())).map(|_| f16.clone()).collect();
        let f16_time = time_cold(&mats, rounds, |m| m.matmul(&x, 1, &mut y));
        drop(mats);
        let f32_bytes = 4 * n * k;
        let mats: Vec<Vec<f32>> = (0..copies(f32_bytes)).map(|_| w.clone()).collect();
        drop(w);
        let f32_time = time_cold(&mats, rounds, |m| cpu::matmul_nt(&x, m, 1, k, n, &mut y));
        drop(mats);
        std::hint::black_box(&y);
        let gbps = |bytes: usize, t: f64| bytes as f64 / t / 1e9;
        rows.push(KernelRow {
            k,
            n,
            int4_us: int4 * 1e6,
            int4_bytes,
            int4_gbps: gbps(int4_bytes, int4),
            int4_vs_copy: gbps(int4_bytes, int4) / copy_gbps,
            int4_i8_us: int4_i8.map(|t| t * 1e6),
            int4_i8_vs_copy: int4_i8.map(|t| gbps(int4_bytes, t) / copy_gbps),
            f16_us: f16_time * 1e6,
            f16_gbps: gbps(f16.bytes(), f16_time),
            f32_us: f32_time * 1e6,
            f32_gbps: gbps(f32_bytes, f32_time),
        });
    }
    Ok(KernelsReport {
        isa: cpu::Isa::detect().name().to_string(),
        threads: rayon::current_num_threads(),
        group_size,
        copy_gbps,
        rows,
    })
}
