//! GPTQ calibration of Llama-family and OPT blocks on the GPU: the
//! [`gptq_pipeline::BlockDevice`] that keeps every calibration sequence's
//! state in device memory and runs them all through a block at once.
//!
//! * The block's linears run as cuBLAS GEMMs with f16 operands and f32
//!   accumulation (the weights rounded once to f16, the quantized ones from
//!   their checkpoint values); the residual stream stays f32 and the
//!   output projections add into it directly (GEMM with `β = 1`).
//! * RMSNorm (LayerNorm for OPT, pre- or post-LN), rotary positions (none
//!   for OPT), the causal softmax, SwiGLU (ReLU) and layout changes are
//!   the kernels of `kernels/block.cu`; attention is per
//!   sequence: `S = QKᵀ/√d` and `O = PV` as batched GEMMs over the
//!   key/value heads (a group's query heads form one matrix), the softmax
//!   in between.
//! * A layer input's Hessian `H = (2/n)·Σ x xᵀ` is one GEMM over all
//!   calibration tokens of the f16 values the layer actually reads (f16
//!   products are exact in f32; sums in f32), mirrored to exact symmetry,
//!   then solved in place by [`Solver`] — `H` never leaves the device.
//!
//! Device memory: the residual stream (f32) and two f16 activation buffers
//! over all calibration tokens, the block's f16 weights, one `H` per input
//! point, and per-sequence attention scratch (`heads·len²` scores).
//!
//! Results differ from the host forward's in the last bits (f16 GEMM
//! operands vs f32), which GPTQ turns into a different but equally good
//! quantization (measured in `bench/results/`).

use crate::blas::{gemm, Mat};
use crate::device::{dptr, grow, kargs, load_kernels, Ctx, Cuda};
use crate::solve::{Solver, MAX_ROWS};
use crate::{compile, Error, Result};
use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, LaunchConfig, PushKernelArg};
use gptq_core::{QLinear, Tensor};
use gptq_models::BlockRunner;
use gptq_quant::{CrossTerm, GptqParams, GptqResult, Hessian};
use half::f16;
use std::collections::HashMap;
use std::sync::Arc;

mod eval;
mod staging;
pub use eval::{windows_nll, WindowsNll};
use staging::HostStates;

/// Every kernel of `block.cu`.
pub const BLOCK_FUNCTIONS: &[&str] = &[
    "blk_rms_norm",
    "blk_rms_norm_wide",
    "blk_layer_norm",
    "blk_layer_norm_wide",
    "blk_relu",
    "blk_add_bias",
    "blk_qkv_heads",
    "blk_softmax_causal",
    "blk_heads_to_rows",
    "blk_silu_mul",
    "blk_to_f16",
    "blk_dequant",
    "blk_mirror_upper",
    "blk_sub_hilo",
    "blk_nll",
    "dec_rope_kv",
    "dec_attention",
    "dec_silu_mul",
    "dec_embed",
];

/// Rows per chunk of the MLP's f32 intermediates (two `[rows, inter]`).
const MLP_CHUNK_BYTES: usize = 1 << 30;

/// Whether the calibration forward of architecture `name` runs on the GPU
/// (OPT with ReLU, the activation every OPT checkpoint uses).
pub fn supports_arch(name: &str) -> bool {
    matches!(name, "llama" | "opt")
}

/// Whether GPU evaluation and generation (the head, and for generation the
/// whole model, on the device) run architecture `name`.
pub fn runs_whole_model(name: &str) -> bool {
    name == "llama"
}

struct DevLinear {
    /// `[rows, cols]` f16 bits.
    w: CudaSlice<u16>,
    bias: Option<CudaSlice<f32>>,
    rows: usize,
    cols: usize,
}

/// Borrowed calibration state of one lane: residual, scratch `a`, scratch
/// `b`, the block and the lane's linears.
type State<'a> = (
    &'a CudaSlice<f32>,
    &'a CudaSlice<u16>,
    &'a CudaSlice<u16>,
    &'a DevBlock,
    &'a HashMap<&'static str, DevLinear>,
);

/// One path's states over all calibration tokens. Lane 0 is the quantized
/// model's; with asymmetric calibration lane 1 is the full-precision
/// model's, run in lockstep through the same segments so both lanes hold
/// a point's inputs at once.
struct Lane {
    /// Residual stream `[tokens, hidden]` (the sequences on the device).
    x: CudaSlice<f32>,
    /// The block input, kept for a rewind.
    x_in: Option<CudaSlice<f32>>,
    /// States on the host: the buffer the next chunk is copied into while
    /// `x` computes (see `staging`).
    x_alt: Option<CudaSlice<f32>>,
    /// f16 activations `[tokens, hidden]` (norm outputs).
    a: Option<CudaSlice<u16>>,
    /// f16 activations `[tokens, max(heads·d, inter)]` (attention output,
    /// MLP inner activation).
    b: Option<CudaSlice<u16>>,
    /// With asymmetric calibration, what rounding `a` and `b` to f16 left
    /// (`store_hilo` in `block.cu`): the cross term's `x − x̃` is taken
    /// from both halves, not from the f16 values alone.
    a_lo: Option<CudaSlice<u16>>,
    b_lo: Option<CudaSlice<u16>>,
}

/// What a group's pass collected at one input point.
struct PointStat {
    /// `H = (2/n)·Σ x̃ᵀx̃`, `[width, width]`.
    h: CudaSlice<f32>,
    width: usize,
    /// The cross term `C = (2/n)·Σ (x − x̃)ᵀx̃` (asymmetric calibration).
    c: Option<CudaSlice<f32>>,
}

struct DevBlock {
    ln1: CudaSlice<f32>,
    ln2: CudaSlice<f32>,
    inv_freq: CudaSlice<f32>,
    eps: f32,
    nh: usize,
    nkv: usize,
    d: usize,
    /// Sliding window, 0 for none.
    window: i32,
    inter: usize,
    /// Llama or OPT.
    form: Form,
    /// The linears as the quantized model has them (lane 0).
    lin: HashMap<&'static str, DevLinear>,
    /// The unquantized linears (lane 1, asymmetric calibration).
    fp_lin: Option<HashMap<&'static str, DevLinear>>,
}

/// The kind of block loaded.
enum Form {
    /// RMSNorm (`ln1`, `ln2`), rotary positions, SwiGLU MLP.
    Llama,
    /// OPT: LayerNorms (scales `ln1`, `ln2`, these shifts), no rotary
    /// positions, fc1 → ReLU → fc2; post-LN when not `pre_ln`.
    Opt {
        pre_ln: bool,
        ln1_b: CudaSlice<f32>,
        ln2_b: CudaSlice<f32>,
    },
}

impl Form {
    /// The attention output layer.
    fn o(&self) -> &'static str {
        match self {
            Form::Llama => "self_attn.o_proj",
            Form::Opt { .. } => "self_attn.out_proj",
        }
    }
    /// The MLP's input layers.
    fn mlp_in(&self) -> &'static [&'static str] {
        match self {
            Form::Llama => &["mlp.gate_proj", "mlp.up_proj"],
            Form::Opt { .. } => &["fc1"],
        }
    }
    /// The MLP's output layer.
    fn down(&self) -> &'static str {
        match self {
            Form::Llama => "mlp.down_proj",
            Form::Opt { .. } => "fc2",
        }
    }
}

