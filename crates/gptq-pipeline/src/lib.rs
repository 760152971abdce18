//! Layer-by-layer (sequential) GPTQ quantization of a whole model, as in the
//! GPTQ paper (arXiv 2210.17323, §4 "Step 3") and its reference code:
//!
//! 1. the calibration samples are embedded: the inputs of block 0;
//! 2. for each block, loaded alone from the checkpoint: for each
//!    true-sequential group of linear layers, the block is run on every
//!    sample (stopping as soon as the group's inputs have been seen) and each
//!    group input's Hessian `H = (2/n)·Σ x xᵀ` is accumulated; the group's
//!    layers are quantized and their weights replaced by the dequantized
//!    result, so later groups see the quantized earlier ones;
//! 3. the block is run once more with all its quantized layers, and its
//!    outputs become the next block's inputs;
//! 4. the block's quantized layers go to a sink (the checkpoint writer) and
//!    the block is dropped — peak memory is one block plus the activations.

use gptq_core::{QLinear, Tensor};
use gptq_models::{BlockRunner, LayerwiseModel};
use gptq_quant::{GptqParams, Hessian};
use std::time::Instant;

/// Errors of the pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A model error (loading a block, running it).
    #[error(transparent)]
    Model(#[from] gptq_models::Error),
    /// The solver failed on a layer.
    #[error("{layer}: {source}")]
    Solver {
        /// Full layer name.
        layer: String,
        /// The solver's error.
        source: gptq_quant::Error,
    },
    /// Bad input.
    #[error("{0}")]
    Input(String),
    /// The sink (checkpoint writer) failed.
    #[error("{0}")]
    Sink(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to quantize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Method {
    /// GPTQ (second-order error compensation).
    Gptq,
    /// Round-to-nearest on the same grid (for comparison).
    Rtn,
}

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Solver settings (bits, groups, act-order, damping, ...).
    pub params: GptqParams,
    /// GPTQ or round-to-nearest.
    pub method: Method,
    /// Quantize the architecture's groups one after another (true) or all
    /// linears of a block from one pass (false, the reference's default).
    pub true_sequential: bool,
    /// Layers (full names) to leave unquantized.
    pub skip: Vec<String>,
}

/// What happened to one linear layer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerReport {
    /// Full name, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    /// Block index.
    pub block: usize,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// `tr(ΔHΔᵀ)` of the chosen method (the calibration objective).
    pub error: f64,
    /// The same for round-to-nearest with the same grid.
    pub error_rtn: f64,
    /// Damping actually used (raised when the Cholesky failed).
    pub damp: f32,
    /// Seconds spent in the solver.
    pub seconds: f64,
    /// Left unquantized (and why), if so.
    pub skipped: Option<String>,
}

/// Progress callbacks.
pub trait Progress {
    /// A block starts.
    fn block_start(&mut self, _block: usize, _blocks: usize) {}
    /// A layer was quantized.
    fn layer_done(&mut self, _report: &LayerReport) {}
    /// A block is finished.
    fn block_done(&mut self, _block: usize) {}
}

impl Progress for () {}

