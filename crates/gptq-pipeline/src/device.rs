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
    apply_saved, finish_layer, split_skipped, Error, LayerReport, Method, PipelineOptions,
    Progress, Replay, Result,
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
    /// Starts a run of sequences of `lengths` tokens, `hidden` wide.
    fn begin(&mut self, lengths: &[usize], hidden: usize) -> Result<()>;
    /// The next sequence's block-0 input `[len, hidden]`, in order.
    fn push_input(&mut self, x: &[f32]) -> Result<()>;
    /// Loads `block` as it is now; the sequences stand at its input. With
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
    /// Replaces layer `name`'s weight in the loaded block by `q`'s values.
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

/// [`crate::quantize_resumable`] with the calibration on `dev`. Plain GPTQ
/// only: round-to-nearest needs no forward, and asymmetric calibration and
/// token clipping run on the host path.
pub fn quantize_on_device(
    model: &dyn LayerwiseModel,
    samples: &[Vec<u32>],
    opts: &PipelineOptions,
    progress: &mut dyn Progress,
    sink: &mut dyn FnMut(usize, Vec<(String, QLinear)>) -> Result<()>,
    replay: &dyn Replay,
    dev: &mut dyn BlockDevice,
) -> Result<Vec<LayerReport>> {
    if samples.is_empty() {
        return Err(Error::Input("no calibration samples".into()));
    }
    if opts.method != Method::Gptq || opts.asym_calib || opts.token_clip.is_some() {
        return Err(Error::Input(
            "the device calibration runs plain GPTQ (no --method rtn, asymmetric calibration or \
             token clipping)"
                .into(),
        ));
    }
    let arch = model.arch();
    let hidden = model.hidden_size();
    let t0 = Instant::now();
    let lengths: Vec<usize> = samples.iter().map(Vec::len).collect();
    dev.begin(&lengths, hidden)?;
    for s in samples {
        dev.push_input(&model.embed(s)?)?;
    }
    let groups: Vec<Vec<&'static str>> = if opts.true_sequential {
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
    // Each group's input points, and whether the states may go on from
    // where the previous group left them: only if no layer before the
    // group's last point is quantized by it or a later group.
    let mut plan: Vec<(Vec<usize>, bool)> = Vec::new();
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
        plan.push((points, adopt));
    }
    // Whether the block input must be kept: a group that cannot go on, or
    // a last group whose states ran with unquantized weights.
    let keep_input = plan.iter().any(|(_, adopt)| !adopt) || !opts.true_sequential;
    // Seconds in: reading and uploading blocks, forward passes and Hessians,
    // solves (with setting the quantized weights), handing layers to `sink`.
    let (mut load, mut forward, mut solve, mut write) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut reports = Vec::new();
    let blocks = model.num_blocks();
    for b in 0..blocks {
        progress.block_start(b, blocks);
        let t = Instant::now();
        let mut block = model.block(b)?;
        load += t.elapsed().as_secs_f64();
        let needed = (b + 1..blocks).any(|c| !replay.has(c));
        let prefix = (arch.block_prefix)(b);
        if replay.has(b) {
            let (layers, block_reports) = replay.load(b)?;
            apply_saved(block.as_mut(), b, &layers)?;
            for r in block_reports {
                progress.layer_done(&r);
                reports.push(r);
            }
            if needed {
                let t = Instant::now();
                dev.load_block(block.as_ref(), false)?;
                dev.sync()?;
                load += t.elapsed().as_secs_f64();
                let t = Instant::now();
                dev.finish_block()?;
                dev.sync()?;
                forward += t.elapsed().as_secs_f64();
            }
            let t = Instant::now();
            sink(b, layers)?;
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
        for (group, (points, adopt)) in groups.iter().zip(&plan) {
            let t = Instant::now();
            if !adopt || at > points[0] {
                dev.rewind()?;
            }
            dev.collect(points)?;
            dev.sync()?;
            at = points.last().copied().unwrap_or(0) + 1;
            forward += t.elapsed().as_secs_f64();
            let todo = split_skipped(block.as_mut(), group, b, opts, progress, &mut reports)?;
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
        sink(b, done)?;
        write += t.elapsed().as_secs_f64();
        progress.block_done(b);
    }
    tracing::info!(
        "{}: {:.1}s (loading blocks {load:.1}s, forward and Hessians {forward:.1}s, \
         solver {solve:.1}s, writing {write:.1}s){}",
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
