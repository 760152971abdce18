//! The same layer-by-layer GPTQ as [`crate::quantize_resumable`], with the
//! calibration forward, the Hessians and the solves on a [`BlockDevice`]
//! (the GPU) that keeps every calibration sequence's state in its own
//! memory and runs all of them through a block at once.
//!
//! The host still loads each block from the checkpoint, decides groups,
//! skips and replays, rounds each solved layer to what the checkpoint holds
//! and hands it to the sink — the steps below are those of the CPU loop,
//! shared through the same helpers. Only the arithmetic moves.

use crate::{
    finish_layer, group_plan, saved_layers, split_skipped, write_behind, Error, Handoff,
    LayerReport, Method, PipelineOptions, Progress, Replay, Result, Sink,
};
use gptq_core::{QLinear, Tensor};
use gptq_models::{BlockRunner, LayerwiseModel};
use gptq_quant::{GptqParams, GptqResult};
use std::time::Instant;

/// A backend that runs the calibration of whole blocks: the forward of all
/// calibration sequences, the Hessian of each layer input and the GPTQ
/// solve. It holds the sequences' states (residual stream and pending
/// intermediate, see [`BlockRunner::segment`]) between calls.
pub trait BlockDevice {
    /// What runs, for logs and reports.
    fn describe(&self) -> String;
    /// Starts a run of sequences of `lengths` tokens, `hidden` wide. With
    /// `asym`, the device also runs the full-precision model beside the
    /// quantized one (asymmetric calibration, see `gptq_quant::asym`): the
    /// weights as loaded, never changed by [`Self::set_weight`]; each
    /// point's statistics then include the cross term and [`Self::solve`]
    /// fits the asymmetric targets.
    fn begin(&mut self, lengths: &[usize], hidden: usize, asym: bool) -> Result<()>;
    /// The next sequence's block-0 input `[len, hidden]`, in order.
    fn push_input(&mut self, x: &[f32]) -> Result<()>;
    /// Loads `block` (unquantized: quantized layers come through
    /// [`Self::set_weight`]); the sequences stand at its input. With
    /// `keep_input` the input is kept for [`Self::rewind`].
    fn load_block(&mut self, block: &dyn BlockRunner, keep_input: bool) -> Result<()>;
    /// Runs every sequence on to the last of `points` (input points, see
    /// [`gptq_models::ArchSpec::input_points`]), accumulating the Hessian
    /// `H = (2/n)·Σ x xᵀ` (`n` sequences) of each of `points`.
    fn collect(&mut self, points: &[usize]) -> Result<()>;
    /// GPTQ of `weights` (the layers at `point`, host f32) with that
    /// point's Hessian: the result of `gptq_quant::gptq_quantize_many`.
    fn solve(
        &mut self,
        point: usize,
        weights: &[&Tensor],
        params: &GptqParams,
    ) -> gptq_quant::Result<Vec<GptqResult>>;
    /// Replaces layer `name`'s weight in the loaded block by `q`'s values
    /// (in the quantized model only).
    fn set_weight(&mut self, name: &str, q: &QLinear) -> Result<()>;
    /// Puts the sequences back at the block input (needs `keep_input`).
    fn rewind(&mut self) -> Result<()>;
    /// Runs every sequence to the end of the block: the outputs become the
    /// next block's inputs.
    fn finish_block(&mut self) -> Result<()>;
    /// Most device memory in use at any point so far, bytes (if known).
    fn peak_memory(&self) -> Option<usize> {
        None
    }
    /// Waits for queued device work (for honest timings; a no-op for
    /// synchronous devices).
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
}

