//! `gptq bench MODEL`: forward and decode throughput against the machine's
//! GEMM and memory-copy ceilings, measured in one run.

use anyhow::Context;
use std::path::PathBuf;

/// Measure CPU prefill GFLOP/s (vs plain GEMM on the model's shapes) and
/// decode tokens/s (vs memory-copy bandwidth), in one run.
#[derive(clap::Args)]
pub struct Args {
    /// Model: HF folder, .gguf file or Hub id.
    pub model: String,
    /// Prefill window length.
    #[arg(long, default_value_t = 2048)]
    pub seqlen: usize,
    /// Tokens to decode.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Also write the report as JSON.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (files, model) = super::load(&a.model)?;
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
        "decode           {:8.1} tok/s    = {:.1} GB/s of f32 weights ({:.0} MB/token) = {:.0}% of copy, {:.0}% of read bandwidth",
        r.decode_tokens_per_second,
        r.decode_gbps,
        r.weight_bytes_per_token as f64 / 1e6,
        100.0 * r.decode_vs_copy,
        100.0 * r.decode_vs_read
    );
    if let Some(p) = a.json {
        let v = serde_json::json!({"model": files.name, "report": r, "version": env!("CARGO_PKG_VERSION")});
        gptq_io::atomic::write_file(&p, &serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}
