//! The pipeline end to end on stories260K (from `../shared`): GPTQ beats
//! round-to-nearest on held-out text at 4 and 3 bits, and the checkpoint read
//! back from disk gives bit-identical logits to the weights the pipeline
//! used in memory.

use gptq_core::QLinear;
use gptq_io::gptq::QuantizeConfig;
use gptq_models::{Batch, CausalLm};
use gptq_pipeline::{LayerReport, Method, PipelineOptions};
use gptq_quant::GptqParams;
use std::collections::HashMap;
use std::path::PathBuf;

#[path = "support/checkpoint.rs"]
mod checkpoint;
use checkpoint::quantize_to_checkpoint;

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

/// Token windows of `text` (a crude but deterministic tokenization is not
/// needed: the model's own tokenizer.json is used through gptq-infer in the
/// CLI; here ids come from a fixed stride over a pre-tokenized stream).
fn windows(ids: &[u32], n: usize, len: usize, offset: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|i| ids[offset + i * len..offset + (i + 1) * len].to_vec())
        .collect()
}

fn tokens(text_file: &str) -> Vec<u32> {
    let dir = shared().join("models/stories260K");
    let files = gptq_io::source::open_dir(&dir).unwrap();
    let tok = gptq_infer::Tokenizer::from_model(&files).unwrap();
    let text = std::fs::read_to_string(shared().join(text_file)).unwrap();
    tok.encode(&text[..400_000], true).unwrap()
}

/// Mean NLL of `model` on windows.
fn nll(model: &dyn CausalLm, wins: &[Vec<u32>]) -> f64 {
    let mut total = 0.0;
    for w in wins {
        let len = [w.len()];
        let mut cache = model.new_cache(1);
        let h = model
            .forward_hidden(&Batch::single(w, &len), &mut cache)
            .unwrap();
        let d = h.len() / w.len();
        total += gptq_infer::eval::nll_sum(model, &h[..(w.len() - 1) * d], &w[1..])
            / (w.len() - 1) as f64;
    }
    total / wins.len() as f64
}

/// Quantizes stories260K and writes the checkpoint; returns its folder and
/// the quantized layers the pipeline produced.
fn quantize(
    method: Method,
    bits: u32,
    out: &std::path::Path,
    calib: &[Vec<u32>],
    asym_calib: bool,
) -> HashMap<String, QLinear> {
    let params = GptqParams {
        bits,
        group_size: Some(32),
        sym: false,
        ..GptqParams::default()
    };
    let opts = PipelineOptions {
        asym_calib,
        ..PipelineOptions::new(params, method)
    };
    let mut qcfg = QuantizeConfig::new(bits, Some(32));
    qcfg.sym = false;
    qcfg.checkpoint_format = "gptq_v2".into();
    // The MLP (172 wide) does not pack at 3/4 bits and stays dense.
    quantize_to_checkpoint(
        &shared().join("models/stories260K"),
        &opts,
        calib,
        &qcfg,
        gptq_core::pack::Format::V2,
        out,
    )
}

/// Asymmetric calibration (fit to the full-precision outputs) beats plain
/// GPTQ on held-out text, at 3 and 4 bits, with the same calibration.
#[test]
fn asymmetric_calibration_beats_plain_gptq() {
    let calib_ids = tokens("text/brown/brown.txt");
    let calib = windows(&calib_ids, 64, 256, 0);
    let eval_ids = tokens("text/tinystories/tinystories_val.txt");
    let eval = windows(&eval_ids, 100, 256, 0);
    let root = tempfile::tempdir().unwrap();
    for bits in [4u32, 3] {
        let p = root.path().join(format!("plain{bits}"));
        let a = root.path().join(format!("asym{bits}"));
        quantize(Method::Gptq, bits, &p, &calib, false);
        quantize(Method::Gptq, bits, &a, &calib, true);
        let mp = gptq_models::load(&gptq_io::source::open_dir(&p).unwrap()).unwrap();
        let ma = gptq_models::load(&gptq_io::source::open_dir(&a).unwrap()).unwrap();
        let (np, na) = (nll(mp.as_ref(), &eval), nll(ma.as_ref(), &eval));
        eprintln!("{bits}-bit: plain GPTQ NLL {np:.4}, asymmetric {na:.4}");
        assert!(
            na < np,
            "{bits}-bit: asymmetric NLL {na} is not below plain {np}"
        );
    }
}

