//! CUDA backend of gptq: GPTQ layers on the GPU.
//!
//! * Kernels are CUDA C++ sources in `kernels/` (embedded), compiled at run
//!   time by NVRTC for the device's own architecture (`sm_90a` on Hopper)
//!   and cached as CUBIN on disk ([`compile`]).
//! * A [`QLinear`](gptq_core::QLinear) is repacked at load ([`layout`]):
//!   4-bit layers with power-of-two groups (act-order ones reordered once)
//!   into the fused int4 kernel's layout, any other into a
//!   dequantize-then-cuBLAS layout.
//! * [`Cuda::matmul`] dispatches per shape and batch: the fused int4 kernel
//!   ([`device::pick_variant`]) for small batches, its wgmma GEMM on sm_90a
//!   ([`device::pick_wg`]) for larger ones, dequantize-then-cuBLAS for
//!   layers without the int4 layout; activations and outputs f16 or bf16
//!   ([`Act`]), the same weights for both.
//!
//! Everything links dynamically (cudarc `dynamic-loading`): the crate builds
//! and its tests pass on machines without CUDA, and [`Cuda::new`] returns
//! [`Error::NoCuda`] there instead of panicking.

pub mod bench;
pub mod bench_solve;
mod blas;
pub mod compile;
pub mod decode;
pub mod device;
pub mod forward;
pub mod kernels;
pub mod layout;
pub mod solve;

pub use decode::GpuDecoder;
pub use device::{
    probe_libraries, swiglu_row_order, Act, Cuda, DeviceInfo, GpuLinear, HostLinear, Path,
    Workspace,
};
pub use forward::GpuCalibration;
pub use half::{bf16, f16};
pub use kernels::{Dtype, W4Variant, WgVariant};
pub use solve::{GpuLayerSolver, Solver};

/// Errors of the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable CUDA installation or device (a library or the GPU is missing).
    #[error("CUDA is not available: {0}")]
    NoCuda(String),
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    #[error("cuBLAS: {0}")]
    Cublas(String),
    #[error("shape: {0}")]
    Shape(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Quant(#[from] gptq_quant::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a GPU (CI), opening a device is a clear error, not a panic.
    #[test]
    fn no_device_is_an_error_not_a_panic() {
        match Cuda::new(0) {
            Ok(dev) => eprintln!("a CUDA device is present: {}", dev.info.name),
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.is_empty());
                eprintln!("as expected without a GPU: {msg}");
            }
        }
    }

    /// The fused kernels and the dequantize-then-GEMM path against an f64
    /// reference (random shapes, odd N, group sizes -1/32/64/128, act-order
    /// on and off, 2/3/4/8 bits). Needs a GPU: `cargo test -p gptq-cuda --
    /// --ignored`.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn kernels_match_reference_on_gpu() {
        let dev = Cuda::new(0).expect("a CUDA device");
        let rows = bench::check(&dev, &bench::check_cases(true), 1).expect("check runs");
        let failed: Vec<_> = rows.iter().filter(|r| !r.pass).collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }
}
