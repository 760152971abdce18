//! `gptq quantize MODEL -o OUT_DIR`: GPTQ (or RTN) quantization, layer by
//! layer, written as an HF GPTQ checkpoint.

use anyhow::{bail, Context};
use gptq_core::pack::{self, Format};
use gptq_infer::calib::{self, CalibSource};
use gptq_infer::Tokenizer;
use gptq_io::gptq::{
    auxiliary_files, CheckpointWriter, DynamicRule, ExtraFile, QuantizeConfig, TensorData,
};
use gptq_pipeline::{LayerReport, Method, PipelineOptions, Progress, Replay};
use gptq_quant::GptqParams;
use indicatif::{MultiProgress, ProgressBar};
use rayon::prelude::*;
use std::collections::HashSet;
use std::path::PathBuf;

/// Quantize a model with GPTQ and write an HF GPTQ checkpoint.
///
/// Defaults follow the GPTQ paper (Frantar et al. 2022) and GPTQModel where
/// they differ from transformers' GPTQConfig: --damp-percent 0.01 (transformers
/// 0.1), true-sequential on, 128 samples of 2048 tokens, checkpoint format v1
/// ("gptq", what transformers/vLLM/AutoGPTQ read). One default is our own:
/// asymmetric calibration (--asym-calib true), which fits each layer to the
/// full-precision model's outputs and beats both round-to-nearest and the
/// paper's GPTQ on SmolLM2 (docs/quantization.md). Flags override --config.
#[derive(clap::Args)]
pub struct Args {
    /// Model: HF folder, .gguf file or Hub id.
    pub model: String,
    /// Output folder (written atomically; refused if it exists unless --overwrite).
    #[arg(short, long)]
    pub output: PathBuf,
    /// A quantize_config.json-style JSON file with defaults for the flags below.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Bits per weight: 2, 3, 4 or 8 [default: 4].
    #[arg(long)]
    pub bits: Option<u32>,
    /// Input columns per group: 32, 64, 128, ... or -1 for one group per row [default: 128].
    #[arg(long, allow_hyphen_values = true)]
    pub group_size: Option<i64>,
    /// Act-order: quantize columns by decreasing Hessian diagonal [default: off, as the paper].
    #[arg(long)]
    pub desc_act: bool,
    /// Group parameters fixed from the unquantized weights before solving (with act-order).
    #[arg(long)]
    pub static_groups: bool,
    /// Symmetric grid [default].
    #[arg(long, conflicts_with = "asym")]
    pub sym: bool,
    /// Asymmetric grid (zero point per group).
    #[arg(long)]
    pub asym: bool,
    /// Dampening as a fraction of the mean Hessian diagonal [default: 0.01, the paper's].
    #[arg(long)]
    pub damp_percent: Option<f64>,
    /// Quantize a block's linear layers in dependency groups [default: on].
    #[arg(long, value_name = "BOOL")]
    pub true_sequential: Option<bool>,
    /// Checkpoint format: v1 ("gptq", zeros stored minus one) or v2 ("gptq_v2").
    #[arg(long, value_enum, default_value_t = FormatArg::V1)]
    pub format: FormatArg,
    /// Quantization method.
    #[arg(long, value_enum, default_value_t = MethodArg::Gptq)]
    pub method: MethodArg,
    /// Search the clipping range per row by MSE (as GPTQ's `--mse` option).
    #[arg(long)]
    pub mse: bool,
    /// Columns per lazy batch of the solver.
    #[arg(long, default_value_t = 128)]
    pub block_size: usize,
    /// Calibration data; repeatable. A named set: wikitext2 (WikiText-2 raw train; needs a build
    /// with the `parquet` feature), c4 or c4-new (allenai/c4 en train shard 0), fetched from the
    /// Hugging Face Hub into the HF cache (HF_HUB_OFFLINE=1: cache only). Or a file: .txt,
    /// .jsonl/.ndjson, .json.gz/.jsonl.gz (JSON lines), .parquet (`parquet` feature). An existing
    /// file wins over a name.
    #[arg(long, value_name = "NAME|FILE")]
    pub dataset: Vec<String>,
    /// A calibration string, used as one sample; repeatable.
    #[arg(long, value_name = "TEXT")]
    pub calib_text: Vec<String>,
    /// JSON-lines field or parquet column holding the text (files only).
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Calibration samples.
    #[arg(long, default_value_t = 128)]
    pub nsamples: usize,
    /// Tokens per calibration sample [default: min(2048, max_position_embeddings)].
    #[arg(long)]
    pub seqlen: Option<usize>,
    /// Seed of the calibration sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Largest safetensors shard, e.g. 2GB, 500MB (default: one file).
    #[arg(long, value_name = "SIZE")]
    pub max_shard_size: Option<String>,
    /// Replace OUT_DIR if it exists.
    #[arg(long)]
    pub overwrite: bool,

