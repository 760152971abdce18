//! `gptq eval MODEL`: perplexity with the GPTQ protocol.

use anyhow::Context;
use gptq_infer::eval::{perplexity, window_count, EvalOptions, EvalResult};
use gptq_infer::{datasets, Tokenizer};
use std::path::PathBuf;

/// Perplexity of a model on a text, GPTQ protocol: the text is tokenized once
/// and cut into non-overlapping windows of --seqlen tokens, each scored from
/// an empty context; ppl = exp(mean NLL).
#[derive(clap::Args)]
pub struct Args {
    /// Model: HF folder, .gguf file or Hub id.
    pub model: String,
    /// `wikitext2` (WikiText-2 raw test, rows joined with "\n\n" as the GPTQ
    /// scripts do; embedded in the binary) or a .txt / .jsonl (`text` field) file.
    #[arg(long, default_value = "wikitext2")]
    pub dataset: String,
    /// Window length in tokens [default: min(2048, max_position_embeddings)].
    #[arg(long)]
    pub seqlen: Option<usize>,
    /// Score only the first K windows.
    #[arg(long, value_name = "K")]
    pub max_windows: Option<usize>,
    /// Do not add the tokenizer's special tokens (e.g. BOS) to the text.
    #[arg(long)]
    pub no_special_tokens: bool,
    /// Also write the result as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Where to run: cpu, cuda, cuda:N or auto (a CUDA GPU when one is
    /// present, else the CPU). On a GPU a Llama-family model runs all
    /// windows through each block at once (f16 GEMMs with f32 sums, GPTQ
    /// layers dequantized to f16, one block's weights in device memory),
    /// the output layer and the log-likelihoods included; other
    /// architectures run on the CPU.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: super::Device,
    /// With a GPU: use at most this much device memory (GiB); window states
    /// that do not fit stay in host memory and pass through in chunks.
    #[arg(long, value_name = "GIB")]
    pub max_gpu_memory: Option<f64>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let text = datasets::eval_text(&a.dataset)?;
    let gpu_limit = super::gpu_memory_limit(a.max_gpu_memory)?;
    let files = super::open(&a.model)?;
    // On a GPU the blocks are read one at a time (never the whole model).
    let gpu = match super::cuda_device(a.device)? {
        Some(d) => {
            let lw = gptq_models::layerwise(&files)
                .with_context(|| format!("cannot load model `{}`", a.model))?;
            let arch = lw.arch().name;
            if gptq_cuda::forward::runs_whole_model(arch) {
                Some((d, lw))
            } else {
                eprintln!("device: GPU evaluation runs Llama-family models, not {arch}; running on the CPU");
                None
            }
        }
        None => None,
    };
    let tok = Tokenizer::from_model(&files)?;
    let t = std::time::Instant::now();
    let ids = tok.encode(&text, !a.no_special_tokens)?;
    tracing::info!(
        "tokenized {} chars into {} tokens in {:.2}s",
        text.len(),
        ids.len(),
        t.elapsed().as_secs_f64()
    );
    let mut pb: Option<indicatif::ProgressBar> = None;
    let r = match gpu {
        Some((dev, lw)) => {
            let max_pos = files
                .config
                .get("max_position_embeddings")
                .and_then(|v| v.as_u64())
                .map_or(2048, |v| v as usize);
            let opts = EvalOptions {
                seqlen: a.seqlen.unwrap_or(max_pos.min(2048)),
                max_windows: a.max_windows,
            };
            let windows = window_count(&ids, opts, max_pos)?;
            let seqlen = opts.seqlen;
            let wins: Vec<&[u32]> = ids.chunks_exact(seqlen).take(windows).collect();
            eprintln!(
                "device: cuda ({}), {windows} windows at once",
                dev.info.name
            );
            let start = std::time::Instant::now();
            let mut cal =
                gptq_cuda::GpuCalibration::new(dev).context("cannot start the GPU forward")?;
            if let Some(b) = gpu_limit {
                cal = cal.with_memory_limit(b);
            }
            let got = gptq_cuda::forward::windows_nll(cal, lw.as_ref(), &wins, |done, total| {
                let bar =
                    pb.get_or_insert_with(|| crate::progress::bar(total as u64, "eval (blocks)"));
                bar.set_position(done as u64);
            })
            .context("GPU evaluation failed")?;
            tracing::info!(
                "peak GPU memory {:.2} GiB",
                got.peak_memory as f64 / (1u64 << 30) as f64
            );
            EvalResult::new(
                got.nll,
                windows,
                seqlen,
                ids.len(),
                start.elapsed().as_secs_f64(),
            )
        }
        None => {
            let model = super::load_files(&files, &a.model)?;
            let seqlen = a
                .seqlen
                .unwrap_or_else(|| model.info().max_position_embeddings.min(2048));
            perplexity(
                model.as_ref(),
                &ids,
                EvalOptions {
                    seqlen,
                    max_windows: a.max_windows,
                },
                |done, total, ppl| {
                    let bar = pb.get_or_insert_with(|| crate::progress::bar(total as u64, "eval"));
                    bar.set_position(done as u64);
                    bar.set_message(format!("ppl {ppl:.3}"));
                },
            )?
        }
    };
    if let Some(b) = pb {
        b.finish_and_clear();
    }
    println!(
        "{} {}: ppl {:.4} ({} windows x {} tokens, {:.1} tok/s, {:.1}s)",
        files.name, a.dataset, r.ppl, r.windows, r.seqlen, r.tokens_per_second, r.seconds
    );
    if let Some(p) = a.json {
        let v = serde_json::json!({
            "model": files.name,
            "dataset": a.dataset,
            "result": r,
            "threads": rayon::current_num_threads(),
            "version": env!("CARGO_PKG_VERSION"),
        });
        let bytes = serde_json::to_vec_pretty(&v)?;
        gptq_io::atomic::write_file(&p, &bytes)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}
