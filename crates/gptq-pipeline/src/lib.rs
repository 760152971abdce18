//! Layer-by-layer (sequential) GPTQ quantization of a whole model, as in the
//! GPTQ paper (arXiv 2210.17323, §4 "Step 3") and its reference code:
//!
//! 1. the calibration samples are embedded: the inputs of block 0;
//! 2. for each block, loaded alone from the checkpoint: for each
//!    true-sequential group of linear layers, every sample is run forward to
//!    the group's input (resuming from where the previous group left it) and
//!    each input's Hessian `H = (2/n)·Σ x xᵀ` is accumulated; the group's
//!    layers are quantized and their weights replaced by the dequantized
//!    result, so later groups see the quantized earlier ones;
//! 3. the samples are run to the end of the block, whose quantized outputs
//!    become the next block's inputs;
//! 4. the block's quantized layers go to a sink (the checkpoint writer) and
//!    the block is dropped — peak memory is one block plus the activations.
//!
//! Between groups a sample's state (residual stream plus the pending
//! intermediate, see [`BlockRunner::segment`]; the stream alone where the
//! intermediate is a norm of it) is kept when it fits in
//! [`PipelineOptions::state_budget`], so each block costs little more than
//! one forward pass; a state that does not fit is recomputed from the last
//! kept one. Either way the arithmetic is the same, so results do not
//! depend on the budget (tested).

mod device;

pub use device::{quantize_on_device, BlockDevice};

use gptq_core::{QLinear, Tensor};
use gptq_models::{ArchSpec, BlockRunner, LayerwiseModel};
use gptq_quant::{CrossTerm, GptqParams, Hessian};
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
    /// A [`BlockDevice`] failed.
    #[error("device: {0}")]
    Device(String),
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
    /// Bytes the quantized sequences' states inside a block may hold, to
    /// resume from a later point instead of recomputing the block from its
    /// input for each group (`None`: the size of the block inputs, so a
    /// state moves on only to points where it is the residual stream alone
    /// — the MLP input, Llama's second RMSNorm — and the attention output
    /// is recomputed for the group after it; twice that saves the
    /// recomputation). More memory only saves time; results are the same.
    /// The full-precision lane of asymmetric calibration needs no budget:
    /// its weights never change, so it never recomputes and always waits
    /// as compact as the next group allows.
    pub state_budget: Option<usize>,
    /// Outlier-token clipping for the Hessians: a token whose layer input
    /// is longer than `c` times the median token's (in its sample) enters
    /// `H` scaled down to that length. The forward pass is unchanged.
    pub token_clip: Option<f32>,
    /// Asymmetric calibration (see `gptq_quant::asym`): each layer is fit
    /// to the full-precision model's outputs `WX` from the quantized
    /// model's inputs `X̃`, instead of to `WX̃`. Runs the unquantized block
    /// beside the quantized one (twice the forward work and calibration
    /// states). GPTQ only.
    pub asym_calib: bool,
    /// Who solves the GPTQ layers: `None` is the CPU solver; a GPU backend
    /// (`gptq_cuda::GpuLayerSolver`) gives the same results up to rounding
    /// ties (see `gptq_cuda::solve`).
    pub solver: Option<std::sync::Arc<dyn gptq_quant::LayerSolver>>,
}

impl PipelineOptions {
    /// `method` with solver settings `params` and the pipeline's defaults
    /// otherwise: true-sequential, nothing skipped, the default state
    /// budget, no token clipping, symmetric calibration, the CPU solver.
    pub fn new(params: GptqParams, method: Method) -> Self {
        Self {
            params,
            method,
            true_sequential: true,
            skip: vec![],
            state_budget: None,
            token_clip: None,
            asym_calib: false,
            solver: None,
        }
    }
}

/// Scales down, in place, the rows (tokens) of `t` (`[seq, cols]`) longer
/// than `c` × the median row length to that length.
pub fn clip_tokens(t: &mut [f32], seq: usize, c: f32) {
    if seq == 0 {
        return;
    }
    let cols = t.len() / seq;
    let norms: Vec<f32> = t
        .chunks_exact(cols)
        .map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt())
        .collect();
    let mut sorted = norms.clone();
    sorted.sort_unstable_by(f32::total_cmp);
    let cap = c * sorted[seq / 2];
    for (r, n) in t.chunks_exact_mut(cols).zip(norms) {
        if n > cap && n > 0.0 {
            let k = cap / n;
            r.iter_mut().for_each(|v| *v *= k);
        }
    }
}