/// [`crate::quantize_resumable`] with the calibration on `dev`. GPTQ with
/// or without asymmetric calibration; round-to-nearest needs no forward,
/// and token clipping runs on the host path.
///
/// Three things overlap: the device's work on block `b`, reading block
/// `b + 1` from the checkpoint (a helper thread), and packing and writing
/// block `b - 1` (the writer thread, see [`crate::write_behind`]). The
/// host then holds up to three blocks, each freed when done.
pub fn quantize_on_device(
    model: &dyn LayerwiseModel,
    samples: &[Vec<u32>],
    opts: &PipelineOptions,
    progress: &mut dyn Progress,
    sink: &mut Sink<'_>,
    replay: &dyn Replay,
    dev: &mut dyn BlockDevice,
) -> Result<Vec<LayerReport>> {
    if samples.is_empty() {
        return Err(Error::Input("no calibration samples".into()));
    }
    if opts.method != Method::Gptq || opts.token_clip.is_some() {
        return Err(Error::Input(
            "the device calibration runs GPTQ (no --method rtn or token clipping)".into(),
        ));
    }
    write_behind(sink, |handoff| {
        std::thread::scope(|scope| {
            let mut next = Prefetch {
                scope,
                model,
                pending: None,
            };
            device_loop(
                model, samples, opts, progress, handoff, replay, dev, &mut next,
            )
        })
    })
}

/// Reads blocks from the checkpoint one ahead of their use, on a helper
/// thread.
struct Prefetch<'scope, 'env> {
    scope: &'scope std::thread::Scope<'scope, 'env>,
    model: &'env dyn LayerwiseModel,
    pending: Option<(usize, BlockLoad<'scope, 'env>)>,
}

/// A block being read on the helper thread.
type BlockLoad<'scope, 'env> =
    std::thread::ScopedJoinHandle<'scope, gptq_models::Result<Box<dyn BlockRunner + 'env>>>;

impl<'scope, 'env> Prefetch<'scope, 'env> {
    /// Block `b` (read ahead if it was asked for, else now); starts
    /// reading `then` if given.
    fn take(&mut self, b: usize, then: Option<usize>) -> Result<Box<dyn BlockRunner + 'env>> {
        let block = match self.pending.take() {
            Some((p, h)) if p == b => h
                .join()
                .map_err(|_| Error::Input(format!("reading block {b} panicked")))??,
            _ => self.model.block(b)?,
        };
        if let Some(n) = then {
            let model = self.model;
            self.pending = Some((n, self.scope.spawn(move || model.block(n))));
        }
        Ok(block)
    }
}