#[test]
fn gptq_beats_rtn_and_reload_is_bit_identical() {
    let calib_ids = tokens("text/brown/brown.txt");
    let calib = windows(&calib_ids, 128, 256, 0);
    let eval_ids = tokens("text/tinystories/tinystories_val.txt");
    let eval = windows(&eval_ids, 100, 256, 0);
    let root = tempfile::tempdir().unwrap();
    for bits in [4u32, 3] {
        let g = root.path().join(format!("gptq{bits}"));
        let r = root.path().join(format!("rtn{bits}"));
        let layers = quantize(Method::Gptq, bits, &g, &calib, false);
        quantize(Method::Rtn, bits, &r, &calib, false);
        let mg = gptq_models::load(&gptq_io::source::open_dir(&g).unwrap()).unwrap();
        let mr = gptq_models::load(&gptq_io::source::open_dir(&r).unwrap()).unwrap();
        let (ng, nr) = (nll(mg.as_ref(), &eval), nll(mr.as_ref(), &eval));
        assert!(ng < nr, "{bits}-bit: GPTQ NLL {ng} is not below RTN {nr}");

        // In memory vs reloaded: the same dequantized weights, bit for bit.
        let files = gptq_io::source::open_dir(&g).unwrap();
        for (name, q) in &layers {
            let on_disk = files.weights.load_f32(&format!("{name}.qweight"));
            assert!(on_disk.is_err(), "qweight is integer data");
            let qcfg = gptq_io::gptq::quantize_config_for(&files).unwrap().unwrap();
            let back = gptq_io::gptq::read_qlinear(files.weights.as_ref(), name, &qcfg)
                .unwrap()
                .unwrap();
            assert_eq!(back.dequantize().data(), q.dequantize().data(), "{name}");
        }
    }
}

/// 8-bit g32 asymmetric-grid GPTQ settings (every stories260K shape
/// packs at 8 bits), act-order on.
fn eight_bit(true_sequential: bool, asym_calib: bool) -> PipelineOptions {
    PipelineOptions {
        params: GptqParams {
            bits: 8,
            group_size: Some(32),
            sym: false,
            desc_act: true,
            static_groups: false,
            damp_percent: 0.01,
            block_size: 128,
            mse: false,
        },
        method: Method::Gptq,
        true_sequential,
        skip: vec![],
        state_budget: None,
        token_clip: None,
        asym_calib,
        solver: None,
    }
}

/// The quantized layers of stories260K under `opts`, in sink order.
fn quantized_layers(opts: &PipelineOptions, calib: &[Vec<u32>]) -> Vec<(String, QLinear)> {
    let files = gptq_io::source::open_dir(&shared().join("models/stories260K")).unwrap();
    let model = gptq_models::layerwise(&files).unwrap();
    let mut out = Vec::new();
    let mut sink = |_: usize, qs: Vec<(String, QLinear)>, _| -> gptq_pipeline::Result<()> {
        out.extend(qs);
        Ok(())
    };
    gptq_pipeline::quantize(model.as_ref(), calib, opts, &mut (), &mut sink).unwrap();
    out
}