/// What happened to one linear layer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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

/// A block from an earlier run: its quantized layers (full names, in the
/// order the sink got them) and its layer reports.
pub type SavedBlock = (Vec<(String, QLinear)>, Vec<LayerReport>);

/// Receives each finished block, in order: its index, its quantized
/// layers (full names) and the reports of all its layers (quantized and
/// left unquantized). It runs on a writer thread (see [`write_behind`]).
pub type Sink<'a> =
    dyn FnMut(usize, Vec<(String, QLinear)>, Vec<LayerReport>) -> Result<()> + Send + 'a;

/// What the loops hand finished blocks to: `sink`'s arguments, queued.
type Handoff<'a> = dyn FnMut(usize, Vec<(String, QLinear)>, Vec<LayerReport>) -> Result<()> + 'a;

/// Runs `work` with a hand-off that passes each finished block to `sink` on
/// a writer thread, so packing and writing block `b` overlap the work on
/// block `b + 1`. At most one block waits in the queue (memory: about two
/// blocks' quantized layers). Blocks reach `sink` in order; the first
/// error of either side is returned (the writer's first: when it stops,
/// the hand-off fails too).
fn write_behind<R>(
    sink: &mut Sink<'_>,
    work: impl FnOnce(&mut Handoff<'_>) -> Result<R>,
) -> Result<R> {
    std::thread::scope(|s| {
        let (tx, rx) =
            std::sync::mpsc::sync_channel::<(usize, Vec<(String, QLinear)>, Vec<LayerReport>)>(1);
        let writer = s.spawn(move || -> Result<()> {
            for (b, layers, reports) in rx {
                sink(b, layers, reports)?;
            }
            Ok(())
        });
        let out = {
            let mut handoff = move |b: usize, layers: Vec<(String, QLinear)>, reports| {
                tx.send((b, layers, reports))
                    .map_err(|_| Error::Sink("the checkpoint writer stopped".into()))
            };
            work(&mut handoff)
        };
        writer
            .join()
            .map_err(|_| Error::Sink("the checkpoint writer panicked".into()))??;
        out
    })
}

/// One true-sequential group of a block and how its calibration pass runs.
struct GroupPlan {
    /// The group's layers.
    names: Vec<&'static str>,
    /// The input points they read, ascending.
    points: Vec<usize>,
    /// States advanced to the group's inputs may be kept for the next
    /// groups: no layer before its last point is quantized by this or a
    /// later group.
    adopt: bool,
    /// The unquantized path's states may advance in place: no later group
    /// reads this group's last point or an earlier one.
    fp_adopt: bool,
    /// With `fp_adopt`, the smallest input point of the later groups (past
    /// this group's last, by `fp_adopt`) when it is a stream point: the
    /// unquantized states run on to it after this group's pass and
    /// wait there compact (the residual stream alone) instead of holding
    /// this group's last input.
    fp_ahead: Option<usize>,
}

/// The groups of a block (the architecture's true-sequential groups, or
/// all linears at once), each with its input points, checked once.
fn group_plan(arch: &ArchSpec, true_sequential: bool) -> Result<Vec<GroupPlan>> {
    let groups: Vec<Vec<&'static str>> = if true_sequential {
        arch.sequential_groups.iter().map(|g| g.to_vec()).collect()
    } else {
        vec![arch.linear_layers().collect()]
    };
    let point_of = |name: &str| {
        arch.point_of(name).ok_or_else(|| {
            Error::Input(format!(
                "architecture {}: layer {name} is in no input point",
                arch.name
            ))
        })
    };
    let mut plan = Vec::with_capacity(groups.len());
    for (gi, group) in groups.iter().enumerate() {
        let mut points: Vec<usize> = group.iter().map(|n| point_of(n)).collect::<Result<_>>()?;
        points.sort_unstable();
        points.dedup();
        let last = points.last().copied().unwrap_or(0);
        let later: Vec<&str> = groups[gi..].iter().flatten().copied().collect();
        let adopt = arch.input_points[..last]
            .iter()
            .flat_map(|p| p.iter())
            .all(|n| !later.contains(n));
        let later_points: Vec<usize> = groups[gi + 1..]
            .iter()
            .flatten()
            .filter_map(|n| arch.point_of(n))
            .collect();
        let fp_adopt = later_points.iter().all(|&p| p > last);
        let fp_ahead = later_points
            .iter()
            .copied()
            .min()
            .filter(|&q| fp_adopt && arch.stream_points.contains(&q));
        plan.push(GroupPlan {
            names: group.clone(),
            points,
            adopt,
            fp_adopt,
            fp_ahead,
        });
    }
    // The last group always has `fp_adopt` (no later group), which is where
    // the full-precision states finish the block (`FpAfter::Finish`): a plan
    // without groups would leave them behind.
    if plan.is_empty() {
        return Err(Error::Input(format!(
            "architecture {}: no linear layers to quantize",
            arch.name
        )));
    }
    Ok(plan)
}

