//! `gptq generate MODEL --prompt ...`: streaming text generation.

use anyhow::Context;
use gptq_infer::generate::{generate_with, CpuDecoder, SamplingOptions};
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
    /// Keep generating after the end-of-sequence token (for timing).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Where to run: cpu, cuda, cuda:N or auto (a CUDA GPU when one is
    /// present, else the CPU). On a GPU a Llama-family model is resident in
    /// device memory with an f16 KV cache; 4-bit GPTQ layers run the fused
    /// int4 kernels, and each new token replays one captured CUDA graph
    /// (GPTQ_CUDA_GRAPH=0 launches kernel by kernel). Other architectures
    /// run on the CPU.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: super::Device,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        anyhow::bail!("--temperature must be a non-negative number");
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        anyhow::bail!("--top-p must be in (0, 1]");
    }
    let files = super::open(&a.model)?;
    let dev = match super::cuda_device(a.device)? {
        Some(d) => {
            let arch = gptq_models::arch_for(
                files
                    .config
                    .get("model_type")
                    .and_then(|v| v.as_str())
                    .unwrap_or(""),
            )
            .map(|a| a.name)
            .unwrap_or("?");
            if gptq_cuda::forward::runs_whole_model(arch) {
                Some(d)
            } else {
                eprintln!("device: GPU generation runs Llama-family models, not {arch}; running on the CPU");
                None
            }
        }
        None => None,
    };
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
        ignore_eos: a.ignore_eos,
    };
    let mut out = std::io::stdout().lock();
    if !a.chat {
        write!(out, "{}", a.prompt)?;
    }
    let on_text = |piece: &str| {
        let _ = write!(out, "{piece}");
        let _ = out.flush();
    };
    let (_, stats) = match dev {
        Some(dev) => {
            let lw = gptq_models::layerwise(&files)
                .with_context(|| format!("cannot load model `{}`", a.model))?;
            let max_pos = files
                .config
                .get("max_position_embeddings")
                .and_then(|v| v.as_u64())
                .map_or(2048, |v| v as usize);
            let t = std::time::Instant::now();
            let name = dev.info.name.clone();
            let mut pb: Option<indicatif::ProgressBar> = None;
            let mut dec = gptq_cuda::GpuDecoder::new(
                dev,
                lw.as_ref(),
                max_pos,
                ids.len() + a.max_new_tokens,
                |done, total| {
                    let bar = pb.get_or_insert_with(|| {
                        crate::progress::bar(total as u64, "loading to GPU")
                    });
                    bar.set_position(done as u64);
                },
            )
            .context("cannot load the model onto the GPU")?;
            if let Some(bar) = pb {
                bar.finish_and_clear();
            }
            tracing::info!(
                "device: cuda ({name}); loaded in {:.2}s: {:.3} GiB of weights, {:.3} GiB of KV cache ({} positions)",
                t.elapsed().as_secs_f64(),
                dec.weight_bytes() as f64 / (1u64 << 30) as f64,
                dec.cache_bytes() as f64 / (1u64 << 30) as f64,
                dec.capacity()
            );
            drop(lw);
            let r = generate_with(&mut dec, &tok, &ids, &opts, on_text)?;
            tracing::info!(
                "device: a one-token step reads {:.3} GB at the end (weights, output layer, KV cache)",
                dec.step_bytes() as f64 / 1e9
            );
            r
        }
        None => {
            let model = super::load_files(&files, &a.model)?;
            generate_with(
                &mut CpuDecoder::new(model.as_ref()),
                &tok,
                &ids,
                &opts,
                on_text,
            )?
        }
    };
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
