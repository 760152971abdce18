//! The GPTQ engine (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ:
//! Accurate Post-Training Quantization for Generative Pre-trained
//! Transformers", arXiv 2210.17323).
//!
//! GPTQ quantizes one linear layer at a time, minimizing the layer-wise
//! output error `‖WX − ŴX‖²` over calibration inputs `X`. Its second-order
//! information is the Hessian `H = 2XXᵀ` of that objective; with the upper
//! Cholesky factor `U` of `H⁻¹` it quantizes the columns of `W` in order,
//! each column's error `E` spread over the remaining columns.
//!
//! Modules, each owning one piece:
//!
//! * [`grid`]: the per-row min-max quantization grid (`find_params`),
//!   round-half-to-even, the optional MSE shrink search.
//! * [`hessian`]: the running `H` over calibration samples and the proxy
//!   error `tr(ΔHΔᵀ)`.
//! * `hinv`: the damped inverse-Hessian factor `U` (f64, faer).
//! * [`gptq`]: the solver ([`gptq_quantize`]) with groups, static groups,
//!   act-order, dead columns, damping retries and lazy batches.
//! * [`rtn`]: round-to-nearest with the same grid and groups
//!   ([`rtn_quantize`]), the baseline.
//! * [`asym`]: asymmetric calibration, the target `W′` that makes GPTQ
//!   match the full-precision model's outputs ([`asymmetric_targets`]).
//!
//! The output is the unpacked [`gptq_core::QLinear`]: codes `[out, in]` in
//! the original column order, scales and true zero points `[groups, out]`
//! in the order groups were created, `g_idx` per input column.
//!
//! Conventions: f32 storage and arithmetic as in the reference (f64 only for
//! the factorization of `H` and for error sums); rounding ties to even as
//! `torch.round`; `damp_percent` is a fraction of `mean(diag H)`; errors are
//! `tr(ΔHΔᵀ)` with the undamped `H` (see [`gptq`]).
#![deny(missing_docs)]

pub mod asym;
pub mod gptq;
pub mod grid;
pub mod hessian;
mod hinv;
pub mod rtn;
pub mod stats;

pub use asym::{asymmetric_targets, quantize_towards, CrossTerm};
pub use gptq::{
    column_order, gptq_quantize, gptq_quantize_many, ColumnOrder, CpuSolver, GptqParams,
    GptqResult, LayerSolver, MAX_DAMP_RETRIES,
};
pub use grid::{MseSearch, QuantGrid, RowGrid};
pub use hessian::Hessian;
pub use rtn::rtn_quantize;
pub use stats::{HostStats, LayerStats};

/// Errors of the GPTQ engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Sizes of the weight, the Hessian or calibration inputs disagree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Unsupported or inconsistent settings.
    #[error("invalid GPTQ parameters: {0}")]
    InvalidParams(String),
    /// NaN or infinity in an input.
    #[error("the {what} contains NaN or infinite values")]
    NonFinite {
        /// Which input (`"weight"`, `"Hessian"`).
        what: &'static str,
    },
    /// Even the largest damping tried left `H + λI` not positive definite.
    #[error(
        "the Hessian is not positive definite even with damping {damp} of its mean diagonal \
         ({tries} attempts); the calibration inputs may be degenerate"
    )]
    NotPositiveDefinite {
        /// The last damping tried, as a fraction of `mean(diag H)`.
        damp: f32,
        /// Factorizations attempted.
        tries: usize,
    },
    /// A compute backend (the GPU) failed while solving.
    #[error("{0}")]
    Backend(String),
    /// The produced layer failed `QLinear` validation (a bug) or another
    /// shared-type error.
    #[error(transparent)]
    Core(#[from] gptq_core::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
