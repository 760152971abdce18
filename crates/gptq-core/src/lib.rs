//! Shared types of `gptq`: a dense row-major f32 [`Tensor`] and the storage
//! [`DType`]s found in checkpoints, with their conversion to f32.
//!
//! Every other crate speaks these types: readers (`gptq-io`) produce
//! tensors, kernels (`gptq-kernels`) and models (`gptq-models`) consume them.
#![deny(missing_docs)]

mod dtype;
pub mod pack;
pub mod quant;
mod tensor;

pub use dtype::DType;
pub use quant::QLinear;
pub use tensor::Tensor;

/// Errors of the shared types.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The number of values does not match the product of the shape.
    #[error("shape {shape:?} holds {expected} values but {got} were given")]
    ShapeMismatch {
        /// The requested shape.
        shape: Vec<usize>,
        /// Product of the shape.
        expected: usize,
        /// Number of values supplied.
        got: usize,
    },
    /// A byte buffer's length is not a multiple of the element size.
    #[error("{len} bytes is not a whole number of {dtype} elements")]
    RaggedBytes {
        /// The element type.
        dtype: DType,
        /// The buffer length.
        len: usize,
    },
    /// The element type cannot be converted to f32.
    #[error("dtype {0} cannot be read as floating point")]
    NotFloat(DType),
    /// A shape's element count overflows `usize`.
    #[error("shape {0:?} is too large")]
    Overflow(Vec<usize>),
    /// Quantized-layer data is inconsistent.
    #[error("quantized layer: {0}")]
    Quant(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
