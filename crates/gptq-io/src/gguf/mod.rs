//! GGUF: the llama.cpp model format, read into this crate's HF-style model.
//!
//! Spec: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.
//!
//! - [`reader`]: the validating, memory-mapped GGUF v1/v2/v3 parser.
//! - [`dequant`]: ggml types, block geometry and dequantization to f32.
//! - [`names`]: llama.cpp → HF tensor names, q/k un-permutation, `config.json`.
//! - [`tokenizer`]: `tokenizer.json` / `tokenizer_config.json` from GGUF metadata.
//! - [`model`]: [`GgufSource`] (a [`crate::WeightSource`]) and [`open_model`].
//! - [`convert`](mod@convert): a GGUF file to an HF folder on disk.
//! - [`build`]: an in-memory GGUF writer for tests and fixtures.

pub mod build;
pub mod convert;
pub mod dequant;
pub mod model;
pub mod names;
pub mod reader;
pub mod tokenizer;

pub use convert::{convert, ConvertDType};
pub use dequant::GgmlType;
pub use model::{open_model, GgufSource};
pub use reader::{parse_header, GgufFile, Header, MetaValue, TensorInfo};