/// Keeping sequence states between groups only saves time: with no memory
/// for states (everything recomputed from the block input), the default
/// budget (states kept where they are the residual stream alone, inputs
/// recomputed from it), twice that and an unlimited one, every quantized
/// integer and scale is the same, for true-sequential and all-at-once
/// quantization, with and without the full-precision lane of asymmetric
/// calibration (which always runs ahead and waits compact where it can).
#[test]
fn state_budget_does_not_change_results() {
    let calib_ids = tokens("text/brown/brown.txt");
    let calib = windows(&calib_ids, 12, 256, 0);
    // The block inputs: 12 windows × 256 tokens × 64 wide, f32.
    let inputs = 12 * 256 * 64 * 4;
    for (true_sequential, asym) in [(true, false), (false, false), (true, true)] {
        let run = |state_budget| {
            let opts = PipelineOptions {
                state_budget,
                ..eight_bit(true_sequential, asym)
            };
            quantized_layers(&opts, &calib)
        };
        let reference = run(Some(0));
        // 8 bits pack every stories260K shape, so all 7 linears × 5 blocks.
        assert_eq!(reference.len(), 35);
        for budget in [None, Some(2 * inputs), Some(usize::MAX)] {
            let other = run(budget);
            assert_eq!(other.len(), reference.len());
            for ((n1, q1), (n2, q2)) in reference.iter().zip(&other) {
                assert_eq!(n1, n2);
                assert_eq!(q1.codes, q2.codes, "{n1} (budget {budget:?})");
                assert_eq!(q1.scales, q2.scales, "{n1} (budget {budget:?})");
                assert_eq!(q1.zeros, q2.zeros, "{n1} (budget {budget:?})");
            }
        }
    }
}

/// A [`gptq_pipeline::BlockDevice`] made of the host's own pieces (the
/// block runner's segments, `Hessian`/`CrossTerm::add_batch` per sequence,
/// the CPU solver): the device loop driving it must reproduce the host
/// loop's result bit for bit, which checks the loop's order of segments,
/// groups, rewinds and weight updates without a GPU. Lane 0 is the
/// quantized model; with asymmetric calibration lane 1 is the unquantized
/// one, in lockstep.
struct HostDevice<'m> {
    model: &'m dyn gptq_models::LayerwiseModel,
    lens: Vec<usize>,
    lanes: Vec<HostLane<'m>>,
    next: usize,
    done: usize,
    stats: HashMap<usize, (gptq_quant::Hessian, Option<gptq_quant::CrossTerm>)>,
}

#[derive(Default)]
struct HostLane<'m> {
    block: Option<Box<dyn gptq_models::BlockRunner + 'm>>,
    x: Vec<Vec<f32>>,
    x_in: Vec<Vec<f32>>,
    t: Vec<Vec<f32>>,
}

impl<'m> HostDevice<'m> {
    fn new(model: &'m dyn gptq_models::LayerwiseModel) -> Self {
        HostDevice {
            model,
            lens: Vec::new(),
            lanes: Vec::new(),
            next: 0,
            done: 0,
            stats: HashMap::new(),
        }
    }

    /// Runs every lane's sequence `i` through segments `done..end`,
    /// returning each lane's inputs at `points`.
    fn run(
        &mut self,
        i: usize,
        end: usize,
        points: &[usize],
    ) -> gptq_pipeline::Result<Vec<HashMap<usize, Vec<f32>>>> {
        let len = self.lens[i];
        let mut seen = Vec::new();
        for lane in &mut self.lanes {
            let block = lane.block.as_ref().unwrap();
            let mut at = HashMap::new();
            for s in self.done..end {
                block.segment(s, &mut lane.x[i], &mut lane.t[i], len)?;
                if points.contains(&s) {
                    at.insert(s, lane.t[i].clone());
                }
            }
            seen.push(at);
        }
        Ok(seen)
    }
}

