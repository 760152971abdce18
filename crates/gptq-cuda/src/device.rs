//! The CUDA device: context, stream, compiled module, cuBLAS; GPTQ layers on
//! the GPU and the matmul dispatcher.

use crate::compile::{self, CubinSource};
use crate::kernels::{self, Dtype, W4Variant, WgVariant, WG_VARIANTS};
use crate::layout::{AnyLayout, W4Layout};
use crate::{Error, Result};
use cudarc::cublas::{sys as cb, CudaBlas};
use cudarc::driver::{
    sys as cu, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg,
};
use gptq_core::QLinear;
use half::{bf16, f16};
use std::collections::HashMap;
use std::sync::Arc;

/// An activation element type of the int4 products: `half::f16` or
/// `half::bf16`.
pub trait Act: DeviceRepr + cudarc::driver::ValidAsZeroBits + Copy + 'static {
    const DTYPE: Dtype;
    /// A quiet NaN's bits (poisoning outputs in checks).
    const NAN_BITS: u16;
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Act for f16 {
    const DTYPE: Dtype = Dtype::F16;
    const NAN_BITS: u16 = 0x7E00;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Act for bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
    const NAN_BITS: u16 = 0x7FC0;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

pub(crate) trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T> Ctx<T> for std::result::Result<T, cudarc::driver::DriverError> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|e| Error::Driver(format!("{what}: {e}")))
    }
}

impl<T> Ctx<T> for std::result::Result<T, cudarc::cublas::result::CublasError> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|e| Error::Cublas(format!("{what}: {e:?}")))
    }
}

/// Whether a shared library can be loaded; cudarc panics when it cannot, so
/// the check runs under `catch_unwind` (the release profile unwinds).
fn present(check: impl FnOnce() -> bool + std::panic::UnwindSafe) -> bool {
    std::panic::catch_unwind(check).unwrap_or(false)
}

