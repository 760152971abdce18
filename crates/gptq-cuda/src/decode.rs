//! Generation on the GPU: a whole Llama-family model resident in device
//! memory with a KV cache, run one step (a prompt, or one new token) at a
//! time.
//!
//! * GPTQ layers keep their packed form: 4-bit ones run the fused int4
//!   kernels ([`Cuda::matmul`], repacked once at load, act-order ones
//!   reordered), other widths dequantize-then-GEMM; dense (fp16) layers
//!   and the output layer are f16 cuBLAS GEMMs. q/k/v and gate/up are
//!   stacked into one layer each at load when they share groups and
//!   act-order ([`QLinear::stack_rows`]), so a step reads the block's
//!   input twice, not five times.
//! * Everything between the GEMMs is a kernel of `kernels/block.cu`: the
//!   embedding gather, RMSNorm (`blk_rms_norm`, fused with the residual
//!   add before it, a row's elements held in registers), rotary positions
//!   with the cache write (`dec_rope_kv`), attention over the cache
//!   (`dec_attention`, one block per query row and head, key and value
//!   rows read 16 bytes at a time) and SwiGLU — in the fused kernel's
//!   epilogue when gate/up is one 4-bit layer (rows reordered at load by
//!   [`swiglu_row_order`]; `GPTQ_CUDA_FUSE=0` keeps `dec_silu_mul`). The
//!   residual stream is f32, GEMM operands f16, the KV cache f16
//!   `[layer][kv head][position][d]`.
//! * The position of a step's first token lives in device memory, so the
//!   launch sequence of a one-token step is the same at every position: it
//!   is captured once as a CUDA graph and replayed per token (one launch
//!   from the host instead of 9 per block), unless `GPTQ_CUDA_GRAPH=0`.
//! * With `GPTQ_CUDA_PDL=1` (compute capability 9.0+), kernels after the
//!   first start under programmatic dependent launch: each may begin while
//!   the previous one drains, the int4 kernels prefetching their weights
//!   before they wait for its output (not faster on the H200 so far, hence
//!   off by default).
//!
//! Results match the CPU model within f16 rounding of the GEMM operands
//! and the cache (tested in `tests/decode_gpu.rs`).

use crate::device::{
    dptr, kargs, load_kernels, swiglu_row_order, Ctx, Cuda, GpuLinear, HostLinear, Workspace,
};
use crate::forward::grid;
use crate::layout::w4_ineligible;
use crate::{compile, Error, Result};
use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, LaunchConfig};
use gptq_core::QLinear;
use gptq_models::RawLinear;
use half::f16;
use rayon::prelude::*;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

/// The kernels of `block.cu` a decoder launches.
const FUNCTIONS: &[&str] = &[
    "blk_rms_norm",
    "blk_rms_norm_wide",
    "dec_embed",
    "dec_rope_kv",
    "dec_attention",
    "dec_silu_mul",
];

/// Threads per attention block.
const ATT_THREADS: u32 = 256;

/// Rows a prompt is run in at once (longer prompts take several steps).
const MAX_STEP_ROWS: usize = 512;

/// Set to `0` to launch every kernel of a one-token step from the host
/// instead of replaying a captured CUDA graph.
pub const GRAPH_ENV: &str = "GPTQ_CUDA_GRAPH";

/// Set to `0` to keep q/k/v and gate/up as separate layers (to measure or
/// test the unstacked path).
pub const STACK_ENV: &str = "GPTQ_CUDA_STACK";

/// Set to `0` to run SwiGLU as a kernel of its own instead of in the
/// epilogue of a stacked 4-bit gate/up layer.
pub const FUSE_ENV: &str = "GPTQ_CUDA_FUSE";

/// A linear layer on the device.
enum DecLinear {
    /// A GPTQ layer (fused int4 kernel, or dequantize-then-GEMM).
    Quant(Box<GpuLinear>),
    /// A dense layer, f16 `[n, k]`, and its bias.
    Dense {
        w: CudaSlice<f16>,
        bias: Option<CudaSlice<f16>>,
        n: usize,
        k: usize,
    },
}

