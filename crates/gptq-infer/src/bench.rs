//! CPU throughput of a model's forward pass against the ceilings of the same
//! machine, measured in one run:
//!
//! - **prefill**: one `seqlen` window (forward + all logits) in GFLOP/s,
//!   against the plain GEMM throughput of the same library on the model's own
//!   linear shapes at `M = seqlen`;
//! - **decode**: tokens/s at batch 1 with a KV cache, as bytes of weights
//!   read per token ÷ a measured memory-copy bandwidth.

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
    let weight_bytes_per_token = 4
        * (model
            .block_linears(0)
            .iter()
            .map(|(_, l)| l.num_params())
            .sum::<usize>()
            * layers
            + model.lm_head().num_params());
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