/// Checks that the NVIDIA driver, NVRTC and cuBLAS libraries can be loaded,
/// without touching a device. `Err(Error::NoCuda)` says which is missing.
pub fn probe_libraries() -> Result<()> {
    if !present(|| unsafe { cu::is_culib_present() }) {
        return Err(Error::NoCuda(
            "the NVIDIA driver library (libcuda.so) was not found: no CUDA driver on this machine"
                .into(),
        ));
    }
    if !compile::nvrtc_available() {
        return Err(Error::NoCuda(
            "the NVRTC library (libnvrtc.so) was not found: install the CUDA toolkit (or the nvidia-cuda-nvrtc \
             wheel) and put its lib folder on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    if !present(|| unsafe { cb::is_culib_present() }) {
        return Err(Error::NoCuda(
            "the cuBLAS library (libcublas.so) was not found: install it and put it on LD_LIBRARY_PATH".into(),
        ));
    }
    Ok(())
}

/// What the device is.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub arch: String,
    pub sms: u32,
    pub driver_version: i32,
    pub total_mem: usize,
    pub cubin: CubinSource,
}

/// A CUDA device with the GPTQ kernels loaded.
pub struct Cuda {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: HashMap<String, CudaFunction>,
    pub(crate) blas: CudaBlas,
    _blas_workspace: CudaSlice<u8>,
    pub info: DeviceInfo,
    /// Whether [`Cuda::launch`] may use programmatic dependent launch
    /// (compute capability 9.0 or newer, and `GPTQ_CUDA_PDL=1`).
    pdl: bool,
    /// `GPTQ_CUDA_DQ_FROM`: overrides [`DEQUANT_GEMM_FROM`] (for tests).
    dq_from: Option<usize>,
}

/// Checks a batch of `m` rows through `l` into `n_out` columns: the
/// sizes fit the kernels' 32-bit indices, `x` holds `m·k` values and `y`
/// `m·n_out`.
fn check_batch<T: Act>(
    l: &GpuLinear,
    x: &CudaSlice<T>,
    m: usize,
    y: &CudaSlice<T>,
    n_out: usize,
) -> Result<()> {
    if m == 0 || m > i32::MAX as usize / l.k.max(1) || m > i32::MAX as usize / l.n.max(1) {
        return Err(Error::Shape(format!("batch of {m} rows")));
    }
    if x.len() < m * l.k || y.len() < m * n_out {
        return Err(Error::Shape(format!(
            "x has {} values and y {} for {m} rows of a {}x{} layer ({n_out} outputs a row)",
            x.len(),
            y.len(),
            l.n,
            l.k
        )));
    }
    Ok(())
}

/// The fused int4 kernel's epilogues (`EPI_*` in `kernels/w4.cu`).
const EPI_PLAIN: i32 = 0;
const EPI_SWIGLU: i32 = 1;

/// The row order of a stacked `[gate; up]` layer (`inter` rows each) for
/// [`Cuda::matmul_swiglu`]: in every 16-row tile of the fused kernel, 8
/// gate rows and then the same 8 up rows, so the two outputs of a pair
/// meet in one thread. `None` unless `inter` is a multiple of 8.
pub fn swiglu_row_order(inter: usize) -> Option<Vec<usize>> {
    inter.is_multiple_of(8).then(|| {
        (0..inter / 8)
            .flat_map(|t| (8 * t..8 * t + 8).chain(inter + 8 * t..inter + 8 * t + 8))
            .collect()
    })
}

/// Set to `1` to let kernels start under programmatic dependent launch
/// (off by default: on the H200 it did not speed up graph-replayed
/// decoding, 383 vs 391 tok/s for the 8B-shaped w4 model, 2026-12-03).
pub const PDL_ENV: &str = "GPTQ_CUDA_PDL";

/// Set to a batch size from which every int4 layer takes
/// dequantize-then-cuBLAS instead of [`DEQUANT_GEMM_FROM`] (`1`: always;
/// lets the GPU tests run that path through a whole model).
pub const DQ_FROM_ENV: &str = "GPTQ_CUDA_DQ_FROM";

/// The address of a kernel argument passed by value, for [`Cuda::launch`].
pub(crate) fn karg<T>(v: &T) -> *mut std::ffi::c_void {
    v as *const T as *mut std::ffi::c_void
}

/// `kargs![&a, &b]`: the argument addresses [`Cuda::launch`] takes.
macro_rules! kargs {
    ($($a:expr),* $(,)?) => { [$($crate::device::karg($a)),*] };
}
pub(crate) use kargs;

pub(crate) fn dptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

/// The functions `names` of the CUDA source `src`, compiled for `arch` (or
/// loaded from the CUBIN cache; a cache entry the driver rejects is
/// recompiled).
pub(crate) fn load_kernels(
    ctx: &Arc<CudaContext>,
    src: &str,
    name: &str,
    arch: &str,
    driver_version: i32,
    names: &[impl AsRef<str>],
) -> Result<(Arc<CudaModule>, HashMap<String, CudaFunction>, CubinSource)> {
    let (image, cubin) = compile::cubin_cached(src, name, arch, driver_version)?;
    let module = match ctx.load_module(cudarc::nvrtc::Ptx::from_binary(image)) {
        Ok(m) => m,
        Err(e) if matches!(cubin, CubinSource::Cache(_)) => {
            // A stale or damaged cache entry: compile afresh.
            let (image, _) = compile::compile_cubin(src, name, arch, &[])
                .map_err(|c| Error::Nvrtc(format!("{c} (after the cached CUBIN failed: {e})")))?;
            ctx.load_module(cudarc::nvrtc::Ptx::from_binary(image))
                .ctx(&format!("loading the kernels of {name}"))?
        }
        Err(e) => return Err(Error::Driver(format!("loading the kernels of {name}: {e}"))),
    };
    let mut funcs = HashMap::new();
    for f in names.iter().map(|f| f.as_ref()) {
        funcs.insert(
            f.to_string(),
            module.load_function(f).ctx(&format!("kernel {f}"))?,
        );
    }
    Ok((module, funcs, cubin))
}

impl Cuda {
    /// Opens device `ordinal`, compiles (or loads from the cache) the kernels
    /// for its architecture and creates a cuBLAS handle. Never panics:
    /// missing libraries or devices are `Error::NoCuda`.
    pub fn new(ordinal: usize) -> Result<Self> {
        probe_libraries()?;
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| Error::NoCuda("the CUDA driver could not be initialised".into()))?
            .map_err(|e| {
                if matches!(
                    e.0,
                    cu::cudaError_enum::CUDA_ERROR_NO_DEVICE
                        | cu::cudaError_enum::CUDA_ERROR_INVALID_DEVICE
                        | cu::cudaError_enum::CUDA_ERROR_NOT_INITIALIZED
                ) {
                    Error::NoCuda(format!("no CUDA device {ordinal}: {e}"))
                } else {
                    Error::Driver(format!("opening CUDA device {ordinal}: {e}"))
                }
            })?;
        // One stream, synchronised by the caller: no per-buffer events.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().ctx("creating a stream")?;
        let name = ctx.name().ctx("device name")?;
        let (major, minor) = ctx.compute_capability().ctx("compute capability")?;
        if major < 8 {
            return Err(Error::Unsupported(format!(
                "{name} has compute capability {major}.{minor}; the kernels need 8.0 or newer"
            )));
        }
        let sms = ctx
            .attribute(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .ctx("multiprocessor count")? as u32;
        let total_mem = ctx.total_mem().ctx("device memory")?;
        let mut driver_version = 0i32;
        let r = unsafe { cu::cuDriverGetVersion(&mut driver_version) };
        if r != cu::cudaError_enum::CUDA_SUCCESS {
            return Err(Error::Driver(format!("cuDriverGetVersion: {r:?}")));
        }
        let arch = compile::arch_for(major, minor);
        let (module, funcs, cubin) = load_kernels(
            &ctx,
            compile::W4_SOURCE,
            "w4.cu",
            &arch,
            driver_version,
            &kernels::all_functions(),
        )?;
        // Kernels over 48 KiB of dynamic shared memory must raise their limit
        // (the wgmma ones are launched on sm_90a only).
        let wg: &[WgVariant] = if arch == "sm_90a" { WG_VARIANTS } else { &[] };
        let big = [Dtype::F16, Dtype::Bf16]
            .into_iter()
            .flat_map(|dt| {
                let fused = dt
                    .w4_variants()
                    .iter()
                    .map(move |v| (v.symbol_as(dt), v.shared_bytes()));
                fused.chain(wg.iter().map(move |v| (v.symbol_as(dt), v.shared_bytes())))
            })
            .filter(|&(_, bytes)| bytes > 48 * 1024);
        for (symbol, bytes) in big {
            let f = funcs
                .get(&symbol)
                .ok_or_else(|| Error::Driver(format!("kernel {symbol} missing")))?;
            f.set_attribute(
                cu::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .ctx("raising the shared-memory limit")?;
        }
        let blas = CudaBlas::new(stream.clone()).ctx("creating a cuBLAS handle")?;
        // A fixed workspace keeps cuBLAS from allocating (and lets its calls
        // be captured into graphs).
        let ws_bytes = 32usize << 20;
        let ws = stream.alloc_zeros::<u8>(ws_bytes).ctx("cuBLAS workspace")?;
        let r = unsafe {
            cb::cublasSetWorkspace_v2(*blas.handle(), dptr(&ws, &stream) as *mut _, ws_bytes)
        };
        if r != cb::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(Error::Cublas(format!("cublasSetWorkspace: {r:?}")));
        }
        Ok(Cuda {
            ctx,
            stream,
            _module: module,
            funcs,
            blas,
            _blas_workspace: ws,
            pdl: major >= 9 && std::env::var(PDL_ENV).is_ok_and(|v| v == "1"),
            dq_from: std::env::var(DQ_FROM_ENV).ok().and_then(|v| v.parse().ok()),
            info: DeviceInfo {
                name,
                compute_capability: (major, minor),
                arch,
                sms,
                driver_version,
                total_mem,
                cubin,
            },
        })
    }

    /// Launches `f` on the stream with `args` (addresses of the argument
    /// values, see [`karg`]). With `pdl` the launch allows programmatic
    /// dependent launch where the device has it: the kernel may start
    /// while the one before it is still running, so it must call
    /// `pdl_wait()` (kernels/common.cuh) before it touches anything that
    /// kernel writes. Captured into a CUDA graph, this becomes a
    /// programmatic edge.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters in number and type, and
    /// the kernel must not access memory out of bounds.
    pub(crate) unsafe fn launch(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        args: &mut [*mut std::ffi::c_void],
        pdl: bool,
        what: &str,
    ) -> Result<()> {
        self.ctx.bind_to_thread().ctx(what)?;
        let mut attr: cu::CUlaunchAttribute = std::mem::zeroed();
        attr.id = cu::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let use_pdl = pdl && self.pdl;
        let config = cu::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: if use_pdl {
                &mut attr
            } else {
                std::ptr::null_mut()
            },
            numAttrs: use_pdl as u32,
        };
        let r = cu::cuLaunchKernelEx(
            &config,
            f.cu_function(),
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        );
        if r != cu::cudaError_enum::CUDA_SUCCESS {
            return Err(Error::Driver(format!("launching {what}: {r:?}")));
        }
        Ok(())
    }

    /// Turns programmatic dependent launch off (or back on where the
    /// device has it).
    pub fn set_pdl(&mut self, on: bool) {
        self.pdl = on && self.info.compute_capability.0 >= 9;
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub(crate) fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| Error::Driver(format!("kernel {name} is not in the module")))
    }

    /// Waits for the stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().ctx("synchronizing")
    }

    /// Copies host data to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(v).ctx("copying to the device")
    }

    /// Copies a device buffer to the host.
    pub fn download<T: DeviceRepr>(&self, s: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(s).ctx("copying from the device")
    }

    /// A zeroed device buffer.
    pub fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros::<T>(n.max(1)).ctx("allocating")
    }

    /// Fills an f16 or bf16 buffer with a bit pattern (NaN poisoning in
    /// checks).
    pub fn fill_bits<T: Act>(&self, s: &mut CudaSlice<T>, bits: u16) -> Result<()> {
        let n = s.len() as u64;
        let p = dptr(s, &self.stream);
        let f = self.func(kernels::FILL_U16)?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&p).arg(&bits).arg(&n);
        unsafe { b.launch(LaunchConfig::for_num_elems(n.max(1) as u32)) }.ctx("fill_u16")?;
        Ok(())
    }

    /// Uploads a quantized layer, repacked for the fused int4 kernel when it
    /// can use it, and for dequantize-then-GEMM otherwise (or also, with
    /// `keep_generic`).
    pub fn load_qlinear(&self, q: &QLinear, keep_generic: bool) -> Result<GpuLinear> {
        self.upload_layout(&HostLinear::new(q, keep_generic)?)
    }

    /// Uploads a layer repacked on the host ([`HostLinear::new`]).
    pub fn upload_layout(&self, h: &HostLinear) -> Result<GpuLinear> {
        let w4 = h.w4.as_ref().map(|l| self.upload_w4(l)).transpose()?;
        let any = h.any.as_ref().map(|l| self.upload_any(l)).transpose()?;
        let bias = h.bias.as_ref().map(|b| self.upload(b)).transpose()?;
        Ok(GpuLinear {
            n: h.n,
            k: h.k,
            bits: h.bits,
            group_size: h.group_size,
            w4,
            any,
            bias,
            w4_reason: h.w4_reason.clone(),
        })
    }

    fn upload_w4(&self, l: &W4Layout) -> Result<W4Gpu> {
        Ok(W4Gpu {
            qw: self.upload(&l.qw)?,
            sz: self.upload(&l.sz)?,
            perm: match &l.perm {
                Some(p) => Some(self.upload(p)?),
                None => None,
            },
            nt: l.nt,
            kc: l.kc,
            groups: l.groups,
            gshift: l.gshift,
            bytes: l.bytes(),
        })
    }

    fn upload_any(&self, l: &AnyLayout) -> Result<AnyGpu> {
        Ok(AnyGpu {
            qw: self.upload(&l.qw)?,
            scales: self.upload(&l.scales)?,
            zeros: self.upload(&l.zeros)?,
            g_idx: self.upload(&l.g_idx)?,
            kb: l.kb,
            monotone: l.g_idx[..l.k].windows(2).all(|w| w[0] <= w[1]),
        })
    }

    /// The fused variant the dispatcher picks for `m` batch rows of `l`
    /// (the same for f16 and bf16 activations).
    pub fn pick_variant(&self, l: &GpuLinear, m: usize) -> W4Variant {
        let v = pick_variant(l.n, m);
        if l.supports(v) {
            v
        } else {
            v.without_fs()
        }
    }

    /// Whether the wgmma kernels run here (they are compiled for sm_90a
    /// only; elsewhere their bodies are empty).
    pub fn has_wgmma(&self) -> bool {
        self.info.arch == "sm_90a"
    }

    /// The path [`Path::Auto`] takes (the same for f16 and bf16
    /// activations: every variant it picks exists for both).
    pub fn auto_path(&self, l: &GpuLinear, m: usize) -> Path {
        if l.w4.is_some() && m < self.dq_from.unwrap_or(DEQUANT_GEMM_FROM) {
            match pick_wg(l.n, m) {
                Some(v) if self.has_wgmma() => Path::Wg(v),
                _ => Path::Fused(self.pick_variant(l, m)),
            }
        } else {
            Path::DequantGemm
        }
    }

    /// `y[m][n] = Σ_k x[m][k]·Ŵ[n][k] (+ bias)`, f16 or bf16 in and out
    /// (the same type), on the stream (asynchronous). `x` holds at least
    /// `m·k` values, `y` `m·n`.
    pub fn matmul<T: Act>(
        &self,
        l: &GpuLinear,
        x: &CudaSlice<T>,
        m: usize,
        y: &mut CudaSlice<T>,
        ws: &mut Workspace,
    ) -> Result<()> {
        self.matmul_path(l, x, m, y, ws, Path::Auto)
    }

    /// [`Cuda::matmul`] along a chosen path.
    pub fn matmul_path<T: Act>(
        &self,
        l: &GpuLinear,
        x: &CudaSlice<T>,
        m: usize,
        y: &mut CudaSlice<T>,
        ws: &mut Workspace,
        path: Path,
    ) -> Result<()> {
        check_batch(l, x, m, y, l.n)?;
        let path = match path {
            Path::Auto => self.auto_path(l, m),
            p => p,
        };
        match path {
            Path::Fused(v) => self.fused(l, v, x, m, y, ws, EPI_PLAIN),
            Path::Wg(v) => self.wg(l, v, x, m, y, ws, EPI_PLAIN),
            _ => self.dequant_gemm(l, x, m, y, ws),
        }
    }

    /// SwiGLU in the fused int4 kernel's epilogue, for a stacked gate/up
    /// layer whose rows are in [`swiglu_row_order`]:
    /// `y[r][c] = silu(gate[r][c])·up[r][c]`, `n/2` wide (bias included).
    /// `Ok(false)`, with nothing launched, when the layer does not run the
    /// fused kernel at this batch size (its output is then the plain
    /// interleaved rows, from [`Cuda::matmul`]).
    pub fn matmul_swiglu<T: Act>(
        &self,
        l: &GpuLinear,
        x: &CudaSlice<T>,
        m: usize,
        y: &mut CudaSlice<T>,
        ws: &mut Workspace,
    ) -> Result<bool> {
        self.matmul_swiglu_path(l, x, m, y, ws, Path::Auto)
    }

    /// [`Cuda::matmul_swiglu`] along a chosen path (`Ok(false)` for
    /// dequantize-then-GEMM, which has no SwiGLU epilogue).
    pub fn matmul_swiglu_path<T: Act>(
        &self,
        l: &GpuLinear,
        x: &CudaSlice<T>,
        m: usize,
        y: &mut CudaSlice<T>,
        ws: &mut Workspace,
        path: Path,
    ) -> Result<bool> {
        let path = match path {
            Path::Auto => self.auto_path(l, m),
            p => p,
        };
        if !matches!(path, Path::Fused(_) | Path::Wg(_)) {
            return Ok(false);
        }
        if !l.n.is_multiple_of(16) {
            return Err(Error::Shape(format!("SwiGLU over a {}x{} layer", l.n, l.k)));
        }
        check_batch(l, x, m, y, l.n / 2)?;
        match path {
            Path::Wg(v) => self.wg(l, v, x, m, y, ws, EPI_SWIGLU)?,
            Path::Fused(v) => self.fused(l, v, x, m, y, ws, EPI_SWIGLU)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    fn fused<T: Act>(
        &self,
        l: &GpuLinear,
        v: W4Variant,
        x: &CudaSlice<T>,
        m: usize,
        y: &mut CudaSlice<T>,
        ws: &mut Workspace,
        epi: i32,
    ) -> Result<()> {
        let w4 = l.w4_layout()?;
        let symbol = v.symbol_as(T::DTYPE);
        if !T::DTYPE.w4_variants().contains(&v) {
            return Err(Error::Unsupported(format!("no kernel {symbol}")));
        }
        if !l.supports(v) {
            return Err(Error::Unsupported(format!(
                "{symbol} scales per 64-column chunk; this layer's groups are {} columns",
                1u64 << w4.gshift.min(63)
            )));
        }
        let st = &self.stream;
        let xp = self.layout_order_x(w4, x, m, l.k, ws)?;
        let f = self.func(&symbol)?;
        let (pq, ps, py) = (dptr(&w4.qw, st), dptr(&w4.sz, st), dptr(y, st));
        let pbias = l.bias.as_ref().map(|b| dptr(b, st)).unwrap_or(0u64);
        let (mi, ni, ki) = (m as i32, l.n as i32, l.k as i32);
        let (kci, gi, gs) = (w4.kc as i32, w4.groups as i32, w4.gshift as i32);
        let cfg = LaunchConfig {
            grid_dim: (m.div_ceil(v.rows()) as u32, (w4.nt / v.tiles()) as u32, 1),
            block_dim: (v.kw * 32, 1, 1),
            shared_mem_bytes: v.shared_bytes(),
        };
        let args = &mut kargs![&pq, &ps, &xp, &py, &pbias, &mi, &ni, &ki, &kci, &gi, &gs, &epi];
        unsafe { self.launch(f, cfg, args, true, &symbol) }
    }

    /// The wgmma GEMM: the activations rearranged by `wg_prep_x` into the
    /// workspace as the kernel's shared-memory stages (column permutation
    /// of the layout, act-order's, the swizzle, zero padding), then the
    /// kernel.
    #[allow(clippy::too_many_arguments)]
    fn wg<T: Act>(
        &self,
        l: &GpuLinear,
        v: WgVariant,
        x: &CudaSlice<T>,
        m: usize,
        y: &mut CudaSlice<T>,
        ws: &mut Workspace,
        epi: i32,
    ) -> Result<()> {
        let w4 = l.w4_layout()?;
        let symbol = v.symbol_as(T::DTYPE);
        if !WG_VARIANTS.contains(&v) {
            return Err(Error::Unsupported(format!("no kernel {symbol}")));
        }
        if !self.has_wgmma() {
            return Err(Error::Unsupported(format!(
                "{symbol} needs sm_90a (this device is {})",
                self.info.arch
            )));
        }
        let st = &self.stream;
        // The activations tiled as the kernel's shared-memory stages: whole
        // blocks of `bm` rows (zeros past m), 64 columns per chunk.
        let mb = m.div_ceil(v.rows());
        let rows = mb * v.rows();
        let kp = w4.kc * 64;
        if rows > i32::MAX as usize / kp {
            return Err(Error::Shape(format!("batch of {m} rows")));
        }
        let need = rows * kp;
        let buf = ws.xperm(self, need)?;
        let (px, pb) = (dptr(x, st), dptr(buf, st));
        let pp = w4.perm.as_ref().map(|p| dptr(p, st)).unwrap_or(0u64);
        let (mi, ki, kci, bmi, mbi) = (m as i32, l.k as i32, w4.kc as i32, v.bm as i32, mb as i32);
        let f = self.func(kernels::WG_PREP)?;
        // One thread per 16 bytes (8 values) of the stages.
        let cfg = LaunchConfig {
            grid_dim: ((need as u64 / 8).div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = &mut kargs![&px, &pp, &pb, &mi, &ki, &kci, &bmi, &mbi];
        unsafe { self.launch(f, cfg, args, true, kernels::WG_PREP) }?;
        let f = self.func(&symbol)?;
        let (pq, ps, py) = (dptr(&w4.qw, st), dptr(&w4.sz, st), dptr(y, st));
        let pbias = l.bias.as_ref().map(|b| dptr(b, st)).unwrap_or(0u64);
        let (ni, nti) = (l.n as i32, w4.nt as i32);
        let (gi, gs) = (w4.groups as i32, w4.gshift as i32);
        let lbo_sbo = v.lbo_sbo();
        let ty = w4.nt.div_ceil(v.tiles());
        // K split across blocks: one f32 slot per block of a tile for its
        // sums and one arrival counter per tile (zero between launches: the
        // last block of a tile resets it).
        let (ppart, pcnt) = if v.sk > 1 {
            // (A tile is one row group's rows of a block.)
            let tiles = mb * ty * v.rg as usize;
            let slab = (v.rt * v.bm / 2 * 128) as usize;
            let part = dptr(grow(&mut ws.part, self, tiles * v.sk as usize * slab)?, st);
            (part, dptr(grow(&mut ws.cnt, self, tiles)?, st))
        } else {
            (0u64, 0u64)
        };
        let cfg = LaunchConfig {
            grid_dim: (mb as u32, ty as u32, v.sk),
            block_dim: (v.threads(), 1, 1),
            shared_mem_bytes: v.shared_bytes(),
        };
        let args = &mut kargs![
            &pq, &ps, &pb, &py, &pbias, &mi, &ni, &nti, &kci, &gi, &gs, &epi, &lbo_sbo, &ppart,
            &pcnt
        ];
        unsafe { self.launch(f, cfg, args, true, &symbol) }
    }

    /// Dequantizes the layer into `ws` (f16 `[n][ldw]`) and returns `ldw`.
    pub fn dequantize_into(&self, l: &GpuLinear, ws: &mut Workspace) -> Result<usize> {
        self.dequantize_as(l, ws, Dtype::F16)
    }

    /// Dequantizes the layer into `ws` (`[n][ldw]` of `dt`, in the f16
    /// buffer of [`Workspace::dequantized`]) and returns `ldw`.
    pub fn dequantize_as(&self, l: &GpuLinear, ws: &mut Workspace, dt: Dtype) -> Result<usize> {
        let any = l.any.as_ref().ok_or_else(|| {
            Error::Unsupported("the layer was loaded without its dequantization layout".into())
        })?;
        let ldw = l.k.next_multiple_of(8);
        let st = &self.stream;
        let buf = ws.wdeq(self, l.n * ldw)?;
        let f = self.func(&kernels::dequant_symbol(l.bits, dt))?;
        let (pq, ps, pz, pg, pw) = (
            dptr(&any.qw, st),
            dptr(&any.scales, st),
            dptr(&any.zeros, st),
            dptr(&any.g_idx, st),
            dptr(buf, st),
        );
        let (ni, ki, li) = (l.n as i32, l.k as i32, ldw as i32);
        let mono = any.monotone as i32;
        let mut b = st.launch_builder(f);
        b.arg(&pq)
            .arg(&ps)
            .arg(&pz)
            .arg(&pg)
            .arg(&pw)
            .arg(&ni)
            .arg(&ki)
            .arg(&li)
            .arg(&mono);
        unsafe {
            // 128 threads, one output row each: `dequant_body`'s shared
            // tile is sized for exactly this block.
            b.launch(LaunchConfig {
                grid_dim: (l.n.div_ceil(128) as u32, any.kb as u32, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            })
        }
        .ctx("dequant")?;
        Ok(ldw)
    }

    /// The activations in the fused layout's column order: `x` itself, or
    /// for act-order layers gathered by `perm` into the workspace.
    fn layout_order_x<T: Act>(
        &self,
        w4: &W4Gpu,
        x: &CudaSlice<T>,
        m: usize,
        k: usize,
        ws: &mut Workspace,
    ) -> Result<u64> {
        let st = &self.stream;
        let Some(perm) = &w4.perm else {
            return Ok(dptr(x, st));
        };
        let need = m * k;
        let buf = ws.xperm(self, need)?;
        let total = need as u64;
        let (px, pp, pb) = (dptr(x, st), dptr(perm, st), dptr(buf, st));
        let (mi, ki) = (m as i32, k as i32);
        let f = self.func(kernels::GATHER)?;
        let cfg = LaunchConfig {
            grid_dim: (total.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = &mut kargs![&px, &pp, &pb, &mi, &ki];
        unsafe { self.launch(f, cfg, args, true, "gather_cols") }?;
        Ok(pb)
    }

    /// The fused layout dequantized into the workspace as `W[n][p]` (p in
    /// the layout's column order), row stride returned.
    fn dequantize_w4_as(
        &self,
        l: &GpuLinear,
        w4: &W4Gpu,
        ws: &mut Workspace,
        dt: Dtype,
    ) -> Result<usize> {
        let ldw = l.k.next_multiple_of(8);
        let st = &self.stream;
        let buf = ws.wdeq(self, l.n * ldw)?;
        let f = self.func(&kernels::w4_dequant_symbol(dt))?;
        let (pq, ps, pw) = (dptr(&w4.qw, st), dptr(&w4.sz, st), dptr(buf, st));
        let (ni, ki, nti, kci) = (l.n as i32, l.k as i32, w4.nt as i32, w4.kc as i32);
        let (gi, gs, li) = (w4.groups as i32, w4.gshift as i32, ldw as i32);
        let cfg = LaunchConfig {
            grid_dim: (w4.kc as u32, w4.nt.div_ceil(8) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = &mut kargs![&pq, &ps, &pw, &ni, &ki, &nti, &kci, &gi, &gs, &li];
        unsafe { self.launch(f, cfg, args, false, "w4_dequant") }?;
        Ok(ldw)
    }

    /// Dequantize, then one cuBLAS GEMM: from the fused layout when the
    /// layer has it (the decoder keeps only that one), else the generic one.
    fn dequant_gemm<T: Act>(
        &self,
        l: &GpuLinear,
        x: &CudaSlice<T>,
        m: usize,
        y: &mut CudaSlice<T>,
        ws: &mut Workspace,
    ) -> Result<()> {
        let (ldw, px) = match &l.w4 {
            Some(w4) => {
                let px = self.layout_order_x(w4, x, m, l.k, ws)?;
                (self.dequantize_w4_as(l, w4, ws, T::DTYPE)?, px)
            }
            None => (self.dequantize_as(l, ws, T::DTYPE)?, dptr(x, &self.stream)),
        };
        let w = ws
            .wdeq
            .as_ref()
            .ok_or_else(|| Error::Driver("no dequantization buffer".into()))?;
        let st = &self.stream;
        self.gemm_raw(T::DTYPE, dptr(w, st), ldw, px, dptr(y, st), m, l.n, l.k)?;
        if let Some(bias) = &l.bias {
            self.add_bias(y, bias, m, l.n)?;
        }
        Ok(())
    }

    /// `y[r][c] += bias[c]` for `m` rows of `n` (f16 or bf16 `y`, f16
    /// bias).
    pub(crate) fn add_bias<T: Act>(
        &self,
        y: &mut CudaSlice<T>,
        bias: &CudaSlice<f16>,
        m: usize,
        n: usize,
    ) -> Result<()> {
        if y.len() < m * n || bias.len() < n {
            return Err(Error::Shape(format!("bias of {} for {m}x{n}", bias.len())));
        }
        let st = &self.stream;
        let total = (m * n) as u64;
        let (py, pb) = (dptr(y, st), dptr(bias, st));
        let (mi, ni) = (m as i32, n as i32);
        let f = self.func(&kernels::add_bias_symbol(T::DTYPE))?;
        let cfg = LaunchConfig {
            grid_dim: (total.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = &mut kargs![&py, &pb, &mi, &ni];
        unsafe { self.launch(f, cfg, args, true, "add_bias") }
    }

    /// `y[m][n] = x[m][k] · w[n][k]ᵀ` with cuBLAS (f16 in/out, f32 compute).
    pub fn gemm_f16(
        &self,
        w: &CudaSlice<f16>,
        x: &CudaSlice<f16>,
        y: &mut CudaSlice<f16>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        self.gemm_act(w, x, y, m, n, k)
    }

    /// `y[m][n] = x[m][k] · w[n][k]ᵀ` with cuBLAS (f16 or bf16 in/out, f32
    /// compute).
    pub fn gemm_act<T: Act>(
        &self,
        w: &CudaSlice<T>,
        x: &CudaSlice<T>,
        y: &mut CudaSlice<T>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        if w.len() < n * k || x.len() < m * k || y.len() < m * n {
            return Err(Error::Shape(format!(
                "gemm buffers too small for {m}x{n}x{k}"
            )));
        }
        let st = &self.stream;
        self.gemm_raw(T::DTYPE, dptr(w, st), k, dptr(x, st), dptr(y, st), m, n, k)
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_raw(
        &self,
        dt: Dtype,
        w: u64,
        ldw: usize,
        x: u64,
        y: u64,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        crate::blas::gemm(
            self,
            (m, n, k),
            1.0,
            crate::blas::Mat::act(x, k, dt),
            crate::blas::Mat::act(w, ldw, dt).t(),
            0.0,
            crate::blas::Mat::act(y, n, dt),
            1,
        )
    }
}

/// From this many batch rows every int4 layer takes dequantize-then-cuBLAS
/// (the dequantization's cost is fixed, the int4 kernels' deficit against
/// cuBLAS grows with the rows). Same run on an H200
/// (`bench/results/2026-12-04-dequant-gemm.md`): at 512 rows 1.06–1.24x
/// faster than the best wgmma variant on layers under 28672 rows and
/// within 2 % on the two largest shapes, at 1024–2048 rows 1.13–1.60x
/// faster on all six; at 256 rows slower.
pub const DEQUANT_GEMM_FROM: usize = 512;

/// The dispatcher's choice of fused variant, from the `--sweep` of
/// `gptq bench kernels --device cuda` on an H200 (see
/// `bench/results/cuda-int4-kernels.md`): one n8 tile for up to 8 rows (two
/// row tiles per warp once there are enough rows to fill the GPU, else 16
/// warps splitting K), two for up to 16, four for up to 32, 64-row blocks
/// beyond (32 rows × 64 outputs on narrow layers; past 64 rows the wgmma
/// GEMM, [`pick_wg`], takes most shapes on sm_90a), for `m` batch rows of a
/// layer of `n` rows. Up to 8 rows, layers of 8192 rows or more take two
/// row tiles per warp (8-11 % faster than 16 warps splitting K there,
/// `2026-12-04-gemv-lop3.md`), wide ones mostly four (below). From 9 rows
/// the activations go through shared memory once per block (`_x` variants,
/// `2026-12-04-fused-sx.md`): 5-11 % faster at 16 rows except on 8192-row
/// layers (equal; the old choice stays), 1.1-1.6x at 32 rows. Where it
/// was faster in the same run, the variant that scales in f32 per chunk
/// (`fs`; 4-7 % at 1 row on narrow layers, 3-9 % at 16 rows, 7-11 % at 32
/// rows on layers under 12288 rows); [`Cuda::pick_variant`] drops `fs` for
/// layers with groups under 64 columns.
pub fn pick_variant(n: usize, m: usize) -> W4Variant {
    match m {
        // Wide layers: four row tiles per warp, scaled in f32 per chunk,
        // from 3 rows (2-10 % faster at 3-8 rows on both wide shapes). At 1-2
        // rows mixed (4096 x 14336 5-6 % faster, 8192 x 28672 6-9 % slower)
        // and the 8B-shaped decode 2-4 % slower with it on its 4096 x 28672
        // gate/up layer: two row tiles stay (`2026-12-04-wgmma-pipe.md`).
        0..=2 if n >= 12288 => W4Variant::new(1, 2, 1, 8, 4),
        0..=8 if n >= 12288 => W4Variant::new(1, 4, 1, 8, 4).fs(),
        // 8192-row layers: scaled in f32 per chunk, 4-5 % faster at 1 and
        // 8 rows on both 8192-row shapes (same file).
        0..=8 if n >= 8192 => W4Variant::new(1, 2, 1, 8, 4).fs(),
        0..=8 => W4Variant::new(1, 1, 1, 16, 4).fs(),
        9..=16 if n >= 12288 => W4Variant::x(2, 2, 2, 8, 4).fs(),
        9..=16 if n >= 8192 => W4Variant::new(2, 2, 1, 8, 4).fs(),
        9..=16 => W4Variant::x(2, 1, 2, 8, 6),
        17..=32 if n >= 12288 => W4Variant::x(4, 2, 4, 8, 4),
        17..=32 => W4Variant::x(2, 2, 2, 8, 4).fs(),
        33..=64 if n >= 8192 => W4Variant::new(8, 2, 2, 8, 3),
        33..=64 => W4Variant::new(4, 2, 2, 8, 4),
        // Twice the blocks of the four-wide variant: 1.8-1.9x faster on
        // 4096-row layers at 128 rows (`2026-12-03-wgmma.md`).
        65..=128 if n < 8192 => W4Variant::new(8, 2, 2, 8, 3),
        _ => W4Variant::new(8, 2, 4, 8, 3),
    }
}

/// The wgmma variant for `m` batch rows of an `n`-row layer, or `None`
/// where the fused kernel is faster. From the `--sweep` of
/// `gptq bench kernels --device cuda` on an H200
/// (`bench/results/2026-12-03-wgmma.md`, `2026-12-04-wgmma-rt1.md`,
/// `2026-12-04-wgmma-pipe.md`). 33–64 rows: on wide layers (n ≥ 12288;
/// enough 64-row blocks to fill the GPU) 64-row blocks with four
/// warpgroups splitting K; on 8192-row layers the same with one group of
/// 64 weight rows per warpgroup (twice the blocks: 1.36–1.42× faster than
/// the fused kernel at 64 rows); narrower layers the same with K split
/// over two blocks per tile (`_z2`).
/// 65–128 rows: 128-row blocks of two row groups per warpgroup on wide
/// layers, of one row group with three warpgroups splitting K on 8192-row
/// layers (1.49–1.55× faster there at 128 rows than the two-group blocks
/// taken before), 64-row blocks of one row group on narrower ones (1.23–1.26×
/// faster than the fused kernel). 129–256 rows on layers of 8192 rows or
/// more: 256-row blocks (`wgmma.m64n256k16`, two warpgroups splitting K).
/// From 257 rows there: 128-row blocks with two row groups per warpgroup,
/// pipelined inside each chunk (`_p`: −1 to +12 % at 256 rows in two runs,
/// mixed at 128). From 129 rows on narrower layers: 128-row blocks of one
/// row group and three warpgroups splitting K (1.08× faster than four-way
/// 64-row blocks at 256 rows; 256-row blocks 1.4× slower there).
pub fn pick_wg(n: usize, m: usize) -> Option<WgVariant> {
    match (n, m) {
        (_, 0..=32) => None,
        (12288.., 33..=64) => Some(WgVariant::new(64, 4, 2, 3)),
        (8192.., 33..=64) => Some(WgVariant::new(64, 4, 1, 4)),
        // Narrower layers (too few 64-row tiles to fill the GPU): the same
        // with K split over two blocks per tile, 1.19x (4096x4096) and 1.65x
        // (14336x4096) faster than the fused kernel at 64 rows
        // (2026-12-04-wgmma-b256.md §7).
        (_, 33..=64) => Some(WgVariant::new(64, 4, 1, 4).split(2)),
        // Two row groups of 64 weight rows sharing each activation stage
        // (`_g2`): 1.03-1.14x the previous choice on the layers of >= 12288
        // rows at 65-256 rows and 1.07-1.14x on 8192x8192 at 256 rows, in two
        // sweeps (2026-12-04-wgmma-groups.md; on 28672x8192 at 256 rows
        // 0.97-1.01x, a wash). One K split per block (two
        // blocks per SM) where a 128-row block count fills the GPU twice,
        // else two.
        (24576.., 65..=128) => Some(WgVariant::new(128, 1, 1, 4).grouped(2)),
        (12288.., 65..=128) => Some(WgVariant::new(128, 2, 1, 3).grouped(2)),
        (8192.., 65..=128) => Some(WgVariant::new(128, 3, 1, 3)),
        (12288.., 129..=256) => Some(WgVariant::new(128, 1, 1, 4).grouped(2)),
        // 256-row tiles (one dequantization for the whole batch) where the
        // layer has enough of them: 1-10 % faster than the best 64/128-row
        // variant at 192-256 rows, slower at 128 and 384
        // (2026-12-04-wgmma-b256.md); from 193 rows on 8192-row layers the
        // row groups above.
        (8192.., 129..=192) => Some(WgVariant::new(256, 2, 1, 3)),
        (8192.., 193..=256) => Some(WgVariant::new(128, 2, 1, 3).grouped(2)),
        (8192.., _) => Some(WgVariant::new(128, 2, 2, 4).pipelined()),
        (_, 65..=128) => Some(WgVariant::new(64, 4, 1, 4)),
        (_, 129..) => Some(WgVariant::new(128, 3, 1, 3)),
    }
}

/// How a matmul runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The dispatcher decides (fused int4 when the layer has it).
    Auto,
    /// The fused int4 kernel, this variant.
    Fused(W4Variant),
    /// The wgmma int4 GEMM (sm_90a), this variant.
    Wg(WgVariant),
    /// Dequantize to f16, then cuBLAS.
    DequantGemm,
}

/// A quantized layer repacked on the host for the device (the CPU half of
/// [`Cuda::load_qlinear`], so many layers can be repacked in parallel).
pub struct HostLinear {
    n: usize,
    k: usize,
    bits: u32,
    group_size: Option<usize>,
    w4: Option<W4Layout>,
    w4_reason: Option<String>,
    any: Option<AnyLayout>,
    bias: Option<Vec<f16>>,
}

impl HostLinear {
    /// Repacks `q` for the fused int4 kernel when it can use it, and for
    /// dequantize-then-GEMM otherwise (or also, with `keep_generic`).
    pub fn new(q: &QLinear, keep_generic: bool) -> Result<Self> {
        q.validate().map_err(|e| Error::Shape(e.to_string()))?;
        let (w4, w4_reason) = match W4Layout::new(q) {
            Ok(l) => (Some(l), None),
            Err(why) => (None, Some(why)),
        };
        let any = if w4.is_none() || keep_generic {
            Some(AnyLayout::new(q).map_err(Error::Shape)?)
        } else {
            None
        };
        Ok(HostLinear {
            n: q.out_features,
            k: q.in_features,
            bits: q.bits,
            group_size: q.group_size,
            w4,
            w4_reason,
            any,
            bias: q
                .bias
                .as_ref()
                .map(|b| b.iter().map(|&v| f16::from_f32(v)).collect()),
        })
    }

    /// Bytes a product streams: the fused layout's, else the packed codes'.
    pub fn bytes(&self) -> usize {
        match &self.w4 {
            Some(l) => l.bytes(),
            None => self.n * self.k * self.bits as usize / 8,
        }
    }
}

pub(crate) struct W4Gpu {
    qw: CudaSlice<u32>,
    sz: CudaSlice<u32>,
    perm: Option<CudaSlice<i32>>,
    nt: usize,
    kc: usize,
    groups: usize,
    gshift: u32,
    bytes: usize,
}

pub(crate) struct AnyGpu {
    qw: CudaSlice<u32>,
    scales: CudaSlice<u16>,
    zeros: CudaSlice<u8>,
    g_idx: CudaSlice<i32>,
    kb: usize,
    /// `g_idx` non-decreasing (no act-order).
    monotone: bool,
}

/// A quantized linear layer on the GPU.
pub struct GpuLinear {
    pub n: usize,
    pub k: usize,
    pub bits: u32,
    pub group_size: Option<usize>,
    pub(crate) w4: Option<W4Gpu>,
    pub(crate) any: Option<AnyGpu>,
    pub(crate) bias: Option<CudaSlice<f16>>,
    /// Why the fused int4 path is not available, if it is not.
    pub w4_reason: Option<String>,
}

impl W4Gpu {
    fn try_clone(&self, st: &Arc<CudaStream>) -> Result<Self> {
        Ok(W4Gpu {
            qw: st.clone_dtod(&self.qw).ctx("copy")?,
            sz: st.clone_dtod(&self.sz).ctx("copy")?,
            perm: match &self.perm {
                Some(p) => Some(st.clone_dtod(p).ctx("copy")?),
                None => None,
            },
            ..*self
        })
    }
}

impl AnyGpu {
    fn try_clone(&self, st: &Arc<CudaStream>) -> Result<Self> {
        Ok(AnyGpu {
            qw: st.clone_dtod(&self.qw).ctx("copy")?,
            scales: st.clone_dtod(&self.scales).ctx("copy")?,
            zeros: st.clone_dtod(&self.zeros).ctx("copy")?,
            g_idx: st.clone_dtod(&self.g_idx).ctx("copy")?,
            kb: self.kb,
            monotone: self.monotone,
        })
    }
}

impl GpuLinear {
    /// A second device copy of this layer.
    pub fn try_clone(&self, st: &Arc<CudaStream>) -> Result<Self> {
        Ok(GpuLinear {
            n: self.n,
            k: self.k,
            bits: self.bits,
            group_size: self.group_size,
            w4: self.w4.as_ref().map(|w| w.try_clone(st)).transpose()?,
            any: self.any.as_ref().map(|a| a.try_clone(st)).transpose()?,
            bias: self
                .bias
                .as_ref()
                .map(|b| st.clone_dtod(b).ctx("copy"))
                .transpose()?,
            w4_reason: self.w4_reason.clone(),
        })
    }

    /// Whether the fused int4 kernel can run this layer.
    pub fn has_fused(&self) -> bool {
        self.w4.is_some()
    }

    /// Whether the fused variant `v` runs on this layer (it has the fused
    /// layout, and groups of whole chunks if `v` scales per chunk).
    pub fn supports(&self, v: W4Variant) -> bool {
        self.w4
            .as_ref()
            .is_some_and(|w| !v.fs || crate::layout::whole_chunk_groups(w.gshift))
    }

    /// The int4 kernels' layout, or why the layer has none.
    fn w4_layout(&self) -> Result<&W4Gpu> {
        self.w4.as_ref().ok_or_else(|| {
            Error::Unsupported(format!(
                "no fused int4 path for this layer: {}",
                self.w4_reason.as_deref().unwrap_or("not loaded")
            ))
        })
    }

    /// Whether act-order columns are gathered before the fused kernel.
    pub fn act_order(&self) -> bool {
        self.w4.as_ref().is_some_and(|w| w.perm.is_some())
    }

    /// Bytes the fused kernel streams per call.
    pub fn fused_bytes(&self) -> Option<usize> {
        self.w4.as_ref().map(|w| w.bytes)
    }
}

/// Scratch buffers the paths need (grown on demand; size them before a
/// graph capture by running once).
#[derive(Default)]
pub struct Workspace {
    xperm: Option<CudaSlice<f16>>,
    wdeq: Option<CudaSlice<f16>>,
    /// The wgmma GEMM's per-block sums when K is split across blocks.
    part: Option<CudaSlice<f32>>,
    /// Its arrival counters, one per output tile (zero between launches).
    cnt: Option<CudaSlice<u32>>,
}

/// `slot`, reallocated (zeroed) when it holds fewer than `n` values.
pub(crate) fn grow<'a, T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    slot: &'a mut Option<CudaSlice<T>>,
    dev: &Cuda,
    n: usize,
) -> Result<&'a mut CudaSlice<T>> {
    if slot.as_ref().is_none_or(|b| b.len() < n) {
        *slot = None;
        *slot = Some(dev.zeros::<T>(n)?);
    }
    slot.as_mut()
        .ok_or_else(|| Error::Driver("workspace allocation".into()))
}

impl Workspace {
    /// The last weight [`Cuda::dequantize_into`] wrote (f16 `[n][ldw]`).
    pub fn dequantized(&self) -> Option<&CudaSlice<f16>> {
        self.wdeq.as_ref()
    }
    fn xperm(&mut self, dev: &Cuda, n: usize) -> Result<&mut CudaSlice<f16>> {
        grow(&mut self.xperm, dev, n)
    }
    fn wdeq(&mut self, dev: &Cuda, n: usize) -> Result<&mut CudaSlice<f16>> {
        grow(&mut self.wdeq, dev, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatcher_picks_compiled_variants_covering_the_batch() {
        for n in [64, 4096, 8192, 12288, 14336, 24576, 28672] {
            for m in [
                1, 2, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 192, 193, 256, 257, 1000,
            ] {
                // Layers with narrower groups take the twin without `fs`.
                for v in [pick_variant(n, m), pick_variant(n, m).without_fs()] {
                    assert!(kernels::W4_VARIANTS.contains(&v), "{n} {m}: {v:?}");
                    assert!(kernels::W4_BF16_VARIANTS.contains(&v), "{n} {m}: {v:?}");
                }
                let v = pick_variant(n, m);
                assert!(m <= 64 || v.rows() == 64, "{n} {m}: {v:?}");
                if let Some(w) = pick_wg(n, m) {
                    assert!(WG_VARIANTS.contains(&w), "{n} {m}: {w:?}");
                    assert!(m > 16, "{n} {m}: the fused kernel serves small batches");
                }
            }
        }
    }
}
