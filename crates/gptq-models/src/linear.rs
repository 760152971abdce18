//! A linear layer `y = x·Wᵀ + b` with `W` stored `[out, in]` as in HF
//! checkpoints: dense f32, or held packed — GPTQ-quantized layers in the
//! kernel layout of [`cpu::QMatrix`] (products dequantize in registers, the
//! model never exists as f32), and f16 weights ([`cpu::F16Matrix`], used for
//! the embedding / output layer of quantized checkpoints).

use crate::{Error, Result, Weights};
use gptq_kernels::cpu;
use std::borrow::Cow;
use std::sync::Arc;

/// A weight held in a packed form.
#[derive(Debug, Clone)]
pub enum Packed {
    /// GPTQ-quantized.
    Quantized(Arc<cpu::QMatrix>),
    /// f16.
    F16(Arc<cpu::F16Matrix>),
}

impl Packed {
    fn dims(&self) -> (usize, usize) {
        match self {
            Packed::Quantized(q) => (q.out_dim(), q.in_dim()),
            Packed::F16(f) => (f.out_dim(), f.in_dim()),
        }
    }
}

/// A dense linear layer.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Dense weight `[out, in]`, shared when tied (embeddings ↔ output
    /// layer). For a layer held [`Packed`] this is an empty `[0, 0]`
    /// placeholder: use [`Self::dense_weight`] to read any layer's weight.
    /// Assigning a non-empty tensor here (as the quantization pipeline does
    /// with fp layers) makes the layer dense again.
    pub weight: Arc<gptq_core::Tensor>,
    /// Optional bias `[out]`.
    pub bias: Option<Vec<f32>>,
    packed: Option<Packed>,
}

/// Set to `1` to dequantize GPTQ layers to f32 at load (the slower, larger
/// reference path) instead of running the packed kernels.
pub const DENSE_ENV: &str = "GPTQ_DENSE";

fn dense_requested() -> bool {
    std::env::var_os(DENSE_ENV).is_some_and(|v| v == "1")
}

fn empty() -> Arc<gptq_core::Tensor> {
    Arc::new(gptq_core::Tensor::zeros(vec![0, 0]).expect("an empty shape cannot overflow"))
}

impl Linear {
    /// A dense layer.
    pub fn new(weight: Arc<gptq_core::Tensor>, bias: Option<Vec<f32>>) -> Self {
        Self {
            weight,
            bias,
            packed: None,
        }
    }

    /// A layer running a quantized weight with the packed kernels (its bias
    /// is kept as f32).
    pub fn from_qlinear(q: &gptq_core::QLinear) -> Result<Self> {
        let m = cpu::QMatrix::from_qlinear(q).map_err(gptq_io::Error::from)?;
        Ok(Self {
            weight: empty(),
            bias: q.bias.clone(),
            packed: Some(Packed::Quantized(Arc::new(m))),
        })
    }

    /// This layer with its dense weight rounded to f16 (products convert it
    /// in-kernel); packed layers are returned unchanged.
    pub fn to_f16(&self) -> Result<Self> {
        if self.packed.is_some() {
            return Ok(self.clone());
        }
        let (n, k) = (self.out_dim(), self.in_dim());
        let f = cpu::F16Matrix::from_f32(self.weight.data(), n, k).map_err(gptq_io::Error::from)?;
        Ok(Self {
            weight: empty(),
            bias: self.bias.clone(),
            packed: Some(Packed::F16(Arc::new(f))),
        })
    }

    /// This layer as an output layer under the process-wide activation
    /// mode: with int8 activations on a CPU with 8-bit integer kernels, an
    /// f16 layer is rounded to 8 bits per row
    /// ([`cpu::QMatrix::from_f16_int8`]; decode reads half the bytes — this
    /// layer is the largest one a small model streams per token); anything
    /// else is returned unchanged.
    pub fn into_output_layer(self) -> Result<Self> {
        let Some(Packed::F16(f)) = self.packed() else {
            return Ok(self);
        };
        if cpu::activations() != cpu::Activations::Int8 || !cpu::int8_available(8) {
            return Ok(self);
        }
        let q = cpu::QMatrix::from_f16_int8(f, None).map_err(gptq_io::Error::from)?;
        Ok(Self {
            weight: empty(),
            bias: self.bias,
            packed: Some(Packed::Quantized(Arc::new(q))),
        })
    }

