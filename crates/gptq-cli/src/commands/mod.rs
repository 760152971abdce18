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
    let model = load_files(&files, spec)?;
    Ok((files, model))
}

/// Loads opened model files (`spec`: how the user named them) for running.
pub fn load_files(
    files: &ModelFiles,
    spec: &str,
) -> anyhow::Result<Box<dyn gptq_models::CausalLm>> {
    let t = std::time::Instant::now();
    let model = gptq_models::load(files).with_context(|| format!("cannot load model `{spec}`"))?;
    tracing::info!(
        "loaded {} ({}, {:.1}M parameters) in {:.2}s",
        files.name,
        model.info().model_type,
        model.info().num_params as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    Ok(model)
}

/// `--device auto|cpu|cuda[:N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// CUDA when a driver and a GPU are present, else the CPU (one info line).
    Auto,
    Cpu,
    /// CUDA device ordinal.
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("`{s}` is not auto, cpu, cuda or cuda:N")),
        }
    }
}

/// `--max-gpu-memory GIB` checked and in bytes: a positive, finite number
/// of GiB, or one clear error.
pub fn gpu_memory_limit(gib: Option<f64>) -> anyhow::Result<Option<usize>> {
    match gib {
        None => Ok(None),
        Some(g) if g.is_finite() && g > 0.0 => Ok(Some((g * (1u64 << 30) as f64) as usize)),
        Some(g) => anyhow::bail!("--max-gpu-memory must be a positive number of GiB, got {g}"),
    }
}

/// The CUDA device `device` resolves to: `None` is the CPU. `cuda` that
/// cannot be opened is an error; `auto` falls back to the CPU with one line
/// saying why.
pub fn cuda_device(device: Device) -> anyhow::Result<Option<std::sync::Arc<gptq_cuda::Cuda>>> {
    let open = |ordinal: usize| gptq_cuda::Cuda::new(ordinal).map(std::sync::Arc::new);
    match device {
        Device::Cpu => Ok(None),
        Device::Cuda(n) => open(n)
            .map(Some)
            .with_context(|| format!("cannot use CUDA device {n} (--device cpu runs on the CPU)")),
        Device::Auto => {
            if let Err(e) = gptq_cuda::probe_libraries() {
                eprintln!("device: {e}; running on the CPU");
                return Ok(None);
            }
            match open(0) {
                Ok(d) => Ok(Some(d)),
                Err(e) => {
                    eprintln!("device: {e}; running on the CPU");
                    Ok(None)
                }
            }
        }
    }
}

/// The GPTQ layer solver on `dev` (`None`: the CPU's). `gpu_hessians`:
/// accumulate the calibration statistics on the GPU too.
pub fn layer_solver(
    dev: Option<&std::sync::Arc<gptq_cuda::Cuda>>,
    gpu_hessians: bool,
) -> anyhow::Result<Option<std::sync::Arc<dyn gptq_quant::LayerSolver>>> {
    match dev {
        None => Ok(None),
        Some(d) => {
            let s = gptq_cuda::GpuLayerSolver::new(d.clone(), gpu_hessians)
                .context("cannot start the GPU solver")?;
            Ok(Some(std::sync::Arc::new(s)))
        }
    }
}