    /// Outlier tokens in the Hessians: a token whose layer input is longer
    /// than C times the median token's enters H scaled down to that length
    /// (the forward pass is unchanged). Off by default.
    #[arg(long, value_name = "C")]
    pub token_clip: Option<f32>,

    /// Asymmetric calibration: fit each layer to the full-precision model's
    /// outputs (from the quantized model's inputs) instead of to its own
    /// inputs' image, as GPTAQ does [default: true; false is the paper's
    /// GPTQ]. Twice the forward work; see docs/quantization.md.
    #[arg(long, value_name = "BOOL")]
    pub asym_calib: Option<bool>,

    /// Continue an interrupted run of the same command from its last
    /// finished block (progress is kept in OUT_DIR.gptq-resume/ while a run
    /// goes on); the result is bit-identical to an uninterrupted run.
    #[arg(long)]
    pub resume: bool,

    /// Memory (MiB) for calibration states kept between layer groups
    /// inside a block [default: the size of the block inputs; twice that
    /// saves recomputing attention once per block]. Less memory costs
    /// recomputation, never accuracy.
    #[arg(long, value_name = "MIB", hide = true)]
    pub state_budget_mib: Option<usize>,

    /// Where to quantize: auto (a CUDA GPU when one is present, else the
    /// CPU), cpu, cuda or cuda:N. On a GPU, GPTQ of a Llama-family model
    /// runs entirely there (calibration forward in f16 GEMMs, Hessians,
    /// asymmetric targets, solves); otherwise (--token-clip, other
    /// architectures) the forward passes run on the CPU and the solves on
    /// the GPU (docs/quantization.md).
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: super::Device,

    /// With the GPU calibration forward: use at most this much device
    /// memory (GiB, the CUDA context included). Calibration states that do
    /// not fit stay in host memory and pass through the GPU in chunks of
    /// sequences (more copying, same results up to f16 rounding order).
    /// Default: what is free on the device.
    #[arg(long, value_name = "GIB")]
    pub max_gpu_memory: Option<f64>,

    /// With a GPU: keep the calibration forward on the CPU even when the
    /// GPU could run it (solves on the GPU give the CPU's codes up to rare
    /// rounding ties).
    #[arg(long)]
    pub host_forward: bool,

    /// With a GPU and the host forward: accumulate the Hessians on the GPU
    /// (faster; an equally good but not bit-identical quantization, since
    /// f32 sums in another order flip near-tie codes).
    #[arg(long)]
    pub gpu_hessians: bool,
}

/// The `quantize_config.json` key (under `meta`) recording asymmetric
/// calibration.
const ASYM_KEY: &str = "asym_calibration";

/// Research switch: `1` feeds the calibration samples in reverse order. The
/// samples and the arithmetic are the same; only the order of the f32 sums
/// that build the Hessians (and the asymmetric cross terms) changes, so two
/// runs differ by last bits alone — how far GPTQ carries such differences
/// into the codes and the perplexity is the yardstick for comparing two
/// backends (bench/results/2026-12-05-sum-order.md).
const CALIB_REVERSE_ENV: &str = "GPTQ_CALIB_REVERSE";

