//! The GPTQ solver on the GPU: the same algorithm, settings and result as
//! the CPU solver (`gptq_quant::gptq`, whose module docs give the steps),
//! with every `O(n²)`/`O(n³)` step on the device.
//!
//! * Dead columns and act-order come from [`gptq_quant::ColumnOrder`] (one
//!   definition for both backends) built from `diag(H)` read off the
//!   device; damping and its retries run through
//!   [`ColumnOrder::damped`](gptq_quant::ColumnOrder::damped).
//! * `U` (upper, `H⁻¹ = UᵀU`) as on the CPU (`hinv.rs`): `JAJ = MMᵀ` by
//!   cuSOLVER `potrf` in f64, `M⁻¹` by `trtri`, `U = JM⁻¹J` rounded once to
//!   f32. A failed `potrf`/`trtri` or a non-finite or non-positive-diagonal
//!   `U` counts as "not positive definite".
//! * The column loop runs one lazy batch (≤ 128 columns) per launch of
//!   `gptq_block`: a warp per output row holds the batch in registers, `U`'s
//!   batch block sits in shared memory; the batch's `−E` feeds one cuBLAS
//!   f32 GEMM (`W[:, i2:] −= E·U[i1:i2, i2:]`, no TF32). Group parameters
//!   are computed on the device when each group starts, from `W` as it is
//!   at the start of the batch, like the CPU solver and the reference.
//! * Errors `tr(ΔHΔᵀ)` (GPTQ and round-to-nearest) by one f32 GEMM each and
//!   a per-row f64 reduction summed on the host in row order.
//!
//! # Agreement with the CPU solver
//! The batch kernel rounds every operation as the CPU loop does, so codes
//! agree wherever the inputs to a column agree. The trailing GEMM and `U`
//! (cuSOLVER vs faer, both f64 then rounded) sum in other orders, so a
//! value can land on the other side of a rounding boundary and that row's
//! later columns then see a different error: a small fraction of codes
//! differ (measured and bounded in the GPU test, `tests/solve_gpu.rs`).
//!
//! Not supported on the GPU (an `Unsupported` error; [`GpuLayerSolver`]
//! falls back to the CPU): the MSE grid search, lazy batches wider than 128
//! columns and weights of more than [`MAX_ROWS`] output rows.

use crate::blas::{self, Mat};
use crate::device::{dptr, load_kernels, Ctx, Cuda};
use crate::{compile, Error, Result};
use cudarc::cusolver::sys as cs;
use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, LaunchConfig, PushKernelArg};
use gptq_core::{QLinear, Tensor};
use gptq_quant::{ColumnOrder, CrossTerm, GptqParams, GptqResult, Hessian, LayerStats};
use std::collections::HashMap;
use std::sync::Arc;

/// Every kernel of `gptq.cu`.
pub const SOLVE_FUNCTIONS: &[&str] = &[
    "gptq_diag_check",
    "gptq_build_damped",
    "gptq_extract_u",
    "gptq_permute",
    "gptq_unpermute_codes",
    "gptq_group_params",
    "gptq_block",
    "gptq_delta_codes",
    "gptq_delta_rtn",
    "gptq_row_dot",
    "gptq_sub",
    "gptq_add_unpermuted",
];

/// Widest lazy batch the block kernel holds (4 columns per lane).
pub const MAX_BLOCK: usize = 128;

/// Most output rows a weight may have: the element-wise kernels put rows on
/// the grid's y dimension (at most 65,535 blocks).
pub const MAX_ROWS: usize = 65_535;

/// Threads per block of the batch kernel (one warp per output row).
const BLOCK_THREADS: u32 = 512;

fn check_solver(st: cs::cusolverStatus_t, what: &str) -> Result<()> {
    if st == cs::cusolverStatus_t::CUSOLVER_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::Driver(format!("cuSOLVER {what}: {st:?}")))
    }
}

/// The GPU solver: the kernels of `gptq.cu` and a cuSOLVER handle on the
/// device's stream.
pub struct Solver {
    dev: Arc<Cuda>,
    _module: Arc<CudaModule>,
    funcs: HashMap<String, CudaFunction>,
    handle: cs::cusolverDnHandle_t,
}

// SAFETY: the cuSOLVER handle (a raw pointer) may be used from any thread
// as long as calls do not overlap; `Solver`'s methods are all `&self` and
// not `Sync`, so sharing goes through a `Mutex` (see `GpuLayerSolver`).
unsafe impl Send for Solver {}

impl Drop for Solver {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `Solver::new` and is not used
        // after this.
        unsafe {
            cs::cusolverDnDestroy(self.handle);
        }
    }
}

/// `H`-dependent state of a solve on the device (steps 2, 4, 5).
pub struct Prepared {
    /// Dead columns and processing order.
    pub order: ColumnOrder,
    /// Damping actually used, relative to `mean(diag H)`.
    pub damp_used: f32,
    perm: CudaSlice<i32>,
    dead: CudaSlice<u8>,
    /// `U`, `[n, n]` row-major f32, processing order.
    u: CudaSlice<f32>,
}