/// Blocks finished by an earlier, interrupted run (see
/// [`quantize_resumable`]).
pub trait Replay {
    /// Whether block `b` was already quantized.
    fn has(&self, b: usize) -> bool;
    /// Block `b`'s quantized layers (full names, in the order the sink got
    /// them) and its layer reports.
    fn load(&self, b: usize) -> Result<SavedBlock>;
}

/// No earlier run.
impl Replay for () {
    fn has(&self, _: usize) -> bool {
        false
    }
    fn load(&self, b: usize) -> Result<SavedBlock> {
        Err(Error::Input(format!("block {b} was not quantized before")))
    }
}

/// One calibration sequence's state inside the current block: the
/// residual stream `x` and the pending intermediate `t` after `done`
/// segments (see [`BlockRunner::segment`]); `done = 0` is the block input.
/// A state standing at one of the architecture's stream points may be
/// *compact*: `t` dropped (empty), recomputed from `x` when needed.
#[derive(Clone)]
struct SeqState {
    x: Vec<f32>,
    t: Vec<f32>,
    done: usize,
}

impl SeqState {
    /// A state that holds nothing (no longer needed).
    fn empty() -> Self {
        Self {
            x: Vec::new(),
            t: Vec::new(),
            done: 0,
        }
    }

    fn bytes(&self) -> usize {
        (self.x.len() + self.t.len()) * std::mem::size_of::<f32>()
    }

    /// The input point the state stands at, if any.
    fn point(&self, arch: &ArchSpec) -> Option<usize> {
        (self.done >= 1 && self.done <= arch.input_points.len()).then(|| self.done - 1)
    }

    /// Drops the pending intermediate if the state stands at a stream
    /// point (it is a norm of `x`, see [`Self::restore`]).
    fn compact(&mut self, arch: &ArchSpec) {
        if self
            .point(arch)
            .is_some_and(|p| arch.stream_points.contains(&p))
        {
            self.t = Vec::new();
        }
    }

    /// Recomputes the pending intermediate of a compact state (bit for
    /// bit: the same function of the same `x`).
    fn restore(&mut self, block: &dyn BlockRunner) -> Result<()> {
        if let Some(p) = self.point(block.arch()) {
            if self.t.is_empty() {
                block.point_input(p, &self.x, &mut self.t)?;
            }
        }
        Ok(())
    }

    /// Runs segments until `done == until`, calling `at_point(p, t)` after
    /// each segment that ends at input point `p`.
    fn advance(
        &mut self,
        block: &dyn BlockRunner,
        seq: usize,
        until: usize,
        at_point: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let points = block.arch().input_points.len();
        if self.done < until {
            self.restore(block)?;
        }
        while self.done < until {
            let s = self.done;
            block.segment(s, &mut self.x, &mut self.t, seq)?;
            self.done += 1;
            if s < points {
                at_point(s, &self.t)?;
            }
        }
        Ok(())
    }
}

/// What one group's calibration pass collected per input point.
struct PointStats {
    point: usize,
    h: Hessian,
    /// The asymmetric cross term, when the full-precision path runs.
    c: Option<CrossTerm>,
}

