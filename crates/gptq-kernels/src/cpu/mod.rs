//! The CPU backend's f32 kernels.

mod attention;
mod matmul;
mod ops;
pub mod simd;

pub use attention::{attention, AttentionShape};
pub use matmul::{matmul_nt, matmul_strided, Mat, MatMut};
pub use ops::*;

/// Number of worker threads rayon uses (the gemm kernels follow it).
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}