impl gptq_pipeline::BlockDevice for HostDevice<'_> {
    fn describe(&self) -> String {
        "host device".into()
    }
    fn begin(
        &mut self,
        lengths: &[usize],
        _hidden: usize,
        asym: bool,
    ) -> gptq_pipeline::Result<()> {
        self.lens = lengths.to_vec();
        self.lanes = (0..if asym { 2 } else { 1 })
            .map(|_| HostLane::default())
            .collect();
        Ok(())
    }
    fn push_input(&mut self, x: &[f32]) -> gptq_pipeline::Result<()> {
        for lane in &mut self.lanes {
            lane.x.push(x.to_vec());
            lane.t.push(Vec::new());
        }
        Ok(())
    }
    fn load_block(
        &mut self,
        _block: &dyn gptq_models::BlockRunner,
        keep_input: bool,
    ) -> gptq_pipeline::Result<()> {
        for lane in &mut self.lanes {
            lane.block = Some(self.model.block(self.next)?);
            lane.x_in = if keep_input {
                lane.x.clone()
            } else {
                Vec::new()
            };
        }
        self.next += 1;
        self.done = 0;
        Ok(())
    }
    fn collect(&mut self, points: &[usize]) -> gptq_pipeline::Result<()> {
        let end = points.iter().max().unwrap() + 1;
        self.stats.clear();
        for i in 0..self.lens.len() {
            let len = self.lens[i];
            let seen = self.run(i, end, points)?;
            for (&p, xq) in &seen[0] {
                let n = xq.len() / len;
                let asym = seen.len() > 1;
                let (h, c) = self.stats.entry(p).or_insert_with(|| {
                    (
                        gptq_quant::Hessian::new(n),
                        asym.then(|| gptq_quant::CrossTerm::new(n)),
                    )
                });
                h.add_batch(xq, len).unwrap();
                if let Some(c) = c {
                    c.add_batch(&seen[1][&p], xq, len).unwrap();
                }
            }
        }
        self.done = end;
        Ok(())
    }
    fn solve(
        &mut self,
        point: usize,
        weights: &[&gptq_core::Tensor],
        params: &GptqParams,
    ) -> gptq_quant::Result<Vec<gptq_quant::GptqResult>> {
        let (h, c) = &self.stats[&point];
        gptq_quant::quantize_towards(&gptq_quant::CpuSolver, weights, h, c.as_ref(), params)
    }
    fn set_weight(&mut self, name: &str, q: &QLinear) -> gptq_pipeline::Result<()> {
        let b = self.lanes[0].block.as_mut().unwrap();
        b.linear_mut(name).unwrap().weight = std::sync::Arc::new(q.dequantize());
        Ok(())
    }
    fn rewind(&mut self) -> gptq_pipeline::Result<()> {
        for lane in &mut self.lanes {
            assert!(!lane.x_in.is_empty(), "rewind without keep_input");
            lane.x = lane.x_in.clone();
        }
        self.done = 0;
        Ok(())
    }
    fn finish_block(&mut self) -> gptq_pipeline::Result<()> {
        let end = self.model.arch().input_points.len() + 1;
        for i in 0..self.lens.len() {
            self.run(i, end, &[])?;
        }
        self.done = 0;
        Ok(())
    }
}

/// Blocks saved by an earlier run, for resuming.
struct Saved(HashMap<usize, gptq_pipeline::SavedBlock>);

impl gptq_pipeline::Replay for Saved {
    fn has(&self, b: usize) -> bool {
        self.0.contains_key(&b)
    }
    fn load(&self, b: usize) -> gptq_pipeline::Result<gptq_pipeline::SavedBlock> {
        Ok(self.0[&b].clone())
    }
}

