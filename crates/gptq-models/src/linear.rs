//! A linear layer `y = x·Wᵀ + b` with `W` stored `[out, in]` as in HF
//! checkpoints, or GPTQ-quantized (`qweight`, `qzeros`, `scales`, `g_idx`)
//! and dequantized to f32 when loaded.

use crate::{Error, Result, Weights};
use gptq_kernels::cpu;
use std::sync::Arc;

/// A dense linear layer.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Weight `[out, in]`, shared when tied (embeddings ↔ output layer).
    pub weight: Arc<gptq_core::Tensor>,
    /// Optional bias `[out]`.
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    /// Loads `{name}.weight` `[out, in]` and, if present, `{name}.bias`.
    ///
    /// When the checkpoint holds `{name}.qweight` instead, the layer is read
    /// with [`gptq_io::gptq::read_qlinear`] under the checkpoint's quantize
    /// config, checked against `[out, in]` and dequantized to f32.
    pub fn load(w: &Weights<'_>, name: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        if w.contains(&format!("{name}.qweight")) {
            return Self::load_gptq(w, name, in_dim, out_dim);
        }
        let weight = Arc::new(w.get(&format!("{name}.weight"), &[out_dim, in_dim])?);
        let bias = w
            .get_opt(&format!("{name}.bias"), &[out_dim])?
            .map(|t| t.into_data());
        Ok(Self { weight, bias })
    }

    fn load_gptq(w: &Weights<'_>, name: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        let qcfg = w.quant().ok_or_else(|| {
            Error::Config(format!(
                "the checkpoint holds packed tensors (`{name}.qweight`) but no GPTQ quantize config \
                 (`quantization_config` with quant_method gptq in config.json, or quantize_config.json); \
                 other quantization methods are not supported"
            ))
        })?;
        let q = gptq_io::gptq::read_qlinear(w.source(), name, qcfg)?.ok_or_else(|| {
            gptq_io::Error::MissingTensor {
                name: format!("{name}.qweight"),
            }
        })?;
        if (q.out_features, q.in_features) != (out_dim, in_dim) {
            return Err(Error::Shape {
                name: format!("{name} (GPTQ, as [out, in])"),
                got: vec![q.out_features, q.in_features],
                expected: vec![out_dim, in_dim],
            });
        }
        let weight = q.dequantize();
        let finite = |v: &[f32]| v.iter().position(|x| !x.is_finite());
        if let Some(i) = finite(weight.data()) {
            return Err(Error::Input(format!(
                "GPTQ layer `{name}` dequantizes to a non-finite value at index {i}"
            )));
        }
        if let Some(i) = q.bias.as_deref().and_then(finite) {
            return Err(Error::Input(format!(
                "tensor `{name}.bias` holds a non-finite value at index {i}"
            )));
        }
        Ok(Self {
            weight: Arc::new(weight),
            bias: q.bias,
        })
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.weight.shape()[1]
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.weight.shape()[0]
    }

    /// `[rows, in] → [rows, out]`.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (self.out_dim(), self.in_dim());
        let mut out = vec![0.0f32; rows * n];
        cpu::matmul_nt(x, self.weight.data(), rows, k, n, &mut out);
        if let Some(b) = &self.bias {
            cpu::add_bias(&mut out, b);
        }
        out
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.weight.len() + self.bias.as_ref().map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptq_core::pack::{self, Format};
    use gptq_core::QLinear;
    use gptq_io::gptq::{CheckpointWriter, QuantizeConfig, TensorData};
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/models/qwen2-bias")
    }

    /// Asymmetric round-to-nearest with the given `g_idx` (a stand-in for
    /// the GPTQ solver: only the storage path is under test here).
    fn rtn(
        w: &[f32],
        bias: Option<Vec<f32>>,
        out: usize,
        inp: usize,
        bits: u32,
        g_idx: Vec<u32>,
    ) -> QLinear {
        let groups = *g_idx.iter().max().unwrap() as usize + 1;
        let maxq = ((1u32 << bits) - 1) as f32;
        let (mut scales, mut zeros) = (vec![0f32; groups * out], vec![0u8; groups * out]);
        for g in 0..groups {
            for o in 0..out {
                let vals = (0..inp)
                    .filter(|&i| g_idx[i] as usize == g)
                    .map(|i| w[o * inp + i]);
                let (lo, hi) = vals.fold((0f32, 0f32), |(a, b), x| (a.min(x), b.max(x)));
                let s = ((hi - lo) / maxq).max(1e-6);
                scales[g * out + o] = s;
                zeros[g * out + o] = (-lo / s).round().clamp(0.0, maxq) as u8;
            }
        }
        let codes = (0..out * inp)
            .map(|k| {
                let (o, i) = (k / inp, k % inp);
                let g = g_idx[i] as usize * out + o;
                (w[k] / scales[g] + zeros[g] as f32)
                    .round()
                    .clamp(0.0, maxq) as u8
            })
            .collect();
        QLinear {
            out_features: out,
            in_features: inp,
            bits,
            group_size: Some(16),
            codes,
            scales,
            zeros,
            g_idx,
            bias,
        }
    }

    struct Dirs(PathBuf);
    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn logits(dir: &Path, tokens: &[u32]) -> (Vec<f32>, bool) {
        let files = gptq_io::source::open_dir(dir).unwrap();
        let quantized = gptq_io::gptq::quantize_config_for(&files)
            .unwrap()
            .is_some();
        let model = crate::load(&files).unwrap();
        let len = [tokens.len()];
        let mut cache = model.new_cache(1);
        let h = model
            .forward_hidden(&crate::Batch::single(tokens, &len), &mut cache)
            .unwrap();
        (model.logits(&h, tokens.len()), quantized)
    }

    /// A GPTQ checkpoint (4-bit, act-order, v1, sharded) written by
    /// `gptq-io` loads through `crate::load` and gives exactly the logits of
    /// a dense checkpoint holding the dequantized weights.
    #[test]
    fn gptq_checkpoint_loads_as_its_dequantized_weights() {
        let src = gptq_io::source::open_dir(&fixture()).unwrap();
        let config = src.config.clone();
        let root = std::env::temp_dir().join(format!("gptq-models-linear-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let _cleanup = Dirs(root.clone());
        let (qdir, ddir) = (root.join("q"), root.join("dense"));

        let linears: Vec<String> = (0..2)
            .flat_map(|b| {
                crate::arch_for("qwen2")
                    .unwrap()
                    .linear_layers()
                    .map(move |l| format!("model.layers.{b}.{l}"))
            })
            .collect();
        let mut qcfg = QuantizeConfig::new(4, Some(16));
        qcfg.desc_act = true;
        qcfg.sym = false;
        let mut writer = CheckpointWriter::create(&qdir, false, Some(8 << 10)).unwrap();
        let mut dense: BTreeMap<String, TensorData> = BTreeMap::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for name in &linears {
            let w = src.weights.load_f32(&format!("{name}.weight")).unwrap();
            let (out, inp) = w.dims2().unwrap();
            let bias = src.weights.contains(&format!("{name}.bias")).then(|| {
                src.weights
                    .load_f32(&format!("{name}.bias"))
                    .unwrap()
                    .into_data()
            });
            let mut g_idx = pack::default_g_idx(inp, Some(16));
            for i in (1..inp).rev() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                g_idx.swap(i, (seed % (i as u64 + 1)) as usize);
            }
            let q = rtn(w.data(), bias, out, inp, 4, g_idx);
            writer
                .add_packed(name, &pack::pack(&q, Format::V1).unwrap())
                .unwrap();
            let r = pack::round_to_f16(&q);
            let d = r.dequantize();
            dense.insert(
                format!("{name}.weight"),
                f32_data(d.shape().to_vec(), d.data()),
            );
            if let Some(b) = &r.bias {
                dense.insert(format!("{name}.bias"), f32_data(vec![out], b));
            }
        }
        for n in src.weights.names() {
            let owner = n.rsplit_once('.').map_or("", |(p, _)| p);
            if !linears.iter().any(|l| l == owner) {
                let raw = src.weights.load_raw(&n).unwrap();
                writer
                    .add(n.clone(), TensorData::from_raw(raw.clone()))
                    .unwrap();
                dense.insert(n, TensorData::from_raw(raw));
            }
        }
        assert!(writer.shards_written() >= 1);
        writer.finish(&config, &qcfg, &[]).unwrap();

        std::fs::create_dir(&ddir).unwrap();
        std::fs::write(
            ddir.join("config.json"),
            serde_json::to_vec(&config).unwrap(),
        )
        .unwrap();
        let outs: Vec<gptq_io::safetensors::TensorOut> = dense
            .iter()
            .map(|(n, t)| gptq_io::safetensors::TensorOut {
                name: n.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                bytes: t.bytes.as_slice().into(),
            })
            .collect();
        gptq_io::safetensors::write(&ddir.join("model.safetensors"), &outs, &Default::default())
            .unwrap();

        let tokens = [1u32, 17, 42, 99, 3, 64, 127, 5];
        let (lq, is_q) = logits(&qdir, &tokens);
        let (ld, is_d) = logits(&ddir, &tokens);
        assert!(is_q && !is_d);
        let diff = lq
            .iter()
            .zip(&ld)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 1e-6, "max |Δlogit| = {diff}");
        // ... and the quantization really changed the model.
        let (l0, _) = logits(&fixture(), &tokens);
        assert!(l0.iter().zip(&lq).any(|(a, b)| (a - b).abs() > 1e-4));

        // Shape checks and a missing quantize config are errors.
        let files = gptq_io::source::open_dir(&qdir).unwrap();
        let qc = gptq_io::gptq::quantize_config_for(&files).unwrap().unwrap();
        let w = Weights::with_quant(files.weights.as_ref(), &qc);
        let l = Linear::load(&w, "model.layers.0.self_attn.k_proj", 48, 24).unwrap();
        assert_eq!(
            (l.in_dim(), l.out_dim(), l.bias.as_ref().map(Vec::len)),
            (48, 24, Some(24))
        );
        let e = Linear::load(&w, "model.layers.0.self_attn.k_proj", 48, 48).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        let e = Linear::load(
            &Weights::new(files.weights.as_ref()),
            "model.layers.0.self_attn.k_proj",
            48,
            24,
        )
        .unwrap_err();
        assert!(e.to_string().contains("quantize config"), "{e}");
    }

    fn f32_data(shape: Vec<usize>, v: &[f32]) -> TensorData {
        TensorData::new(
            gptq_core::DType::F32,
            shape,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
        .unwrap()
    }
}
