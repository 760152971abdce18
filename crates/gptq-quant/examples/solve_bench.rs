//! Wall-clock of the GPTQ solver (arXiv 2210.17323) on random layers of
//! SmolLM2-135M shapes (576×1536 up-projection-like, 1536×576
//! down-projection-like) and, with `--big`, 4096×4096.
//!
//! `cargo run --release -p gptq-quant --example solve_bench [-- --big]`

use gptq_core::Tensor;
use gptq_quant::{gptq_quantize, rtn_quantize, GptqParams, Hessian};
use std::time::Instant;

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545F4914F6CDD1D) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn bench(out: usize, inn: usize, samples: usize, tokens: usize) {
    let w = Tensor::new(
        vec![out, inn],
        data(out * inn, 1).iter().map(|v| v * 0.1).collect(),
    )
    .unwrap();
    let t = Instant::now();
    let mut h = Hessian::new(inn);
    for s in 0..samples {
        let mut x = data(tokens * inn, 100 + s as u64);
        // A few large channels, as in LLM activations.
        for (k, v) in x.iter_mut().enumerate() {
            if k % inn % 31 == 7 {
                *v *= 25.0;
            }
        }
        h.add_batch(&x, tokens).unwrap();
    }
    let th = t.elapsed().as_secs_f64();
    for (name, p) in [
        ("g128 sym", GptqParams::default()),
        (
            "g128 act-order",
            GptqParams {
                desc_act: true,
                ..GptqParams::default()
            },
        ),
        (
            "g128 mse",
            GptqParams {
                mse: true,
                ..GptqParams::default()
            },
        ),
        (
            "per-channel",
            GptqParams {
                group_size: None,
                ..GptqParams::default()
            },
        ),
    ] {
        // Warm-up, then best of 3.
        let mut best = f64::INFINITY;
        let mut r = gptq_quantize(&w, &h, &p).unwrap();
        for _ in 0..3 {
            let t = Instant::now();
            r = gptq_quantize(&w, &h, &p).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        let t = Instant::now();
        let q = rtn_quantize(&w, &p).unwrap();
        let trtn = t.elapsed().as_secs_f64();
        let d: Vec<f32> = w
            .data()
            .iter()
            .zip(q.dequantize().data())
            .map(|(a, b)| a - b)
            .collect();
        let t = Instant::now();
        let _ = h.weighted_error(&d, out).unwrap();
        let terr = t.elapsed().as_secs_f64();
        println!(
            "{out:>5}x{inn:<5} {name:<15} gptq_quantize {:>8.1} ms (of which rtn {:.1} ms, one tr(ΔHΔᵀ) {:.1} ms)  \
             error gptq {:.4e} rtn {:.4e} ratio {:.3}",
            best * 1e3,
            trtn * 1e3,
            terr * 1e3,
            r.error_gptq,
            r.error_rtn,
            r.error_gptq / r.error_rtn
        );
    }
    println!(
        "{out:>5}x{inn:<5} Hessian: {samples} samples × {tokens} tokens in {:.1} ms",
        th * 1e3
    );
}

fn main() {
    println!("rayon threads: {}", rayon::current_num_threads());
    bench(576, 1536, 16, 512);
    bench(1536, 576, 16, 512);
    if std::env::args().any(|a| a == "--big") {
        bench(4096, 4096, 4, 512);
    }
}
