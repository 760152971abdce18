//! `gptq eval MODEL`: perplexity with the GPTQ protocol.

use anyhow::Context;
use gptq_infer::eval::{perplexity, EvalOptions};
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
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let text = datasets::eval_text(&a.dataset)?;
    let (files, model) = super::load(&a.model)?;
    let tok = Tokenizer::from_model(&files)?;
    let t = std::time::Instant::now();
    let ids = tok.encode(&text, !a.no_special_tokens)?;
    tracing::info!(
        "tokenized {} chars into {} tokens in {:.2}s",
        text.len(),
        ids.len(),
        t.elapsed().as_secs_f64()
    );
    let seqlen = a
        .seqlen
        .unwrap_or_else(|| model.info().max_position_embeddings.min(2048));
    let mut pb: Option<indicatif::ProgressBar> = None;
    let r = perplexity(
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
    )?;
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