impl DevBlock {
    /// Lane `lane`'s linears.
    fn lins(&self, lane: usize) -> Result<&HashMap<&'static str, DevLinear>> {
        match (lane, &self.fp_lin) {
            (0, _) => Ok(&self.lin),
            (1, Some(fp)) => Ok(fp),
            _ => Err(Error::Shape(format!("no lane {lane}"))),
        }
    }
}

/// Layer `name` of a lane's linears.
fn layer<'a>(lins: &'a HashMap<&'static str, DevLinear>, name: &str) -> Result<&'a DevLinear> {
    lins.get(name)
        .ok_or_else(|| Error::Shape(format!("the block has no layer {name}")))
}

/// The GPU calibration device (see the module docs).
pub struct GpuCalibration {
    dev: Arc<Cuda>,
    solver: Solver,
    _module: Arc<CudaModule>,
    funcs: HashMap<String, CudaFunction>,
    /// Every calibration sequence's length and first token.
    all_lens: Vec<usize>,
    all_offs: Vec<usize>,
    /// The sequences on the device now (all of them, or one chunk):
    /// lengths, first tokens (from 0) and total tokens.
    lens: Vec<usize>,
    offs: Vec<usize>,
    tokens: usize,
    /// Tokens the device buffers hold.
    cap_tokens: usize,
    hidden: usize,
    pushed: usize,
    /// Lanes: 1, or 2 with asymmetric calibration.
    nlanes: usize,
    /// Most device memory to use, bytes (`None`: what is free).
    limit: Option<usize>,
    /// At most this many tokens on the device at once (tests).
    max_chunk_tokens: Option<usize>,
    /// Host copies of the states, per lane `[all tokens, hidden]`: the
    /// block-0 inputs until the first block decides where states live,
    /// then empty (on the device) or the states between passes.
    host_x: Vec<HostStates>,
    /// Whether host states are page-locked (`GPTQ_CUDA_PINNED=0`: no).
    pinned: bool,
    /// The stream host states are copied on (see `staging`).
    copy: Arc<cudarc::driver::CudaStream>,
    /// Sequence ranges run through the device one after another when the
    /// states do not fit there (`None`: all on the device).
    chunks: Option<Vec<std::ops::Range<usize>>>,
    /// The quantized model's states and, with asymmetric calibration, the
    /// full-precision model's (see [`Lane`]).
    lanes: Vec<Lane>,
    block: Option<DevBlock>,
    /// Segments the states have run in the current block.
    done: usize,
    /// Statistics per input point of the current group.
    hess: HashMap<usize, PointStat>,
    peak: usize,
}

/// Each sequence's first token: the running sum of `lens`.
fn offsets(lens: &[usize]) -> Vec<usize> {
    lens.iter()
        .scan(0usize, |acc, &l| {
            let o = *acc;
            *acc += l;
            Some(o)
        })
        .collect()
}

/// Elements of a row each thread of the norm kernels keeps in registers
/// (`NORM_PER` in `kernels/block.cu`).
const NORM_PER: usize = 16;

/// Threads per row of the plain norm kernels (their `__launch_bounds__`);
/// wider rows take the `_wide` twins, up to 1024 threads.
const NORM_THREADS: usize = 512;

/// The norm kernel (`blk_layer_norm` if `layer`, else `blk_rms_norm`) for
/// rows `h` wide and its launch over `rows` rows: a block of
/// `h / NORM_PER` threads per row (at least 32), each thread holding its
/// elements in registers, so a one-row decode step is a couple of memory
/// round trips. Rows needing more than [`NORM_THREADS`] threads take the
/// `_wide` kernel, which ptxas must fit in 64 registers a thread (it
/// spills; the plain one does not).
pub(crate) fn norm_kernel(
    layer: bool,
    h: usize,
    rows: usize,
) -> Result<(&'static str, LaunchConfig)> {
    if h > 1024 * NORM_PER {
        return Err(Error::Shape(format!(
            "hidden size {h} is over the norm kernels' {}",
            1024 * NORM_PER
        )));
    }
    let threads = h.div_ceil(NORM_PER).next_multiple_of(32).max(32);
    let name = match (layer, threads > NORM_THREADS) {
        (false, false) => "blk_rms_norm",
        (false, true) => "blk_rms_norm_wide",
        (true, false) => "blk_layer_norm",
        (true, true) => "blk_layer_norm_wide",
    };
    Ok((name, rows_cfg(rows, threads as u32)))
}

/// RMSNorm over `rows` rows of the f32 stream at `x` (`h` wide) with
/// weight `w` into f16 rows at `out` (device pointers), the kernel
/// [`norm_kernel`] names looked up by `func`. With `y` (f16 rows, a device
/// pointer) not 0, `y` is added into `x` first; with `lo` not 0 the
/// remainders of the f16 rounding go there.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rms_norm_rows<'a>(
    dev: &Cuda,
    func: impl FnOnce(&str) -> Result<&'a CudaFunction>,
    x: u64,
    y: u64,
    w: u64,
    eps: f32,
    h: usize,
    out: u64,
    lo: u64,
    rows: usize,
) -> Result<()> {
    let (name, cfg) = norm_kernel(false, h, rows)?;
    let f = func(name)?;
    let hi = h as i32;
    let args = &mut kargs![&x, &y, &w, &eps, &hi, &out, &lo];
    unsafe { dev.launch(f, cfg, args, true, name) }
}

/// LayerNorm over `rows` rows of the f32 stream at `x` (`h` wide) with
/// weight `w` and bias `b` into f16 rows at `out`, as [`rms_norm_rows`];
/// with `write_x` the result also replaces `x` (post-LN blocks).
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_rows<'a>(
    dev: &Cuda,
    func: impl FnOnce(&str) -> Result<&'a CudaFunction>,
    x: u64,
    w: u64,
    b: u64,
    eps: f32,
    h: usize,
    out: u64,
    write_x: bool,
    lo: u64,
    rows: usize,
) -> Result<()> {
    let (name, cfg) = norm_kernel(true, h, rows)?;
    let f = func(name)?;
    let (hi, wx) = (h as i32, write_x as i32);
    let args = &mut kargs![&x, &w, &b, &eps, &hi, &out, &wx, &lo];
    unsafe { dev.launch(f, cfg, args, false, name) }
}

/// Device pointer `p` advanced by `bytes`, or 0 (no buffer) if `p` is 0.
fn offset_or_null(p: u64, bytes: usize) -> u64 {
    if p == 0 {
        0
    } else {
        p + bytes as u64
    }
}

