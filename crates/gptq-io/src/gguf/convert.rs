//! `convert`: a GGUF file to a normal Hugging Face model folder
//! (`model.safetensors`, `config.json`, `tokenizer.json`,
//! `tokenizer_config.json`, `generation_config.json`), written atomically.
//!
//! Tensors are dequantized (and q/k un-permuted) one at a time and streamed
//! into the safetensors file, so memory stays near one tensor. GGUF spec:
//! <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>; safetensors:
//! <https://github.com/huggingface/safetensors>.

use super::model::open_model;
use crate::atomic::{write_file, write_file_with, AtomicDir};
use crate::{Error, Result};
use gptq_core::DType;
use half::f16;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;

/// The float type of the converted weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertDType {
    /// IEEE binary16 for matrices (1-D tensors such as norms stay f32).
    F16,
    /// IEEE binary32 for everything.
    F32,
}

impl ConvertDType {
    /// The `torch_dtype` spelling.
    pub fn torch_name(self) -> &'static str {
        match self {
            ConvertDType::F16 => "float16",
            ConvertDType::F32 => "float32",
        }
    }
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).unwrap_or_default();
    s.push(b'\n');
    s
}

/// Converts `gguf` into an HF folder at `out_dir`. Fails when `out_dir`
/// exists unless `overwrite`; nothing appears at `out_dir` until all files
/// are written.
pub fn convert(gguf: &Path, out_dir: &Path, dtype: ConvertDType, overwrite: bool) -> Result<()> {
    let m = open_model(gguf)?;
    let dir = AtomicDir::create(out_dir, overwrite)?;

    // Plan: names sorted, each tensor's dtype, shape and byte range.
    let mut plan = Vec::new();
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0usize;
    for name in m.weights.names() {
        let shape = m
            .weights
            .shape(&name)
            .ok_or_else(|| Error::MissingTensor { name: name.clone() })?;
        let dt = if dtype == ConvertDType::F16 && shape.len() >= 2 {
            DType::F16
        } else {
            DType::F32
        };
        let n = shape.iter().try_fold(dt.size(), |a, &d| a.checked_mul(d));
        let end = n
            .and_then(|n| off.checked_add(n))
            .ok_or_else(|| Error::Gguf {
                path: gguf.to_path_buf(),
                msg: format!("tensor `{name}` is too large"),
            })?;
        header.insert(
            name.clone(),
            json!({"dtype": dt.as_str(), "shape": shape, "data_offsets": [off, end]}),
        );
        plan.push((name, dt, end - off));
        off = end;
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).unwrap_or_default();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }

    let mut failure: Option<Error> = None;
    let st_path = dir.path("model.safetensors");
    let written = write_file_with(&st_path, |w| {
        w.write_all(&(h.len() as u64).to_le_bytes())?;
        w.write_all(&h)?;
        for (name, dt, nbytes) in &plan {
            let t = match m.weights.load_f32(name) {
                Ok(t) => t,
                Err(e) => {
                    failure = Some(e);
                    return Err(std::io::Error::other("tensor read failed"));
                }
            };
            let bytes: Vec<u8> = match dt {
                DType::F16 => {
                    let h: Vec<f16> = t.data().iter().map(|&x| f16::from_f32(x)).collect();
                    let overflow = h
                        .iter()
                        .zip(t.data())
                        .filter(|(h, x)| h.is_infinite() && x.is_finite())
                        .count();
                    if overflow > 0 {
                        tracing::warn!("tensor `{name}`: {overflow} values overflow float16 and become infinite");
                    }
                    h.iter().flat_map(|x| x.to_le_bytes()).collect()
                }
                _ => t.data().iter().flat_map(|&x| x.to_le_bytes()).collect(),
            };
            if bytes.len() != *nbytes {
                failure = Some(Error::Gguf {
                    path: gguf.to_path_buf(),
                    msg: format!(
                        "tensor `{name}` produced {} bytes, expected {nbytes}",
                        bytes.len()
                    ),
                });
                return Err(std::io::Error::other("tensor size mismatch"));
            }
            w.write_all(&bytes)?;
        }
        Ok(())
    });
    if let Some(e) = failure {
        return Err(e);
    }
    written?;

    let mut config = m.config.clone();
    config["torch_dtype"] = json!(dtype.torch_name());
    write_file(&dir.path("config.json"), &pretty(&config))?;
    if let Some(t) = &m.tokenizer_json {
        write_file(&dir.path("tokenizer.json"), t.as_bytes())?;
    }
    if let Some(c) = &m.tokenizer_config {
        write_file(&dir.path("tokenizer_config.json"), &pretty(c))?;
    }
    if let Some(g) = &m.generation_config {
        write_file(&dir.path("generation_config.json"), &pretty(g))?;
    }
    dir.commit()
}
