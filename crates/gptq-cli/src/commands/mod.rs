//! One module per subcommand.

pub mod bench;
pub mod bench_cuda;
pub mod convert;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod quantize;
pub mod resume;

use anyhow::Context;
use gptq_io::ModelFiles;

/// Opens a model argument (folder, .gguf, or Hub id) with a contextual error.
pub fn open(spec: &str) -> anyhow::Result<ModelFiles> {
    gptq_io::open_model(spec).with_context(|| format!("cannot open model `{spec}`"))
}

/// Opens and loads a model for running.
pub fn load(spec: &str) -> anyhow::Result<(ModelFiles, Box<dyn gptq_models::CausalLm>)> {
    let files = open(spec)?;
    let t = std::time::Instant::now();
    let model = gptq_models::load(&files).with_context(|| format!("cannot load model `{spec}`"))?;
    tracing::info!(
        "loaded {} ({}, {:.1}M parameters) in {:.2}s",
        files.name,
        model.info().model_type,
        model.info().num_params as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    Ok((files, model))
}
