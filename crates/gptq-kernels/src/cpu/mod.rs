//! The CPU backend's f32 kernels, and products straight from quantized
//! (GPTQ-packed) or f16 weights.

mod attention;
mod matmul;
mod ops;
mod qint8;
pub mod qmatmul;
pub mod simd;

pub use attention::{attention, AttentionShape};
pub use matmul::{matmul_nt, matmul_strided, Mat, MatMut};
pub use ops::*;
pub use qint8::{activations, int8_available, set_activations, Activations};
pub use qmatmul::{F16Matrix, Isa, QMatrix};

/// Number of worker threads rayon uses (the gemm kernels follow it).
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}