/// Checkpoint format flag.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// Zero points stored minus one (AutoGPTQ, transformers, vLLM).
    V1,
    /// True zero points (GPTQModel's internal format).
    V2,
}

/// Method flag.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MethodArg {
    /// GPTQ.
    Gptq,
    /// Round-to-nearest on the same grid.
    Rtn,
}

/// Parses sizes like `2GB`, `500MB`, `1GiB`, `123`.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .with_context(|| format!("`{s}` is not a size like 2GB"))?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        u => bail!("unknown size unit `{u}` in `{s}` (use B, KB, MB, GB, KiB, MiB, GiB)"),
    };
    Ok((n * mult) as u64)
}

/// Peak resident memory of this process in bytes (Linux), if known.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

struct Bars {
    blocks: ProgressBar,
    layers: ProgressBar,
    per_block: usize,
    started: std::time::Instant,
}

impl Progress for Bars {
    fn block_start(&mut self, block: usize, blocks: usize) {
        self.blocks
            .set_message(format!("block {}/{blocks}", block + 1));
        self.layers.set_length(self.per_block as u64);
        self.layers.set_position(0);
    }
    fn layer_done(&mut self, r: &LayerReport) {
        // Layers are solved between the pipeline's passes over the
        // calibration states: give the last pass's freed per-sequence
        // scratch, which glibc keeps in its heap, back to the system so that
        // it does not add to the next pass's peak (no effect on results).
        crate::release_free_memory();
        self.layers.inc(1);
        let name = r
            .name
            .rsplit('.')
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(".");
        self.layers.set_message(name);
    }
    fn block_done(&mut self, block: usize) {
        self.blocks.inc(1);
        // Without a terminal the bars are hidden: log a line per block instead.
        if self.blocks.is_hidden() {
            let n = self.blocks.length().unwrap_or(1) as f64;
            let t = self.started.elapsed().as_secs_f64();
            let done = (block + 1) as f64;
            tracing::info!(
                "block {}/{n} done, {t:.0}s elapsed, ETA {:.0}s",
                block + 1,
                t / done * (n - done)
            );
        }
    }
}

