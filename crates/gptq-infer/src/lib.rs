//! Running models: the tokenizer, perplexity evaluation with the GPTQ
//! protocol, and text generation with sampling and chat templates.
#![deny(missing_docs)]

pub mod bench;
pub mod calib;
pub mod chat;
pub mod datasets;
pub mod eval;
pub mod generate;
pub mod hub_data;
#[cfg(feature = "parquet")]
mod pq;
pub mod pyrandom;
pub mod tokenizer;

pub use tokenizer::Tokenizer;

/// Errors of running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model has no usable tokenizer.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Evaluation input is unusable (empty, shorter than a window, ...).
    #[error("{0}")]
    Input(String),
    /// The chat template failed to render.
    #[error("chat template: {0}")]
    Template(String),
    /// A forward-pass error.
    #[error(transparent)]
    Model(#[from] gptq_models::Error),
    /// A file error.
    #[error(transparent)]
    Io(#[from] gptq_io::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
