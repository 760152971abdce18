//! Compute kernels of `gptq`.
//!
//! [`cpu`] holds the f32 kernels of the CPU backend: matrix products through
//! the `gemm` crate (runtime-dispatched SIMD, rayon threads), causal
//! attention, and the elementwise ops of a transformer block. The scalar
//! code here is also the oracle that faster kernels are tested against.
#![deny(missing_docs)]

pub mod cpu;