/// One solved weight on the device, codes in original column order.
pub struct DeviceSolved {
    pub rows: usize,
    pub cols: usize,
    pub codes: CudaSlice<u8>,
    /// `[groups, rows]`.
    pub scales: CudaSlice<f32>,
    /// `[groups, rows]` (integers as f32).
    pub zeros: CudaSlice<f32>,
    pub ngroups: usize,
    g_idx: Vec<u32>,
}

/// Launch geometry of an element-wise kernel over `[rows, n]`.
fn grid_2d(rows: usize, n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(256), rows as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launch geometry of a square `[n, n]` kernel (32×8 threads).
fn grid_square(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(32), (n as u32).div_ceil(8), 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    }
}

/// Warp-per-row geometry, `ny` blocks along y.
fn grid_rows(rows: usize, warps: u32, ny: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((rows as u32).div_ceil(warps), ny as u32, 1),
        block_dim: (32 * warps, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Solver {
    /// Compiles (or loads from the cache) the solver's kernels and opens
    /// cuSOLVER. A missing cuSOLVER library is `Error::NoCuda`.
    pub fn new(dev: Arc<Cuda>) -> Result<Self> {
        let present =
            std::panic::catch_unwind(|| unsafe { cs::is_culib_present() }).unwrap_or(false);
        if !present {
            return Err(Error::NoCuda(
                "the cuSOLVER library (libcusolver.so) was not found: install it and put it on \
                 LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let (module, funcs, _) = load_kernels(
            &dev.ctx,
            compile::GPTQ_SOURCE,
            "gptq.cu",
            &dev.info.arch,
            dev.info.driver_version,
            SOLVE_FUNCTIONS,
        )?;
        let block = funcs
            .get("gptq_block")
            .ok_or_else(|| Error::Driver("kernel gptq_block missing".into()))?;
        block
            .set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                (MAX_BLOCK * MAX_BLOCK * 4) as i32,
            )
            .ctx("raising the shared-memory limit of gptq_block")?;
        let mut handle: cs::cusolverDnHandle_t = std::ptr::null_mut();
        // SAFETY: plain handle creation; the stream outlives the solver
        // (it belongs to `dev`, which the solver holds).
        unsafe {
            check_solver(cs::cusolverDnCreate(&mut handle), "create")?;
            let st = cs::cusolverDnSetStream(handle, dev.stream.cu_stream() as cs::cudaStream_t);
            if let Err(e) = check_solver(st, "set stream") {
                cs::cusolverDnDestroy(handle);
                return Err(e);
            }
        }
        Ok(Solver {
            dev,
            _module: module,
            funcs,
            handle,
        })
    }

    fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| Error::Driver(format!("kernel {name} is not in the module")))
    }

    /// Whether the GPU solver handles `params` (else use the CPU solver).
    pub fn supports(params: &GptqParams) -> Result<()> {
        if params.mse {
            return Err(Error::Unsupported(
                "the MSE grid search runs on the CPU only".into(),
            ));
        }
        if params.block_size > MAX_BLOCK {
            return Err(Error::Unsupported(format!(
                "lazy batches of {} columns (the GPU solver takes at most {MAX_BLOCK})",
                params.block_size
            )));
        }
        Ok(())
    }

    /// Steps 2, 4, 5 for the device Hessian `h` (`[n, n]`, symmetric).
    pub fn prepare(&self, h: &CudaSlice<f32>, n: usize, params: &GptqParams) -> Result<Prepared> {
        params.validate()?;
        Self::supports(params)?;
        if n == 0 || h.len() < n * n {
            return Err(Error::Shape(format!(
                "a Hessian of {} values is not {n}×{n}",
                h.len()
            )));
        }
        let st = &self.dev.stream;
        // diag(H) and the finiteness check.
        let mut diag = self.dev.zeros::<f32>(n)?;
        let mut bad = self.dev.zeros::<i32>(1)?;
        {
            let f = self.func("gptq_diag_check")?;
            let nn = n as i64;
            let mut b = st.launch_builder(f);
            b.arg(h).arg(&nn).arg(&mut diag).arg(&mut bad);
            let blocks = ((n * n) as u64).div_ceil(256).min(65_535 * 8) as u32;
            unsafe { b.launch(LaunchConfig::for_num_elems(256 * blocks)) }
                .ctx("gptq_diag_check")?;
        }
        if self.dev.download(&bad)?[0] != 0 {
            return Err(gptq_quant::Error::NonFinite { what: "Hessian" }.into());
        }
        let order = gptq_quant::gptq::column_order_from_diag(self.dev.download(&diag)?, params);
        let perm_h: Vec<i32> = order.perm.iter().map(|&p| p as i32).collect();
        let perm = self.dev.upload(&perm_h)?;
        let dead_h: Vec<u8> = order.dead.iter().map(|&d| d as u8).collect();
        let dead = self.dev.upload(&dead_h)?;
        let diag_fixed = self.dev.upload(&order.diag)?;

        let mut a = self.dev.zeros::<f64>(n * n)?;
        let mut u = self.dev.zeros::<f32>(n * n)?;
        let (_, damp_used) = order.damped(params, |damp| {
            self.factor(h, n, &perm, &diag_fixed, damp, &mut a, &mut u)
                .map_err(|e| gptq_quant::Error::Backend(e.to_string()))
        })?;
        drop(a);
        Ok(Prepared {
            order,
            damp_used,
            perm,
            dead,
            u,
        })
    }

    /// One damped factorization into `u`; `Ok(None)` when not positive
    /// definite.
    #[allow(clippy::too_many_arguments)]
    fn factor(
        &self,
        h: &CudaSlice<f32>,
        n: usize,
        perm: &CudaSlice<i32>,
        diag: &CudaSlice<f32>,
        damp: f32,
        a: &mut CudaSlice<f64>,
        u: &mut CudaSlice<f32>,
    ) -> Result<Option<()>> {
        let st = &self.dev.stream;
        let ni = n as i32;
        {
            let f = self.func("gptq_build_damped")?;
            let mut b = st.launch_builder(f);
            b.arg(h)
                .arg(perm)
                .arg(diag)
                .arg(&damp)
                .arg(&ni)
                .arg(&mut *a);
            unsafe { b.launch(grid_square(n)) }.ctx("gptq_build_damped")?;
        }
        let lower = cs::cublasFillMode_t::CUBLAS_FILL_MODE_LOWER;
        let a_ptr = dptr(a, st) as *mut f64;
        let info = self.dev.zeros::<i32>(1)?;
        let info_ptr = dptr(&info, st) as *mut i32;
        // potrf: JAJ = MMᵀ, M in the lower triangle.
        let mut lwork = 0i32;
        unsafe {
            check_solver(
                cs::cusolverDnDpotrf_bufferSize(self.handle, lower, ni, a_ptr, ni, &mut lwork),
                "potrf buffer size",
            )?;
        }
        let work = self.dev.zeros::<f64>(lwork.max(1) as usize)?;
        unsafe {
            check_solver(
                cs::cusolverDnDpotrf(
                    self.handle,
                    lower,
                    ni,
                    a_ptr,
                    ni,
                    dptr(&work, st) as *mut f64,
                    lwork,
                    info_ptr,
                ),
                "potrf",
            )?;
        }
        drop(work);
        let code = self.dev.download(&info)?[0];
        if code > 0 {
            return Ok(None);
        }
        if code < 0 {
            return Err(Error::Driver(format!(
                "cuSOLVER potrf: bad argument {}",
                -code
            )));
        }
        // trtri: M⁻¹ in place.
        let (mut dbytes, mut hbytes) = (0usize, 0usize);
        let diag_kind = cs::cublasDiagType_t::CUBLAS_DIAG_NON_UNIT;
        let f64t = cs::cudaDataType_t::CUDA_R_64F;
        unsafe {
            check_solver(
                cs::cusolverDnXtrtri_bufferSize(
                    self.handle,
                    lower,
                    diag_kind,
                    n as i64,
                    f64t,
                    a_ptr as *mut _,
                    n as i64,
                    &mut dbytes,
                    &mut hbytes,
                ),
                "trtri buffer size",
            )?;
        }
        let dwork = self.dev.zeros::<u8>(dbytes.max(1))?;
        let mut hwork = vec![0u8; hbytes.max(1)];
        unsafe {
            check_solver(
                cs::cusolverDnXtrtri(
                    self.handle,
                    lower,
                    diag_kind,
                    n as i64,
                    f64t,
                    a_ptr as *mut _,
                    n as i64,
                    dptr(&dwork, st) as *mut _,
                    dbytes,
                    hwork.as_mut_ptr() as *mut _,
                    hbytes,
                    info_ptr,
                ),
                "trtri",
            )?;
        }
        let code = self.dev.download(&info)?[0];
        drop(dwork);
        if code > 0 {
            return Ok(None);
        }
        if code < 0 {
            return Err(Error::Driver(format!(
                "cuSOLVER trtri: bad argument {}",
                -code
            )));
        }
        // U = J M⁻¹ J, checked.
        let mut bad = self.dev.zeros::<i32>(1)?;
        {
            let f = self.func("gptq_extract_u")?;
            let mut b = st.launch_builder(f);
            b.arg(&*a).arg(&ni).arg(&mut *u).arg(&mut bad);
            unsafe { b.launch(grid_square(n)) }.ctx("gptq_extract_u")?;
        }
        if self.dev.download(&bad)?[0] != 0 {
            return Ok(None);
        }
        Ok(Some(()))
    }

    /// `[groups, rows]` scale and zero buffers.
    fn group_buffers(
        &self,
        groups: usize,
        rows: usize,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        Ok((
            self.dev.zeros(groups * rows)?,
            self.dev.zeros(groups * rows)?,
        ))
    }

    /// Grid parameters of groups `g0 .. g0+count` of width `gs` over `x`
    /// (`[rows, n]`), dead columns read as 0 when `dead` is given.
    #[allow(clippy::too_many_arguments)]
    fn group_params(
        &self,
        x: &CudaSlice<f32>,
        dead: Option<&CudaSlice<u8>>,
        rows: usize,
        n: usize,
        gs: usize,
        g0: usize,
        count: usize,
        params: &GptqParams,
        scale: &mut CudaSlice<f32>,
        zero: &mut CudaSlice<f32>,
    ) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let st = &self.dev.stream;
        let f = self.func("gptq_group_params")?;
        let (ri, ni, gsi, g0i) = (rows as i32, n as i32, gs as i32, g0 as i32);
        let sym = params.sym as i32;
        let maxq = ((1u32 << params.bits) - 1) as f32;
        let dead_ptr: u64 = dead.map_or(0, |d| dptr(d, st));
        let mut b = st.launch_builder(f);
        b.arg(x)
            .arg(&dead_ptr)
            .arg(&ri)
            .arg(&ni)
            .arg(&gsi)
            .arg(&g0i)
            .arg(&sym)
            .arg(&maxq)
            .arg(scale)
            .arg(zero);
        unsafe { b.launch(grid_rows(rows, 8, count)) }.ctx("gptq_group_params")?;
        Ok(())
    }

    /// `C[rows, m] (ldc) += A[rows, k] (lda) · B[k, m] (ldb)`, all row-major
    /// f32 device pointers, f32 compute (no TF32).
    #[allow(clippy::too_many_arguments)]
    fn gemm_acc(
        &self,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        c: u64,
        ldc: usize,
        rows: usize,
        m: usize,
        k: usize,
    ) -> Result<()> {
        // C[rows, m] += A[rows, k] · B[k, m].
        blas::gemm(
            &self.dev,
            (rows, m, k),
            1.0,
            Mat::f32(a, lda),
            Mat::f32(b, ldb),
            1.0,
            Mat::f32(c, ldc),
            1,
        )
    }

    /// The asymmetric calibration target (see `gptq_quant::asym`) of the
    /// device weight `w` (`[rows, n]`, original column order), in place:
    /// `W ← W + W·C·(H + λI)⁻¹` with `prep`'s damping and dead columns, as
    /// `gptq_quant::asymmetric_targets` computes on the host. With `P` the
    /// processing order, `(H + λI)⁻¹ = PᵀUᵀUP`, so the correction is
    /// `(WC)Pᵀ·Uᵀ·U` taken back to the original order: three f32 GEMMs (no
    /// TF32) where the host solves in f64 — they agree to about 1e-5 of the
    /// correction (checked in `tests/solve_gpu.rs`). Dead columns are
    /// decoupled in `H + λI` (their rows and columns of `H` are zero), so
    /// zeroing them in `(WC)Pᵀ` changes no other column.
    pub fn asym_target(
        &self,
        w: &mut CudaSlice<f32>,
        rows: usize,
        c: &CudaSlice<f32>,
        prep: &Prepared,
    ) -> Result<()> {
        let n = prep.order.perm.len();
        if rows == 0 || w.len() < rows * n || c.len() < n * n {
            return Err(Error::Shape(format!(
                "a weight of {} values and a cross term of {} values are not [{rows}, {n}] and \
                 [{n}, {n}]",
                w.len(),
                c.len()
            )));
        }
        if rows > MAX_ROWS {
            return Err(Error::Unsupported(format!(
                "{rows} output rows (the element-wise kernels take at most {MAX_ROWS})"
            )));
        }
        let st = &self.dev.stream;
        let (ri, ni) = (rows as i32, n as i32);
        let g = self.dev.zeros::<f32>(rows * n)?;
        let mut gp = self.dev.zeros::<f32>(rows * n)?;
        let (pw, pc, pu) = (dptr(w, st), dptr(c, st), dptr(&prep.u, st));
        let (pg, pgp) = (dptr(&g, st), dptr(&gp, st));
        // G = W·C.
        blas::gemm(
            &self.dev,
            (rows, n, n),
            1.0,
            Mat::f32(pw, n),
            Mat::f32(pc, n),
            0.0,
            Mat::f32(pg, n),
            1,
        )?;
        {
            let f = self.func("gptq_permute")?;
            let mut b = st.launch_builder(f);
            b.arg(&g)
                .arg(&prep.perm)
                .arg(&prep.dead)
                .arg(&ri)
                .arg(&ni)
                .arg(&mut gp);
            unsafe { b.launch(grid_2d(rows, n)) }.ctx("gptq_permute")?;
        }
        // G ← GP·Uᵀ, then GP ← G·U.
        blas::gemm(
            &self.dev,
            (rows, n, n),
            1.0,
            Mat::f32(pgp, n),
            Mat::f32(pu, n).t(),
            0.0,
            Mat::f32(pg, n),
            1,
        )?;
        blas::gemm(
            &self.dev,
            (rows, n, n),
            1.0,
            Mat::f32(pg, n),
            Mat::f32(pu, n),
            0.0,
            Mat::f32(pgp, n),
            1,
        )?;
        let f = self.func("gptq_add_unpermuted")?;
        let mut b = st.launch_builder(f);
        b.arg(&gp).arg(&prep.perm).arg(&ri).arg(&ni).arg(w);
        unsafe { b.launch(grid_2d(rows, n)) }.ctx("gptq_add_unpermuted")?;
        drop(g);
        Ok(())
    }

    /// GPTQ of the device weight `w` (`[rows, n]` row-major, original column
    /// order) under `prep`.
    pub fn solve(
        &self,
        w: &CudaSlice<f32>,
        rows: usize,
        prep: &Prepared,
        params: &GptqParams,
    ) -> Result<DeviceSolved> {
        let n = prep.order.perm.len();
        if rows == 0 || w.len() < rows * n {
            return Err(Error::Shape(format!(
                "a weight of {} values is not [{rows}, {n}]",
                w.len()
            )));
        }
        if rows > MAX_ROWS {
            return Err(Error::Unsupported(format!(
                "{rows} output rows (the element-wise kernels take at most {MAX_ROWS})"
            )));
        }
        let st = &self.dev.stream;
        let (ri, ni) = (rows as i32, n as i32);
        let gs = params.group_size.map(|g| g.min(n));
        let ngroups = gs.map_or(1, |g| n.div_ceil(g));
        let (mut scale, mut zero) = self.group_buffers(ngroups, rows)?;
        match gs {
            // 1. Per-channel: one grid per row from the original W.
            None => self.group_params(w, None, rows, n, n, 0, 1, params, &mut scale, &mut zero)?,
            // 3. Static groups: from the dead-zeroed, unpermuted W.
            Some(g) if params.static_groups => self.group_params(
                w,
                Some(&prep.dead),
                rows,
                n,
                g,
                0,
                ngroups,
                params,
                &mut scale,
                &mut zero,
            )?,
            Some(_) => {}
        }
        // 2, 4. Dead columns zeroed, columns permuted.
        let mut wp = self.dev.zeros::<f32>(rows * n)?;
        {
            let f = self.func("gptq_permute")?;
            let mut b = st.launch_builder(f);
            b.arg(w)
                .arg(&prep.perm)
                .arg(&prep.dead)
                .arg(&ri)
                .arg(&ni)
                .arg(&mut wp);
            unsafe { b.launch(grid_2d(rows, n)) }.ctx("gptq_permute")?;
        }
        let g_idx = prep.order.g_idx(params);
        let gsel_h: Vec<i32> = prep.order.perm.iter().map(|&c| g_idx[c] as i32).collect();
        let gsel = self.dev.upload(&gsel_h)?;
        let mut codes_p = self.dev.zeros::<u8>(rows * n)?;
        let mut en = self.dev.zeros::<f32>(rows * MAX_BLOCK)?;
        let maxq = ((1u32 << params.bits) - 1) as f32;
        let bs = params.block_size.min(n);
        let dynamic = gs.filter(|_| !params.static_groups);
        let block = self.func("gptq_block")?;
        for i1 in (0..n).step_by(bs) {
            let i2 = (i1 + bs).min(n);
            let count = i2 - i1;
            if let Some(g) = dynamic {
                // Groups starting in this batch, from W at the batch start.
                let first = i1.div_ceil(g);
                let end = (i2 - 1) / g + 1;
                if first < end {
                    self.group_params(
                        &wp,
                        None,
                        rows,
                        n,
                        g,
                        first,
                        end - first,
                        params,
                        &mut scale,
                        &mut zero,
                    )?;
                }
            }
            let (i1i, counti) = (i1 as i32, count as i32);
            let mut b = st.launch_builder(block);
            b.arg(&wp)
                .arg(&prep.u)
                .arg(&gsel)
                .arg(&scale)
                .arg(&zero)
                .arg(&mut codes_p)
                .arg(&mut en)
                .arg(&ri)
                .arg(&ni)
                .arg(&i1i)
                .arg(&counti)
                .arg(&maxq);
            let mut cfg = grid_rows(rows, BLOCK_THREADS / 32, 1);
            cfg.shared_mem_bytes = (count * count * 4) as u32;
            unsafe { b.launch(cfg) }.ctx("gptq_block")?;
            if i2 < n {
                let u0 = dptr(&prep.u, st) + ((i1 * n + i2) * 4) as u64;
                let w0 = dptr(&wp, st) + (i2 * 4) as u64;
                self.gemm_acc(dptr(&en, st), MAX_BLOCK, u0, n, w0, n, rows, n - i2, count)?;
            }
        }
        drop(wp);
        // 7. Codes back to the original order.
        let mut codes = self.dev.zeros::<u8>(rows * n)?;
        {
            let f = self.func("gptq_unpermute_codes")?;
            let mut b = st.launch_builder(f);
            b.arg(&codes_p)
                .arg(&prep.perm)
                .arg(&ri)
                .arg(&ni)
                .arg(&mut codes);
            unsafe { b.launch(grid_2d(rows, n)) }.ctx("gptq_unpermute_codes")?;
        }
        Ok(DeviceSolved {
            rows,
            cols: n,
            codes,
            scales: scale,
            zeros: zero,
            ngroups,
            g_idx,
        })
    }

    /// `H ← β·H + α·XᵀX` for inputs `x` (`[tokens, n]` row-major) and `h`
    /// (`[n, n]`): the Hessian accumulation in f32 (no TF32).
    pub fn accumulate_hessian(
        &self,
        h: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        tokens: usize,
        n: usize,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        self.accumulate_gram(h, x, x, tokens, n, alpha, beta)
    }

    /// `G ← β·G + α·BᵀA` for `a`, `b` (`[tokens, n]` row-major) and `g`
    /// (`[n, n]` row-major), f32 (no TF32): `G[i, j] = Σ_t b[t, i]·a[t, j]`.
    #[allow(clippy::too_many_arguments)]
    pub fn accumulate_gram(
        &self,
        g: &mut CudaSlice<f32>,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        tokens: usize,
        n: usize,
        alpha: f32,
        beta: f32,
    ) -> Result<()> {
        if g.len() < n * n || a.len() < tokens * n || b.len() < tokens * n {
            return Err(Error::Shape(format!(
                "Gram matrix of {} / inputs of {} and {} values for {tokens} tokens of {n}",
                g.len(),
                a.len(),
                b.len()
            )));
        }
        let st = &self.dev.stream;
        let (ap, bp, gp) = (dptr(a, st), dptr(b, st), dptr(g, st));
        blas::gemm(
            &self.dev,
            (n, n, tokens),
            alpha,
            Mat::f32(bp, n).t(),
            Mat::f32(ap, n),
            beta,
            Mat::f32(gp, n),
            1,
        )
    }

    /// `out = a − b` on the device.
    fn sub(&self, a: &CudaSlice<f32>, b: &CudaSlice<f32>, out: &mut CudaSlice<f32>) -> Result<()> {
        let n = a.len().min(b.len()).min(out.len()) as i64;
        let f = self.func("gptq_sub")?;
        let mut l = self.dev.stream.launch_builder(f);
        l.arg(a).arg(b).arg(&n).arg(out);
        let blocks = (n as u64).div_ceil(256).clamp(1, 65_535) as u32;
        unsafe { l.launch(LaunchConfig::for_num_elems(256 * blocks)) }.ctx("gptq_sub")?;
        Ok(())
    }

    /// `tr(ΔHΔᵀ)` for `Δ` in `delta` (`[rows, n]`), `h` undamped.
    fn weighted_error(
        &self,
        h: &CudaSlice<f32>,
        delta: &CudaSlice<f32>,
        rows: usize,
        n: usize,
    ) -> Result<f64> {
        let st = &self.dev.stream;
        let t = self.dev.zeros::<f32>(rows * n)?;
        // T[rows, n] = Δ · H (H symmetric).
        self.gemm_acc(
            dptr(delta, st),
            n,
            dptr(h, st),
            n,
            dptr(&t, st),
            n,
            rows,
            n,
            n,
        )?;
        let mut out = self.dev.zeros::<f64>(rows)?;
        let (ri, ni) = (rows as i32, n as i32);
        let f = self.func("gptq_row_dot")?;
        let mut b = st.launch_builder(f);
        b.arg(delta).arg(&t).arg(&ri).arg(&ni).arg(&mut out);
        unsafe { b.launch(grid_rows(rows, 8, 1)) }.ctx("gptq_row_dot")?;
        Ok(self.dev.download(&out)?.iter().sum())
    }

    /// `(error of GPTQ, error of round-to-nearest)`, both `tr(ΔHΔᵀ)` with the
    /// undamped `h` and the original `w` (see `gptq_quant::gptq`).
    pub fn errors(
        &self,
        w: &CudaSlice<f32>,
        h: &CudaSlice<f32>,
        solved: &DeviceSolved,
        params: &GptqParams,
    ) -> Result<(f64, f64)> {
        let st = &self.dev.stream;
        let (rows, n) = (solved.rows, solved.cols);
        let (ri, ni) = (rows as i32, n as i32);
        let mut delta = self.dev.zeros::<f32>(rows * n)?;
        let gidx_h: Vec<i32> = solved.g_idx.iter().map(|&g| g as i32).collect();
        let gidx = self.dev.upload(&gidx_h)?;
        {
            let f = self.func("gptq_delta_codes")?;
            let mut b = st.launch_builder(f);
            b.arg(w)
                .arg(&solved.codes)
                .arg(&gidx)
                .arg(&solved.scales)
                .arg(&solved.zeros)
                .arg(&ri)
                .arg(&ni)
                .arg(&mut delta);
            unsafe { b.launch(grid_2d(rows, n)) }.ctx("gptq_delta_codes")?;
        }
        let eg = self.weighted_error(h, &delta, rows, n)?;
        // Round-to-nearest: groups over original columns from the original W.
        let gs = params.group_size.unwrap_or(n).min(n);
        let ng = n.div_ceil(gs);
        let (mut scale, mut zero) = self.group_buffers(ng, rows)?;
        self.group_params(w, None, rows, n, gs, 0, ng, params, &mut scale, &mut zero)?;
        {
            let maxq = ((1u32 << params.bits) - 1) as f32;
            let gsi = gs as i32;
            let f = self.func("gptq_delta_rtn")?;
            let mut b = st.launch_builder(f);
            b.arg(w)
                .arg(&scale)
                .arg(&zero)
                .arg(&ri)
                .arg(&ni)
                .arg(&gsi)
                .arg(&maxq)
                .arg(&mut delta);
            unsafe { b.launch(grid_2d(rows, n)) }.ctx("gptq_delta_rtn")?;
        }
        let er = self.weighted_error(h, &delta, rows, n)?;
        Ok((eg, er))
    }

    /// The solved weight as a host [`QLinear`] (no bias).
    pub fn to_qlinear(&self, s: &DeviceSolved, params: &GptqParams) -> Result<QLinear> {
        let zeros = self.dev.download(&s.zeros)?;
        let q = QLinear {
            out_features: s.rows,
            in_features: s.cols,
            bits: params.bits,
            group_size: params.group_size,
            codes: self.dev.download(&s.codes)?,
            scales: self.dev.download(&s.scales)?,
            zeros: zeros.iter().map(|&z| z as u8).collect(),
            g_idx: s.g_idx.clone(),
            bias: None,
        };
        q.validate().map_err(|e| Error::Shape(e.to_string()))?;
        Ok(q)
    }

    /// [`gptq_quant::gptq_quantize_many`] on the GPU: the same checks,
    /// settings and result (errors included), from host tensors.
    pub fn quantize_many(
        &self,
        ws: &[&Tensor],
        h: &Hessian,
        params: &GptqParams,
    ) -> Result<Vec<GptqResult>> {
        params.validate()?;
        Self::supports(params)?;
        let n = h.columns();
        for w in ws {
            gptq_quant::gptq::check_weight(w, h)?;
        }
        let hd = self.dev.upload(h.matrix())?;
        let prep = self.prepare(&hd, n, params)?;
        ws.iter()
            .map(|w| {
                let rows = w.shape()[0];
                let wd = self.dev.upload(w.data())?;
                let solved = self.solve(&wd, rows, &prep, params)?;
                let (error_gptq, error_rtn) = self.errors(&wd, &hd, &solved, params)?;
                Ok(GptqResult {
                    q: self.to_qlinear(&solved, params)?,
                    damp_used: prep.damp_used,
                    error_gptq,
                    error_rtn,
                    dead_columns: prep.order.ndead,
                })
            })
            .collect()
    }
}