/// A grid-stride launch over `n` elements, 256 threads a block.
pub(crate) fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 1 << 20) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of `threads` per row.
pub(crate) fn rows_cfg(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn to_pipeline(e: Error) -> gptq_pipeline::Error {
    gptq_pipeline::Error::Device(e.to_string())
}

fn to_quant(e: Error) -> gptq_quant::Error {
    match e {
        Error::Quant(q) => q,
        e => gptq_quant::Error::Backend(format!("GPU: {e}")),
    }
}

impl GpuCalibration {
    /// The calibration device on `dev` (compiles or loads `block.cu` and
    /// the solver's kernels).
    pub fn new(dev: Arc<Cuda>) -> Result<Self> {
        let solver = Solver::new(dev.clone())?;
        let (module, funcs, _) = load_kernels(
            &dev.ctx,
            compile::BLOCK_SOURCE,
            "block.cu",
            &dev.info.arch,
            dev.info.driver_version,
            BLOCK_FUNCTIONS,
        )?;
        let copy = dev.stream.clone();
        Ok(GpuCalibration {
            dev,
            solver,
            _module: module,
            funcs,
            all_lens: Vec::new(),
            all_offs: Vec::new(),
            lens: Vec::new(),
            offs: Vec::new(),
            tokens: 0,
            cap_tokens: 0,
            hidden: 0,
            pushed: 0,
            nlanes: 1,
            limit: None,
            max_chunk_tokens: None,
            host_x: Vec::new(),
            pinned: staging::want_pinned(),
            copy,
            chunks: None,
            lanes: Vec::new(),
            block: None,
            done: 0,
            hess: HashMap::new(),
            peak: 0,
        })
    }

    /// Uses at most `bytes` of device memory in all (the CUDA context and
    /// kernels included): calibration states that do not fit stay on the
    /// host and pass through the device in chunks of sequences.
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.limit = Some(bytes);
        self
    }

    /// Keeps the states on the host and runs at most `tokens` tokens on
    /// the device at once, whatever fits (to test the chunked path).
    pub fn with_max_chunk_tokens(mut self, tokens: usize) -> Self {
        self.max_chunk_tokens = Some(tokens.max(1));
        self
    }

    fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| Error::Driver(format!("kernel {name} is not in the module")))
    }

    fn p<T>(&self, s: &CudaSlice<T>) -> u64 {
        dptr(s, &self.dev.stream)
    }

    fn note_memory(&mut self) {
        if let Ok((free, total)) = self.dev.ctx.mem_get_info() {
            self.peak = self.peak.max(total.saturating_sub(free));
        }
    }

    /// Lane `lane`'s residual `x` and scratch buffers `a` and `b`, the
    /// loaded block and the lane's linears.
    fn state(&self, lane: usize) -> Result<State<'_>> {
        let l = self
            .lanes
            .get(lane)
            .ok_or_else(|| Error::Shape(format!("no lane {lane}")))?;
        match (&l.a, &l.b, &self.block) {
            (Some(a), Some(b), Some(blk)) => Ok((&l.x, a, b, blk, blk.lins(lane)?)),
            _ => Err(Error::Shape("no block loaded".into())),
        }
    }

    /// `f16(v)` for host f32 values, converted on the device.
    fn lo(&self, lane: usize) -> (u64, u64) {
        match self.lanes.get(lane) {
            Some(l) => (
                l.a_lo.as_ref().map_or(0, |v| self.p(v)),
                l.b_lo.as_ref().map_or(0, |v| self.p(v)),
            ),
            None => (0, 0),
        }
    }

    fn upload_f16(&self, v: &[f32]) -> Result<CudaSlice<u16>> {
        let src = self.dev.upload(v)?;
        let out = self.dev.zeros::<u16>(v.len())?;
        self.to_f16(self.p(&src), v.len(), self.p(&out), 0)?;
        Ok(out)
    }

    /// `out[i] = f16(src[i])` for `n` f32 values (device pointers), the
    /// remainders into `lo` when it is not 0.
    fn to_f16(&self, src: u64, n: usize, out: u64, lo: u64) -> Result<()> {
        let f = self.func("blk_to_f16")?;
        let n64 = n as u64;
        let mut l = self.dev.stream.launch_builder(f);
        l.arg(&src).arg(&n64).arg(&out).arg(&lo);
        unsafe { l.launch(grid(n)) }.ctx("blk_to_f16")?;
        Ok(())
    }

    /// `y[rows, n] += bias` (when there is one).
    fn add_bias(&self, y: u64, bias: &Option<CudaSlice<f32>>, rows: usize, n: usize) -> Result<()> {
        let Some(bias) = bias else { return Ok(()) };
        let (pb, rows64, ni) = (self.p(bias), rows as u64, n as i32);
        let f = self.func("blk_add_bias")?;
        let mut l = self.dev.stream.launch_builder(f);
        l.arg(&y).arg(&pb).arg(&rows64).arg(&ni);
        unsafe { l.launch(grid(rows * n)) }.ctx("blk_add_bias")?;
        Ok(())
    }

    /// `y[rows, out] = β·y + x[rows, in] · Wᵀ (+ bias)`, `x` f16 at `x`.
    fn linear(&self, l: &DevLinear, x: u64, rows: usize, y: u64, beta: f32) -> Result<()> {
        gemm(
            &self.dev,
            (rows, l.rows, l.cols),
            1.0,
            Mat::f16(x, l.cols),
            Mat::f16(self.p(&l.w), l.cols).t(),
            beta,
            Mat::f32(y, l.rows),
            1,
        )?;
        self.add_bias(y, &l.bias, rows, l.rows)
    }

    fn rms_norm(&self, lane: usize, w: &CudaSlice<f32>, eps: f32) -> Result<()> {
        let (x, a, _, _, _) = self.state(lane)?;
        let h = self.hidden;
        let (px, pw, pa) = (self.p(x), self.p(w), self.p(a));
        let (pa_lo, _) = self.lo(lane);
        let func = |n: &str| self.func(n);
        rms_norm_rows(&self.dev, func, px, 0, pw, eps, h, pa, pa_lo, self.tokens)
    }

    /// Segment 1: attention of every sequence, from `a` (normed) into `b`
    /// (`[tokens, heads·d]`, the o_proj input).
    fn attention(&self, lane: usize) -> Result<()> {
        let (_, a, b, blk, lins) = self.state(lane)?;
        let (nh, nkv, d) = (blk.nh, blk.nkv, blk.d);
        let rep = nh / nkv;
        let maxl = self.lens.iter().copied().max().unwrap_or(0);
        let dv = &self.dev;
        let q = dv.zeros::<f32>(maxl * nh * d)?;
        let k = dv.zeros::<f32>(maxl * nkv * d)?;
        let v = dv.zeros::<f32>(maxl * nkv * d)?;
        let qh = dv.zeros::<u16>(maxl * nh * d)?;
        let kh = dv.zeros::<u16>(maxl * nkv * d)?;
        let vh = dv.zeros::<u16>(maxl * nkv * d)?;
        let s = dv.zeros::<f32>(nh * maxl * maxl)?;
        let pm = dv.zeros::<u16>(nh * maxl * maxl)?;
        let o = dv.zeros::<f32>(nh * maxl * d)?;
        let (pq, pk, pv) = (self.p(&q), self.p(&k), self.p(&v));
        let (pqh, pkh, pvh) = (self.p(&qh), self.p(&kh), self.p(&vh));
        let (ps, pp, po) = (self.p(&s), self.p(&pm), self.p(&o));
        let (pa, pb, pf) = (self.p(a), self.p(b), self.p(&blk.inv_freq));
        let (_, pb_lo) = self.lo(lane);
        let (lq, lk, lv) = (
            layer(lins, "self_attn.q_proj")?,
            layer(lins, "self_attn.k_proj")?,
            layer(lins, "self_attn.v_proj")?,
        );
        let scale = 1.0 / (d as f32).sqrt();
        let heads_fn = self.func("blk_qkv_heads")?;
        let soft_fn = self.func("blk_softmax_causal")?;
        let rows_fn = self.func("blk_heads_to_rows")?;
        for (&len, &off) in self.lens.iter().zip(&self.offs) {
            if len == 0 {
                continue;
            }
            let x0 = pa + (off * self.hidden * 2) as u64;
            self.linear(lq, x0, len, pq, 0.0)?;
            self.linear(lk, x0, len, pk, 0.0)?;
            self.linear(lv, x0, len, pv, 0.0)?;
            let (li, nhi, nkvi, di) = (len as i32, nh as i32, nkv as i32, d as i32);
            let mut l = dv.stream.launch_builder(heads_fn);
            l.arg(&pq)
                .arg(&pk)
                .arg(&pv)
                .arg(&pf)
                .arg(&li)
                .arg(&nhi)
                .arg(&nkvi)
                .arg(&di)
                .arg(&pqh)
                .arg(&pkh)
                .arg(&pvh);
            let cfg = LaunchConfig {
                grid_dim: (len as u32, (nh + 2 * nkv) as u32, 1),
                block_dim: ((d / 2).max(1) as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            unsafe { l.launch(cfg) }.ctx("blk_qkv_heads")?;
            // S_g[rep·len, len] = Q_g · K_gᵀ / √d per key/value head g.
            gemm(
                dv,
                (rep * len, len, d),
                scale,
                Mat::f16(pqh, d).every(rep * len * d),
                Mat::f16(pkh, d).t().every(len * d),
                0.0,
                Mat::f32(ps, len).every(rep * len * len),
                nkv,
            )?;
            let mut l = dv.stream.launch_builder(soft_fn);
            l.arg(&ps).arg(&pp).arg(&li).arg(&blk.window);
            unsafe { l.launch(rows_cfg(nh * len, 256)) }.ctx("blk_softmax_causal")?;
            // O_g[rep·len, d] = P_g · V_g.
            gemm(
                dv,
                (rep * len, d, len),
                1.0,
                Mat::f16(pp, len).every(rep * len * len),
                Mat::f16(pvh, d).every(len * d),
                0.0,
                Mat::f32(po, d).every(rep * len * d),
                nkv,
            )?;
            let out = pb + (off * nh * d * 2) as u64;
            let out_lo = offset_or_null(pb_lo, off * nh * d * 2);
            let mut l = dv.stream.launch_builder(rows_fn);
            l.arg(&po)
                .arg(&li)
                .arg(&nhi)
                .arg(&di)
                .arg(&out)
                .arg(&out_lo);
            unsafe { l.launch(grid(len * nh * d)) }.ctx("blk_heads_to_rows")?;
        }
        Ok(())
    }

    /// Segment 3, the MLP's inner activation into `b`, in row chunks:
    /// `f16(silu(a·W_gateᵀ) · a·W_upᵀ)` (Llama), `f16(relu(a·W_fc1ᵀ +
    /// b_fc1))` (OPT).
    fn mlp_inner(&self, lane: usize) -> Result<()> {
        let (_, a, b, blk, lins) = self.state(lane)?;
        let ins = blk
            .form
            .mlp_in()
            .iter()
            .map(|n| layer(lins, n))
            .collect::<Result<Vec<_>>>()?;
        let f = self.func(match blk.form {
            Form::Llama => "blk_silu_mul",
            Form::Opt { .. } => "blk_relu",
        })?;
        let inter = blk.inter;
        let chunk = (MLP_CHUNK_BYTES / (8 * inter.max(1))).clamp(1, self.tokens.max(1));
        let bufs = ins
            .iter()
            .map(|_| self.dev.zeros::<f32>(chunk * inter))
            .collect::<Result<Vec<_>>>()?;
        let ptrs: Vec<u64> = bufs.iter().map(|g| self.p(g)).collect();
        let (pa, pb) = (self.p(a), self.p(b));
        let (_, pb_lo) = self.lo(lane);
        for r0 in (0..self.tokens).step_by(chunk) {
            let rows = chunk.min(self.tokens - r0);
            let x0 = pa + (r0 * self.hidden * 2) as u64;
            for (l, &p) in ins.iter().zip(&ptrs) {
                self.linear(l, x0, rows, p, 0.0)?;
            }
            let n = (rows * inter) as u64;
            let out = pb + (r0 * inter * 2) as u64;
            let out_lo = offset_or_null(pb_lo, r0 * inter * 2);
            let mut l = self.dev.stream.launch_builder(f);
            for p in &ptrs {
                l.arg(p);
            }
            l.arg(&n).arg(&out).arg(&out_lo);
            unsafe { l.launch(grid(rows * inter)) }.ctx("the MLP activation")?;
        }
        Ok(())
    }

    /// Runs segment `s` (see [`BlockRunner::segment`]) of lane `lane` for
    /// all sequences.
    fn segment(&mut self, s: usize, lane: usize) -> Result<()> {
        {
            let (x, _, b, blk, lins) = self.state(lane)?;
            let (px, pb) = (self.p(x), self.p(b));
            match (s, &blk.form) {
                (0, Form::Llama) => self.rms_norm(lane, &blk.ln1, blk.eps)?,
                (0, Form::Opt { pre_ln, ln1_b, .. }) => {
                    self.sublayer_input(lane, *pre_ln, &blk.ln1, ln1_b, blk.eps)?
                }
                (1, _) => self.attention(lane)?,
                (2, form) => {
                    let o = layer(lins, form.o())?;
                    self.linear(o, pb, self.tokens, px, 1.0)?;
                    match form {
                        Form::Llama => self.rms_norm(lane, &blk.ln2, blk.eps)?,
                        Form::Opt {
                            pre_ln,
                            ln1_b,
                            ln2_b,
                        } => {
                            if !pre_ln {
                                self.layer_norm(lane, &blk.ln1, ln1_b, blk.eps, true)?;
                            }
                            self.sublayer_input(lane, *pre_ln, &blk.ln2, ln2_b, blk.eps)?;
                        }
                    }
                }
                (3, _) => self.mlp_inner(lane)?,
                (4, form) => {
                    let down = layer(lins, form.down())?;
                    self.linear(down, pb, self.tokens, px, 1.0)?;
                    if let Form::Opt {
                        pre_ln: false,
                        ln2_b,
                        ..
                    } = form
                    {
                        self.layer_norm(lane, &blk.ln2, ln2_b, blk.eps, true)?;
                    }
                }
                _ => return Err(Error::Shape(format!("a block has no segment {s}"))),
            }
        }
        self.note_memory();
        Ok(())
    }

    /// OPT: the input of a sublayer into `a`: the normed stream (pre-LN),
    /// or the stream itself (post-LN, normed after the residual add).
    fn sublayer_input(
        &self,
        lane: usize,
        pre_ln: bool,
        w: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        eps: f32,
    ) -> Result<()> {
        if pre_ln {
            return self.layer_norm(lane, w, b, eps, false);
        }
        let (x, a, _, _, _) = self.state(lane)?;
        let (pa_lo, _) = self.lo(lane);
        self.to_f16(self.p(x), self.tokens * self.hidden, self.p(a), pa_lo)
    }

    /// `a = f16(LayerNorm(x))`; with `write_x` also `x = LayerNorm(x)`.
    fn layer_norm(
        &self,
        lane: usize,
        w: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        eps: f32,
        write_x: bool,
    ) -> Result<()> {
        let (x, a, _, _, _) = self.state(lane)?;
        let (px, pw, pb, pa) = (self.p(x), self.p(w), self.p(b), self.p(a));
        let (pa_lo, _) = self.lo(lane);
        let func = |n: &str| self.func(n);
        let (h, rows) = (self.hidden, self.tokens);
        layer_norm_rows(
            &self.dev, func, px, pw, pb, eps, h, pa, write_x, pa_lo, rows,
        )
    }

    /// The norm kernels on their own (for tests): `f16(RMSNorm(x)·w)` of
    /// the rows of `x` (`[rows, h]`, `h = w.len()`), or with a bias `b`
    /// `f16(LayerNorm(x)·w + b)`, through the kernel choice and launch of
    /// the forward and the decoder ([`norm_kernel`]).
    pub fn norm_rows(&self, x: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32) -> Result<Vec<f16>> {
        let h = w.len();
        if h == 0 || !x.len().is_multiple_of(h) || b.is_some_and(|b| b.len() != h) {
            return Err(Error::Shape(format!(
                "norm rows of {} values with a weight of {h} and a bias of {:?}",
                x.len(),
                b.map(|b| b.len())
            )));
        }
        let rows = x.len() / h;
        let (dx, dw) = (self.dev.upload(x)?, self.dev.upload(w)?);
        let out = self.dev.zeros::<u16>(x.len())?;
        let (px, pw, po) = (self.p(&dx), self.p(&dw), self.p(&out));
        let func = |n: &str| self.func(n);
        match b {
            None => rms_norm_rows(&self.dev, func, px, 0, pw, eps, h, po, 0, rows)?,
            Some(b) => {
                let db = self.dev.upload(b)?;
                let pb = self.p(&db);
                layer_norm_rows(&self.dev, func, px, pw, pb, eps, h, po, false, 0, rows)?
            }
        }
        Ok(self
            .dev
            .download(&out)?
            .into_iter()
            .map(f16::from_bits)
            .collect())
    }

    /// The f16 input buffer of point `p` in lane `lane` and its width.
    fn point_input(&self, p: usize, lane: usize) -> Result<(u64, usize)> {
        let (_, a, b, blk, _) = self.state(lane)?;
        Ok(match p {
            0 | 2 => (self.p(a), self.hidden),
            1 => (self.p(b), blk.nh * blk.d),
            3 => (self.p(b), blk.inter),
            _ => return Err(Error::Shape(format!("a block has no input point {p}"))),
        })
    }

    /// `H = (2/n)·X̃ᵀX̃` of point `p`'s current input in lane 0, mirrored,
    /// and with a full-precision lane the cross term (see [`Self::cross`]).
    /// Adds to what earlier chunks collected at `p` in this pass.
    fn hessian(&mut self, p: usize) -> Result<()> {
        let (px, n) = self.point_input(p, 0)?;
        let (h, beta, c_before) = match self.hess.remove(&p) {
            Some(st) => (st.h, 1.0, st.c),
            None => (self.dev.zeros::<f32>(n * n)?, 0.0, None),
        };
        let alpha = (2.0 / self.all_lens.len() as f64) as f32;
        let ph = self.p(&h);
        gemm(
            &self.dev,
            (n, n, self.tokens),
            alpha,
            Mat::f16(px, n).t(),
            Mat::f16(px, n),
            beta,
            Mat::f32(ph, n),
            1,
        )?;
        let ni = n as i32;
        let f = self.func("blk_mirror_upper")?;
        let mut l = self.dev.stream.launch_builder(f);
        l.arg(&ph).arg(&ni);
        let cfg = LaunchConfig {
            grid_dim: ((n as u32).div_ceil(256), n as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { l.launch(cfg) }.ctx("blk_mirror_upper")?;
        let c = if self.lanes.len() > 1 {
            Some(self.cross(p, c_before)?)
        } else {
            None
        };
        self.hess.insert(p, PointStat { h, width: n, c });
        self.note_memory();
        Ok(())
    }

    /// The cross term `C = (2/n)·Σ (x − x̃)ᵀx̃` of point `p` (`x` lane 1's
    /// input, `x̃` lane 0's): `D = f16(x − x̃)` from both lanes' f16 values
    /// and rounding remainders (`x − x̃` from the f16 values alone carried an
    /// error of 2^-12 of each input; on SmolLM2 that left one layer's GPTQ
    /// error 2–3× the CPU's in three seeds of five, and the f16 forward
    /// upstream still adds noise of that order:
    /// `bench/results/2026-12-04-cross-term.md`), in row chunks of at most
    /// [`MLP_CHUNK_BYTES`], each adding `DᵀX̃` into `C` by one GEMM (f16
    /// products exact in f32, f32 sums).
    fn cross(&self, p: usize, before: Option<CudaSlice<f32>>) -> Result<CudaSlice<f32>> {
        let (pq, n) = self.point_input(p, 0)?;
        let (pf, _) = self.point_input(p, 1)?;
        let lo = |lane| -> Result<u64> {
            let (a, b) = self.lo(lane);
            let v = if matches!(p, 0 | 2) { a } else { b };
            if v == 0 {
                return Err(Error::Shape(format!(
                    "lane {lane} keeps no rounding remainders"
                )));
            }
            Ok(v)
        };
        let (pq_lo, pf_lo) = (lo(0)?, lo(1)?);
        let first = before.is_none();
        let c = match before {
            Some(c) => c,
            None => self.dev.zeros::<f32>(n * n)?,
        };
        let chunk = (MLP_CHUNK_BYTES / (2 * n.max(1))).clamp(1, self.tokens.max(1));
        let d = self.dev.zeros::<u16>(chunk * n)?;
        let (pc, pd) = (self.p(&c), self.p(&d));
        let alpha = (2.0 / self.all_lens.len() as f64) as f32;
        let f = self.func("blk_sub_hilo")?;
        for r0 in (0..self.tokens).step_by(chunk) {
            let rows = chunk.min(self.tokens - r0);
            let off = (r0 * n * 2) as u64;
            let (xf, xq, len) = (pf + off, pq + off, (rows * n) as u64);
            let (xf_lo, xq_lo) = (pf_lo + off, pq_lo + off);
            let mut l = self.dev.stream.launch_builder(f);
            l.arg(&xf)
                .arg(&xf_lo)
                .arg(&xq)
                .arg(&xq_lo)
                .arg(&len)
                .arg(&pd);
            unsafe { l.launch(grid(rows * n)) }.ctx("blk_sub_hilo")?;
            gemm(
                &self.dev,
                (n, n, rows),
                alpha,
                Mat::f16(pd, n).t(),
                Mat::f16(xq, n),
                if r0 == 0 && first { 0.0 } else { 1.0 },
                Mat::f32(pc, n),
                1,
            )?;
        }
        Ok(c)
    }

    fn quantize(
        &mut self,
        point: usize,
        weights: &[&Tensor],
        params: &GptqParams,
    ) -> Result<Vec<GptqResult>> {
        let stat = self
            .hess
            .get(&point)
            .ok_or_else(|| Error::Shape(format!("no Hessian collected at input point {point}")))?;
        let (h, n) = (&stat.h, stat.width);
        for w in weights {
            gptq_quant::gptq::check_weight_columns(w, n)?;
        }
        let tall = weights.iter().any(|w| w.shape()[0] > MAX_ROWS);
        if let Err(e) = Solver::supports(params).and(if tall {
            Err(Error::Unsupported(format!("more than {MAX_ROWS} rows")))
        } else {
            Ok(())
        }) {
            tracing::debug!("solving on the CPU: {e}");
            let hh = Hessian::from_matrix(self.dev.download(h)?, n, self.all_lens.len())?;
            let c = match &stat.c {
                Some(c) => Some(CrossTerm::from_matrix(
                    self.dev.download(c)?,
                    n,
                    self.all_lens.len(),
                )?),
                None => None,
            };
            let cpu = gptq_quant::CpuSolver;
            return Ok(gptq_quant::quantize_towards(
                &cpu,
                weights,
                &hh,
                c.as_ref(),
                params,
            )?);
        }
        let prep = self.solver.prepare(h, n, params)?;
        let out = weights
            .iter()
            .map(|w| {
                let rows = w.shape()[0];
                let mut wd = self.dev.upload(w.data())?;
                if let Some(c) = &stat.c {
                    self.solver.asym_target(&mut wd, rows, c, &prep)?;
                }
                let solved = self.solver.solve(&wd, rows, &prep, params)?;
                let (error_gptq, error_rtn) = self.solver.errors(&wd, h, &solved, params)?;
                Ok(GptqResult {
                    q: self.solver.to_qlinear(&solved, params)?,
                    damp_used: prep.damp_used,
                    error_gptq,
                    error_rtn,
                    dead_columns: prep.order.ndead,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.note_memory();
        Ok(out)
    }

    fn load(&mut self, block: &dyn BlockRunner, keep_input: bool) -> Result<()> {
        let h = self.hidden;
        // The block's parts in one shape: norms (scale; OPT's shift in the
        // form), rotary frequencies (zeros for OPT: angle 0 leaves q and k
        // as they are), heads, linears.
        let (ln1, ln2, inv_freq, eps, nh, nkv, d, window, kind, linears) =
            if let Some(v) = block.llama_view() {
                let window = v.window.map_or(0, |w| w.min(i32::MAX as usize) as i32);
                (
                    v.input_norm.to_vec(),
                    v.post_norm.to_vec(),
                    v.inv_freq.to_vec(),
                    v.eps,
                    v.n_heads,
                    v.n_kv,
                    v.head_dim,
                    window,
                    None,
                    v.linears,
                )
            } else if let Some(v) = block.opt_view() {
                if !v.relu {
                    return Err(Error::Unsupported(
                        "the GPU calibration forward runs OPT blocks with ReLU, not GELU".into(),
                    ));
                }
                if v.attn_norm.1.len() != h || v.mlp_norm.1.len() != h {
                    return Err(Error::Shape(format!("LayerNorm shifts are not [{h}]")));
                }
                let shifts = (v.attn_norm.1.to_vec(), v.mlp_norm.1.to_vec(), v.pre_ln);
                (
                    v.attn_norm.0.to_vec(),
                    v.mlp_norm.0.to_vec(),
                    vec![0.0; v.head_dim / 2],
                    v.eps,
                    v.n_heads,
                    v.n_heads,
                    v.head_dim,
                    0,
                    Some(shifts),
                    v.linears,
                )
            } else {
                return Err(Error::Unsupported(format!(
                    "the GPU calibration forward runs Llama-family and OPT blocks, not {}",
                    block.arch().name
                )));
            };
        if ln1.len() != h || ln2.len() != h {
            return Err(Error::Shape(format!("norm weights are not [{h}]")));
        }
        if nkv == 0 || !nh.is_multiple_of(nkv) || d % 2 != 0 {
            return Err(Error::Shape(format!(
                "{nh} query heads over {nkv} key/value heads of dimension {d}"
            )));
        }
        // Free the previous block's weights first.
        self.block = None;
        self.hess.clear();
        let form = match kind {
            None => Form::Llama,
            Some((b1, b2, pre_ln)) => Form::Opt {
                pre_ln,
                ln1_b: self.dev.upload(&b1)?,
                ln2_b: self.dev.upload(&b2)?,
            },
        };
        let mut lin = HashMap::new();
        for (name, l) in &linears {
            let w = l.dense_weight();
            let (rows, cols) = (w.shape()[0], w.shape()[1]);
            lin.insert(
                *name,
                DevLinear {
                    w: self.upload_f16(w.data())?,
                    bias: l.bias.as_ref().map(|b| self.dev.upload(b)).transpose()?,
                    rows,
                    cols,
                },
            );
        }
        let inter = lin.get(form.mlp_in()[0]).map_or(0, |l: &DevLinear| l.rows);
        let mut widths = vec![
            ("self_attn.q_proj", nh * d, h),
            ("self_attn.k_proj", nkv * d, h),
            ("self_attn.v_proj", nkv * d, h),
            (form.o(), h, nh * d),
            (form.down(), h, inter),
        ];
        widths.extend(form.mlp_in().iter().map(|&n| (n, inter, h)));
        for (name, rows, cols) in widths {
            match lin.get(name) {
                Some(l) if (l.rows, l.cols) == (rows, cols) => {}
                Some(l) => {
                    return Err(Error::Shape(format!(
                        "{name} is {}x{}, expected {rows}x{cols}",
                        l.rows, l.cols
                    )))
                }
                None => return Err(Error::Shape(format!("the block has no {name}"))),
            }
        }
        let bw = (nh * d).max(inter);
        if self.lanes.is_empty() {
            self.place_states(&lin, nh, nkv, d, inter)?;
        }
        let tokens = self.cap_tokens;
        // Scratch `a` and `b`, and with two lanes (asymmetric calibration)
        // their rounding remainders for the cross term.
        let two = self.lanes.len() > 1;
        for lane in &mut self.lanes {
            grow(&mut lane.b, &self.dev, tokens * bw)?;
            grow(&mut lane.a, &self.dev, tokens * h)?;
            if two {
                grow(&mut lane.b_lo, &self.dev, tokens * bw)?;
                grow(&mut lane.a_lo, &self.dev, tokens * h)?;
            }
        }
        // The full-precision lane's own copy of the weights.
        let fp_lin = if self.lanes.len() > 1 {
            let mut fp = HashMap::new();
            for (name, l) in &lin {
                let copy = DevLinear {
                    w: self.dev.stream.clone_dtod(&l.w).ctx("copying a weight")?,
                    bias: l
                        .bias
                        .as_ref()
                        .map(|b| self.dev.stream.clone_dtod(b).ctx("copying a bias"))
                        .transpose()?,
                    rows: l.rows,
                    cols: l.cols,
                };
                fp.insert(*name, copy);
            }
            Some(fp)
        } else {
            None
        };
        self.block = Some(DevBlock {
            ln1: self.dev.upload(&ln1)?,
            ln2: self.dev.upload(&ln2)?,
            inv_freq: self.dev.upload(&inv_freq)?,
            eps,
            nh,
            nkv,
            d,
            window,
            inter,
            form,
            lin,
            fp_lin,
        });
        self.done = 0;
        if keep_input && self.chunks.is_none() {
            for i in 0..self.lanes.len() {
                let mut keep = match self.lanes[i].x_in.take() {
                    Some(k) => k,
                    None => self.dev.zeros::<f32>(self.lanes[i].x.len())?,
                };
                self.dev
                    .stream
                    .memcpy_dtod(&self.lanes[i].x, &mut keep)
                    .ctx("keeping the block input")?;
                self.lanes[i].x_in = Some(keep);
            }
        }
        self.note_memory();
        Ok(())
    }

    /// Decides, at the first block, whether the calibration states live on
    /// the device (when they fit the memory limit next to the block's
    /// weights, statistics and scratch) or on the host, passing through the
    /// device in chunks of whole sequences; allocates the residual streams.
    fn place_states(
        &mut self,
        lin: &HashMap<&'static str, DevLinear>,
        nh: usize,
        nkv: usize,
        d: usize,
        inter: usize,
    ) -> Result<()> {
        let (h, nl) = (self.hidden, self.nlanes);
        let bw = (nh * d).max(inter);
        // Device bytes per calibration token and lane, the same both ways:
        // the residual (f32), `a` and `b` (f16; with two lanes also their
        // rounding remainders), and a second f32 buffer — the kept block
        // input when resident, the buffer the next chunk is copied into when
        // the states are on the host.
        let lo = if nl > 1 { 2 * h + 2 * bw } else { 0 };
        let per_tok = nl * (2 * 4 * h + 2 * h + 2 * bw + lo);
        // Fixed: the block's f16 weights per lane and H (and C) of every
        // input point; then the largest of what lives only for a while —
        // the solver's f64 factor, U and four weight-sized f32 buffers of
        // the widest layer, a sequence's attention scratch, an MLP or
        // cross-term chunk.
        let weights = lin.values().map(|l| l.rows * l.cols * 2).sum::<usize>() * nl;
        let stats = [h, nh * d, inter].iter().map(|n| n * n * 4).sum::<usize>() * nl;
        let (n_max, rows) = lin
            .values()
            .map(|l| (l.cols, l.rows))
            .max()
            .unwrap_or((0, 0));
        let solver = n_max * n_max * 12 + 4 * rows * n_max * 4;
        let maxl = self.all_lens.iter().copied().max().unwrap_or(0);
        let attn = maxl * (nh + 2 * nkv) * d * 6 + nh * maxl * maxl * 6 + nh * maxl * d * 4;
        let fixed = weights + stats + solver.max(attn).max(MLP_CHUNK_BYTES);
        let (free, total) = self
            .dev
            .ctx
            .mem_get_info()
            .ctx("reading the free device memory")?;
        let avail = match self.limit {
            Some(l) => l.saturating_sub(total - free).min(free),
            None => free,
        };
        // A margin for the allocator and cuBLAS workspaces.
        let avail = avail.saturating_sub(avail / 20 + (256 << 20));
        let all: usize = self.all_lens.iter().sum();
        let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
        let x0 = std::mem::take(&mut self.host_x).into_iter().next();
        let x0 = x0.ok_or_else(|| Error::Shape("no inputs".into()))?;
        self.lanes.clear();
        if self.max_chunk_tokens.is_none() && fixed + per_tok * all <= avail {
            self.chunks = None;
            self.cap_tokens = all;
            self.lens = self.all_lens.clone();
            self.offs = self.all_offs.clone();
            self.tokens = all;
            for _ in 0..nl {
                let x = self.dev.upload(&x0[..])?;
                self.lanes.push(Lane {
                    x,
                    x_in: None,
                    x_alt: None,
                    a: None,
                    b: None,
                    a_lo: None,
                    b_lo: None,
                });
            }
            return Ok(());
        }
        let fit = avail.saturating_sub(fixed) / per_tok.max(1);
        let cap = self.max_chunk_tokens.map_or(fit, |m| m.min(fit));
        if cap < maxl.max(1) {
            return Err(Error::Unsupported(format!(
                "the GPU calibration needs about {:.1} GiB of device memory for one sequence of \
                 {maxl} tokens, {:.1} GiB are available (raise --max-gpu-memory, or \
                 --host-forward)",
                gib(fixed + per_tok * maxl),
                gib(avail)
            )));
        }
        let mut chunks = Vec::new();
        let (mut start, mut t) = (0usize, 0usize);
        for (i, &l) in self.all_lens.iter().enumerate() {
            if t + l > cap && i > start {
                chunks.push(start..i);
                start = i;
                t = 0;
            }
            t += l;
        }
        chunks.push(start..self.all_lens.len());
        self.cap_tokens = chunks
            .iter()
            .map(|r| self.all_lens[r.clone()].iter().sum::<usize>())
            .max()
            .unwrap_or(0);
        tracing::info!(
            "calibration states on the host ({:.1} GiB would not fit on the device next to \
             {:.1} GiB of weights and work space): {} chunks of at most {} tokens",
            gib(per_tok * all),
            gib(fixed),
            chunks.len(),
            self.cap_tokens
        );
        let two = chunks.len() > 1;
        for _ in 0..nl {
            let x = self.dev.zeros::<f32>(self.cap_tokens * h)?;
            let x_alt = two
                .then(|| self.dev.zeros::<f32>(self.cap_tokens * h))
                .transpose()?;
            self.lanes.push(Lane {
                x,
                x_in: None,
                x_alt,
                a: None,
                b: None,
                a_lo: None,
                b_lo: None,
            });
        }
        self.host_x = (0..nl)
            .map(|_| HostStates::from_slice(&self.dev, &x0, self.pinned))
            .collect();
        let pinned = self.host_x.iter().all(HostStates::is_pinned);
        self.copy = staging::copy_stream(&self.dev, pinned)?;
        tracing::debug!(
            "host states {}",
            if pinned {
                "page-locked, copies overlapped on a second stream"
            } else {
                "in ordinary memory, copies on the compute stream"
            }
        );
        self.chunks = Some(chunks);
        Ok(())
    }

    /// The number of chunks, if the states are on the host.
    fn chunk_count(&self) -> Option<usize> {
        self.chunks.as_ref().map(Vec::len)
    }

    fn replace_weight(&mut self, name: &str, q: &QLinear) -> Result<()> {
        q.validate().map_err(|e| Error::Shape(e.to_string()))?;
        let (rows, cols) = (q.out_features, q.in_features);
        let codes = self.dev.upload(&q.codes)?;
        let scales = self.dev.upload(&q.scales)?;
        let zeros = self.dev.upload(&q.zeros)?;
        let gidx = self.dev.upload(&q.g_idx)?;
        let (pc, ps, pz, pg) = (
            self.p(&codes),
            self.p(&scales),
            self.p(&zeros),
            self.p(&gidx),
        );
        let f = self.func("blk_dequant")?.clone();
        let blk = self
            .block
            .as_mut()
            .ok_or_else(|| Error::Shape("no block loaded".into()))?;
        let l = blk
            .lin
            .get_mut(name)
            .ok_or_else(|| Error::Shape(format!("the block has no layer {name}")))?;
        if (l.rows, l.cols) != (rows, cols) {
            return Err(Error::Shape(format!(
                "{name}: quantized {rows}x{cols}, the block's is {}x{}",
                l.rows, l.cols
            )));
        }
        let pw = dptr(&l.w, &self.dev.stream);
        let (ri, ci) = (rows as i32, cols as i32);
        let mut b = self.dev.stream.launch_builder(&f);
        b.arg(&pc)
            .arg(&ps)
            .arg(&pz)
            .arg(&pg)
            .arg(&ri)
            .arg(&ci)
            .arg(&pw);
        unsafe { b.launch(grid(rows * cols)) }.ctx("blk_dequant")?;
        // The uploads are dropped (freed) after the kernel is queued; the
        // stream orders the free after it.
        Ok(())
    }

    fn run_to(&mut self, end: usize, collect: &[usize]) -> Result<()> {
        while self.done < end {
            let s = self.done;
            for lane in 0..self.lanes.len() {
                self.segment(s, lane)?;
            }
            self.done += 1;
            if collect.contains(&s) {
                self.hessian(s)?;
            }
        }
        Ok(())
    }
}

/// Inspection, for tests.
impl GpuCalibration {
    /// The residual stream of all sequences `[tokens, hidden]`.
    pub fn residual(&self) -> Result<Vec<f32>> {
        if self.chunks.is_some() {
            self.copy.synchronize().ctx("synchronizing the copies")?;
            return Ok(self.host_x[0].to_vec());
        }
        let lane = self
            .lanes
            .first()
            .ok_or_else(|| Error::Shape("no block loaded yet".into()))?;
        self.dev.download(&lane.x)
    }

    /// The Hessian collected at input point `p` in the current group.
    pub fn hessian_at(&self, p: usize) -> Result<Option<Vec<f32>>> {
        self.hess
            .get(&p)
            .map(|st| self.dev.download(&st.h))
            .transpose()
    }

    /// The cross term collected at input point `p` (asymmetric calibration).
    pub fn cross_at(&self, p: usize) -> Result<Option<Vec<f32>>> {
        self.hess
            .get(&p)
            .and_then(|st| st.c.as_ref())
            .map(|c| self.dev.download(c))
            .transpose()
    }
}

impl gptq_pipeline::BlockDevice for GpuCalibration {
    fn describe(&self) -> String {
        format!(
            "cuda ({}), calibration forward on the GPU{}{}",
            self.dev.info.name,
            if self.nlanes > 1 {
                " (quantized and full-precision paths)"
            } else {
                ""
            },
            match self.chunk_count() {
                Some(n) => format!(", states on the host in {n} chunks"),
                None => String::new(),
            }
        )
    }

    fn begin(&mut self, lengths: &[usize], hidden: usize, asym: bool) -> gptq_pipeline::Result<()> {
        self.all_lens = lengths.to_vec();
        self.all_offs = offsets(lengths);
        self.tokens = 0;
        self.hidden = hidden;
        self.pushed = 0;
        self.nlanes = if asym { 2 } else { 1 };
        self.lanes.clear();
        self.chunks = None;
        self.block = None;
        self.hess.clear();
        // The inputs wait on the host until the first block decides where
        // the states live (see `place_states`).
        self.host_x = vec![HostStates::Pageable(vec![
            0.0;
            lengths.iter().sum::<usize>()
                * hidden
        ])];
        Ok(())
    }

    fn push_input(&mut self, v: &[f32]) -> gptq_pipeline::Result<()> {
        let n = self.pushed;
        let want = self.all_lens.get(n).map(|l| l * self.hidden);
        if want != Some(v.len()) || !self.lanes.is_empty() {
            return Err(gptq_pipeline::Error::Device(format!(
                "input {n} has {} values, expected {want:?} before the first block",
                v.len()
            )));
        }
        let off = self.all_offs[n] * self.hidden;
        self.host_x[0][off..off + v.len()].copy_from_slice(v);
        self.pushed += 1;
        Ok(())
    }

    fn load_block(
        &mut self,
        block: &dyn BlockRunner,
        keep_input: bool,
    ) -> gptq_pipeline::Result<()> {
        if self.pushed != self.all_lens.len() {
            return Err(gptq_pipeline::Error::Device(format!(
                "{} of {} inputs given",
                self.pushed,
                self.all_lens.len()
            )));
        }
        self.load(block, keep_input).map_err(to_pipeline)
    }

    fn collect(&mut self, points: &[usize]) -> gptq_pipeline::Result<()> {
        let end = points.iter().copied().max().map_or(0, |p| p + 1);
        if self.chunk_count().is_some() {
            // Every pass starts from the block input: the same states as
            // going on would give (the earlier segments' weights are final
            // or rewound to) — see `quantize_on_device`.
            self.hess.clear();
            return self
                .over_chunks(false, |s| s.run_to(end, points))
                .map_err(to_pipeline);
        }
        if points.iter().any(|&p| p < self.done) {
            return Err(gptq_pipeline::Error::Device(format!(
                "input points {points:?} are behind the states (after segment {})",
                self.done
            )));
        }
        self.hess.clear();
        self.run_to(end, points).map_err(to_pipeline)
    }

    fn solve(
        &mut self,
        point: usize,
        weights: &[&Tensor],
        params: &GptqParams,
    ) -> gptq_quant::Result<Vec<GptqResult>> {
        self.quantize(point, weights, params).map_err(to_quant)
    }

    fn set_weight(&mut self, name: &str, q: &QLinear) -> gptq_pipeline::Result<()> {
        self.replace_weight(name, q).map_err(to_pipeline)
    }

    fn rewind(&mut self) -> gptq_pipeline::Result<()> {
        if self.chunks.is_some() {
            self.done = 0;
            return Ok(());
        }
        for lane in &mut self.lanes {
            let keep = lane.x_in.as_ref().ok_or_else(|| {
                gptq_pipeline::Error::Device("rewind without a kept block input".into())
            })?;
            self.dev
                .stream
                .memcpy_dtod(keep, &mut lane.x)
                .map_err(|e| gptq_pipeline::Error::Device(format!("rewinding: {e}")))?;
        }
        self.done = 0;
        Ok(())
    }

    fn finish_block(&mut self) -> gptq_pipeline::Result<()> {
        self.hess.clear();
        if self.chunk_count().is_some() {
            self.over_chunks(true, |s| s.run_to(5, &[]))
                .map_err(to_pipeline)?;
            return self.dev.synchronize().map_err(to_pipeline);
        }
        self.run_to(5, &[]).map_err(to_pipeline)?;
        self.done = 0;
        self.dev.synchronize().map_err(to_pipeline)
    }

    fn peak_memory(&self) -> Option<usize> {
        Some(self.peak)
    }

    fn sync(&mut self) -> gptq_pipeline::Result<()> {
        self.dev.synchronize().map_err(to_pipeline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_kernel_takes_the_wide_twin_only_past_512_threads() {
        let pick = |layer, h| {
            let (name, cfg) = norm_kernel(layer, h, 3).unwrap();
            (name, cfg.block_dim.0, cfg.grid_dim.0)
        };
        assert_eq!(pick(false, 64), ("blk_rms_norm", 32, 3));
        assert_eq!(pick(false, 4096), ("blk_rms_norm", 256, 3));
        assert_eq!(pick(true, 8192), ("blk_layer_norm", 512, 3));
        // 8193 values need 513 threads, rounded up to a warp.
        assert_eq!(pick(false, 8193), ("blk_rms_norm_wide", 544, 3));
        assert_eq!(pick(true, 16384), ("blk_layer_norm_wide", 1024, 3));
        assert!(norm_kernel(false, 16385, 1).is_err());
        for layer in [false, true] {
            for h in [64, 8193] {
                assert!(BLOCK_FUNCTIONS.contains(&pick(layer, h).0));
            }
        }
    }
}
