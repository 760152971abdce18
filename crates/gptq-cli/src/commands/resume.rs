//! Per-block progress of `gptq quantize`, kept so that an interrupted run
//! (Ctrl-C, `kill -9`, a crash, a full disk) can be finished with
//! `--resume` instead of starting over.
//!
//! Beside `OUT_DIR` a work folder `OUT_DIR.gptq-resume/` holds:
//! * `settings.json`: everything that determines the result (model config,
//!   quantization settings, a hash of the calibration tokens); a resume with
//!   different settings is refused;
//! * `block-NNNN.safetensors`, one per finished block, written atomically:
//!   its quantized layers in the packed v2 layout (lossless: scales and bias
//!   are already f16) and, in the metadata, the layer order and reports.
//!
//! On resume the saved blocks are swapped into the model and run forward
//! to rebuild the calibration activations (deterministic, so bit-identical
//! to the interrupted run's), then quantization goes on from the first
//! missing block. The folder is removed when the checkpoint is written or
//! the run fails with an error; an interrupt (Ctrl-C, SIGTERM) or a kill
//! leaves it.

use anyhow::{bail, Context};
use gptq_core::pack::{self, Format};
use gptq_core::QLinear;
use gptq_io::gptq::{packed_tensors, read_qlinear, QuantizeConfig};
use gptq_io::safetensors::{SafetensorsSource, TensorOut};
use gptq_pipeline::{LayerReport, Replay};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The work folder of one `gptq quantize` run.
pub struct WorkDir {
    dir: PathBuf,
    /// How the saved layers are packed (v2, the run's bits and groups).
    qcfg: QuantizeConfig,
    /// Blocks saved so far.
    saved: BTreeSet<usize>,
}

/// FNV-1a over the calibration tokens: resuming with other samples would
/// silently mix two calibrations.
pub fn token_hash(samples: &[Vec<u32>]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for s in samples {
        for t in s.iter().chain(std::iter::once(&u32::MAX)) {
            for b in t.to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    format!("{h:016x}")
}

fn block_file(dir: &Path, b: usize) -> PathBuf {
    dir.join(format!("block-{b:04}.safetensors"))
}

impl WorkDir {
    /// The work folder for output folder `out`.
    pub fn path_for(out: &Path) -> PathBuf {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        out.with_file_name(format!("{name}.gptq-resume"))
    }

    /// Opens (with `resume`) or starts the work folder for `out`.
    /// `settings` must equal the saved ones to resume. Without `resume`, an
    /// existing folder is an error (its work would be lost) unless
    /// `discard`.
    pub fn open(
        out: &Path,
        settings: &serde_json::Value,
        qcfg: &QuantizeConfig,
        resume: bool,
        discard: bool,
    ) -> anyhow::Result<Self> {
        let dir = Self::path_for(out);
        let mut qcfg = qcfg.clone();
        qcfg.checkpoint_format = "gptq_v2".into();
        qcfg.dynamic.clear();
        let settings_path = dir.join("settings.json");
        if dir.exists() && resume {
            let text = std::fs::read_to_string(&settings_path)
                .with_context(|| format!("cannot resume from {}", dir.display()))?;
            let old: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", settings_path.display()))?;
            if &old != settings {
                bail!(
                    "{} was made with other settings (model, quantization or calibration); \
                     rerun with those, or without --resume and with --overwrite to start over",
                    dir.display()
                );
            }
            let mut saved = BTreeSet::new();
            for e in
                std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
            {
                let name = e?.file_name().to_string_lossy().into_owned();
                if let Some(n) = name
                    .strip_prefix("block-")
                    .and_then(|r| r.strip_suffix(".safetensors"))
                    .and_then(|n| n.parse::<usize>().ok())
                {
                    saved.insert(n);
                }
            }
            tracing::info!(
                "resuming: {} block(s) already quantized in {}",
                saved.len(),
                dir.display()
            );
            return Ok(Self { dir, qcfg, saved });
        }
        if dir.exists() {
            if !discard {
                bail!(
                    "{} holds the progress of an interrupted run: pass --resume to continue it \
                     (same command), or --overwrite to start over",
                    dir.display()
                );
            }
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        } else if resume {
            tracing::info!(
                "nothing to resume in {}; starting from the first block",
                dir.display()
            );
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        gptq_io::atomic::write_file(&settings_path, &serde_json::to_vec_pretty(settings)?)?;
        Ok(Self {
            dir,
            qcfg,
            saved: BTreeSet::new(),
        })
    }

    /// Saves block `b` (atomically).
    pub fn save_block(
        &self,
        b: usize,
        layers: &[(String, QLinear)],
        reports: &[LayerReport],
    ) -> anyhow::Result<()> {
        let packed: Vec<pack::Packed> = layers
            .par_iter()
            .map(|(name, q)| pack::pack(q, Format::V2).map_err(|e| anyhow::anyhow!("{name}: {e}")))
            .collect::<anyhow::Result<_>>()?;
        let mut tensors = Vec::new();
        for ((name, _), p) in layers.iter().zip(&packed) {
            for (n, t) in packed_tensors(name, p) {
                tensors.push(TensorOut {
                    name: n,
                    dtype: t.dtype,
                    shape: t.shape,
                    bytes: t.bytes.into(),
                });
            }
        }
        let order: Vec<&str> = layers.iter().map(|(n, _)| n.as_str()).collect();
        let meta = BTreeMap::from([
            ("layers".to_string(), serde_json::to_string(&order)?),
            ("reports".to_string(), serde_json::to_string(reports)?),
        ]);
        gptq_io::safetensors::write(&block_file(&self.dir, b), &tensors, &meta)?;
        Ok(())
    }

    /// Removes the folder (the checkpoint is complete).
    pub fn remove(self) {
        // Drop does it.
    }

    fn load_block(&self, b: usize) -> anyhow::Result<gptq_pipeline::SavedBlock> {
        let path = block_file(&self.dir, b);
        let src = SafetensorsSource::open(std::slice::from_ref(&path))?;
        let meta = src.metadata();
        let field = |k: &str| {
            meta.get(k)
                .ok_or_else(|| anyhow::anyhow!("{}: no `{k}` metadata", path.display()))
        };
        let order: Vec<String> = serde_json::from_str(field("layers")?)?;
        let reports: Vec<LayerReport> = serde_json::from_str(field("reports")?)?;
        let mut layers = Vec::with_capacity(order.len());
        for name in order {
            let q = read_qlinear(&src, &name, &self.qcfg)?
                .ok_or_else(|| anyhow::anyhow!("{}: layer {name} is missing", path.display()))?;
            layers.push((name, q));
        }
        Ok((layers, reports))
    }
}

/// The folder goes when the run ends in any way the process survives: done,
/// or failed with an error (rerunning would fail the same way, and the
/// bad-input contract promises no partial output). Interrupts (the signal
/// handler exits without unwinding) and kills leave it for `--resume`.
impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                tracing::warn!("could not remove {}: {e}", self.dir.display());
            }
        }
    }
}

impl Replay for WorkDir {
    fn has(&self, b: usize) -> bool {
        self.saved.contains(&b)
    }

    fn load(&self, b: usize) -> gptq_pipeline::Result<gptq_pipeline::SavedBlock> {
        self.load_block(b)
            .map_err(|e| gptq_pipeline::Error::Input(format!("resuming block {b}: {e:#}")))
    }
}
