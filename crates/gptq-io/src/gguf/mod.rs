//! GGUF (placeholder; being written).

use crate::{Error, ModelFiles, Result};
use std::path::Path;

/// Opens a `.gguf` file as an HF-style model (names, config, tokenizer).
pub fn open_model(path: &Path) -> Result<ModelFiles> {
    Err(Error::Gguf { path: path.to_path_buf(), msg: "not implemented yet".into() })
}
