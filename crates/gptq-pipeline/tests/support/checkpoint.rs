//! Test support shared by the pipeline's and the GPU crate's tests (the
//! latter includes this file by path): a model quantized by the pipeline and
//! written as a GPTQ checkpoint, the way `gptq quantize` writes one.

use gptq_core::pack::Format;
use gptq_core::QLinear;
use gptq_io::gptq::{CheckpointWriter, DynamicRule, QuantizeConfig, TensorData};
use gptq_pipeline::PipelineOptions;
use std::collections::HashMap;
use std::path::Path;

/// Quantizes the model in `dir` with `opts` on `calib` and writes it to
/// `out` (layers packed as `format`, configuration `qcfg`). Layers the
/// packing cannot hold stay dense, each excluded by a `dynamic` rule; every
/// other tensor is copied as stored. Returns the quantized layers.
pub fn quantize_to_checkpoint(
    dir: &Path,
    opts: &PipelineOptions,
    calib: &[Vec<u32>],
    qcfg: &QuantizeConfig,
    format: Format,
    out: &Path,
) -> HashMap<String, QLinear> {
    let files = gptq_io::source::open_dir(dir).unwrap();
    let model = gptq_models::layerwise(&files).unwrap();
    let mut writer = CheckpointWriter::create(out, true, None).unwrap();
    let mut layers = HashMap::new();
    let mut sink = |_: usize, qs: Vec<(String, QLinear)>, _| -> gptq_pipeline::Result<()> {
        for (n, q) in qs {
            let p = gptq_core::pack::pack(&q, format).unwrap();
            writer.add_packed(&n, &p).unwrap();
            layers.insert(n, q);
        }
        Ok(())
    };
    let reports = gptq_pipeline::quantize(model.as_ref(), calib, opts, &mut (), &mut sink).unwrap();
    let mut cfg = qcfg.clone();
    for r in reports.iter().filter(|r| r.skipped.is_some()) {
        let rule = format!("-:^{}$", r.name.replace('.', "\\."));
        cfg.dynamic
            .push(DynamicRule::new(&rule, Default::default()).unwrap());
    }
    for n in files.weights.names() {
        let base = n.trim_end_matches(".weight").trim_end_matches(".bias");
        if !layers.contains_key(base) {
            let raw = files.weights.load_raw(&n).unwrap();
            writer.add(n.clone(), TensorData::from_raw(raw)).unwrap();
        }
    }
    let extra = gptq_io::gptq::auxiliary_files(dir);
    writer.finish(&files.config, &cfg, &extra).unwrap();
    layers
}