/// The GPU solver as the pipeline's [`gptq_quant::LayerSolver`]: one
/// device, calls serialized; settings the GPU does not support (the MSE
/// search, batches wider than [`MAX_BLOCK`]) are solved on the CPU.
pub struct GpuLayerSolver {
    solver: Arc<std::sync::Mutex<Solver>>,
    about: String,
    device_stats: bool,
}

impl GpuLayerSolver {
    /// The solver on device `dev`. With `device_stats`, the calibration
    /// statistics (`H`, `C`) are accumulated on the GPU too; otherwise on
    /// the host, which keeps results identical to the CPU backend's (see
    /// its `stats`).
    pub fn new(dev: Arc<Cuda>, device_stats: bool) -> Result<Self> {
        let about = format!(
            "cuda ({}){}",
            dev.info.name,
            if device_stats {
                ", Hessians on the GPU"
            } else {
                ""
            }
        );
        Ok(GpuLayerSolver {
            solver: Arc::new(std::sync::Mutex::new(Solver::new(dev)?)),
            about,
            device_stats,
        })
    }
}

impl std::fmt::Debug for GpuLayerSolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.about)
    }
}

impl gptq_quant::LayerSolver for GpuLayerSolver {
    fn describe(&self) -> String {
        self.about.clone()
    }

