//! `gptq bench kernels --device cuda`: the GPU int4 kernels against cuBLAS
//! fp16, torch's tinygemm (`bench/torch_int4.py`, merged from its JSON) and
//! the int4 memory floor; `--check` first compares every path with an f64
//! reference.

use anyhow::{bail, Context};
use gptq_cuda::bench::{self, BenchRow, CheckRow};
use gptq_cuda::Cuda;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Options of `gptq bench kernels --device cuda` (flattened into `gptq bench`).
#[derive(clap::Args, Debug, Default)]
pub struct CudaArgs {
    /// With MODEL = `kernels`: benchmark the kernels of this device (`cuda`).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Check every kernel path against an f64 reference before timing.
    #[arg(long)]
    pub check: bool,
    /// Only run the check.
    #[arg(long)]
    pub check_only: bool,
    /// Also time every fused variant and report the fastest.
    #[arg(long)]
    pub sweep: bool,
    /// Shapes to time, `KxN` (input x output features), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "KxN",
        default_value = "4096x4096,4096x14336,14336x4096,8192x8192,8192x28672,28672x8192"
    )]
    pub shapes: Vec<String>,
    /// Batch sizes M to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,64,256")]
    pub batches: Vec<usize>,
    /// Group size of the timed layers (-1: per channel).
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    pub bench_group_size: i64,
    /// Timed graph replays per measurement (the median is reported).
    #[arg(long, default_value_t = 30)]
    pub samples: usize,
    /// JSON written by `bench/torch_int4.py` on the same device.
    #[arg(long, value_name = "PATH")]
    pub torch_json: Option<PathBuf>,
    /// Write the report as Markdown here.
    #[arg(long, value_name = "PATH")]
    pub markdown: Option<PathBuf>,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// Activation type of the timed products (cuBLAS runs in the same).
    #[arg(long, value_enum, default_value_t = ActType::F16)]
    pub act: ActType,
    /// With MODEL = `solve`: timed solves per shape and setting (after a
    /// warm-up); the mean is reported.
    #[arg(long, default_value_t = 2)]
    pub reps: usize,
    /// With MODEL = `solve`: JSON lines of `scripts/research/gptq_torch.py
    /// --bench-solve` run on the same GPU, for the ratio column.
    #[arg(long, value_name = "PATH")]
    pub torch_solve: Option<PathBuf>,
}

/// Activation types of `--act`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ActType {
    #[default]
    F16,
    Bf16,
}

impl ActType {
    fn dtype(self) -> gptq_cuda::Dtype {
        match self {
            ActType::F16 => gptq_cuda::Dtype::F16,
            ActType::Bf16 => gptq_cuda::Dtype::Bf16,
        }
    }
}

/// Whether `gptq bench MODEL ...` is this command (`kernels` or `solve`
/// with `--device cuda`).
pub fn wants(model: &str, a: &CudaArgs) -> bool {
    (model == "kernels" || model == "solve")
        && a.device
            .as_deref()
            .is_some_and(|d| d.eq_ignore_ascii_case("cuda"))
}

fn parse_shape(s: &str) -> anyhow::Result<(usize, usize)> {
    let (k, n) = s
        .trim()
        .split_once(['x', 'X'])
        .with_context(|| format!("shape {s:?} is not KxN"))?;
    let k: usize = k.parse().with_context(|| format!("shape {s:?}"))?;
    let n: usize = n.parse().with_context(|| format!("shape {s:?}"))?;
    if k == 0 || n == 0 || !k.is_multiple_of(64) {
        bail!("shape {s:?}: K must be a positive multiple of 64 and N positive");
    }
    Ok((k, n))
}

/// torch's µs keyed by (k, n, m).
type TorchTimes = HashMap<(usize, usize, usize), f64>;

/// torch results and a line saying what was timed.
fn read_torch(path: &PathBuf) -> anyhow::Result<(TorchTimes, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let mut map = HashMap::new();
    if let Some(rows) = v.get("results").and_then(|r| r.as_array()) {
        for r in rows {
            let get = |k: &str| r.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
            if let (Some(k), Some(n), Some(m), Some(us)) = (
                get("k"),
                get("n"),
                get("m"),
                r.get("us").and_then(|x| x.as_f64()),
            ) {
                map.insert((k, n, m), us);
            }
        }
    }
    let about = format!(
        "torch {} ({}), activations {}",
        v.get("torch").and_then(|x| x.as_str()).unwrap_or("?"),
        v.get("device").and_then(|x| x.as_str()).unwrap_or("?"),
        v.get("activation_dtype")
            .and_then(|x| x.as_str())
            .unwrap_or("?"),
    );
    Ok((map, about))
}

