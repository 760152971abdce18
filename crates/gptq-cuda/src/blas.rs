//! One entry to cuBLAS GEMMs for the whole crate, in row-major terms.
//!
//! cuBLAS is column-major; a row-major `[r, c]` buffer with leading
//! dimension `ld` is, to cuBLAS, its transpose `[c, r]` with the same `ld`.
//! So the row-major product `C = op(A)·op(B)` is the column-major
//! `Cᵀ = op(B)ᵀ·op(A)ᵀ`: [`gemm`] swaps the operands and passes each one's
//! transpose flag through unchanged. Accumulation is f32
//! (`CUBLAS_COMPUTE_32F`: f16 and bf16 operands run on tensor cores with f32 sums,
//! f32 operands never use TF32).

use crate::device::Cuda;
use crate::{Error, Result};
use cudarc::cublas::sys as cb;

/// Element types of GEMM operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    F16,
    Bf16,
}

/// A row-major matrix operand: device address, leading dimension (elements
/// between rows), element type, whether it enters transposed, and the
/// element stride between consecutive matrices of a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: u64,
    pub ld: usize,
    pub elem: Elem,
    pub t: bool,
    pub stride: usize,
}

impl Mat {
    /// An f32 matrix.
    pub fn f32(ptr: u64, ld: usize) -> Self {
        Mat {
            ptr,
            ld,
            elem: Elem::F32,
            t: false,
            stride: 0,
        }
    }

    /// An f16 matrix.
    pub fn f16(ptr: u64, ld: usize) -> Self {
        Mat {
            elem: Elem::F16,
            ..Mat::f32(ptr, ld)
        }
    }

    /// An f16 or bf16 matrix of int4-product activations.
    pub fn act(ptr: u64, ld: usize, dt: crate::kernels::Dtype) -> Self {
        let elem = match dt {
            crate::kernels::Dtype::F16 => Elem::F16,
            crate::kernels::Dtype::Bf16 => Elem::Bf16,
        };
        Mat {
            elem,
            ..Mat::f32(ptr, ld)
        }
    }

    /// The same matrix, entering transposed.
    pub fn t(self) -> Self {
        Mat { t: true, ..self }
    }

    /// The same matrix, the next one of a batch `stride` elements further.
    pub fn every(self, stride: usize) -> Self {
        Mat { stride, ..self }
    }

    fn ty(&self) -> cb::cudaDataType {
        match self.elem {
            Elem::F32 => cb::cudaDataType::CUDA_R_32F,
            Elem::F16 => cb::cudaDataType::CUDA_R_16F,
            Elem::Bf16 => cb::cudaDataType::CUDA_R_16BF,
        }
    }

    fn op(&self) -> cb::cublasOperation_t {
        if self.t {
            cb::cublasOperation_t::CUBLAS_OP_T
        } else {
            cb::cublasOperation_t::CUBLAS_OP_N
        }
    }
}

fn dim(x: usize, what: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| Error::Shape(format!("GEMM {what} of {x} exceeds cuBLAS's range")))
}

/// Row-major `C[m, n] = α·op(A)·op(B) + β·C` (`op(A)` is `[m, k]`, `op(B)`
/// `[k, n]`), for `batch` matrices (strided by the operands' `stride`) when
/// `batch > 1`. `C`'s `t` flag is ignored.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    dev: &Cuda,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: Mat,
    b: Mat,
    beta: f32,
    c: Mat,
    batch: usize,
) -> Result<()> {
    let (mi, ni, ki) = (dim(m, "rows")?, dim(n, "columns")?, dim(k, "depth")?);
    let (lda, ldb, ldc) = (dim(a.ld, "lda")?, dim(b.ld, "ldb")?, dim(c.ld, "ldc")?);
    let h = *dev.blas.handle();
    let compute = cb::cublasComputeType_t::CUBLAS_COMPUTE_32F;
    let algo = cb::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
    // SAFETY: the callers pass device addresses of live buffers large
    // enough for the shapes and strides (each checks before calling); the
    // scalars are f32 as COMPUTE_32F requires.
    let st = unsafe {
        if batch <= 1 {
            cb::cublasGemmEx(
                h,
                b.op(),
                a.op(),
                ni,
                mi,
                ki,
                &alpha as *const f32 as *const _,
                b.ptr as *const _,
                b.ty(),
                ldb,
                a.ptr as *const _,
                a.ty(),
                lda,
                &beta as *const f32 as *const _,
                c.ptr as *mut _,
                c.ty(),
                ldc,
                compute,
                algo,
            )
        } else {
            cb::cublasGemmStridedBatchedEx(
                h,
                b.op(),
                a.op(),
                ni,
                mi,
                ki,
                &alpha as *const f32 as *const _,
                b.ptr as *const _,
                b.ty(),
                ldb,
                b.stride as i64,
                a.ptr as *const _,
                a.ty(),
                lda,
                a.stride as i64,
                &beta as *const f32 as *const _,
                c.ptr as *mut _,
                c.ty(),
                ldc,
                c.stride as i64,
                dim(batch, "batch")?,
                compute,
                algo,
            )
        }
    };
    if st == cb::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::Cublas(format!(
            "GEMM {m}×{n}×{k} (batch {batch}): {st:?}"
        )))
    }
}