    /// Loads `{name}.weight` `[out, in]` held as f16 when the checkpoint
    /// stores it as f16 (no f32 copy is made, and nothing is rounded), else
    /// as a dense f32 layer; and `{name}.bias` if present.
    pub fn load_f16(w: &Weights<'_>, name: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        let wname = format!("{name}.weight");
        let got = w
            .source()
            .shape(&wname)
            .ok_or_else(|| gptq_io::Error::MissingTensor {
                name: wname.clone(),
            })?;
        let raw = if got == [out_dim, in_dim] {
            w.source().load_raw(&wname)?
        } else {
            return Err(Error::Shape {
                name: wname,
                got,
                expected: vec![out_dim, in_dim],
            });
        };
        let bias = w
            .get_opt(&format!("{name}.bias"), &[out_dim])?
            .map(|t| t.into_data());
        if raw.dtype != gptq_core::DType::F16 || raw.bytes.len() != 2 * out_dim * in_dim {
            // Rounding f32/bf16 weights to f16 would change the model.
            drop(raw);
            return Ok(Self::new(
                Arc::new(w.get(&wname, &[out_dim, in_dim])?),
                bias,
            ));
        }
        let bits: Vec<u16> = raw
            .bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        drop(raw);
        if let Some(i) = bits.iter().position(|b| b & 0x7c00 == 0x7c00) {
            return Err(Error::Input(format!(
                "tensor `{wname}` holds a non-finite value at index {i}"
            )));
        }
        let f = cpu::F16Matrix::from_bits(bits, out_dim, in_dim).map_err(gptq_io::Error::from)?;
        Ok(Self {
            weight: empty(),
            bias,
            packed: Some(Packed::F16(Arc::new(f))),
        })
    }