/// Today's UTC date, `YYYY-MM-DD`.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Civil from days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn check_report(rows: &[CheckRow], out: &mut String) -> bool {
    let failed: Vec<&CheckRow> = rows.iter().filter(|r| !r.pass).collect();
    // Worst case per path family.
    let mut worst: HashMap<String, (f64, f64, f64)> = HashMap::new();
    for r in rows {
        let fam = if r.path.starts_with("w4_mma") {
            let bf = if r.path.contains(" bf16") {
                " bf16"
            } else {
                ""
            };
            let swiglu = if r.path.ends_with("swiglu") {
                " swiglu"
            } else {
                ""
            };
            format!("fused int4{bf}{swiglu} (all variants)")
        } else {
            r.path.clone()
        };
        let e = worst.entry(fam).or_insert((0.0, 0.0, 0.0));
        e.0 = e.0.max(r.max_abs);
        e.1 = e.1.max(r.worst_ratio);
        e.2 = e.2.max(r.rel_l2);
    }
    let _ = writeln!(
        out,
        "Check: {} case×path rows, {} failed. Tolerance per output: (2^-11 + K·2^-23)·Σ|x·Ŵ| + 2^-24·Σ|x| + 2^-10·|y| \
         (one f16 rounding per dequantized weight, f32 accumulation over K, f16 output); rows marked bf16 \
         (bf16 activations and outputs): (2^-7 + 2^-16 + K·2^-23)·Σ|x·Ŵ| + 2^-7·|y| (the f16 scale and the \
         product rounded to bf16, bf16 output).\n",
        rows.len(),
        failed.len()
    );
    let _ = writeln!(
        out,
        "| path | max abs error | max error / tolerance | max ‖err‖/‖ref‖ |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: |");
    let mut fams: Vec<_> = worst.into_iter().collect();
    fams.sort_by(|a, b| a.0.cmp(&b.0));
    for (f, (a, r, l)) in fams {
        let _ = writeln!(out, "| {f} | {a:.3e} | {r:.3} | {l:.2e} |");
    }
    for r in &failed {
        let _ = writeln!(
            out,
            "FAILED {} {}: max abs {:.3e}, err/tol {:.3}, rel {:.2e}, {} non-finite",
            r.case, r.path, r.max_abs, r.worst_ratio, r.rel_l2, r.bad
        );
    }
    let _ = writeln!(out);
    failed.is_empty()
}

/// The device line of a report.
fn device_line(info: &gptq_cuda::DeviceInfo) -> String {
    format!(
        "- GPU: {} (compute capability {}.{}, {} SMs, {:.0} GiB), driver {}.{}, kernels built by NVRTC for {} ({:?})",
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.sms,
        info.total_mem as f64 / (1u64 << 30) as f64,
        info.driver_version / 1000,
        (info.driver_version % 1000) / 10,
        info.arch,
        info.cubin
    )
}

/// torch's solve seconds keyed by (cols, rows, act-order).
type TorchSolve = HashMap<(usize, usize, bool), f64>;

/// torch's solve seconds from JSON lines, and a line saying what ran.
fn read_torch_solve(path: &PathBuf) -> anyhow::Result<(TorchSolve, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut map = HashMap::new();
    let mut about = String::from("torch");
    for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: a line is not JSON", path.display()))?;
        if let Some(t) = v.get("torch").and_then(|x| x.as_str()) {
            let dev = v.get("device").and_then(|x| x.as_str()).unwrap_or("?");
            about = format!("torch {t} ({dev})");
            continue;
        }
        let get = |k: &str| v.get(k).and_then(|x| x.as_u64());
        if let (Some(c), Some(r), Some(act), Some(sec)) = (
            get("cols"),
            get("rows"),
            get("actorder"),
            v.get("seconds").and_then(|x| x.as_f64()),
        ) {
            map.insert((c as usize, r as usize, act != 0), sec);
        }
    }
    Ok((map, about))
}