/// Resolves flags over the config file over defaults.
fn resolve(a: &Args) -> anyhow::Result<QuantizeConfig> {
    let mut q = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            QuantizeConfig::from_json_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => QuantizeConfig::new(4, Some(128)),
    };
    if let Some(b) = a.bits {
        q.bits = b;
    }
    if let Some(g) = a.group_size {
        q.group_size = g;
    }
    if a.desc_act {
        q.desc_act = true;
    }
    if a.static_groups {
        q.static_groups = true;
    }
    if a.asym {
        q.sym = false;
    } else if a.sym {
        q.sym = true;
    }
    if let Some(d) = a.damp_percent {
        q.damp_percent = d;
    }
    if let Some(t) = a.true_sequential {
        q.true_sequential = t;
    }
    q.checkpoint_format = match a.format {
        FormatArg::V1 => Format::V1,
        FormatArg::V2 => Format::V2,
    }
    .checkpoint_format()
    .to_string();
    if !gptq_core::quant::SUPPORTED_BITS.contains(&q.bits) {
        bail!("unsupported bit width {} (supported: 2, 3, 4, 8)", q.bits);
    }
    if q.group_size == 0 || q.group_size < -1 {
        bail!(
            "--group-size must be -1 (per-channel) or a positive number of columns, got {}",
            q.group_size
        );
    }
    if !(q.damp_percent > 0.0 && q.damp_percent < 1.0) {
        bail!("--damp-percent must be in (0, 1), got {}", q.damp_percent);
    }
    q.validate()
        .map_err(|e| anyhow::anyhow!("quantization settings: {e}"))?;
    Ok(q)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let qcfg = resolve(&a)?;
    let max_shard = a.max_shard_size.as_deref().map(parse_size).transpose()?;
    if a.output.exists() && !a.overwrite {
        bail!(
            "{}: output folder exists (pass --overwrite to replace it)",
            a.output.display()
        );
    }
    let files = super::open(&a.model)?;
    if files.config.get("quantization_config").is_some() {
        bail!(
            "{} is already quantized (config.json has quantization_config)",
            files.name
        );
    }
    let tok = Tokenizer::from_model(&files)?;
    let model = gptq_models::layerwise(&files)
        .with_context(|| format!("cannot load model `{}`", a.model))?;
    let arch = model.arch();
    let maxpos = files
        .config
        .get("max_position_embeddings")
        .and_then(|v| v.as_u64())
        .unwrap_or(2048) as usize;
    let seqlen = a.seqlen.unwrap_or(maxpos.min(2048));
    if seqlen > maxpos {
        bail!("--seqlen {seqlen} exceeds the model's max_position_embeddings ({maxpos})");
    }
    let mut sources: Vec<CalibSource> = a
        .dataset
        .iter()
        .map(|s| CalibSource::from_spec(s, &a.text_field))
        .collect();
    if !a.calib_text.is_empty() {
        sources.push(CalibSource::Texts(a.calib_text.clone()));
    }
    let mut samples = calib::samples(&tok, &sources, a.nsamples, seqlen, a.seed)?;
    if std::env::var(CALIB_REVERSE_ENV).is_ok_and(|v| v == "1") {
        samples.reverse();
        eprintln!("calibration samples in reverse order ({CALIB_REVERSE_ENV}=1)");
    }
    // The tokenized corpus is gone; give its memory back before the
    // activations are allocated.
    crate::release_free_memory();
    // Flag over config (`asym_calibration`, top level or under `meta`) over
    // the default (on).
    let from_config = qcfg
        .extra
        .get(ASYM_KEY)
        .or_else(|| qcfg.meta.get(ASYM_KEY))
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| anyhow::anyhow!("config: `{ASYM_KEY}` must be true or false"))
        })
        .transpose()?;
    let asym_calib =
        matches!(a.method, MethodArg::Gptq) && a.asym_calib.or(from_config).unwrap_or(true);
    let tokens: usize = samples.iter().map(Vec::len).sum();
    eprintln!(
        "calibration: {} samples, {tokens} tokens; {}-bit, group {}, {}, desc_act {}, static_groups {}, damp {}, {}",
        samples.len(),
        qcfg.bits,
        qcfg.group_size,
        if qcfg.sym { "sym" } else { "asym" },
        qcfg.desc_act,
        qcfg.static_groups,
        qcfg.damp_percent as f32,
        match a.method {
            MethodArg::Gptq if asym_calib => "GPTQ, asymmetric calibration",
            MethodArg::Gptq => "GPTQ",
            MethodArg::Rtn => "RTN",
        }
    );

    let params = GptqParams {
        bits: qcfg.bits,
        group_size: qcfg.group_size(),
        sym: qcfg.sym,
        desc_act: qcfg.desc_act,
        static_groups: qcfg.static_groups,
        damp_percent: qcfg.damp_percent as f32,
        block_size: a.block_size,
        mse: a.mse,
    };
    params
        .validate()
        .map_err(|e| anyhow::anyhow!("quantization settings: {e}"))?;
    let gpu_limit = super::gpu_memory_limit(a.max_gpu_memory)?;
    if let Some(c) = a.token_clip {
        if !(c.is_finite() && c > 0.0) {
            anyhow::bail!("--token-clip must be a positive number, got {c}");
        }
    }
    let mut opts = PipelineOptions {
        params,
        method: match a.method {
            MethodArg::Gptq => Method::Gptq,
            MethodArg::Rtn => Method::Rtn,
        },
        true_sequential: qcfg.true_sequential,
        skip: Vec::new(),
        state_budget: a.state_budget_mib.map(|m| m << 20),
        token_clip: a.token_clip,
        asym_calib,
        solver: None,
    };
    let cuda = match a.method {
        MethodArg::Gptq => super::cuda_device(a.device)?,
        MethodArg::Rtn => None,
    };
    // The whole calibration on the GPU when it can run it; else host
    // forward passes with GPU solves.
    let mut gpu_calib = None;
    if let Some(dev) = &cuda {
        let why_not = if a.host_forward {
            Some("--host-forward".to_string())
        } else if opts.token_clip.is_some() {
            Some("--token-clip runs on the host".into())
        } else if !gptq_cuda::forward::supports_arch(arch.name) {
            Some(format!("no GPU forward for the {} architecture", arch.name))
        } else {
            None
        };
        match why_not {
            None => {
                let mut c = gptq_cuda::GpuCalibration::new(dev.clone())
                    .context("cannot start the GPU calibration")?;
                if let Some(b) = gpu_limit {
                    c = c.with_memory_limit(b);
                }
                eprintln!("device: {}", gptq_pipeline::BlockDevice::describe(&c));
                gpu_calib = Some(c);
            }
            Some(why) => {
                opts.solver = super::layer_solver(Some(dev), a.gpu_hessians)?;
                if let Some(s) = &opts.solver {
                    eprintln!(
                        "device: solver {}; calibration forward on the CPU ({why})",
                        s.describe()
                    );
                }
            }
        }
    }
    // A last, partial group (e.g. 576 inputs at group size 128) is valid GPTQ
    // and loads in transformers/GPTQModel, but vLLM refuses such layers.
    if let Some(g) = params.group_size {
        let mut block = model.block(0)?;
        let partial: Vec<String> = arch
            .linear_layers()
            .filter_map(|name| {
                let lin = block.linear_mut(name)?;
                (lin.in_dim() % g != 0).then(|| format!("{name} ({} inputs)", lin.in_dim()))
            })
            .collect();
        if !partial.is_empty() {
            tracing::warn!(
                "group size {g} does not divide the input of {}: the last group of those layers is partial \
                 (transformers and GPTQModel load this; vLLM does not)",
                partial.join(", ")
            );
        }
    }

    let format = qcfg.format().map_err(|e| anyhow::anyhow!(e))?;
    // Everything that determines the result, to refuse resuming a different run.
    let settings = serde_json::json!({
        "model": files.name,
        "config": files.config,
        "quantize_config": serde_json::from_str::<serde_json::Value>(&qcfg.to_json_string())?,
        "method": opts.method,
        "mse": a.mse,
        "block_size": a.block_size,
        "token_clip": a.token_clip,
        "asym_calib": asym_calib,
        // The GPU forward's f16 activations give slightly different codes.
        "gpu_forward": gpu_calib.is_some(),
        "calibration_tokens": crate::commands::resume::token_hash(&samples),
        "gptq_version": env!("CARGO_PKG_VERSION"),
    });
    let work =
        crate::commands::resume::WorkDir::open(&a.output, &settings, &qcfg, a.resume, a.overwrite)?;
    let mut writer = CheckpointWriter::create(&a.output, a.overwrite, max_shard)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    let all_names = files.weights.names();
    let mut written: HashSet<String> = HashSet::new();
    let mut v1_conflicts = 0usize;
    let mp = MultiProgress::new();
    let blocks_bar = mp.add(crate::progress::bar(model.num_blocks() as u64, "blocks"));
    let layers_bar = mp.add(crate::progress::bar(
        arch.linear_layers().count() as u64,
        "layers",
    ));
    let mut bars = Bars {
        blocks: blocks_bar,
        layers: layers_bar,
        per_block: arch.linear_layers().count(),
        started: std::time::Instant::now(),
    };
    let weights = files.weights.as_ref();
    // Runs on the pipeline's writer thread, one block behind the solver.
    let mut sink = |b: usize,
                    layers: Vec<(String, gptq_core::QLinear)>,
                    block_reports: Vec<LayerReport>|
     -> gptq_pipeline::Result<()> {
        let err = |e: String| gptq_pipeline::Error::Sink(e);
        // Packing is per layer and independent: in parallel, written in order.
        let packed: Vec<pack::Packed> = layers
            .par_iter()
            .map(|(name, q)| pack::pack(q, format).map_err(|e| err(format!("{name}: {e}"))))
            .collect::<gptq_pipeline::Result<_>>()?;
        for ((name, q), p) in layers.iter().zip(&packed) {
            if format == Format::V1 && !q.zeros.is_empty() {
                v1_conflicts += pack::v1_zero_point_conflicts(q);
            }
            writer.add_packed(name, p).map_err(|e| err(e.to_string()))?;
            written.insert(format!("{name}.weight"));
            written.insert(format!("{name}.bias"));
        }
        let prefix = (arch.block_prefix)(b);
        let rest: Vec<&String> = all_names
            .iter()
            .filter(|n| n.starts_with(&prefix) && !written.contains(*n))
            .collect();
        for n in rest {
            let t = weights.load_f32(n).map_err(|e| err(e.to_string()))?;
            writer
                .add(n.clone(), TensorData::f16_from_tensor(&t))
                .map_err(|e| err(e.to_string()))?;
            written.insert(n.clone());
        }
        if !work.has(b) {
            work.save_block(b, &layers, &block_reports)
                .map_err(|e| err(format!("saving progress: {e:#}")))?;
        }
        Ok(())
    };
    let reports = match gpu_calib.as_mut() {
        Some(dev) => gptq_pipeline::quantize_on_device(
            model.as_ref(),
            &samples,
            &opts,
            &mut bars,
            &mut sink,
            &work,
            dev,
        )?,
        None => gptq_pipeline::quantize_resumable(
            model.as_ref(),
            &samples,
            &opts,
            &mut bars,
            &mut sink,
            &work,
        )?,
    };
    // The calibration states are gone; give their memory back before the
    // unquantized tensors (the embedding matrix) are read and written.
    crate::release_free_memory();
    let gpu_peak = gpu_calib
        .as_ref()
        .and_then(gptq_pipeline::BlockDevice::peak_memory);
    bars.blocks.finish_and_clear();
    bars.layers.finish_and_clear();
    for n in all_names.iter().filter(|n| !written.contains(*n)) {
        let t = files.weights.load_f32(n)?;
        writer.add(n.clone(), TensorData::f16_from_tensor(&t))?;
    }
    if v1_conflicts > 0 {
        tracing::warn!(
            "{v1_conflicts} zero points are 0, which format v1 stores with a borrow that per-element v1 readers \
             (AutoGPTQ, exllama, vLLM) misread; GPTQModel reads it correctly. Use --format v2 or --sym to avoid it"
        );
    }

    let mut final_cfg = qcfg.clone();
    final_cfg.extra.remove(ASYM_KEY);
    final_cfg.meta.insert(ASYM_KEY.into(), asym_calib.into());
    let skipped: Vec<&LayerReport> = reports.iter().filter(|r| r.skipped.is_some()).collect();
    // Layers left dense are excluded two ways: GPTQModel reads `dynamic`
    // negative rules; transformers (through optimum) ignores `dynamic` but
    // reads `modules_in_block_to_quantize`, which can only say it when every
    // block skips the same layers.
    for r in &skipped {
        let key = format!("-:^{}$", r.name.replace('.', "\\."));
        final_cfg
            .dynamic
            .push(DynamicRule::new(&key, Default::default()).map_err(|e| anyhow::anyhow!(e))?);
    }
    if !skipped.is_empty() {
        let local = |r: &LayerReport| r.name[(arch.block_prefix)(r.block).len()..].to_string();
        let per_block: Vec<HashSet<String>> = (0..model.num_blocks())
            .map(|b| {
                reports
                    .iter()
                    .filter(|r| r.block == b && r.skipped.is_some())
                    .map(local)
                    .collect()
            })
            .collect();
        if per_block.windows(2).all(|w| w[0] == w[1]) {
            let groups: Vec<Vec<&str>> = arch
                .sequential_groups
                .iter()
                .map(|g| {
                    g.iter()
                        .copied()
                        .filter(|n| !per_block[0].contains(*n))
                        .collect::<Vec<_>>()
                })
                .filter(|g| !g.is_empty())
                .collect();
            final_cfg.extra.insert(
                "modules_in_block_to_quantize".into(),
                serde_json::json!(groups),
            );
        } else {
            tracing::warn!(
                "blocks skip different layers: only GPTQModel (dynamic rules) will load this checkpoint correctly"
            );
        }
    }
    final_cfg.model_name_or_path = Some(files.name.clone());
    let elapsed = started.elapsed().as_secs_f64();
    let rss = peak_rss();
    let report = serde_json::json!({
        "model": files.name,
        "method": opts.method,
        "quantize_config": serde_json::from_str::<serde_json::Value>(&final_cfg.to_json_string()).unwrap_or_default(),
        "calibration": {"samples": samples.len(), "tokens": tokens, "seqlen": seqlen, "seed": a.seed,
                         "sources": a.dataset,
                         "strings": a.calib_text.len()},
        "seconds": elapsed,
        "peak_rss_bytes": rss,
        "peak_gpu_bytes": gpu_peak,
        "device": gpu_calib.as_ref().map(gptq_pipeline::BlockDevice::describe)
            .or_else(|| opts.solver.as_ref().map(|s| s.describe()))
            .unwrap_or_else(|| "cpu".into()),
        "threads": rayon::current_num_threads(),
        "layers": reports,
    });
    let mut extra: Vec<ExtraFile> = Vec::new();
    match &files.dir {
        Some(d) => extra.extend(auxiliary_files(d)),
        None => {
            if let Some(t) = &files.tokenizer_json {
                extra.push(ExtraFile::Bytes {
                    name: "tokenizer.json".into(),
                    bytes: t.clone().into_bytes(),
                });
            }
            for (name, v) in [
                ("tokenizer_config.json", &files.tokenizer_config),
                ("generation_config.json", &files.generation_config),
            ] {
                if let Some(v) = v {
                    extra.push(ExtraFile::Bytes {
                        name: name.into(),
                        bytes: serde_json::to_vec_pretty(v)?,
                    });
                }
            }
        }
    }
    extra.push(ExtraFile::Bytes {
        name: "quantize_report.json".into(),
        bytes: serde_json::to_vec_pretty(&report)?,
    });
    writer
        .finish(&files.config, &final_cfg, &extra)
        .with_context(|| format!("cannot write {}", a.output.display()))?;

    work.remove();
    print_summary(&reports, elapsed, rss);
    if let Some(b) = gpu_peak {
        println!("peak GPU memory {:.2} GiB", b as f64 / (1u64 << 30) as f64);
    }
    println!("wrote {}", a.output.display());
    Ok(())
}