/// The full-precision block and its sequences' states, for asymmetric
/// calibration: the same tokens through the unquantized model.
struct FpPath<'a> {
    block: &'a dyn BlockRunner,
    states: &'a mut [SeqState],
    /// No later group needs an input point before this group's last, so
    /// the states can advance in place (the weights never change).
    adopt: bool,
    /// What happens to each state once this group's inputs are taken.
    after: FpAfter,
    /// See [`GroupPlan::fp_ahead`].
    ahead: Option<usize>,
}

/// What the full-precision lane does with a state after its group's pass.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FpAfter {
    /// It waits for the next group: at the group's last point, or (with
    /// [`FpPath::ahead`]) at the next group's first.
    Keep,
    /// This is the block's last group and the next block needs its outputs:
    /// it runs on to the end of the block right away, as `finish_block`
    /// would later, so that the wide intermediate of the last point (the
    /// MLP's, `intermediate_size` columns) is never held for every sequence
    /// at once. Requires `adopt`.
    Finish,
    /// This is the last group of the last block: the state is dropped.
    Free,
}

/// Runs every sequence up to the last input point of `group`, accumulating
/// one Hessian per input point the group reads (layers reading the same
/// input share it). A sequence's advanced state replaces its kept one when
/// `adopt` (the segments it ran use only final weights) and the kept states
/// stay within `budget` bytes; otherwise it is a scratch copy, and the next
/// group recomputes from the kept state. With `fp`, each sequence first
/// runs through the full-precision block and the cross term of every point
/// is accumulated too (see `gptq_quant::asym`).
#[allow(clippy::too_many_arguments)]
fn collect_hessians(
    block: &dyn BlockRunner,
    states: &mut [SeqState],
    mut fp: Option<FpPath<'_>>,
    hidden: usize,
    group_points: &[usize],
    adopt: bool,
    budget: usize,
    kept: &mut usize,
    token_clip: Option<f32>,
    backend: &dyn gptq_quant::LayerSolver,
    times: &mut Times,
) -> Result<Vec<PointStats>> {
    let last = group_points.iter().copied().max().unwrap_or(0);
    let mut stats: Vec<(usize, Box<dyn gptq_quant::LayerStats>)> = Vec::new();
    let clip = |t: &[f32], seq: usize| -> Option<Vec<f32>> {
        token_clip.map(|c| {
            let mut v = t.to_vec();
            clip_tokens(&mut v, seq, c);
            v
        })
    };
    let layer_of = |p: usize| block.arch().input_points[p].join(",");
    for (i, st) in states.iter_mut().enumerate() {
        let seq = st.x.len() / hidden;
        let start = Instant::now();
        let mut in_hessian = 0.0f64;
        // The full-precision inputs of this sequence at the group's points.
        let mut fp_inputs: Vec<(usize, Vec<f32>)> = Vec::new();
        if let Some(fp) = fp.as_mut() {
            let fst = &mut fp.states[i];
            let mut scratch;
            let run: &mut SeqState = if fp.adopt {
                fst
            } else {
                scratch = fst.clone();
                &mut scratch
            };
            let first = group_points.iter().copied().min().unwrap_or(0);
            let mut take = |p: usize, t: &[f32]| {
                if group_points.contains(&p) {
                    fp_inputs.push((p, clip(t, seq).unwrap_or_else(|| t.to_vec())));
                }
                Ok(())
            };
            // A state that ran ahead to this group's first point waits there.
            if run.point(fp.block.arch()) == Some(first) {
                run.restore(fp.block)?;
                take(first, &run.t)?;
            } else if run.done > first {
                return Err(Error::Input(format!(
                    "architecture {}: true-sequential groups are not in input order",
                    block.arch().name
                )));
            }
            run.advance(fp.block, seq, last + 1, &mut take)?;
            match fp.after {
                FpAfter::Keep => {
                    if let Some(q) = fp.ahead {
                        run.advance(fp.block, seq, q + 1, &mut |_, _| Ok(()))?;
                    }
                    run.compact(fp.block.arch());
                }
                // The same segments `finish_block` would run next.
                FpAfter::Finish => finish_state(fp.block, run, seq)?,
                FpAfter::Free => *run = SeqState::empty(),
            }
        }
        let mut scratch = st.clone();
        scratch.advance(block, seq, last + 1, &mut |p, t| {
            if !group_points.contains(&p) {
                return Ok(());
            }
            let layer_err = |source| Error::Solver {
                layer: layer_of(p),
                source,
            };
            let k = match stats.iter().position(|s| s.0 == p) {
                Some(k) => k,
                None => {
                    let cols = t.len() / seq;
                    let acc = backend.stats(cols, fp.is_some()).map_err(layer_err)?;
                    stats.push((p, acc));
                    stats.len() - 1
                }
            };
            let clipped = clip(t, seq);
            let t = clipped.as_deref().unwrap_or(t);
            let t0 = Instant::now();
            let x_fp = match fp {
                Some(_) => Some(
                    fp_inputs
                        .iter()
                        .find(|(q, _)| *q == p)
                        .map(|(_, x)| x.as_slice())
                        .ok_or_else(|| {
                            Error::Input(format!("no full-precision input at {}", layer_of(p)))
                        })?,
                ),
                None => None,
            };
            stats[k].1.add(t, x_fp, seq).map_err(layer_err)?;
            in_hessian += t0.elapsed().as_secs_f64();
            Ok(())
        })?;
        times.hessian += in_hessian;
        times.forward += start.elapsed().as_secs_f64() - in_hessian;
        scratch.compact(block.arch());
        if adopt && *kept - st.bytes() + scratch.bytes() <= budget {
            *kept = *kept - st.bytes() + scratch.bytes();
            *st = scratch;
        }
    }
    let t0 = Instant::now();
    let done = stats
        .into_iter()
        .map(|(point, acc)| {
            let (h, c) = acc.finish().map_err(|source| Error::Solver {
                layer: layer_of(point),
                source,
            })?;
            Ok(PointStats { point, h, c })
        })
        .collect::<Result<Vec<_>>>()?;
    times.hessian += t0.elapsed().as_secs_f64();
    Ok(done)
}