    /// Loads `{name}.weight` `[out, in]` and, if present, `{name}.bias`.
    ///
    /// When the checkpoint holds `{name}.qweight` instead, the layer is read
    /// with [`gptq_io::gptq::read_qlinear`] under the checkpoint's quantize
    /// config, checked against `[out, in]` and repacked for the quantized
    /// kernels (or dequantized to f32 when `GPTQ_DENSE=1`, see [`DENSE_ENV`]).
    pub fn load(w: &Weights<'_>, name: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        if w.contains(&format!("{name}.qweight")) {
            return Self::load_gptq(w, name, in_dim, out_dim);
        }
        let weight = Arc::new(w.get(&format!("{name}.weight"), &[out_dim, in_dim])?);
        let bias = w
            .get_opt(&format!("{name}.bias"), &[out_dim])?
            .map(|t| t.into_data());
        Ok(Self::new(weight, bias))
    }

    fn load_gptq(w: &Weights<'_>, name: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        let q = Self::read_gptq(w, name, in_dim, out_dim)?.ok_or_else(|| {
            gptq_io::Error::MissingTensor {
                name: format!("{name}.qweight"),
            }
        })?;
        if dense_requested() {
            return Ok(Self::new(Arc::new(q.dequantize()), q.bias));
        }
        Self::from_qlinear(&q)
    }

    /// The GPTQ layer `name` as the checkpoint stores it (codes, scales,
    /// zero points, `g_idx`, bias), checked against `[out, in]` and for
    /// finite scales and bias; `None` when the checkpoint holds no
    /// `{name}.qweight` (a dense layer). Backends that repack quantized
    /// layers their own way (the GPU) read layers through this.
    pub fn read_gptq(
        w: &Weights<'_>,
        name: &str,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Option<gptq_core::QLinear>> {
        if !w.contains(&format!("{name}.qweight")) {
            return Ok(None);
        }
        let qcfg = w.quant().ok_or_else(|| {
            Error::Config(format!(
                "the checkpoint holds packed tensors (`{name}.qweight`) but no GPTQ quantize config \
                 (`quantization_config` with quant_method gptq in config.json, or quantize_config.json); \
                 other quantization methods are not supported"
            ))
        })?;
        let Some(q) = gptq_io::gptq::read_qlinear(w.source(), name, qcfg)? else {
            return Ok(None);
        };
        if (q.out_features, q.in_features) != (out_dim, in_dim) {
            return Err(Error::Shape {
                name: format!("{name} (GPTQ, as [out, in])"),
                got: vec![q.out_features, q.in_features],
                expected: vec![out_dim, in_dim],
            });
        }
        let finite = |v: &[f32]| v.iter().position(|x| !x.is_finite());
        // Codes and zero points are small integers, so Ŵ is finite exactly
        // when every scale is.
        if let Some(i) = finite(&q.scales) {
            return Err(Error::Input(format!(
                "GPTQ layer `{name}` has a non-finite scale at index {i}"
            )));
        }
        if let Some(i) = q.bias.as_deref().and_then(finite) {
            return Err(Error::Input(format!(
                "tensor `{name}.bias` holds a non-finite value at index {i}"
            )));
        }
        Ok(Some(q))
    }

    /// The packed form, when the layer is held packed.
    pub fn packed(&self) -> Option<&Packed> {
        if self.weight.is_empty() {
            self.packed.as_ref()
        } else {
            None
        }
    }

    /// The weight as f32 `[out, in]` (dequantized or widened for packed layers).
    pub fn dense_weight(&self) -> Cow<'_, gptq_core::Tensor> {
        let (n, k) = (self.out_dim(), self.in_dim());
        let data = match self.packed() {
            None => return Cow::Borrowed(self.weight.as_ref()),
            Some(Packed::Quantized(q)) => q.dequantize(),
            Some(Packed::F16(f)) => f.to_f32(),
        };
        Cow::Owned(gptq_core::Tensor::new(vec![n, k], data).expect("sizes follow from the shape"))
    }

    /// True when both layers read the same weight storage (tied layers).
    pub fn shares_weight(&self, other: &Linear) -> bool {
        match (self.packed(), other.packed()) {
            (None, None) => Arc::ptr_eq(&self.weight, &other.weight),
            (Some(Packed::Quantized(a)), Some(Packed::Quantized(b))) => Arc::ptr_eq(a, b),
            (Some(Packed::F16(a)), Some(Packed::F16(b))) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Row `i` of the weight as f32 into `out` (`[in]`): an embedding lookup.
    pub fn row_into(&self, i: usize, out: &mut [f32]) {
        match self.packed() {
            None => out.copy_from_slice(self.weight.row(i)),
            Some(Packed::F16(f)) => f.row_into(i, out),
            Some(Packed::Quantized(_)) => {
                let w = self.dense_weight();
                out.copy_from_slice(w.row(i));
            }
        }
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        match self.packed() {
            Some(p) => p.dims().1,
            None => self.weight.shape()[1],
        }
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        match self.packed() {
            Some(p) => p.dims().0,
            None => self.weight.shape()[0],
        }
    }

    /// `[rows, in] → [rows, out]`.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (self.out_dim(), self.in_dim());
        let mut out = vec![0.0f32; rows * n];
        match self.packed() {
            None => cpu::matmul_nt(x, self.weight.data(), rows, k, n, &mut out),
            Some(Packed::Quantized(q)) => q.matmul(x, rows, &mut out),
            Some(Packed::F16(f)) => f.matmul(x, rows, &mut out),
        }
        if let Some(b) = &self.bias {
            cpu::add_bias(&mut out, b);
        }
        out
    }

    /// `[rows, in] → [rows, out_i]` for layers that share their input (a
    /// block's q/k/v or gate/up projections): quantized layers run together
    /// ([`cpu::QMatrix::matmul_many`]: one parallel loop, the input
    /// quantized once); anything else one [`Self::forward`] each.
    pub fn forward_many(layers: &[&Linear], x: &[f32], rows: usize) -> Vec<Vec<f32>> {
        let mats: Option<Vec<&cpu::QMatrix>> = layers
            .iter()
            .map(|l| match l.packed() {
                Some(Packed::Quantized(q)) => Some(q.as_ref()),
                _ => None,
            })
            .collect();
        let Some(mats) = mats else {
            return layers.iter().map(|l| l.forward(x, rows)).collect();
        };
        let mut outs: Vec<Vec<f32>> = mats.iter().map(|q| vec![0.0; rows * q.out_dim()]).collect();
        {
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            cpu::QMatrix::matmul_many(&mats, x, rows, &mut views);
        }
        for (o, l) in outs.iter_mut().zip(layers) {
            if let Some(b) = &l.bias {
                cpu::add_bias(o, b);
            }
        }
        outs
    }

    /// Number of parameters.
    pub fn num_params(&self) -> usize {
        self.out_dim() * self.in_dim() + self.bias.as_ref().map_or(0, Vec::len)
    }

    /// Bytes of weights (and bias) one product reads.
    pub fn weight_bytes(&self) -> usize {
        let w = match self.packed() {
            None => 4 * self.weight.len(),
            Some(Packed::Quantized(q)) => q.bytes(),
            Some(Packed::F16(f)) => f.bytes(),
        };
        w + 4 * self.bias.as_ref().map_or(0, Vec::len)
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
    /// `gptq-io` loads through `crate::load` (held packed) and gives the
    /// logits of a dense checkpoint holding the dequantized weights, up to
    /// f32 rounding.
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
        // The quantized layers run the packed kernels, which sum in another
        // order than the f32 matmul of the dense copy (per group, scale
        // applied after, `s·q + (−s·z)`): the logits then differ by f32
        // rounding only — measured ≈ 1e-6 here — so 1e-4 (the golden tests'
        // bound for f32 rounding) still catches a wrong code, scale or
        // permutation, each of which moves logits by > 1e-2.
        assert!(diff <= 1e-4, "max |Δlogit| = {diff}");
        eprintln!("packed vs dense max |Δlogit| = {diff:e}");
        // ... and the quantization really changed the model.
        let (l0, _) = logits(&fixture(), &tokens);
        assert!(l0.iter().zip(&lq).any(|(a, b)| (a - b).abs() > 1e-4));

        // Shape checks and a missing quantize config are errors.
        let files = gptq_io::source::open_dir(&qdir).unwrap();
        let qc = gptq_io::gptq::quantize_config_for(&files).unwrap().unwrap();
        let w = Weights::with_quant(files.weights.as_ref(), qc);
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