/// The device loop (`quantize_on_device`, the GPU's) driving host pieces
/// gives exactly the host loop's layers, true-sequential or not, with and
/// without asymmetric calibration; resumed after two saved blocks, too.
#[test]
fn device_loop_reproduces_the_host_loop() {
    let calib_ids = tokens("text/brown/brown.txt");
    let calib = windows(&calib_ids, 6, 200, 0);
    let files = gptq_io::source::open_dir(&shared().join("models/stories260K")).unwrap();
    let model = gptq_models::layerwise(&files).unwrap();
    for (true_sequential, asym_calib) in
        [(true, false), (false, false), (true, true), (false, true)]
    {
        let opts = eight_bit(true_sequential, asym_calib);
        let reference = quantized_layers(&opts, &calib);
        let mut dev = HostDevice::new(model.as_ref());
        let mut got = Vec::new();
        let mut handed: Vec<(usize, Vec<LayerReport>)> = Vec::new();
        let mut saved = HashMap::new();
        let mut sink = |b: usize,
                        qs: Vec<(String, QLinear)>,
                        rs: Vec<LayerReport>|
         -> gptq_pipeline::Result<()> {
            got.extend(qs.clone());
            if b < 2 {
                saved.insert(b, (qs, rs.clone()));
            }
            handed.push((b, rs));
            Ok(())
        };
        let reports = gptq_pipeline::quantize_on_device(
            model.as_ref(),
            &calib,
            &opts,
            &mut (),
            &mut sink,
            &(),
            &mut dev,
        )
        .unwrap();
        // 8 bits pack every stories260K shape: all 7 linears × 5 blocks.
        assert_eq!(reports.len(), 35);
        assert_eq!(got.len(), 35);
        // The writer got the blocks in order, each with its own reports.
        assert_eq!(
            handed.iter().map(|h| h.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        let names = |rs: &[LayerReport]| rs.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        let all: Vec<LayerReport> = handed.iter().flat_map(|h| h.1.clone()).collect();
        assert_eq!(names(&all), names(&reports));
        assert!(handed
            .iter()
            .all(|(b, rs)| rs.iter().all(|r| r.block == *b)));
        assert_eq!(got.len(), reference.len());
        for ((n1, q1), (n2, q2)) in reference.iter().zip(&got) {
            assert_eq!(n1, n2);
            assert_eq!(
                q1.codes, q2.codes,
                "{n1} (true_sequential {true_sequential}, asym {asym_calib})"
            );
            assert_eq!(q1.scales, q2.scales, "{n1}");
            assert_eq!(q1.zeros, q2.zeros, "{n1}");
        }
        // Resumed after blocks 0 and 1: the same layers.
        let mut resumed = Vec::new();
        let mut sink = |_: usize, qs: Vec<(String, QLinear)>, _| -> gptq_pipeline::Result<()> {
            resumed.extend(qs);
            Ok(())
        };
        gptq_pipeline::quantize_on_device(
            model.as_ref(),
            &calib,
            &opts,
            &mut (),
            &mut sink,
            &Saved(saved),
            &mut HostDevice::new(model.as_ref()),
        )
        .unwrap();
        assert_eq!(resumed.len(), got.len());
        for ((n1, q1), (n2, q2)) in got.iter().zip(&resumed) {
            assert_eq!(n1, n2);
            assert_eq!(q1.codes, q2.codes, "{n1} resumed (asym {asym_calib})");
        }
    }
}

/// A failing sink (the checkpoint writer, on its own thread) stops the run
/// with its error; the blocks before it were handed over in order.
#[test]
fn a_failing_sink_stops_the_run_with_its_error() {
    let calib_ids = tokens("text/brown/brown.txt");
    let calib = windows(&calib_ids, 2, 64, 0);
    let files = gptq_io::source::open_dir(&shared().join("models/stories260K")).unwrap();
    let model = gptq_models::layerwise(&files).unwrap();
    let opts = eight_bit(true, false);
    let mut seen = Vec::new();
    let mut sink = |b: usize, _: Vec<(String, QLinear)>, _| -> gptq_pipeline::Result<()> {
        seen.push(b);
        if b == 2 {
            return Err(gptq_pipeline::Error::Sink("disk full (test)".into()));
        }
        Ok(())
    };
    let err = gptq_pipeline::quantize(model.as_ref(), &calib, &opts, &mut (), &mut sink)
        .expect_err("the sink's error");
    assert_eq!(err.to_string(), "disk full (test)");
    assert_eq!(seen, vec![0, 1, 2]);
}