/// Quantizes the model layer by layer. `sink` receives each block's
/// quantized linears (full names) and reports as soon as the block is done.
pub fn quantize(
    model: &dyn LayerwiseModel,
    samples: &[Vec<u32>],
    opts: &PipelineOptions,
    progress: &mut dyn Progress,
    sink: &mut Sink<'_>,
) -> Result<Vec<LayerReport>> {
    quantize_resumable(model, samples, opts, progress, sink, &())
}

/// [`quantize`], taking the blocks that `replay` has from an earlier run
/// instead of quantizing them again: their layers are swapped into the
/// block, which is run forward (when a later block still needs its
/// outputs) and handed to `sink` as if just quantized. Since the forward
/// pass is deterministic, the result is bit-identical to an uninterrupted
/// run.
pub fn quantize_resumable(
    model: &dyn LayerwiseModel,
    samples: &[Vec<u32>],
    opts: &PipelineOptions,
    progress: &mut dyn Progress,
    sink: &mut Sink<'_>,
    replay: &dyn Replay,
) -> Result<Vec<LayerReport>> {
    if samples.is_empty() {
        return Err(Error::Input("no calibration samples".into()));
    }
    write_behind(sink, |handoff| {
        host_loop(model, samples, opts, progress, handoff, replay)
    })
}