/// Hessians of one group pass, one per distinct input (layers that share an
/// input, like k/v/q, share one Hessian).
struct GroupHessians {
    entries: Vec<(Vec<&'static str>, Hessian)>,
}

impl GroupHessians {
    fn for_name(&self, name: &str) -> Option<&Hessian> {
        self.entries
            .iter()
            .find(|(n, _)| n.contains(&name))
            .map(|(_, h)| h)
    }
}

/// Runs every sample through `block`, accumulating the Hessians of the
/// linears in `group` and stopping each run once all of them were seen.
fn collect_hessians(
    block: &dyn BlockRunner,
    inputs: &[Vec<f32>],
    hidden: usize,
    group: &[&'static str],
) -> Result<GroupHessians> {
    let mut hs = GroupHessians {
        entries: Vec::new(),
    };
    for x0 in inputs {
        let seq = x0.len() / hidden;
        let mut x = x0.clone();
        let mut seen = 0usize;
        // Per sample: which entry the previous observed input went to, keyed by
        // the input's address (layers sharing an input get the same slice).
        let mut last: Option<(*const f32, usize)> = None;
        let mut failed: Option<gptq_quant::Error> = None;
        let mut observe = |name: &'static str, inp: &[f32]| -> bool {
            if !group.contains(&name) {
                return true;
            }
            seen += 1;
            let key = inp.as_ptr();
            match last {
                Some((p, idx)) if p == key => {
                    if !hs.entries[idx].0.contains(&name) {
                        hs.entries[idx].0.push(name);
                    }
                }
                _ => {
                    let idx = match hs.entries.iter().position(|(n, _)| n.contains(&name)) {
                        Some(i) => i,
                        None => {
                            let cols = inp.len() / seq;
                            hs.entries.push((vec![name], Hessian::new(cols)));
                            hs.entries.len() - 1
                        }
                    };
                    if let Err(e) = hs.entries[idx].1.add_batch(inp, seq) {
                        failed.get_or_insert(e);
                    }
                    last = Some((key, idx));
                }
            }
            seen < group.len()
        };
        block.forward(&mut x, seq, &mut observe)?;
        if let Some(source) = failed {
            return Err(Error::Solver {
                layer: group.join(","),
                source,
            });
        }
    }
    Ok(hs)
}

/// Quantizes the model layer by layer. `sink(block, layers)` receives each
/// block's quantized linears (full names) as soon as the block is done.
pub fn quantize(
    model: &dyn LayerwiseModel,
    samples: &[Vec<u32>],
    opts: &PipelineOptions,
    progress: &mut dyn Progress,
    sink: &mut dyn FnMut(usize, Vec<(String, QLinear)>) -> Result<()>,
) -> Result<Vec<LayerReport>> {
    if samples.is_empty() {
        return Err(Error::Input("no calibration samples".into()));
    }
    let arch = model.arch();
    let hidden = model.hidden_size();
    let mut inputs: Vec<Vec<f32>> = samples
        .iter()
        .map(|s| model.embed(s))
        .collect::<Result<_, _>>()?;
    let groups: Vec<Vec<&'static str>> = if opts.true_sequential {
        arch.sequential_groups.iter().map(|g| g.to_vec()).collect()
    } else {
        vec![arch.linear_layers().collect()]
    };
    let mut reports = Vec::new();
    let blocks = model.num_blocks();
    for b in 0..blocks {
        progress.block_start(b, blocks);
        let mut block = model.block(b)?;
        let prefix = (arch.block_prefix)(b);
        let mut done: Vec<(String, QLinear)> = Vec::new();
        for group in &groups {
            let hs = if opts.method == Method::Gptq {
                Some(collect_hessians(block.as_ref(), &inputs, hidden, group)?)
            } else {
                None
            };
            // Layers that cannot be stored packed stay dense.
            let mut todo: Vec<&'static str> = Vec::new();
            for &name in group {
                let full = format!("{prefix}{name}");
                let lin = block
                    .linear_mut(name)
                    .ok_or_else(|| Error::Input(format!("block {b} has no layer {name}")))?;
                let (rows, cols) = (lin.out_dim(), lin.in_dim());
                match skip_reason(&full, rows, cols, opts) {
                    Some(why) => {
                        tracing::warn!("{full}: left unquantized ({why})");
                        let r = LayerReport {
                            name: full,
                            block: b,
                            rows,
                            cols,
                            error: 0.0,
                            error_rtn: 0.0,
                            damp: 0.0,
                            seconds: 0.0,
                            skipped: Some(why),
                        };
                        progress.layer_done(&r);
                        reports.push(r);
                    }
                    None => todo.push(name),
                }
            }
            // Layers reading the same input share one Hessian factorization.
            let batches: Vec<Vec<&'static str>> = match &hs {
                Some(hs) => hs
                    .entries
                    .iter()
                    .map(|(names, _)| {
                        todo.iter()
                            .copied()
                            .filter(|n| names.contains(n))
                            .collect::<Vec<_>>()
                    })
                    .filter(|v| !v.is_empty())
                    .collect(),
                None => todo.iter().map(|&n| vec![n]).collect(),
            };
            for names in batches {
                let t = Instant::now();
                let weights: Vec<std::sync::Arc<Tensor>> = names
                    .iter()
                    .map(|n| block.linear_mut(n).expect("checked above").weight.clone())
                    .collect();
                let full0 = format!("{prefix}{}", names.join(","));
                let results: Vec<(QLinear, f64, f64, f32)> = match &hs {
                    Some(hs) => {
                        let h = hs
                            .for_name(names[0])
                            .expect("every group layer was observed");
                        let refs: Vec<&Tensor> = weights.iter().map(|w| w.as_ref()).collect();
                        gptq_quant::gptq_quantize_many(&refs, h, &opts.params)
                            .map_err(|source| Error::Solver {
                                layer: full0,
                                source,
                            })?
                            .into_iter()
                            .map(|r| (r.q, r.error_gptq, r.error_rtn, r.damp_used))
                            .collect()
                    }
                    None => vec![(
                        gptq_quant::rtn_quantize(&weights[0], &opts.params).map_err(|source| {
                            Error::Solver {
                                layer: full0,
                                source,
                            }
                        })?,
                        0.0,
                        0.0,
                        0.0,
                    )],
                };
                let seconds = t.elapsed().as_secs_f64() / names.len() as f64;
                for (name, (mut q, error, error_rtn, damp)) in names.iter().zip(results) {
                    let full = format!("{prefix}{name}");
                    let lin = block.linear_mut(name).expect("checked above");
                    q.bias = lin.bias.clone();
                    // What the checkpoint will hold (f16 scales and bias), so the
                    // next layers calibrate against exactly the weights that run.
                    let q = gptq_core::pack::round_to_f16(&q);
                    lin.weight = std::sync::Arc::new(q.dequantize());
                    let r = LayerReport {
                        name: full.clone(),
                        block: b,
                        rows: q.out_features,
                        cols: q.in_features,
                        error,
                        error_rtn,
                        damp,
                        seconds,
                        skipped: None,
                    };
                    progress.layer_done(&r);
                    reports.push(r);
                    done.push((full, q));
                }
            }
        }
        for x in inputs.iter_mut() {
            let seq = x.len() / hidden;
            block.forward(x, seq, &mut |_, _| true)?;
        }
        sink(b, done)?;
        progress.block_done(b);
    }
    Ok(reports)
}

/// Why a layer cannot be stored in the packed GPTQ format, if so.
pub fn skip_reason(full: &str, rows: usize, cols: usize, opts: &PipelineOptions) -> Option<String> {
    if opts.skip.iter().any(|s| s == full) {
        return Some("listed in --skip".into());
    }
    let bits = opts.params.bits as usize;
    // qweight packs `in` along 32-bit words, qzeros packs `out`.
    if !(cols * bits).is_multiple_of(32) || !(rows * bits).is_multiple_of(32) {
        return Some(format!(
            "shape {rows}x{cols} does not pack into 32-bit words at {bits} bits"
        ));
    }
    None
}