/// Layers reading the same input: one stacked layer, or the parts.
struct Stack {
    layers: Vec<DecLinear>,
    /// Output width of each part (q, k, v or gate, up).
    widths: Vec<usize>,
    /// gate/up stacked in [`swiglu_row_order`]: SwiGLU runs in the fused
    /// kernel's epilogue ([`Cuda::matmul_swiglu`]).
    swiglu: bool,
}

impl Stack {
    /// Runs the stack on `x` into `out` (one buffer per layer) and returns
    /// where each part's rows are: `(pointer, row stride)`.
    fn run(
        &self,
        dev: &Cuda,
        x: &CudaSlice<f16>,
        m: usize,
        out: &mut [CudaSlice<f16>],
        ws: &mut Workspace,
    ) -> Result<Vec<(u64, i32)>> {
        let st = &dev.stream;
        for (l, o) in self.layers.iter().zip(out.iter_mut()) {
            run_linear(dev, l, x, m, o, ws)?;
        }
        if self.layers.len() == 1 {
            let total: usize = self.widths.iter().sum();
            let base = dptr(&out[0], st);
            let mut off = 0;
            Ok(self
                .widths
                .iter()
                .map(|&w| {
                    let p = base + 2 * off as u64;
                    off += w;
                    (p, total as i32)
                })
                .collect())
        } else {
            Ok(out
                .iter()
                .zip(&self.widths)
                .map(|(o, &w)| (dptr(o, st), w as i32))
                .collect())
        }
    }
}

struct DecBlock {
    ln1: CudaSlice<f32>,
    ln2: CudaSlice<f32>,
    inv_freq: CudaSlice<f32>,
    qkv: Stack,
    o: DecLinear,
    gate_up: Stack,
    down: DecLinear,
    /// Key and value cache `[nkv][cap][d]` each.
    kc: CudaSlice<f16>,
    vc: CudaSlice<f16>,
}

/// Scratch for a step of at most `rows` tokens.
struct Scratch {
    rows: usize,
    ids: CudaSlice<i32>,
    x: CudaSlice<f32>,
    /// Norm outputs `[rows, hidden]`.
    a: CudaSlice<f16>,
    /// q/k/v outputs, one buffer per layer of the stack (each with room
    /// for `[rows, nh·d + 2·nkv·d]`).
    qkv: Vec<CudaSlice<f16>>,
    /// Attention output / MLP inner activation `[rows, max(nh·d, inter)]`.
    b: CudaSlice<f16>,
    /// Output projections `[rows, hidden]`.
    y: CudaSlice<f16>,
    /// gate/up outputs, like `qkv` (room for `[rows, 2·inter]` each).
    gu: Vec<CudaSlice<f16>>,
}

/// Shapes of the model.
#[derive(Debug, Clone, Copy)]
struct Dims {
    h: usize,
    nh: usize,
    nkv: usize,
    d: usize,
    inter: usize,
    vocab: usize,
    window: i32,
    eps: f32,
}

/// A Llama-family model on one GPU with a KV cache for one sequence.
pub struct GpuDecoder {
    dev: Arc<Cuda>,
    _module: Arc<CudaModule>,
    funcs: HashMap<String, CudaFunction>,
    dims: Dims,
    blocks: Vec<DecBlock>,
    norm: CudaSlice<f32>,
    /// Embedding `[vocab, hidden]` f16.
    embed: CudaSlice<f16>,
    /// Output layer `[vocab, hidden]` f16; `None` when tied to `embed`.
    head: Option<CudaSlice<f16>>,
    /// Positions the cache holds.
    cap: usize,
    /// Positions in use.
    len: usize,
    max_positions: usize,
    pos: CudaSlice<i32>,
    /// The last row's norm output `[hidden]` and logits `[vocab]`.
    hn: CudaSlice<f16>,
    logits: CudaSlice<f32>,
    big: Scratch,
    one: Scratch,
    /// Workspaces of many-row and one-token steps, apart so the buffers a
    /// captured graph uses are never reallocated by a later prompt.
    ws_big: Workspace,
    ws_one: Workspace,
    att_shared: u32,
    use_graph: bool,
    graph: Option<cudarc::driver::CudaGraph>,
    /// Bytes of weights (embedding and head included) in device memory.
    weights: usize,
    /// Bytes of the KV cache.
    cache: usize,
    /// Bytes of the linears and the output layer (what a step streams).
    streamed: usize,
}