/// The loop of [`quantize_resumable`], handing blocks to `sink`.
fn host_loop(
    model: &dyn LayerwiseModel,
    samples: &[Vec<u32>],
    opts: &PipelineOptions,
    progress: &mut dyn Progress,
    sink: &mut Handoff<'_>,
    replay: &dyn Replay,
) -> Result<Vec<LayerReport>> {
    let arch = model.arch();
    let hidden = model.hidden_size();
    let mut states: Vec<SeqState> = model
        .embed_all(samples)?
        .into_iter()
        .map(|x| SeqState {
            x,
            t: Vec::new(),
            done: 0,
        })
        .collect();
    let input_bytes: usize = states.iter().map(SeqState::bytes).sum();
    // Who accumulates the statistics and solves the layers.
    let backend: &dyn gptq_quant::LayerSolver =
        opts.solver.as_deref().unwrap_or(&gptq_quant::CpuSolver);
    // The full-precision model's states, for asymmetric calibration.
    let asym = opts.asym_calib && opts.method == Method::Gptq;
    let mut fp_states: Vec<SeqState> = if asym { states.clone() } else { Vec::new() };
    let budget = opts.state_budget.unwrap_or(input_bytes);
    let plan = group_plan(arch, opts.true_sequential)?;
    let mut reports = Vec::new();
    let mut times = Times::default();
    let blocks = model.num_blocks();
    for b in 0..blocks {
        progress.block_start(b, blocks);
        let first = reports.len();
        let mut block = model.block(b)?;
        // Whether a later block still needs this block's outputs.
        let needed = (b + 1..blocks).any(|c| !replay.has(c));
        // A second, never quantized copy of the block for the fp path
        // (not loaded for a replayed block whose outputs nobody needs).
        let fp_block = if asym && (needed || !replay.has(b)) {
            Some(model.block(b)?)
        } else {
            None
        };
        let prefix = (arch.block_prefix)(b);
        if replay.has(b) {
            let (layers, block_reports) = replay.load(b)?;
            apply_saved(block.as_mut(), b, &layers)?;
            for r in block_reports {
                progress.layer_done(&r);
                reports.push(r);
            }
            if opts.method == Method::Gptq && needed {
                finish_block(block.as_ref(), &mut states, hidden, &mut times)?;
                if let Some(fb) = &fp_block {
                    finish_block(fb.as_ref(), &mut fp_states, hidden, &mut times)?;
                }
            }
            sink(b, layers, reports[first..].to_vec())?;
            progress.block_done(b);
            continue;
        }
        let mut done: Vec<(String, QLinear)> = Vec::new();
        let mut kept: usize = states.iter().map(SeqState::bytes).sum();
        // Whether the block's outputs are needed (see `finish_block` below).
        let outputs_needed = opts.method == Method::Gptq && b + 1 < blocks;
        for (gi, g) in plan.iter().enumerate() {
            let fp = fp_block.as_ref().map(|fb| FpPath {
                block: fb.as_ref(),
                states: &mut fp_states,
                adopt: g.fp_adopt,
                ahead: g.fp_ahead,
                after: match (g.fp_adopt && gi + 1 == plan.len(), outputs_needed) {
                    (false, _) => FpAfter::Keep,
                    (true, true) => FpAfter::Finish,
                    (true, false) => FpAfter::Free,
                },
            });
            let hs = if opts.method == Method::Gptq {
                Some(collect_hessians(
                    block.as_ref(),
                    &mut states,
                    fp,
                    hidden,
                    &g.points,
                    g.adopt,
                    budget,
                    &mut kept,
                    opts.token_clip,
                    backend,
                    &mut times,
                )?)
            } else {
                None
            };
            // Layers that cannot be stored packed stay dense.
            let todo = split_skipped(block.as_mut(), &g.names, b, opts, progress, &mut reports)?;
            // Layers reading the same input share one Hessian factorization.
            let batches: Vec<Vec<&'static str>> = match &hs {
                Some(hs) => hs
                    .iter()
                    .map(|ps| {
                        todo.iter()
                            .copied()
                            .filter(|n| arch.point_of(n) == Some(ps.point))
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
                        let ps = hs
                            .iter()
                            .find(|ps| arch.point_of(names[0]) == Some(ps.point))
                            .expect("every group layer was observed");
                        let refs: Vec<&Tensor> = weights.iter().map(|w| w.as_ref()).collect();
                        // Asymmetric calibration: GPTQ towards W′ (see gptq_quant::asym).
                        gptq_quant::quantize_towards(
                            backend,
                            &refs,
                            &ps.h,
                            ps.c.as_ref(),
                            &opts.params,
                        )
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
                times.solve += t.elapsed().as_secs_f64();
                let seconds = t.elapsed().as_secs_f64() / names.len() as f64;
                for (name, (q, error, error_rtn, damp)) in names.iter().zip(results) {
                    let lin = block.linear_mut(name).expect("checked above");
                    let full = format!("{prefix}{name}");
                    let (q, r) =
                        finish_layer(lin, q, b, full.clone(), (error, error_rtn, damp), seconds);
                    lin.weight = std::sync::Arc::new(q.dequantize());
                    progress.layer_done(&r);
                    reports.push(r);
                    done.push((full, q));
                }
            }
        }
        // The block's outputs (with its quantized layers) are the next
        // block's inputs. Round-to-nearest needs no activations at all.
        // The full-precision states already ran to the block's end in its
        // last group's pass (`FpAfter::Finish`).
        if outputs_needed {
            finish_block(block.as_ref(), &mut states, hidden, &mut times)?;
        }
        sink(b, done, reports[first..].to_vec())?;
        tracing::debug!("block {b}: {times:?} so far");
        progress.block_done(b);
    }
    tracing::info!(
        "time: forward {:.1}s, Hessians {:.1}s, solver {:.1}s",
        times.forward,
        times.hessian,
        times.solve
    );
    Ok(reports)
}

/// Runs every sequence to the end of `block`: its outputs become the next
/// block's inputs.
fn finish_block(
    block: &dyn BlockRunner,
    states: &mut [SeqState],
    hidden: usize,
    times: &mut Times,
) -> Result<()> {
    let t0 = Instant::now();
    for st in states.iter_mut() {
        let seq = st.x.len() / hidden;
        finish_state(block, st, seq)?;
    }
    times.forward += t0.elapsed().as_secs_f64();
    Ok(())
}

/// Runs one sequence's state to the end of `block`: `st.x` becomes the
/// next block's input (`done = 0`, no pending intermediate).
fn finish_state(block: &dyn BlockRunner, st: &mut SeqState, seq: usize) -> Result<()> {
    let end = block.arch().input_points.len() + 1;
    st.advance(block, seq, end, &mut |_, _| Ok(()))?;
    st.done = 0;
    st.t = Vec::new();
    Ok(())
}

/// Wall time per phase, for the log.
#[derive(Debug, Default)]
struct Times {
    forward: f64,
    hessian: f64,
    solve: f64,
}

/// Swaps a replayed block's saved layers (dequantized) into `block`.
fn apply_saved(block: &mut dyn BlockRunner, b: usize, layers: &[(String, QLinear)]) -> Result<()> {
    for (name, q) in saved_layers(block, b, layers)? {
        block.linear_mut(name).expect("checked above").weight = std::sync::Arc::new(q.dequantize());
    }
    Ok(())
}

/// A replayed block's saved layers under their names in `block`, each
/// checked to be one of its layers with the same shape.
fn saved_layers<'s>(
    block: &mut dyn BlockRunner,
    b: usize,
    layers: &'s [(String, QLinear)],
) -> Result<Vec<(&'s str, &'s QLinear)>> {
    let prefix = (block.arch().block_prefix)(b);
    layers
        .iter()
        .map(|(full, q)| {
            let name = full.strip_prefix(&prefix).unwrap_or_default();
            let lin = block.linear_mut(name).ok_or_else(|| {
                Error::Input(format!("saved block {b} names an unknown layer {full}"))
            })?;
            if (lin.out_dim(), lin.in_dim()) != (q.out_features, q.in_features) {
                return Err(Error::Input(format!(
                    "saved layer {full} is {}x{}, the model's is {}x{}",
                    q.out_features,
                    q.in_features,
                    lin.out_dim(),
                    lin.in_dim()
                )));
            }
            Ok((name, q))
        })
        .collect()
}