/// `gptq bench solve --device cuda`.
fn run_solve(a: &CudaArgs, command_line: &str) -> anyhow::Result<()> {
    let dev = std::sync::Arc::new(Cuda::new(a.gpu)?);
    let shapes = a
        .shapes
        .iter()
        .map(|s| parse_shape(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let torch = a.torch_solve.as_ref().map(read_torch_solve).transpose()?;
    let mut out = String::new();
    let _ = writeln!(out, "# GPTQ per-layer solve on the GPU\n");
    let _ = writeln!(out, "- command: `{command_line}`");
    let _ = writeln!(out, "{}", device_line(&dev.info));
    let _ = writeln!(out, "- date: {}", today());
    let _ = writeln!(
        out,
        "- data: 4096 tokens of N(0,1) inputs, first 8 channels ×30, H = (2/4096)·XᵀX; W ~ N(0, 0.02²); \
         4-bit, groups of 128, asymmetric, 1 % damping, lazy batches of 128; mean of {} solves after a warm-up",
        a.reps.max(1)
    );
    if let Some((_, about)) = &torch {
        let _ = writeln!(
            out,
            "- reference: {about}, `scripts/research/gptq_torch.py --bench-solve` (the published column loop), same GPU, same run"
        );
    }
    let _ = writeln!(
        out,
        "\n| in × out | act-order | ours s (prepare + loop) | torch s | speed-up | errors s | tr(ΔHΔᵀ) GPTQ / RTN |"
    );
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    print!("{out}");
    let rows = gptq_cuda::bench_solve::bench_solve(&dev, &shapes, a.reps)?;
    for r in &rows {
        let t = torch
            .as_ref()
            .and_then(|(m, _)| m.get(&(r.cols, r.rows, r.act_order)).copied());
        let line = format!(
            "| {}×{} | {} | {:.4} ({:.4} + {:.4}) | {} | {} | {:.3} | {:.4} |",
            r.cols,
            r.rows,
            if r.act_order { "on" } else { "off" },
            r.solve_s,
            r.prepare_s,
            r.loop_s,
            t.map_or("–".into(), |t| format!("{t:.3}")),
            t.map_or("–".into(), |t| format!("{:.1}×", t / r.solve_s)),
            r.errors_s,
            r.error_gptq / r.error_rtn
        );
        println!("{line}");
        let _ = writeln!(out, "{line}");
    }
    if let Some(p) = &a.markdown {
        gptq_io::atomic::write_file(p, out.as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

pub fn run(a: &CudaArgs, command_line: &str, model: &str) -> anyhow::Result<()> {
    if model == "solve" {
        return run_solve(a, command_line);
    }
    let mut dev = Cuda::new(a.gpu)?;
    // Each timed call on its own: back-to-back replays of one kernel must
    // not overlap through programmatic dependent launch.
    dev.set_pdl(false);
    let info = &dev.info;
    let mut out = String::new();
    let _ = writeln!(out, "# CUDA int4 kernels\n");
    let _ = writeln!(out, "- command: `{command_line}`");
    let _ = writeln!(out, "{}", device_line(info));
    let _ = writeln!(out, "- date: {}\n", today());
    print!("{out}");
    let mut ok = true;
    if a.check || a.check_only {
        let t = std::time::Instant::now();
        let rows = bench::check(&dev, &bench::check_cases(false), 0x5EED)?;
        let mut s = String::new();
        ok = check_report(&rows, &mut s);
        let _ = writeln!(s, "(check took {:.1} s)\n", t.elapsed().as_secs_f64());
        print!("{s}");
        out.push_str(&s);
    }
    if !a.check_only {
        let shapes: Vec<(usize, usize)> = a
            .shapes
            .iter()
            .map(|s| parse_shape(s))
            .collect::<anyhow::Result<_>>()?;
        if a.batches.is_empty() || a.batches.contains(&0) {
            bail!("--batches needs positive sizes");
        }
        let gs = if a.bench_group_size <= 0 {
            None
        } else {
            Some(a.bench_group_size as usize)
        };
        let (torch, torch_about) = match a.torch_json.as_ref().map(read_torch) {
            Some(Ok((m, s))) => (m, Some(s)),
            Some(Err(e)) => {
                eprintln!("warning: {e:#}; the tinygemm column stays empty");
                (HashMap::new(), None)
            }
            None => (HashMap::new(), None),
        };
        let gbps = bench::copy_bandwidth(&dev, 2 << 30, 20)?;
        let dt = a.act.dtype();
        let act = dt.name();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Device copy bandwidth (2 GiB device-to-device, bytes read + written): {:.0} GB/s. \
             int4 floor = checkpoint bytes (qweight + f16 scales + qzeros, group size {}) ÷ that bandwidth. \
             Times: median over {} CUDA-graph replays of one call (CUDA events) after ≥ 25 ms of warm-up \
             replays, each of ours, dequant+cuBLAS and cuBLAS timed in two rounds (the faster kept), weights rotated over copies \
             ≥ 384 MiB so every call reads HBM, not L2. Activations and outputs {act}. cuBLAS: cublasGemmEx \
             {act} in/out, f32 compute, on the same (dequantized) weights.{}\n",
            gbps,
            a.bench_group_size,
            a.samples,
            torch_about
                .as_ref()
                .map(|t| format!(" tinygemm: `torch.ops.aten._weight_int4pack_mm`, {t}, timed the same way."))
                .unwrap_or_default()
        );
        print!("{s}");
        out.push_str(&s);
        let mut all: Vec<BenchRow> = Vec::new();
        for &(k, n) in &shapes {
            let rows = match dt {
                gptq_cuda::Dtype::F16 => bench::bench_shape::<gptq_cuda::f16>(
                    &dev, k, n, &a.batches, gs, gbps, a.samples, a.sweep,
                ),
                gptq_cuda::Dtype::Bf16 => bench::bench_shape::<gptq_cuda::bf16>(
                    &dev, k, n, &a.batches, gs, gbps, a.samples, a.sweep,
                ),
            }?;
            let mut t = String::new();
            let _ = writeln!(t, "### K×N = {k}×{n}\n");
            let _ = writeln!(
                t,
                "| M | ours µs | path | best fused µs (variant) | dequant+cuBLAS µs | cuBLAS {act} µs | tinygemm µs | int4 floor µs | floor/ours | cuBLAS/ours |"
            );
            let _ = writeln!(
                t,
                "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            );
            for r in &rows {
                let best = r
                    .best
                    .as_ref()
                    .map(|(v, us)| format!("{us:.2} ({v})"))
                    .unwrap_or_else(|| "-".into());
                let torch_us = torch
                    .get(&(k, n, r.m))
                    .map(|us| format!("{us:.2}"))
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    t,
                    "| {} | {:.2} | {} | {} | {:.2} | {:.2} | {} | {:.2} | {:.0}% | {:.2}× |",
                    r.m,
                    r.auto_us,
                    r.auto_path,
                    best,
                    r.dequant_gemm_us,
                    r.cublas_us,
                    torch_us,
                    r.floor_us,
                    100.0 * r.floor_us / r.auto_us,
                    r.cublas_us / r.auto_us
                );
            }
            let _ = writeln!(t);
            print!("{t}");
            out.push_str(&t);
            all.extend(rows);
        }
        // Targets.
        let mut t = String::new();
        let _ = writeln!(t, "### Targets\n");
        let _ = writeln!(t, "| shape | M=1 floor/ours (≥ 88%) | M=16 cuBLAS/ours (≥ 2.9×) | M=64 (≥ 1.6×) | M=256 (≥ 1.0×) |");
        let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: |");
        for &(k, n) in &shapes {
            let get = |m: usize| all.iter().find(|r| r.k == k && r.n == n && r.m == m);
            let f1 = get(1).map(|r| format!("{:.0}%", 100.0 * r.floor_us / r.auto_us));
            let sp = |m: usize| get(m).map(|r| format!("{:.2}×", r.cublas_us / r.auto_us));
            let _ = writeln!(
                t,
                "| {k}×{n} | {} | {} | {} | {} |",
                f1.unwrap_or_else(|| "-".into()),
                sp(16).unwrap_or_else(|| "-".into()),
                sp(64).unwrap_or_else(|| "-".into()),
                sp(256).unwrap_or_else(|| "-".into())
            );
        }
        print!("{t}");
        out.push_str(&t);
    }
    if let Some(p) = &a.markdown {
        std::fs::write(p, &out).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if !ok {
        bail!("the kernel check failed (see above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_dates_parse() {
        assert_eq!(parse_shape("4096x14336").unwrap(), (4096, 14336));
        assert!(parse_shape("4096").is_err());
        assert!(parse_shape("100x8").is_err());
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }

    #[test]
    fn only_kernels_with_cuda_is_ours() {
        let mut a = CudaArgs::default();
        assert!(!wants("kernels", &a));
        a.device = Some("cuda".into());
        assert!(wants("kernels", &a));
        assert!(!wants("some/model", &a));
    }
}