fn dims_err(what: String) -> Error {
    Error::Shape(what)
}

impl GpuDecoder {
    /// Loads `model` (every block, the embedding and the head) onto `dev`
    /// with a cache of `capacity` positions (at most the model's limit,
    /// `max_positions`). `progress(done, total)` is called after each block.
    pub fn new(
        dev: Arc<Cuda>,
        model: &dyn gptq_models::LayerwiseModel,
        max_positions: usize,
        capacity: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        let head_view = model
            .llama_head()
            .map_err(|e| Error::Unsupported(e.to_string()))?
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "GPU generation runs Llama-family models, not {}",
                    model.arch().name
                ))
            })?;
        let cap = capacity.min(max_positions).max(1);
        let (module, funcs, _) = load_kernels(
            &dev.ctx,
            compile::BLOCK_SOURCE,
            "block.cu",
            &dev.info.arch,
            dev.info.driver_version,
            FUNCTIONS,
        )?;
        let h = model.hidden_size();
        let nb = model.num_blocks();
        let mut blocks = Vec::with_capacity(nb);
        let mut dims: Option<Dims> = None;
        let (mut resident, mut cache_bytes) = (0usize, 0usize);
        for i in 0..nb {
            let view = model
                .llama_block_raw(i)
                .map_err(|e| Error::Shape(format!("block {i}: {e}")))?
                .ok_or_else(|| {
                    Error::Unsupported(format!(
                        "GPU generation runs Llama-family models, not {}",
                        model.arch().name
                    ))
                })?;
            let (nh, nkv, d) = (view.n_heads, view.n_kv, view.head_dim);
            // Attention reads rows 8 values at a time, by up to 256 threads.
            if nkv == 0
                || !nh.is_multiple_of(nkv)
                || d % 8 != 0
                || d == 0
                || d > 8 * ATT_THREADS as usize
            {
                return Err(dims_err(format!(
                    "{nh} query heads over {nkv} key/value heads of dimension {d} (GPU generation \
                     needs a head dimension that is a multiple of 8, at most 2048)"
                )));
            }
            if view.input_norm.len() != h || view.post_norm.len() != h {
                return Err(dims_err(format!("block {i}: norm weights are not [{h}]")));
            }
            let mut lins: HashMap<&str, RawLinear> = view.linears.into_iter().collect();
            let mut take = |name: &str| {
                lins.remove(name)
                    .ok_or_else(|| dims_err(format!("block {i} has no {name}")))
            };
            let (q, k, v, o) = (
                take("self_attn.q_proj")?,
                take("self_attn.k_proj")?,
                take("self_attn.v_proj")?,
                take("self_attn.o_proj")?,
            );
            let (gate, up, down) = (
                take("mlp.gate_proj")?,
                take("mlp.up_proj")?,
                take("mlp.down_proj")?,
            );
            let inter = gate.dims().0;
            let here = Dims {
                h,
                nh,
                nkv,
                d,
                inter,
                vocab: 0,
                window: view.window.map_or(0, |w| w.min(i32::MAX as usize) as i32),
                eps: view.eps,
            };
            let expect = [
                (&q, nh * d, h, "q_proj"),
                (&k, nkv * d, h, "k_proj"),
                (&v, nkv * d, h, "v_proj"),
                (&o, h, nh * d, "o_proj"),
                (&gate, inter, h, "gate_proj"),
                (&up, inter, h, "up_proj"),
                (&down, h, inter, "down_proj"),
            ];
            for (l, n, k, name) in expect {
                if l.dims() != (n, k) {
                    return Err(dims_err(format!(
                        "block {i} {name} is {:?}, expected {n}x{k}",
                        l.dims()
                    )));
                }
            }
            if let Some(prev) = dims {
                if (prev.nh, prev.nkv, prev.d, prev.inter, prev.window)
                    != (nh, nkv, d, inter, here.window)
                {
                    return Err(dims_err(format!(
                        "block {i} differs in shape from block 0 (GPU generation needs uniform blocks)"
                    )));
                }
            }
            dims = Some(here);
            // Stacked where possible, repacked in parallel, then uploaded.
            let (qkv, qkv_widths) = stack(vec![q, k, v]);
            let (mut gate_up, gu_widths) = stack(vec![gate, up]);
            // A stacked 4-bit gate/up layer is reordered for the SwiGLU
            // epilogue (any other path reads the order through
            // dec_silu_mul's chunk).
            let mut swiglu = false;
            if let ([RawLinear::Gptq(q)], Some(order)) = (&mut gate_up[..], swiglu_row_order(inter))
            {
                if w4_ineligible(q).is_none() && std::env::var(FUSE_ENV).map_or(true, |v| v != "0")
                {
                    if let Some(p) = q.permute_rows(&order) {
                        *q = p;
                        swiglu = true;
                    }
                }
            }
            let (nqkv, ngu) = (qkv.len(), gate_up.len());
            let all: Vec<RawLinear> = qkv
                .into_iter()
                .chain([o])
                .chain(gate_up)
                .chain([down])
                .collect();
            let prepared = all
                .into_par_iter()
                .map(prepare)
                .collect::<Result<Vec<_>>>()?;
            let mut uploaded = prepared
                .into_iter()
                .map(|p| upload_linear(&dev, p, &mut resident))
                .collect::<Result<Vec<_>>>()?
                .into_iter();
            let mut next = |n: usize| -> Vec<DecLinear> { uploaded.by_ref().take(n).collect() };
            let qkv = Stack {
                layers: next(nqkv),
                widths: qkv_widths,
                swiglu: false,
            };
            let o = next(1).pop();
            let gate_up = Stack {
                layers: next(ngu),
                widths: gu_widths,
                swiglu,
            };
            let (Some(o), Some(down)) = (o, next(1).pop()) else {
                return Err(dims_err(format!("block {i}: a layer failed to load")));
            };
            let cache = nkv * cap * d;
            cache_bytes += 4 * cache;
            blocks.push(DecBlock {
                ln1: dev.upload(&view.input_norm)?,
                ln2: dev.upload(&view.post_norm)?,
                inv_freq: dev.upload(&view.inv_freq)?,
                qkv,
                o,
                gate_up,
                down,
                kc: dev.zeros::<f16>(cache)?,
                vc: dev.zeros::<f16>(cache)?,
            });
            progress(i + 1, nb);
        }
        let mut dims = dims.ok_or_else(|| Error::Unsupported("the model has no blocks".into()))?;
        let shape = head_view.lm_head.shape();
        if shape.len() != 2 || shape[1] != h || head_view.norm.len() != h {
            return Err(dims_err(format!(
                "the head is {shape:?} with a norm of {}, the stream {h} wide",
                head_view.norm.len()
            )));
        }
        let vocab = shape[0];
        dims.vocab = vocab;
        dims.eps = head_view.eps;
        // The embedding as f16, a few thousand rows at a time.
        let mut table: Vec<f16> = Vec::with_capacity(vocab * h);
        let ids: Vec<u32> = (0..vocab as u32).collect();
        for chunk in ids.chunks(4096) {
            let rows = model
                .embed(chunk)
                .map_err(|e| Error::Shape(format!("embedding: {e}")))?;
            table.extend(rows.iter().map(|&v| f16::from_f32(v)));
        }
        let embed = dev.upload(&table)?;
        // Every step streams the linears and the output layer once.
        let streamed = resident + 2 * table.len();
        resident += 2 * table.len();
        // `llama_head` borrows the embedding matrix when the output layer
        // is tied to it; then the device copy is shared too.
        let head = match &head_view.lm_head {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(t) => {
                let w: Vec<f16> = t.data().iter().map(|&v| f16::from_f32(v)).collect();
                resident += 2 * w.len();
                Some(dev.upload(&w)?)
            }
        };
        drop(table);
        let norm = dev.upload(&head_view.norm)?;
        let att_shared = ((dims.d + 32 + 8 * ATT_THREADS as usize + cap) * 4) as u32;
        let att = funcs
            .get("dec_attention")
            .ok_or_else(|| Error::Driver("no dec_attention".into()))?;
        if att_shared > 48 * 1024 {
            let optin = dev
                .ctx
                .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
                .ctx("shared memory limit")?;
            if att_shared as i64 > optin as i64 {
                return Err(Error::Unsupported(format!(
                    "a context of {cap} positions needs {} KiB of shared memory per attention block, \
                     this GPU allows {} KiB; ask for fewer new tokens or a shorter prompt",
                    att_shared / 1024,
                    optin / 1024
                )));
            }
            att.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                att_shared as i32,
            )
            .ctx("attention shared memory")?;
        }
        let big = Self::scratch(&dev, &dims, MAX_STEP_ROWS.min(cap))?;
        let one = Self::scratch(&dev, &dims, 1)?;
        Ok(GpuDecoder {
            pos: dev.zeros::<i32>(1)?,
            hn: dev.zeros::<f16>(h)?,
            logits: dev.zeros::<f32>(vocab)?,
            dev,
            _module: module,
            funcs,
            dims,
            blocks,
            norm,
            embed,
            head,
            cap,
            len: 0,
            max_positions,
            big,
            one,
            ws_big: Workspace::default(),
            ws_one: Workspace::default(),
            att_shared,
            use_graph: std::env::var(GRAPH_ENV).map_or(true, |v| v != "0"),
            graph: None,
            weights: resident,
            cache: cache_bytes,
            streamed,
        })
    }

    fn scratch(dev: &Cuda, d: &Dims, rows: usize) -> Result<Scratch> {
        let bw = (d.nh * d.d).max(d.inter);
        let nqkv = (d.nh + 2 * d.nkv) * d.d;
        Ok(Scratch {
            rows,
            ids: dev.zeros::<i32>(rows)?,
            x: dev.zeros::<f32>(rows * d.h)?,
            a: dev.zeros::<f16>(rows * d.h)?,
            qkv: (0..3)
                .map(|_| dev.zeros::<f16>(rows * nqkv))
                .collect::<Result<_>>()?,
            b: dev.zeros::<f16>(rows * bw)?,
            y: dev.zeros::<f16>(rows * d.h)?,
            gu: (0..2)
                .map(|_| dev.zeros::<f16>(rows * 2 * d.inter))
                .collect::<Result<_>>()?,
        })
    }

    /// Positions the cache holds.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Positions in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first step (or after [`Self::reset`]).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of weights in device memory (embedding and output layer
    /// included; the packed form of quantized layers).
    pub fn weight_bytes(&self) -> usize {
        self.weights
    }

    /// Bytes of the KV cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache
    }

    /// Bytes a one-token step reads at the current length: every linear
    /// and the output layer once, and the cached keys and values.
    pub fn step_bytes(&self) -> usize {
        let kv = 2 * 2 * self.dims.nkv * self.dims.d * self.len * self.blocks.len();
        self.streamed + kv
    }

    /// Forgets the context (the cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Whether one-token steps replay a CUDA graph.
    pub fn set_graph(&mut self, on: bool) {
        self.use_graph = on;
        if !on {
            self.graph = None;
        }
    }

    /// Runs `tokens` after the context and returns the last one's logits.
    pub fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::Shape("no tokens to run".into()));
        }
        if self.len + tokens.len() > self.cap {
            return Err(Error::Shape(format!(
                "{} more tokens after {} do not fit the cache of {} positions",
                tokens.len(),
                self.len,
                self.cap
            )));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.dims.vocab) {
            return Err(Error::Shape(format!(
                "token {t} is outside the vocabulary of {}",
                self.dims.vocab
            )));
        }
        let st = self.dev.stream.clone();
        for chunk in tokens.chunks(self.big.rows) {
            let ids: Vec<i32> = chunk.iter().map(|&t| t as i32).collect();
            let m = chunk.len();
            let one = m == 1;
            {
                let s = if one { &mut self.one } else { &mut self.big };
                st.memcpy_htod(&ids, &mut s.ids).ctx("token ids")?;
            }
            st.memcpy_htod(&[self.len as i32], &mut self.pos)
                .ctx("position")?;
            if one && self.use_graph {
                if self.graph.is_none() {
                    // Once uncaptured (sizes every workspace), then captured.
                    self.launch_step(true, 1)?;
                    if let Err(e) = self.capture() {
                        tracing::warn!(
                            "CUDA graph capture failed ({e}); launching kernels one by one"
                        );
                        self.use_graph = false;
                    }
                } else if let Some(g) = &self.graph {
                    g.launch().ctx("replaying the step graph")?;
                }
            } else {
                self.launch_step(one, m)?;
            }
            self.len += m;
        }
        self.dev.download(&self.logits)
    }

    fn capture(&mut self) -> Result<()> {
        let st = self.dev.stream.clone();
        st.begin_capture(
            cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        )
        .ctx("beginning a graph capture")?;
        let launched = self.launch_step(true, 1);
        let graph = st.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
        launched?;
        self.graph = graph.ctx("capturing the step graph")?;
        Ok(())
    }

    /// Enqueues one step of `m` rows from the scratch `one` or `big`.
    fn launch_step(&mut self, one: bool, m: usize) -> Result<()> {
        let st = self.dev.stream.clone();
        let dv = self.dims;
        let (h, nh, nkv, d) = (dv.h, dv.nh, dv.nkv, dv.d);
        let (s, ws) = if one {
            (&mut self.one, &mut self.ws_one)
        } else {
            (&mut self.big, &mut self.ws_big)
        };
        let (px, pa, pb, py, pids) = (
            dptr(&s.x, &st),
            dptr(&s.a, &st),
            dptr(&s.b, &st),
            dptr(&s.y, &st),
            dptr(&s.ids, &st),
        );
        let ppos = dptr(&self.pos, &st);
        let (hi, mi) = (h as i32, m as i32);
        let funcs = &self.funcs;
        // Every kernel of the step but the first may start under
        // programmatic dependent launch (they all pdl_wait() first).
        let dev = &self.dev;
        let launch = |name: &str, cfg: LaunchConfig, args: &mut [*mut c_void]| -> Result<()> {
            let f = funcs
                .get(name)
                .ok_or_else(|| Error::Driver(format!("kernel {name} is not in the module")))?;
            unsafe { dev.launch(f, cfg, args, name != "dec_embed", name) }
        };
        let pe = dptr(&self.embed, &st);
        launch(
            "dec_embed",
            grid(m * h),
            &mut kargs![&pe, &pids, &mi, &hi, &px],
        )?;
        // RMSNorm, with the residual add of `y` (device pointer, 0 = none).
        let norm = |x: u64, y: u64, w: u64, out: u64, rows: usize| -> Result<()> {
            let func = |n: &str| {
                funcs
                    .get(n)
                    .ok_or_else(|| Error::Driver(format!("kernel {n} is not in the module")))
            };
            crate::forward::rms_norm_rows(dev, func, x, y, w, dv.eps, h, out, 0, rows)
        };
        let (nhi, nkvi, di, capi) = (nh as i32, nkv as i32, d as i32, self.cap as i32);
        let (inter, interi) = (dv.inter, dv.inter as i32);
        let scale = 1.0f32 / (d as f32).sqrt();
        let window = dv.window;
        for (bi, blk) in self.blocks.iter().enumerate() {
            let (ln1, ln2, inv) = (
                dptr(&blk.ln1, &st),
                dptr(&blk.ln2, &st),
                dptr(&blk.inv_freq, &st),
            );
            let (pkc, pvc) = (dptr(&blk.kc, &st), dptr(&blk.vc, &st));
            // The previous block's MLP output joins the stream here.
            norm(px, if bi == 0 { 0 } else { py }, ln1, pa, m)?;
            let parts = blk.qkv.run(&self.dev, &s.a, m, &mut s.qkv, ws)?;
            let [(pq, ldq), (pk, ldk), (pv, ldv)] = parts[..] else {
                return Err(Error::Shape("q/k/v is not three parts".into()));
            };
            launch(
                "dec_rope_kv",
                LaunchConfig {
                    grid_dim: (m as u32, (nh + 2 * nkv) as u32, 1),
                    block_dim: ((d / 2) as u32, 1, 1),
                    shared_mem_bytes: 0,
                },
                &mut kargs![
                    &pq, &ldq, &pk, &ldk, &pv, &ldv, &inv, &ppos, &nhi, &nkvi, &di, &capi, &pkc,
                    &pvc,
                ],
            )?;
            launch(
                "dec_attention",
                LaunchConfig {
                    grid_dim: (nh as u32, m as u32, 1),
                    block_dim: (ATT_THREADS, 1, 1),
                    shared_mem_bytes: self.att_shared,
                },
                &mut kargs![
                    &pq, &ldq, &pkc, &pvc, &ppos, &nhi, &nkvi, &di, &capi, &window, &scale, &pb,
                ],
            )?;
            run_linear(&self.dev, &blk.o, &s.b, m, &mut s.y, ws)?;
            norm(px, py, ln2, pa, m)?;
            let fused = match (&blk.gate_up.layers[..], blk.gate_up.swiglu) {
                ([DecLinear::Quant(l)], true) => dev.matmul_swiglu(l, &s.a, m, &mut s.b, ws)?,
                _ => false,
            };
            if !fused {
                let parts = blk.gate_up.run(&self.dev, &s.a, m, &mut s.gu, ws)?;
                let [(pg, ldg), (pu, ldu)] = parts[..] else {
                    return Err(Error::Shape("gate/up is not two parts".into()));
                };
                if ldg != ldu {
                    // Apart, the two outputs are each `inter` wide.
                    return Err(Error::Shape("gate and up differ in width".into()));
                }
                // Interleaved rows: gate and up chunks of 8 side by side.
                let (pu, chunk) = if blk.gate_up.swiglu {
                    (pg + 16, 8i32)
                } else {
                    (pu, 0)
                };
                launch(
                    "dec_silu_mul",
                    grid(m * inter),
                    &mut kargs![&pg, &pu, &ldg, &mi, &interi, &chunk, &pb],
                )?;
            }
            run_linear(&self.dev, &blk.down, &s.b, m, &mut s.y, ws)?;
        }
        // The last block's output joins the stream of the last row, normed
        // for the head.
        let off = ((m - 1) * h) as u64;
        let (plast, pylast) = (px + 4 * off, py + 2 * off);
        let (pn, phn) = (dptr(&self.norm, &st), dptr(&self.hn, &st));
        norm(plast, pylast, pn, phn, 1)?;
        let pw = dptr(self.head.as_ref().unwrap_or(&self.embed), &st);
        crate::blas::gemm(
            &self.dev,
            (1, dv.vocab, h),
            1.0,
            crate::blas::Mat::f16(phn, h),
            crate::blas::Mat::f16(pw, h).t(),
            0.0,
            crate::blas::Mat::f32(dptr(&self.logits, &st), dv.vocab),
            1,
        )
    }
}

