//! `gptq`: quantize Hugging Face causal LMs with GPTQ and run them.
//!
//! This binary only parses arguments and glues the library crates together
//! (one file per subcommand in `commands/`). Errors print as one line and
//! exit with status 2; nothing here panics on user input.

mod commands;
mod progress;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Quantize Hugging Face causal language models with GPTQ and run them.
///
/// MODEL arguments accept a local HF folder, a .gguf file, or a Hub id
/// (ORG/NAME; taken from the HF cache, or downloaded unless HF_HUB_OFFLINE=1).
#[derive(Parser)]
#[command(name = "gptq", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// Print debug logs (or set RUST_LOG).
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Quantize a model with GPTQ (or RTN) and write an HF GPTQ checkpoint.
    Quantize(commands::quantize::Args),
    /// Convert a GGUF file (llama.cpp) into a Hugging Face folder.
    Convert(commands::convert::Args),
    /// Perplexity of a model on a text (GPTQ protocol: non-overlapping windows).
    Eval(commands::eval::Args),
    /// Generate text from a prompt, streaming tokens.
    Generate(commands::generate::Args),
    /// Print a model's config, layers, dtypes and sizes.
    Inspect(commands::inspect::Args),
    /// Measure CPU forward and decode speed against GEMM and memory ceilings.
    Bench(commands::bench::Args),
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .map_err(|e| anyhow::anyhow!("cannot start {n} threads: {e}"))?;
    }
    match cli.command {
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Convert(a) => commands::convert::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Bench(a) => commands::bench::run(a),
    }
}

/// Keeps freed buffers in the heap for reuse. A forward pass allocates and
/// frees activation buffers of a few MB per layer; with glibc's defaults
/// each one is a fresh `mmap` whose pages the kernel must fault in and zero
/// (13 % of a SmolLM2 evaluation's time before this). 32 MiB is glibc's
/// largest allowed mmap threshold on 64-bit.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only changes allocator tuning parameters; it is called
    // before any other thread exists.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 512 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let filter = if cli.verbose { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
