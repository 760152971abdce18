//! Model and file formats of `gptq`.
//!
//! - [`safetensors`]: a validating, memory-mapped reader (single file or
//!   sharded with `model.safetensors.index.json`) and an atomic writer.
//! - [`gguf`]: a GGUF v1/v2/v3 reader with dequantization, the llama.cpp → HF
//!   tensor-name map and tokenizer reconstruction, and `convert` to an HF folder.
//! - [`source`]: where a model comes from — a local HF folder, the HF cache,
//!   the Hub, or a `.gguf` file — resolved into one [`ModelFiles`].
//! - [`atomic`]: write-to-temp-then-rename helpers for every output.
//! - [`gptq`]: GPTQ checkpoints — the quantize config, a streaming sharded
//!   writer and the reader of quantized linear layers.
//!
//! Tensors are read lazily through the [`WeightSource`] trait, so a caller
//! materializes one layer at a time.
#![deny(missing_docs)]

pub mod atomic;
pub mod gguf;
pub mod gptq;
pub mod safetensors;
pub mod source;

use gptq_core::Tensor;
use std::path::PathBuf;

pub use source::{open_model, ModelFiles};

/// Errors of model and file I/O. Messages are lowercase and name the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // === Files ===
    /// Reading or writing a file failed. (The OS error is part of the
    /// message, not a separate `source`, so chains print it once.)
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A required file is absent.
    #[error("{path}: file not found{hint}")]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// Extra advice, starting with "; " when present.
        hint: String,
    },
    /// A JSON file does not parse or lacks a field.
    #[error("{path}: invalid JSON: {msg}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    // === Formats ===
    /// A safetensors file is malformed.
    #[error("{path}: invalid safetensors file: {msg}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A GGUF file is malformed or uses something unsupported.
    #[error("{path}: invalid GGUF file: {msg}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A tensor the caller asked for is not in the checkpoint.
    #[error("tensor `{name}` not found in the checkpoint")]
    MissingTensor {
        /// The tensor name.
        name: String,
    },
    /// A tensor has a dtype the caller cannot use.
    #[error("tensor `{name}` has dtype {dtype}, which cannot be read as {wanted}")]
    WrongDType {
        /// The tensor name.
        name: String,
        /// Its dtype.
        dtype: String,
        /// What the caller wanted.
        wanted: &'static str,
    },
    // === Sources ===
    /// A model could not be located or downloaded.
    #[error("model `{spec}`: {msg}")]
    Source {
        /// What the user passed.
        spec: String,
        /// What went wrong, with a hint.
        msg: String,
    },
    /// A shape or size error from the core types.
    #[error(transparent)]
    Core(#[from] gptq_core::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error,
        }
    }
}

/// A tensor's raw storage: dtype name, shape and little-endian bytes.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// The dtype, spelled as in safetensors (`"F32"`, `"I32"`, ...).
    pub dtype: gptq_core::DType,
    /// The shape.
    pub shape: Vec<usize>,
    /// The bytes, little-endian, row-major.
    pub bytes: Vec<u8>,
}

/// Lazy, by-name access to a checkpoint's tensors under HF names.
///
/// Implementations validate headers when opened and read each tensor only
/// when asked, so callers can hold one layer in memory at a time.
pub trait WeightSource: Send + Sync {
    /// All tensor names, sorted.
    fn names(&self) -> Vec<String>;
    /// The shape of `name`, if present.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Reads `name` and converts it to f32 (dequantizing where needed).
    fn load_f32(&self, name: &str) -> Result<Tensor>;
    /// Reads `name` as stored (for integer tensors such as GPTQ `qweight`).
    /// Sources whose storage has no safetensors dtype return `WrongDType`.
    fn load_raw(&self, name: &str) -> Result<RawTensor>;
    /// True when `name` is present.
    fn contains(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }
}