fn print_summary(reports: &[LayerReport], seconds: f64, rss: Option<u64>) {
    println!(
        "{:<48} {:>11} {:>12} {:>12} {:>7} {:>7}",
        "layer", "shape", "error", "rtn error", "ratio", "secs"
    );
    for r in reports {
        match &r.skipped {
            Some(why) => println!(
                "{:<48} {:>11} skipped: {why}",
                r.name,
                format!("{}x{}", r.rows, r.cols)
            ),
            None => println!(
                "{:<48} {:>11} {:>12.4e} {:>12.4e} {:>7.3} {:>7.2}",
                r.name,
                format!("{}x{}", r.rows, r.cols),
                r.error,
                r.error_rtn,
                if r.error_rtn > 0.0 {
                    r.error / r.error_rtn
                } else {
                    f64::NAN
                },
                r.seconds
            ),
        }
    }
    let q: Vec<&LayerReport> = reports.iter().filter(|r| r.skipped.is_none()).collect();
    let (e, er): (f64, f64) = (
        q.iter().map(|r| r.error).sum(),
        q.iter().map(|r| r.error_rtn).sum(),
    );
    println!(
        "{} layers quantized, {} skipped; total error {:.4e} vs RTN {:.4e}; {:.1}s; peak RSS {}",
        q.len(),
        reports.len() - q.len(),
        e,
        er,
        seconds,
        rss.map_or("unknown".into(), |b| format!(
            "{:.0} MiB",
            b as f64 / (1 << 20) as f64
        ))
    );
}