/// A layer on its way to the device, repacked or converted on the host.
enum Prepared {
    Gptq(Box<HostLinear>),
    Dense {
        w: Vec<f16>,
        bias: Option<Vec<f16>>,
        n: usize,
        k: usize,
    },
}

fn to_f16(v: &[f32]) -> Vec<f16> {
    v.par_iter().map(|&x| f16::from_f32(x)).collect()
}

fn prepare(l: RawLinear) -> Result<Prepared> {
    Ok(match l {
        RawLinear::Gptq(q) => Prepared::Gptq(Box::new(HostLinear::new(&q, false)?)),
        RawLinear::Dense { weight, bias } => {
            let s = weight.shape();
            if s.len() != 2 {
                return Err(Error::Shape(format!("a dense weight of shape {s:?}")));
            }
            Prepared::Dense {
                w: to_f16(weight.data()),
                bias: bias.as_deref().map(to_f16),
                n: s[0],
                k: s[1],
            }
        }
    })
}

fn upload_linear(dev: &Cuda, p: Prepared, resident: &mut usize) -> Result<DecLinear> {
    Ok(match p {
        Prepared::Gptq(h) => {
            *resident += h.bytes();
            DecLinear::Quant(Box::new(dev.upload_layout(&h)?))
        }
        Prepared::Dense { w, bias, n, k } => {
            *resident += 2 * w.len();
            DecLinear::Dense {
                w: dev.upload(&w)?,
                bias: bias.map(|b| dev.upload(&b)).transpose()?,
                n,
                k,
            }
        }
    })
}

