//! `gptq bench MODEL`: forward and decode throughput against the machine's
//! GEMM and memory-copy ceilings, and a table of the GEMV kernels (int4,
//! f16, f32), measured in one run.

use anyhow::Context;
use std::path::PathBuf;

/// Measure CPU prefill GFLOP/s (vs plain GEMM on the model's shapes), decode
/// tokens/s (vs memory-copy bandwidth) and the int4/f16/f32 GEMV kernels,
/// in one run.
#[derive(clap::Args)]
pub struct Args {
    /// Model: HF folder, .gguf file or Hub id (optional with --kernels-only).
    pub model: Option<String>,
    /// Prefill window length.
    #[arg(long, default_value_t = 2048)]
    pub seqlen: usize,
    /// Tokens to decode.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Skip the kernels table.
    #[arg(long, conflicts_with = "kernels_only")]
    pub no_kernels: bool,
    /// Only the kernels table (no model).
    #[arg(long)]
    pub kernels_only: bool,
    /// Passes over the weights per kernel timing (the best is kept).
    #[arg(long, default_value_t = 10)]
    pub kernel_rounds: usize,
    /// Also write the report as JSON.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// GPU kernels: `gptq bench kernels --device cuda` (see bench_cuda.rs).
    #[command(flatten)]
    pub cuda: super::bench_cuda::CudaArgs,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if super::bench_cuda::wants(a.model.as_deref().unwrap_or(""), &a.cuda) {
        let cmd: Vec<String> = std::env::args().collect();
        let model = a.model.as_deref().unwrap_or("");
        return super::bench_cuda::run(&a.cuda, &cmd.join(" "), model);
    }
    let mut json = serde_json::json!({"version": env!("CARGO_PKG_VERSION")});
    let copy_gbps;
    if a.kernels_only {
        copy_gbps = gptq_infer::bench::copy_bandwidth();
        println!(
            "memory copy      {copy_gbps:8.1} GB/s     (bytes read + written, STREAM convention)"
        );
    } else {
        let Some(model_id) = a.model.as_deref() else {
            anyhow::bail!("MODEL is required unless --kernels-only is given");
        };
        let (files, model) = super::load(model_id)?;
        let r = gptq_infer::bench::run(model.as_ref(), a.seqlen, a.decode_tokens)?;
        println!("model            {} ({} threads)", files.name, r.threads);
        println!(
            "gemm             {:8.1} GFLOP/s  (model's linear shapes, M = {})",
            r.gemm_gflops, r.seqlen
        );
        println!(
            "prefill forward  {:8.1} GFLOP/s  = {:.0}% of gemm  ({:.0} tok/s)",
            r.forward_gflops,
            100.0 * r.forward_vs_gemm,
            r.prefill_tokens_per_second
        );
        println!(
            "memory copy      {:8.1} GB/s     (bytes read + written, STREAM convention)",
            r.copy_gbps
        );
        println!(
            "memory read      {:8.1} GB/s     (parallel sum)",
            r.read_gbps
        );
        println!(
            "decode           {:8.1} tok/s    = {:.1} GB/s of weights as stored ({:.0} MB/token) = {:.0}% of copy, {:.0}% of read bandwidth",
            r.decode_tokens_per_second,
            r.decode_gbps,
            r.weight_bytes_per_token as f64 / 1e6,
            100.0 * r.decode_vs_copy,
            100.0 * r.decode_vs_read
        );
        copy_gbps = r.copy_gbps;
        json["model"] = serde_json::json!(files.name);
        json["report"] = serde_json::to_value(&r)?;
    }
    if !a.no_kernels {
        let k = gptq_infer::bench::kernels(copy_gbps, a.kernel_rounds.max(1))?;
        println!(
            "\nGEMV kernels ({}, {} threads; int4 = GPTQ 4-bit g{} asym, f32 and int8 activations; weights streamed from memory, best of {} passes)",
            k.isa, k.threads, k.group_size, a.kernel_rounds.max(1)
        );
        println!(
            "{:>13}  {:>9} {:>8} {:>8} {:>6}  {:>9} {:>6}  {:>9} {:>8}  {:>9} {:>8}",
            "k → n",
            "int4 µs",
            "MB",
            "GB/s",
            "%copy",
            "i8-act µs",
            "%copy",
            "f16 µs",
            "GB/s",
            "f32 µs",
            "GB/s"
        );
        for r in &k.rows {
            let (i8_us, i8_pct) = match (r.int4_i8_us, r.int4_i8_vs_copy) {
                (Some(t), Some(c)) => (format!("{t:.1}"), format!("{:.0}%", 100.0 * c)),
                _ => ("–".into(), "–".into()),
            };
            println!(
                "{:>13}  {:>9.1} {:>8.2} {:>8.1} {:>5.0}%  {:>9} {:>6}  {:>9.1} {:>8.1}  {:>9.1} {:>8.1}",
                format!("{} → {}", r.k, r.n),
                r.int4_us,
                r.int4_bytes as f64 / 1e6,
                r.int4_gbps,
                100.0 * r.int4_vs_copy,
                i8_us,
                i8_pct,
                r.f16_us,
                r.f16_gbps,
                r.f32_us,
                r.f32_gbps
            );
        }
        json["kernels"] = serde_json::to_value(&k)?;
    }
    if let Some(p) = a.json {
        gptq_io::atomic::write_file(&p, &serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}