/// The layers of `group` to quantize; the others (see [`skip_reason`]) are
/// reported as left unquantized.
fn split_skipped(
    block: &mut dyn BlockRunner,
    group: &[&'static str],
    b: usize,
    opts: &PipelineOptions,
    progress: &mut dyn Progress,
    reports: &mut Vec<LayerReport>,
) -> Result<Vec<&'static str>> {
    let prefix = (block.arch().block_prefix)(b);
    let mut todo = Vec::new();
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
    Ok(todo)
}

/// A solved layer as the checkpoint will hold it (the layer's bias, f16
/// scales and bias), so the next layers calibrate against exactly the
/// weights that run, and its report. `(error, error_rtn, damp)` come from
/// the solver.
fn finish_layer(
    lin: &gptq_models::Linear,
    mut q: QLinear,
    b: usize,
    full: String,
    (error, error_rtn, damp): (f64, f64, f32),
    seconds: f64,
) -> (QLinear, LayerReport) {
    q.bias = lin.bias.clone();
    let q = gptq_core::pack::round_to_f16(&q);
    let r = LayerReport {
        name: full,
        block: b,
        rows: q.out_features,
        cols: q.in_features,
        error,
        error_rtn,
        damp,
        seconds,
        skipped: None,
    };
    (q, r)
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