/// Layers reading one input, stacked into one when they allow it (all GPTQ
/// with the same groups and act-order, or all dense), else as they are;
/// and each part's output width.
fn stack(parts: Vec<RawLinear>) -> (Vec<RawLinear>, Vec<usize>) {
    let widths: Vec<usize> = parts.iter().map(|p| p.dims().0).collect();
    if std::env::var(STACK_ENV).is_ok_and(|v| v == "0") {
        return (parts, widths);
    }
    let qs: Vec<&QLinear> = parts
        .iter()
        .filter_map(|p| match p {
            RawLinear::Gptq(q) => Some(q),
            RawLinear::Dense { .. } => None,
        })
        .collect();
    if qs.len() == parts.len() {
        if let Some(q) = QLinear::stack_rows(&qs) {
            return (vec![RawLinear::Gptq(q)], widths);
        }
    } else if qs.is_empty() {
        let k = parts[0].dims().1;
        let mut w = Vec::new();
        let mut bias = Vec::new();
        let mut any_bias = false;
        for p in &parts {
            if let RawLinear::Dense { weight, bias: b } = p {
                w.extend_from_slice(weight.data());
                match b {
                    Some(b) => {
                        any_bias = true;
                        bias.extend_from_slice(b);
                    }
                    None => bias.extend(std::iter::repeat_n(0.0, p.dims().0)),
                }
            }
        }
        let n = widths.iter().sum();
        if let Ok(weight) = gptq_core::Tensor::new(vec![n, k], w) {
            let bias = any_bias.then_some(bias);
            return (vec![RawLinear::Dense { weight, bias }], widths);
        }
    }
    (parts, widths)
}