    fn quantize_many(
        &self,
        ws: &[&Tensor],
        h: &Hessian,
        params: &GptqParams,
    ) -> gptq_quant::Result<Vec<GptqResult>> {
        let too_tall = ws
            .iter()
            .any(|w| w.shape().first().is_some_and(|&r| r > MAX_ROWS));
        if let Err(e) = Solver::supports(params) {
            tracing::debug!("solving on the CPU: {e}");
            return gptq_quant::gptq_quantize_many(ws, h, params);
        }
        if too_tall {
            tracing::debug!("solving on the CPU: more than {MAX_ROWS} output rows");
            return gptq_quant::gptq_quantize_many(ws, h, params);
        }
        let solver = lock(&self.solver)?;
        solver.quantize_many(ws, h, params).map_err(backend_error)
    }

    /// GPU statistics when asked for: their f32 sums run in cuBLAS's order,
    /// not the host GEMM's, so `H` differs in the last bits; a near-tie code
    /// can then flip, and through the next blocks' inputs the difference
    /// spreads (SmolLM2, 64 × 512 calibration tokens: a third of the codes
    /// differ, WikiText-2 26.28 vs 26.78 — a different, equally good
    /// quantization; bench/results/2026-12-02-cuda-quantize-e2e.md).
    /// Host statistics keep the CPU backend's codes.
    fn stats(&self, columns: usize, cross: bool) -> gptq_quant::Result<Box<dyn LayerStats>> {
        if !self.device_stats {
            return Ok(Box::new(gptq_quant::HostStats::new(columns, cross)));
        }
        let solver = lock(&self.solver)?;
        let alloc = || solver.dev.zeros::<f32>(columns * columns);
        let h = alloc().map_err(backend_error)?;
        let c = if cross {
            Some(alloc().map_err(backend_error)?)
        } else {
            None
        };
        Ok(Box::new(GpuStats {
            solver: self.solver.clone(),
            columns,
            nsamples: 0,
            h,
            c,
        }))
    }
}

