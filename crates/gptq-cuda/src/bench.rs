//! Correctness checks against an f64 reference and timings (CUDA events,
//! graph replays, median), used by `gptq bench kernels --device cuda`.

use crate::device::{Act, Ctx, Cuda, GpuLinear, Path, Workspace};
use crate::kernels::{Dtype, W4Variant, WG_VARIANTS};
use crate::layout::{random_qlinear, Rng};
use crate::{Error, Result};
use cudarc::driver::{sys as cu, CudaSlice};
use gptq_core::QLinear;
use half::f16;

/// Median of a non-empty list.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Device-to-device copy bandwidth in GB/s, counting bytes read plus
/// written (STREAM convention), median of `reps` copies of `bytes`.
pub fn copy_bandwidth(dev: &Cuda, bytes: usize, reps: usize) -> Result<f64> {
    let st = dev.stream();
    let words = bytes / 4;
    let src: CudaSlice<u32> = dev.upload(&(0..words as u32).collect::<Vec<_>>())?;
    let mut dst: CudaSlice<u32> = dev.zeros(words)?;
    let ctx = dev.context();
    let ev = |what| {
        ctx.new_event(Some(cu::CUevent_flags::CU_EVENT_DEFAULT))
            .ctx(what)
    };
    let (a, b) = (ev("event")?, ev("event")?);
    let mut times = Vec::new();
    for i in 0..reps + 2 {
        a.record(st).ctx("event record")?;
        st.memcpy_dtod(&src, &mut dst).ctx("memcpy")?;
        b.record(st).ctx("event record")?;
        b.synchronize().ctx("event sync")?;
        if i >= 2 {
            times.push(a.elapsed_ms(&b).ctx("elapsed")? as f64 * 1e-3);
        }
    }
    let t = median(&mut times);
    Ok(2.0 * (words * 4) as f64 / t / 1e9)
}

/// Replays before timing, and the least time they take (a first timing
/// taken right after cuBLAS came out up to 28 % slower than the same kernel
/// timed later, `bench/results/2026-12-04-wgmma-pipe.md`; warming up alone
/// did not remove that, hence also [`ROUNDS`]).
/// `GPTQ_BENCH_WARM_MS` overrides the time (for studying it).
const WARM_REPLAYS: usize = 3;
const WARM_MS: u64 = 25;

