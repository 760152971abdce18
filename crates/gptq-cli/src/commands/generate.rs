//! `gptq generate MODEL --prompt ...`: streaming text generation.

use gptq_infer::generate::{generate, SamplingOptions};
use gptq_infer::{chat, Tokenizer};
use std::io::Write;

/// Generate text from a prompt, streaming tokens to stdout.
#[derive(clap::Args)]
pub struct Args {
    /// Model: HF folder, .gguf file or Hub id.
    pub model: String,
    /// The prompt (empty: start from BOS).
    #[arg(long, short, default_value = "")]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template as a user turn.
    #[arg(long)]
    pub chat: bool,
    /// System prompt for --chat.
    #[arg(long)]
    pub system: Option<String>,
    /// Most new tokens.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        anyhow::bail!("--temperature must be a non-negative number");
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        anyhow::bail!("--top-p must be in (0, 1]");
    }
    let (files, model) = super::load(&a.model)?;
    let tok = Tokenizer::from_model(&files)?;
    let ids = if a.chat {
        let tpl = chat::template_of(&files).ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no chat_template in tokenizer_config.json; drop --chat",
                files.name
            )
        })?;
        let text = chat::render(&tpl, &tok, a.system.as_deref(), &a.prompt)?;
        tok.encode(&text, false)?
    } else {
        tok.encode(&a.prompt, true)?
    };
    if ids.is_empty() {
        anyhow::bail!("the prompt is empty and the tokenizer adds no BOS token; pass --prompt");
    }
    let opts = SamplingOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
    };
    let mut out = std::io::stdout().lock();
    if !a.chat {
        write!(out, "{}", a.prompt)?;
    }
    let (_, stats) = generate(model.as_ref(), &tok, &ids, &opts, |piece| {
        let _ = write!(out, "{piece}");
        let _ = out.flush();
    })?;
    writeln!(out)?;
    tracing::info!(
        "prompt {} tokens in {:.2}s ({:.1} tok/s); generated {} tokens in {:.2}s ({:.1} tok/s)",
        stats.prompt_tokens,
        stats.prefill_seconds,
        stats.prompt_tokens as f64 / stats.prefill_seconds.max(1e-9),
        stats.new_tokens,
        stats.decode_seconds,
        stats.new_tokens as f64 / stats.decode_seconds.max(1e-9)
    );
    Ok(())
}
