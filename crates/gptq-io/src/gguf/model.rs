//! A GGUF file opened as an HF-style model: [`GgufSource`] serves its
//! tensors under HF names (dequantized lazily, q/k rows un-permuted), and
//! [`open_model`] adds the `config.json`, tokenizer and generation config
//! built from the metadata.
//!
//! Spec: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.

use super::dequant::SUPPORTED;
use super::names::{llama_config, tensor_map, unpermute_rows, LlamaParams, Mapped};
use super::reader::{GgufFile, TensorInfo};
use super::tokenizer::{generation_config, Vocab};
use crate::{Error, ModelFiles, RawTensor, Result, WeightSource};
use gptq_core::Tensor;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The tensors of a GGUF file under HF names.
pub struct GgufSource {
    file: Arc<GgufFile>,
    /// HF name → (tensor index in the header, un-permute heads).
    entries: BTreeMap<String, (usize, Option<usize>)>,
}

impl GgufSource {
    /// Opens `path`, checks the architecture and maps every tensor to its HF
    /// name. Tensors of types that cannot be dequantized are rejected here.
    pub fn open(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let p = LlamaParams::from_header(file.header()).map_err(|m| file.err(m))?;
        Self::new(Arc::new(file), &p)
    }

    /// Maps the tensors of an opened file.
    pub fn new(file: Arc<GgufFile>, p: &LlamaParams) -> Result<Self> {
        let h = file.header();
        let map = tensor_map(h, p).map_err(|m| file.err(m))?;
        let mut entries = BTreeMap::new();
        for Mapped {
            hf,
            gguf,
            unpermute_heads,
        } in map
        {
            let idx = h
                .tensors
                .iter()
                .position(|t| t.name == gguf)
                .ok_or_else(|| file.err("tensor map is inconsistent"))?;
            let t = &h.tensors[idx];
            if !t.ggml_type.is_supported() {
                return Err(file.err(format!(
                    "tensor `{gguf}` has type {}, which is not supported (supported: {SUPPORTED})",
                    t.ggml_type
                )));
            }
            entries.insert(hf, (idx, unpermute_heads));
        }
        Ok(Self { file, entries })
    }

    /// The underlying file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    fn get(&self, name: &str) -> Result<(&TensorInfo, Option<usize>)> {
        let (i, heads) = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
        })?;
        Ok((&self.file.header().tensors[*i], *heads))
    }

    /// The GGUF type name of tensor `name` (`"Q4_1"`).
    pub fn ggml_type(&self, name: &str) -> Option<String> {
        self.get(name).ok().map(|(t, _)| t.ggml_type.to_string())
    }
}

impl WeightSource for GgufSource {
    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.get(name).ok().map(|(t, _)| t.shape())
    }

    fn load_f32(&self, name: &str) -> Result<Tensor> {
        let (t, heads) = self.get(name)?;
        let mut data = self.file.dequantize_tensor(t)?;
        let shape = t.shape();
        if let Some(n) = heads {
            let rows = shape.first().copied().unwrap_or(1);
            data = unpermute_rows(&data, rows, n)
                .map_err(|m| self.file.err(format!("tensor `{}`: {m}", t.name)))?;
        }
        Ok(Tensor::new(shape, data)?)
    }

    fn load_raw(&self, name: &str) -> Result<RawTensor> {
        let (t, heads) = self.get(name)?;
        let dtype = t.ggml_type.plain_dtype().ok_or_else(|| Error::WrongDType {
            name: name.to_string(),
            dtype: format!("GGUF {}", t.ggml_type),
            wanted: "a plain dtype (F32, F16, BF16); use load_f32 to dequantize",
        })?;
        let shape = t.shape();
        let mut bytes = self.file.bytes(t).to_vec();
        if let Some(n) = heads {
            let rows = shape.first().copied().unwrap_or(1);
            bytes = unpermute_rows(&bytes, rows, n)
                .map_err(|m| self.file.err(format!("tensor `{}`: {m}", t.name)))?;
        }
        Ok(RawTensor {
            dtype,
            shape,
            bytes,
        })
    }
}

/// Opens a `.gguf` file as an HF-style model (names, config, tokenizer).
pub fn open_model(path: &Path) -> Result<ModelFiles> {
    let file = GgufFile::open(path)?;
    let h = file.header();
    let p = LlamaParams::from_header(h).map_err(|m| file.err(m))?;
    let config = llama_config(&file, &p);
    let vocab = Vocab::from_header(h).map_err(|m| file.err(m))?;
    let tokenizer_json = vocab.as_ref().map(|v| v.tokenizer_json(h));
    let tokenizer_config = vocab
        .as_ref()
        .map(|v| v.tokenizer_config(h, p.context_length));
    let gen = generation_config(h);
    let generation_config = if gen.as_object().is_some_and(|o| o.is_empty()) {
        None
    } else {
        Some(gen)
    };
    let file = Arc::new(file);
    let weights = GgufSource::new(file, &p)?;
    Ok(ModelFiles {
        name: path.display().to_string(),
        dir: None,
        config,
        weights: Box::new(weights),
        tokenizer_json,
        tokenizer_config,
        generation_config,
    })
}