fn warm_time() -> std::time::Duration {
    let ms = std::env::var("GPTQ_BENCH_WARM_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(WARM_MS);
    std::time::Duration::from_millis(ms)
}

/// Median time of one call in µs: `f(i)` enqueues call `i` (callers rotate
/// buffers by `i`); `calls` calls are captured into one CUDA graph, warmed
/// up (at least [`WARM_REPLAYS`] replays and [`WARM_MS`]), replayed
/// `samples` times between events; the median replay time is divided by
/// `calls`. Falls back to plain launches if capture fails.
pub fn time_us(
    dev: &Cuda,
    calls: usize,
    samples: usize,
    mut f: impl FnMut(usize) -> Result<()>,
) -> Result<f64> {
    let st = dev.stream();
    for i in 0..calls {
        f(i)?;
    }
    dev.synchronize()?;
    let ctx = dev.context();
    let ev = |what| {
        ctx.new_event(Some(cu::CUevent_flags::CU_EVENT_DEFAULT))
            .ctx(what)
    };
    let (a, b) = (ev("event")?, ev("event")?);
    st.begin_capture(cu::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .ctx("begin capture")?;
    let mut captured = Ok(());
    for i in 0..calls {
        captured = f(i);
        if captured.is_err() {
            break;
        }
    }
    let graph = st.end_capture(cu::CUgraphInstantiate_flags(0));
    let graph = match (captured, graph) {
        (Ok(()), Ok(Some(g))) => Some(g),
        (Err(e), _) => return Err(e),
        _ => None,
    };
    let replay = |f: &mut dyn FnMut(usize) -> Result<()>| -> Result<()> {
        match &graph {
            Some(g) => g.launch().ctx("graph launch"),
            None => (0..calls).try_for_each(f),
        }
    };
    let (warm_start, warm_time) = (std::time::Instant::now(), warm_time());
    let mut warm = 0;
    while warm < WARM_REPLAYS || warm_start.elapsed() < warm_time {
        replay(&mut f)?;
        dev.synchronize()?;
        warm += 1;
    }
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        a.record(st).ctx("event record")?;
        replay(&mut f)?;
        b.record(st).ctx("event record")?;
        b.synchronize().ctx("event sync")?;
        times.push(a.elapsed_ms(&b).ctx("elapsed")? as f64 * 1e3 / calls as f64);
    }
    dev.context().check_err().ctx("after timing")?;
    Ok(median(&mut times))
}

/// Bytes of the checkpoint tensors of a 4-bit layer (qweight + scales f16 +
/// qzeros): what the int4 floor counts.
pub fn packed_bytes(n: usize, k: usize, group_size: Option<usize>) -> usize {
    let groups = gptq_core::pack::num_groups(k, group_size);
    k * n / 2 + groups * n * 2 + groups * n / 2
}

fn random_act<T: Act>(rng: &mut Rng, n: usize) -> Vec<T> {
    (0..n).map(|_| T::from_f32(rng.sym())).collect()
}

/// One timed configuration.
#[derive(Debug, Clone)]
pub struct BenchRow {
    pub k: usize,
    pub n: usize,
    pub m: usize,
    /// The dispatcher's path and its time.
    pub auto_path: String,
    pub auto_us: f64,
    /// The fastest fused variant in the sweep (if swept).
    pub best: Option<(String, f64)>,
    pub dequant_gemm_us: f64,
    pub cublas_us: f64,
    pub floor_us: f64,
}

/// Rounds of the table's timings (ours, dequantize + cuBLAS, cuBLAS), one
/// after the other, each keeping its fastest round: the first timing after
/// a change of batch size came out up to 15 % slower than the same kernel
/// timed again later, even after 300 ms of warm-up in one case (cause not
/// settled; `bench/results/2026-12-04-wgmma-b256.md` §3).
const ROUNDS: usize = 2;

/// Weight copies so that one graph replay streams at least `target` bytes
/// (several times the L2), so timings read HBM, not the cache.
fn copies_for(bytes: usize, target: usize) -> usize {
    target.div_ceil(bytes.max(1)).clamp(1, 64)
}

/// Times one K×N layer (4-bit, `group_size`) at each batch size, with
/// activations of type `T` (cuBLAS in the same type).
#[allow(clippy::too_many_arguments)]
pub fn bench_shape<T: Act>(
    dev: &Cuda,
    k: usize,
    n: usize,
    ms: &[usize],
    group_size: Option<usize>,
    copy_gbps: f64,
    samples: usize,
    sweep: bool,
) -> Result<Vec<BenchRow>> {
    let mut rng = Rng::new((k * 31 + n) as u64);
    let q = random_qlinear(&mut rng, 4, group_size, n, k, false);
    let first = dev.load_qlinear(&q, true)?;
    drop(q);
    let fused_bytes = first
        .fused_bytes()
        .unwrap_or(packed_bytes(n, k, group_size));
    let target = 384usize << 20;
    let r = copies_for(fused_bytes, target);
    let mut layers = vec![first];
    for _ in 1..r {
        layers.push(dev.clone_linear(&layers[0])?);
    }
    let mmax = ms.iter().copied().max().unwrap_or(1);
    let x = dev.upload(&random_act::<T>(&mut rng, mmax * k))?;
    let mut y: CudaSlice<T> = dev.zeros(mmax * n)?;
    let mut ws = Workspace::default();
    // f16 (bf16) weights for cuBLAS, dequantized on the device.
    let rf = copies_for(n * k * 2, target);
    let ldw = dev.dequantize_as(&layers[0], &mut ws, T::DTYPE)?;
    let mut wf: Vec<CudaSlice<T>> = Vec::new();
    {
        let w0 = ws
            .dequantized()
            .ok_or_else(|| Error::Driver("no dequantized weight".into()))?;
        if ldw != k {
            return Err(Error::Shape("benchmark shapes need K % 8 == 0".into()));
        }
        // SAFETY: the buffer holds n·k 16-bit values of type T (written by
        // `dequantize_as` for T's type); f16 and T are both 2 bytes.
        let w0 = unsafe { w0.transmute::<T>(n * k) }
            .ok_or_else(|| Error::Driver("dequantized weight too small".into()))?;
        for _ in 0..rf {
            let mut c: CudaSlice<T> = dev.zeros(n * k)?;
            dev.stream().memcpy_dtod(&w0, &mut c).ctx("copy")?;
            wf.push(c);
        }
    }
    let floor_us = packed_bytes(n, k, group_size) as f64 / (copy_gbps * 1e9) * 1e6;
    let mut rows = Vec::new();
    for &m in ms {
        let auto = dev.auto_path(&layers[0], m);
        let time_path = |path: Path, ws: &mut Workspace, y: &mut CudaSlice<T>| -> Result<f64> {
            let calls = r * (8 / r).max(1);
            time_us(dev, calls, samples, |i| {
                dev.matmul_path(&layers[i % r], &x, m, y, ws, path)
            })
        };
        let mut best: Option<(String, f64)> = None;
        let (mut auto_us, mut dequant_gemm_us, mut cublas_us) =
            (f64::INFINITY, f64::INFINITY, f64::INFINITY);
        for round in 0..ROUNDS {
            let a = time_path(auto, &mut ws, &mut y)?;
            if sweep && round == 0 {
                let fused = T::DTYPE
                    .w4_variants()
                    .iter()
                    .filter(|&&v| sweep_candidate(v, m) && layers[0].supports(v))
                    .map(|&v| Path::Fused(v));
                let wg = WG_VARIANTS
                    .iter()
                    .filter(|_| dev.has_wgmma() && m > 8)
                    .map(|&v| Path::Wg(v));
                for path in fused.chain(wg) {
                    let t = time_path(path, &mut ws, &mut y)?;
                    let name = path_name(path);
                    tracing::debug!("{k}x{n} M={m} {name}: {t:.2} us");
                    if best.as_ref().is_none_or(|b| t < b.1) {
                        best = Some((name, t));
                    }
                }
            }
            let d = time_path(Path::DequantGemm, &mut ws, &mut y)?;
            let calls = rf * (8 / rf).max(1);
            let c = time_us(dev, calls, samples, |i| {
                dev.gemm_act(&wf[i % rf], &x, &mut y, m, n, k)
            })?;
            tracing::debug!(
                "{k}x{n} M={m} round {round}: {} {a:.2} us, dequant+cublas {d:.2} us, cublas {c:.2} us",
                path_name(auto)
            );
            auto_us = auto_us.min(a);
            dequant_gemm_us = dequant_gemm_us.min(d);
            cublas_us = cublas_us.min(c);
        }
        rows.push(BenchRow {
            k,
            n,
            m,
            auto_path: path_name(auto),
            auto_us,
            best,
            dequant_gemm_us,
            cublas_us,
            floor_us,
        });
    }
    Ok(rows)
}

/// Variants worth timing for `m` rows: the n8 tile count that covers `m`
/// (up to 64 rows) and its neighbours.
fn sweep_candidate(v: W4Variant, m: usize) -> bool {
    let need = m.min(64).div_ceil(8).next_power_of_two() as u32;
    v.mt == need || v.mt * 2 == need || (m > 32 && v.mt >= 4)
}

pub fn path_name(p: Path) -> String {
    match p {
        Path::Auto => "auto".into(),
        Path::Fused(v) => v.symbol(),
        Path::Wg(v) => v.label(),
        Path::DequantGemm => "dequant+cublas".into(),
    }
}

/// One case of the correctness check.
#[derive(Debug, Clone)]
pub struct CheckCase {
    pub bits: u32,
    pub k: usize,
    pub n: usize,
    pub group_size: Option<usize>,
    pub act_order: bool,
    pub bias: bool,
    pub ms: Vec<usize>,
}

/// The result of one case along one path (worst over its batch sizes).
#[derive(Debug, Clone)]
pub struct CheckRow {
    pub case: String,
    pub path: String,
    /// Largest |y − ref|.
    pub max_abs: f64,
    /// Largest |y − ref| / tolerance (pass: ≤ 1).
    pub worst_ratio: f64,
    /// Largest ‖y − ref‖₂ / ‖ref‖₂ over the batch sizes.
    pub rel_l2: f64,
    /// Outputs left unwritten (still the NaN poison) or not finite.
    pub bad: usize,
    pub pass: bool,
}

impl CheckRow {
    /// Adds one batch of `(got, want, tolerance)` outputs: non-finite
    /// outputs counted as bad, the largest error and error/tolerance kept,
    /// and the batch's ‖err‖/‖want‖ if it is the largest so far.
    fn add_batch(&mut self, outputs: impl Iterator<Item = (f64, f64, f64)>) {
        let (mut num, mut den) = (0f64, 0f64);
        for (got, want, tol) in outputs {
            if !got.is_finite() {
                self.bad += 1;
                continue;
            }
            let err = (got - want).abs();
            self.max_abs = self.max_abs.max(err);
            self.worst_ratio = self.worst_ratio.max(err / tol);
            num += err * err;
            den += want * want;
        }
        self.rel_l2 = self.rel_l2.max((num / den.max(1e-300)).sqrt());
    }
}

/// The cases `--check` runs (`quick`: a smaller set for the ignored test).
pub fn check_cases(quick: bool) -> Vec<CheckCase> {
    let mut cases = Vec::new();
    let ms_small: Vec<usize> = if quick {
        vec![1, 3, 8, 16, 33, 100]
    } else {
        vec![1, 2, 3, 5, 8, 9, 16, 17, 33, 64, 100, 256]
    };
    let shapes: &[(usize, usize)] = if quick {
        &[(64, 8), (512, 1001), (1024, 333)]
    } else {
        &[(64, 8), (128, 24), (512, 1001), (1024, 333), (2048, 4097)]
    };
    let mut bias = false;
    for &(k, n) in shapes {
        for gs in [None, Some(32), Some(64), Some(128)] {
            for act in [false, true] {
                bias = !bias;
                cases.push(CheckCase {
                    bits: 4,
                    k,
                    n,
                    group_size: gs,
                    act_order: act,
                    bias,
                    ms: if k * n > 4_000_000 {
                        vec![1, 8, 16, 64]
                    } else {
                        ms_small.clone()
                    },
                });
            }
        }
    }
    // Output rows a multiple of 16: the SwiGLU epilogue is checked too (as
    // gate/up pairs) on every fused and wgmma path; 5 chunks of K, so the
    // wgmma kernels' warpgroups get uneven shares.
    for (gs, act, bias) in [(Some(64), true, true), (None, false, false)] {
        cases.push(CheckCase {
            bits: 4,
            k: 320,
            n: 2048,
            group_size: gs,
            act_order: act,
            bias,
            ms: vec![1, 16, 64, 200],
        });
    }
    // K not a multiple of 16: the dequantize-then-GEMM path.
    cases.push(CheckCase {
        bits: 4,
        k: 40,
        n: 64,
        group_size: Some(32),
        act_order: true,
        bias: true,
        ms: vec![1, 5, 64],
    });
    for bits in [2u32, 3, 8] {
        for (k, n, gs, act) in [(256, 100, Some(32), false), (1000, 77, Some(128), true)] {
            cases.push(CheckCase {
                bits,
                k,
                n,
                group_size: gs,
                act_order: act,
                bias: bits == 3,
                ms: vec![1, 7, 64],
            });
        }
    }
    cases
}

/// `(Σ x·Ŵ + b, Σ |x·Ŵ|, Σ |x|)` per output, in f64, from the f32
/// dequantized weight and the f16-rounded activations; threaded over rows.
fn reference(q: &QLinear, x: &[f32], m: usize) -> Vec<(f64, f64, f64)> {
    let w = q.dequantize();
    let w = w.data();
    let (n, k) = (q.out_features, q.in_features);
    let bias: Vec<f64> = match &q.bias {
        Some(b) => b
            .iter()
            .map(|&v| f16::from_f32(v).to_f32() as f64)
            .collect(),
        None => vec![0.0; n],
    };
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(32);
    let mut out = vec![(0f64, 0f64, 0f64); m * n];
    let xabs: Vec<f64> = (0..m)
        .map(|mi| x[mi * k..(mi + 1) * k].iter().map(|v| v.abs() as f64).sum())
        .collect();
    let chunk = n.div_ceil(threads).max(1);
    // out is [m][n]; compute per output row o into a column buffer.
    let cols: Vec<Vec<(f64, f64, f64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|o0| {
                let (bias, xabs) = (&bias, &xabs);
                s.spawn(move || {
                    let o1 = (o0 + chunk).min(n);
                    let mut v = Vec::with_capacity((o1 - o0) * m);
                    for o in o0..o1 {
                        let wr = &w[o * k..(o + 1) * k];
                        for mi in 0..m {
                            let xr = &x[mi * k..(mi + 1) * k];
                            let (mut sum, mut abs) = (0f64, 0f64);
                            for (a, b) in xr.iter().zip(wr) {
                                let p = *a as f64 * *b as f64;
                                sum += p;
                                abs += p.abs();
                            }
                            v.push((sum + bias[o], abs, xabs[mi]));
                        }
                    }
                    v
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for (ci, col) in cols.iter().enumerate() {
        let o0 = ci * chunk;
        for (j, v) in col.iter().enumerate() {
            let (o, mi) = (o0 + j / m, j % m);
            out[mi * n + o] = *v;
        }
    }
    out
}

/// The tolerance of one output with f16 activations: one f16 rounding of
/// every dequantized weight (2^-11 relative, plus 2^-25 absolute for f16
/// subnormals, bounded by 2^-24·Σ|x|), f32 accumulation over K terms
/// (K·2^-23 relative to Σ|x·Ŵ|, allowing for tensor-core adders that
/// truncate), and the final f16 rounding of the output (2^-11 of |y|, the
/// bias add included). With bf16 (unit roundoff u = 2^-8): the f16 scale
/// rounded to bf16 and the product (q − z)·s rounded again, at most
/// (2u + u²) = 2^-7 + 2^-16 of every |Ŵ| (bf16 has no subnormals in this
/// range), and the bf16 output rounding (2^-8 of |y|, allowed twice).
pub fn tolerance(dt: Dtype, k: usize, y: f64, abs: f64, xabs: f64) -> f64 {
    let acc = k as f64 * 2f64.powi(-23);
    let out = output_rounding(dt) * y.abs() + 1e-7;
    match dt {
        Dtype::F16 => (2f64.powi(-11) + acc) * abs + 2f64.powi(-24) * xabs + out,
        Dtype::Bf16 => (2f64.powi(-7) + 2f64.powi(-16) + acc) * abs + out,
    }
}

/// The output's rounding allowance, relative to it: twice the unit
/// roundoff of the output type (2^-11 for f16, 2^-8 for bf16).
fn output_rounding(dt: Dtype) -> f64 {
    match dt {
        Dtype::F16 => 2f64.powi(-10),
        Dtype::Bf16 => 2f64.powi(-7),
    }
}

/// Runs every case along every path the layer has (each fused variant and
/// dequantize-then-GEMM), poisoning outputs with NaN before each call; f16
/// activations, then bf16 (rows of bf16 paths end in " bf16").
pub fn check(dev: &Cuda, cases: &[CheckCase], seed: u64) -> Result<Vec<CheckRow>> {
    let mut rows = check_as::<f16>(dev, cases, seed)?;
    rows.extend(check_as::<half::bf16>(dev, cases, seed)?);
    Ok(rows)
}

fn check_as<T: Act>(dev: &Cuda, cases: &[CheckCase], seed: u64) -> Result<Vec<CheckRow>> {
    let dt = T::DTYPE;
    let label = |p: Path| match dt {
        Dtype::F16 => path_name(p),
        Dtype::Bf16 => format!("{} {}", path_name(p), dt.name()),
    };
    let mut rng = Rng::new(seed);
    let mut rows = Vec::new();
    for c in cases {
        let mut q = random_qlinear(&mut rng, c.bits, c.group_size, c.n, c.k, c.act_order);
        if c.bias {
            q.bias = Some((0..c.n).map(|_| rng.sym()).collect());
        }
        let mmax = c.ms.iter().copied().max().unwrap_or(1);
        let xh = random_act::<T>(&mut rng, mmax * c.k);
        let xf: Vec<f32> = xh.iter().map(|v| v.to_f32()).collect();
        let reference = reference(&q, &xf, mmax);
        let l = dev.load_qlinear(&q, true)?;
        let x = dev.upload(&xh)?;
        let mut y: CudaSlice<T> = dev.zeros(mmax * c.n)?;
        let mut ws = Workspace::default();
        let mut paths = vec![Path::Auto, Path::DequantGemm];
        if l.has_fused() {
            let fused = dt.w4_variants().iter().filter(|&&v| l.supports(v));
            paths.extend(fused.map(|&v| Path::Fused(v)));
            if dev.has_wgmma() {
                paths.extend(WG_VARIANTS.iter().map(|&v| Path::Wg(v)));
            }
        }
        let name = format!(
            "{}-bit {}x{} g{} {}{}",
            c.bits,
            c.k,
            c.n,
            c.group_size.map(|g| g as i64).unwrap_or(-1),
            if c.act_order { "act" } else { "seq" },
            if c.bias { " bias" } else { "" }
        );
        for path in paths {
            let mut row = CheckRow {
                case: name.clone(),
                path: label(path),
                max_abs: 0.0,
                worst_ratio: 0.0,
                rel_l2: 0.0,
                bad: 0,
                pass: true,
            };
            for &m in &c.ms {
                dev.fill_bits(&mut y, T::NAN_BITS)?;
                dev.matmul_path(&l, &x, m, &mut y, &mut ws, path)?;
                let got = dev.download(&y)?;
                row.add_batch(got[..m * c.n].iter().enumerate().map(|(i, g)| {
                    let (want, abs, xabs) = reference[i];
                    (g.to_f32() as f64, want, tolerance(dt, c.k, want, abs, xabs))
                }));
            }
            row.pass = row.bad == 0 && row.worst_ratio <= 1.0;
            rows.push(row);
            if c.n.is_multiple_of(16) && l.has_fused() && !matches!(path, Path::DequantGemm) {
                let swiglu = format!("{} swiglu", label(path));
                rows.push(check_swiglu(
                    dev, &l, &x, &mut y, &mut ws, c, &reference, path, &name, swiglu,
                )?);
            }
        }
        dev.synchronize()?;
    }
    Ok(rows)
}

/// The SwiGLU epilogue along `path` (rows taken as gate/up pairs the way
/// [`crate::swiglu_row_order`] stacks them: in row tile t, rows 16t..16t+7
/// are gates and 16t+8..16t+15 their up rows): output (m, 8t + i) against
/// silu(ref gate)·ref up. Tolerance: the gate's tolerance times
/// max |silu'| ≤ 1.1 times |up|, plus |silu(gate)| times the up row's, plus
/// the rounding of the output (2^-10 of it with f16, 2^-7 with bf16).
#[allow(clippy::too_many_arguments)]
fn check_swiglu<T: Act>(
    dev: &Cuda,
    l: &GpuLinear,
    x: &CudaSlice<T>,
    y: &mut CudaSlice<T>,
    ws: &mut Workspace,
    c: &CheckCase,
    reference: &[(f64, f64, f64)],
    path: Path,
    case: &str,
    label: String,
) -> Result<CheckRow> {
    let dt = T::DTYPE;
    let silu = |v: f64| v / (1.0 + (-v).exp());
    let mut row = CheckRow {
        case: case.to_string(),
        path: label,
        max_abs: 0.0,
        worst_ratio: 0.0,
        rel_l2: 0.0,
        bad: 0,
        pass: true,
    };
    let half = c.n / 2;
    for &m in &c.ms {
        dev.fill_bits(y, T::NAN_BITS)?;
        if !dev.matmul_swiglu_path(l, x, m, y, ws, path)? {
            return Err(Error::Unsupported(format!(
                "{}: no SwiGLU epilogue at M = {m}",
                path_name(path)
            )));
        }
        let got = dev.download(y)?;
        row.add_batch((0..m * half).map(|i| {
            let (mi, j) = (i / half, i % half);
            let (gate, up) = (16 * (j / 8) + j % 8, 16 * (j / 8) + 8 + j % 8);
            let (gv, ga, gx) = reference[mi * c.n + gate];
            let (uv, ua, ux) = reference[mi * c.n + up];
            let want = silu(gv) * uv;
            let tol = 1.1 * tolerance(dt, c.k, gv, ga, gx) * uv.abs()
                + silu(gv).abs() * tolerance(dt, c.k, uv, ua, ux)
                + output_rounding(dt) * want.abs()
                + 1e-7;
            (got[i].to_f32() as f64, want, tol)
        }));
    }
    row.pass = row.bad == 0 && row.worst_ratio <= 1.0;
    Ok(row)
}

impl Cuda {
    /// A second device copy of a loaded layer (for timing without cache hits).
    pub fn clone_linear(&self, l: &GpuLinear) -> Result<GpuLinear> {
        l.try_clone(self.stream())
    }
}

/// Layers used by tests of the kernels (`random_qlinear` re-exported).
pub fn random_layer(
    seed: u64,
    bits: u32,
    gs: Option<usize>,
    n: usize,
    k: usize,
    act: bool,
) -> QLinear {
    random_qlinear(&mut Rng::new(seed), bits, gs, n, k, act)
}