fn backend_error(e: Error) -> gptq_quant::Error {
    match e {
        Error::Quant(q) => q,
        e => gptq_quant::Error::Backend(format!("GPU solver: {e}")),
    }
}

fn lock(s: &std::sync::Mutex<Solver>) -> gptq_quant::Result<std::sync::MutexGuard<'_, Solver>> {
    s.lock()
        .map_err(|_| gptq_quant::Error::Backend("the GPU solver panicked earlier".into()))
}

/// `H` and `C` of one layer input accumulated on the GPU (f32 GEMMs, the
/// host statistics' running scaling); downloaded once, when finished, with
/// `H`'s lower triangle mirrored from the upper one so the host copy is
/// exactly symmetric.
struct GpuStats {
    solver: Arc<std::sync::Mutex<Solver>>,
    columns: usize,
    nsamples: usize,
    h: CudaSlice<f32>,
    c: Option<CudaSlice<f32>>,
}

impl LayerStats for GpuStats {
    fn add(&mut self, x_q: &[f32], x_fp: Option<&[f32]>, tokens: usize) -> gptq_quant::Result<()> {
        let n = self.columns;
        if x_q.len() != tokens * n || x_fp.is_some_and(|x| x.len() != tokens * n) {
            return Err(gptq_quant::Error::Shape(format!(
                "calibration inputs are not [{tokens}, {n}]"
            )));
        }
        if self.c.is_some() && x_fp.is_none() {
            return Err(gptq_quant::Error::InvalidParams(
                "the cross term needs the full-precision inputs".into(),
            ));
        }
        let solver = lock(&self.solver)?;
        let old = self.nsamples;
        let new = old + 1;
        let beta = if old > 0 {
            (old as f64 / new as f64) as f32
        } else {
            0.0
        };
        let alpha = (2.0 / new as f64) as f32;
        self.nsamples = new;
        if tokens == 0 || n == 0 {
            return Ok(());
        }
        let mut run = || -> Result<()> {
            let xq = solver.dev.upload(x_q)?;
            solver.accumulate_gram(&mut self.h, &xq, &xq, tokens, n, alpha, beta)?;
            if let (Some(c), Some(x_fp)) = (self.c.as_mut(), x_fp) {
                let xf = solver.dev.upload(x_fp)?;
                let mut d = solver.dev.zeros::<f32>(tokens * n)?;
                solver.sub(&xf, &xq, &mut d)?;
                // C[i, j] = Σ_t (x − x̃)[t, i]·x̃[t, j].
                solver.accumulate_gram(c, &xq, &d, tokens, n, alpha, beta)?;
            }
            Ok(())
        };
        run().map_err(backend_error)
    }

    fn finish(self: Box<Self>) -> gptq_quant::Result<(Hessian, Option<CrossTerm>)> {
        let solver = lock(&self.solver)?;
        let n = self.columns;
        let mut h = solver.dev.download(&self.h).map_err(backend_error)?;
        for i in 0..n {
            for j in 0..i {
                h[i * n + j] = h[j * n + i];
            }
        }
        let h = Hessian::from_matrix(h, n, self.nsamples)?;
        let c = match &self.c {
            Some(c) => Some(CrossTerm::from_matrix(
                solver.dev.download(c).map_err(backend_error)?,
                n,
                self.nsamples,
            )?),
            None => None,
        };
        Ok((h, c))
    }
}