fn run_linear(
    dev: &Cuda,
    l: &DecLinear,
    x: &CudaSlice<f16>,
    m: usize,
    y: &mut CudaSlice<f16>,
    ws: &mut Workspace,
) -> Result<()> {
    match l {
        DecLinear::Quant(g) => dev.matmul(g, x, m, y, ws),
        DecLinear::Dense { w, bias, n, k } => {
            dev.gemm_f16(w, x, y, m, *n, *k)?;
            if let Some(b) = bias {
                dev.add_bias(y, b, m, *n)?;
            }
            Ok(())
        }
    }
}

impl gptq_infer::generate::Decoder for GpuDecoder {
    fn max_positions(&self) -> usize {
        self.max_positions.min(self.cap + 1)
    }

    fn next_logits(&mut self, tokens: &[u32]) -> gptq_infer::Result<Vec<f32>> {
        self.step(tokens)
            .map_err(|e| gptq_infer::Error::Input(format!("GPU generation: {e}")))
    }
}

#[cfg(test)]
mod tests {
    /// Every kernel the decoder launches is in `block.cu`'s list (which
    /// the NVRTC test compiles and checks).
    #[test]
    fn decoder_kernels_are_block_kernels() {
        for f in super::FUNCTIONS {
            assert!(crate::forward::BLOCK_FUNCTIONS.contains(f), "{f}");
        }
    }
}
