//! `gptq convert IN.gguf OUT_DIR`.

use anyhow::Context;
use gptq_io::gguf::ConvertDType;
use std::path::PathBuf;

/// Convert a GGUF file (llama.cpp) into a Hugging Face folder.
#[derive(clap::Args)]
pub struct Args {
    /// The .gguf file (Llama architecture; F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors).
    pub input: PathBuf,
    /// The folder to write (config.json, model.safetensors, tokenizer files).
    pub output: PathBuf,
    /// Float type of the written weights.
    #[arg(long, value_enum, default_value_t = DType::F16)]
    pub dtype: DType,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

/// Output float type.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DType {
    /// 16-bit floats (matrices; norms stay f32).
    F16,
    /// 32-bit floats.
    F32,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let dt = match a.dtype {
        DType::F16 => ConvertDType::F16,
        DType::F32 => ConvertDType::F32,
    };
    gptq_io::gguf::convert(&a.input, &a.output, dt, a.overwrite)
        .with_context(|| format!("cannot convert {}", a.input.display()))?;
    eprintln!(
        "wrote {} in {:.1}s",
        a.output.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