/// The loop of [`quantize_on_device`].
#[allow(clippy::too_many_arguments)]
fn device_loop(
    model: &dyn LayerwiseModel,
    samples: &[Vec<u32>],
    opts: &PipelineOptions,
    progress: &mut dyn Progress,
    sink: &mut Handoff<'_>,
    replay: &dyn Replay,
    dev: &mut dyn BlockDevice,
    blocks_ahead: &mut Prefetch<'_, '_>,
) -> Result<Vec<LayerReport>> {
    let arch = model.arch();
    let hidden = model.hidden_size();
    let t0 = Instant::now();
    let lengths: Vec<usize> = samples.iter().map(Vec::len).collect();
    dev.begin(&lengths, hidden, opts.asym_calib)?;
    for s in samples {
        dev.push_input(&model.embed(s)?)?;
    }
    let plan = group_plan(arch, opts.true_sequential)?;
    // Whether the block input must be kept: a group that cannot go on, or
    // a last group whose states ran with unquantized weights.
    let keep_input = plan.iter().any(|g| !g.adopt) || !opts.true_sequential;
    // Seconds in: reading and uploading blocks, forward passes and Hessians,
    // solves (with setting the quantized weights), handing layers to `sink`.
    let (mut load, mut forward, mut solve, mut write) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut reports = Vec::new();
    let blocks = model.num_blocks();
    for b in 0..blocks {
        progress.block_start(b, blocks);
        let first = reports.len();
        let t = Instant::now();
        let mut block = blocks_ahead.take(b, (b + 1 < blocks).then_some(b + 1))?;
        load += t.elapsed().as_secs_f64();
        let needed = (b + 1..blocks).any(|c| !replay.has(c));
        let prefix = (arch.block_prefix)(b);
        if replay.has(b) {
            let (layers, block_reports) = replay.load(b)?;
            let saved = saved_layers(block.as_mut(), b, &layers)?;
            for r in block_reports {
                progress.layer_done(&r);
                reports.push(r);
            }
            if needed {
                // Unquantized first (the full-precision path's weights),
                // then the saved layers as in the run that saved them.
                let t = Instant::now();
                dev.load_block(block.as_ref(), false)?;
                dev.sync()?;
                load += t.elapsed().as_secs_f64();
                for (name, q) in saved {
                    dev.set_weight(name, q)?;
                }
                let t = Instant::now();
                dev.finish_block()?;
                dev.sync()?;
                forward += t.elapsed().as_secs_f64();
            }
            let t = Instant::now();
            sink(b, layers, reports[first..].to_vec())?;
            write += t.elapsed().as_secs_f64();
            progress.block_done(b);
            continue;
        }
        let t = Instant::now();
        dev.load_block(block.as_ref(), keep_input)?;
        dev.sync()?;
        load += t.elapsed().as_secs_f64();
        let mut done: Vec<(String, QLinear)> = Vec::new();
        let mut at = 0usize; // segments the states have run
        for g in &plan {
            let points = &g.points;
            let t = Instant::now();
            if !g.adopt || at > points[0] {
                dev.rewind()?;
            }
            dev.collect(points)?;
            dev.sync()?;
            at = points.last().copied().unwrap_or(0) + 1;
            forward += t.elapsed().as_secs_f64();
            let todo = split_skipped(block.as_mut(), &g.names, b, opts, progress, &mut reports)?;
            for &point in points {
                let names: Vec<&'static str> = todo
                    .iter()
                    .copied()
                    .filter(|n| arch.point_of(n) == Some(point))
                    .collect();
                if names.is_empty() {
                    continue;
                }
                let t = Instant::now();
                let weights: Vec<std::sync::Arc<Tensor>> = names
                    .iter()
                    .map(|n| block.linear_mut(n).expect("checked above").weight.clone())
                    .collect();
                let refs: Vec<&Tensor> = weights.iter().map(|w| w.as_ref()).collect();
                let results =
                    dev.solve(point, &refs, &opts.params)
                        .map_err(|source| Error::Solver {
                            layer: format!("{prefix}{}", names.join(",")),
                            source,
                        })?;
                let seconds = t.elapsed().as_secs_f64() / names.len() as f64;
                for (name, r) in names.iter().zip(results) {
                    let full = format!("{prefix}{name}");
                    let lin = block.linear_mut(name).expect("checked above");
                    let errs = (r.error_gptq, r.error_rtn, r.damp_used);
                    let (q, report) = finish_layer(lin, r.q, b, full.clone(), errs, seconds);
                    dev.set_weight(name, &q)?;
                    progress.layer_done(&report);
                    reports.push(report);
                    done.push((full, q));
                }
                solve += t.elapsed().as_secs_f64();
            }
        }
        if b + 1 < blocks {
            let t = Instant::now();
            if !opts.true_sequential {
                dev.rewind()?;
            }
            dev.finish_block()?;
            dev.sync()?;
            forward += t.elapsed().as_secs_f64();
        }
        let t = Instant::now();
        sink(b, done, reports[first..].to_vec())?;
        write += t.elapsed().as_secs_f64();
        progress.block_done(b);
    }
    tracing::info!(
        "{}: {:.1}s (loading blocks {load:.1}s, forward and Hessians {forward:.1}s, \
         solver {solve:.1}s, handing to the writer {write:.1}s){}",
        dev.describe(),
        t0.elapsed().as_secs_f64(),
        dev.peak_memory()
            .map(|m| format!(
                ", peak device memory {:.2} GiB",
                m as f64 / (1u64 << 30) as f64
            ))
            .unwrap_or_default()
    );
    Ok(reports)
}
