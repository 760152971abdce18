//! `gptq`: quantize Hugging Face causal LMs with GPTQ and run them.
//!
//! This binary only parses arguments and glues the library crates together
//! (one file per subcommand in `commands/`). Errors print as one line and
//! exit with a status that says what kind of failure it was ([`exit_code`]:
//! 2 bad input or usage, 3 an I/O failure, 130/143 interrupted); nothing here
//! panics on user input.

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
    /// How eval, generate and bench feed quantized layers on the CPU: int8
    /// quantizes each activation in blocks of 32 for integer dot products
    /// (AVX-512 VNNI / AVX2; faster, and f16 output layers are run at 8 bits
    /// per row), f32 computes with the activations as they are. Quantize
    /// always computes in f32.
    #[arg(long, global = true, value_enum, default_value_t = ActivationsArg::Int8)]
    activations: ActivationsArg,
    /// Print debug logs (or set RUST_LOG).
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ActivationsArg {
    Int8,
    F32,
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
    if !matches!(cli.command, Command::Quantize(_)) {
        gptq_kernels::cpu::set_activations(match cli.activations {
            ActivationsArg::Int8 => gptq_kernels::cpu::Activations::Int8,
            ActivationsArg::F32 => gptq_kernels::cpu::Activations::F32,
        });
    }
    match cli.command {
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Convert(a) => commands::convert::run(a),
        Command::Eval(a) => on_pool(|| commands::eval::run(a)),
        Command::Generate(a) => on_pool(|| commands::generate::run(a)),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Bench(a) => on_pool(|| commands::bench::run(a)),
    }
}

/// Runs `f` on a worker of the global thread pool (panics propagate). The
/// parallel loops it starts then fork from inside the pool — the calling
/// thread takes a share and waits by stealing work — instead of being
/// injected from outside and waited for on a lock, which costs two context
/// switches per loop: decode runs ~250 small GEMVs per token. Only for
/// commands that never block a worker on another thread's parallel work
/// (quantize's writer thread packs in parallel while the loop waits on it).
fn on_pool<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    rayon::scope(|_| f())
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

/// Returns the heap's free memory to the system (the tuning above keeps up
/// to 512 MiB of it). Called after a large temporary is dropped, e.g. the
/// tokenized calibration corpus, and by quantize after each layer (between
/// passes over the calibration states), so that it does not count in the
/// peak resident memory of what follows.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        malloc_trim(0);
    }
}

/// Returns the heap's free memory to the system (no-op here).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}

/// Exit status of a bad input, a bad argument or an unsupported model.
const EXIT_BAD_INPUT: u8 = 2;
/// Exit status of an operating-system I/O failure (disk full, permission
/// denied, read-only or file-size-limited filesystem, ...).
const EXIT_IO: u8 = 3;

/// The `std::io::ErrorKind`s that mean "your input is wrong" rather than
/// "the system failed": a missing input, an existing output, bad data.
fn is_input_kind(k: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        k,
        NotFound | AlreadyExists | InvalidData | InvalidInput | UnexpectedEof
    )
}

/// The OS error inside one error of the chain, looking through this
/// project's error enums (whose I/O variants keep the OS error in the
/// message rather than as a `source`).
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return Some(io.kind());
    }
    let from_io = |e: &gptq_io::Error| match e {
        gptq_io::Error::Io { error, .. } => Some(error.kind()),
        _ => None,
    };
    let from_models = |e: &gptq_models::Error| match e {
        gptq_models::Error::Io(e) => from_io(e),
        _ => None,
    };
    if let Some(e) = e.downcast_ref::<gptq_io::Error>() {
        return from_io(e);
    }
    if let Some(e) = e.downcast_ref::<gptq_models::Error>() {
        return from_models(e);
    }
    if let Some(e) = e.downcast_ref::<gptq_infer::Error>() {
        return match e {
            gptq_infer::Error::Io(e) => from_io(e),
            gptq_infer::Error::Model(e) => from_models(e),
            _ => None,
        };
    }
    None
}

/// The exit status of a failed command: [`EXIT_IO`] when an operating-system
/// I/O error other than a missing input or an existing output caused it
/// (found in the typed error chain, else from the `(os error N)` that an OS
/// error leaves in a message), [`EXIT_BAD_INPUT`] otherwise.
fn exit_code(e: &anyhow::Error) -> u8 {
    let kind = e.chain().find_map(io_kind).or_else(|| {
        let msg = format!("{e:#}");
        let at = msg.rfind("(os error ")?;
        let n: i32 = msg[at + 10..].split(')').next()?.parse().ok()?;
        Some(std::io::Error::from_raw_os_error(n).kind())
    });
    match kind {
        Some(k) if !is_input_kind(k) => EXIT_IO,
        _ => EXIT_BAD_INPUT,
    }
}

/// Ctrl-C (SIGINT), SIGTERM and SIGHUP: remove every temporary output
/// ([`gptq_io::atomic::abandon_all`], which also blocks any later rename into
/// place), print one line and exit with 128 + the signal number. A second
/// signal during that cleanup exits at once. SIGXFSZ is ignored so that a
/// write past `ulimit -f` fails with an error (EFBIG) instead of killing the
/// process. The handler only writes the signal number to a pipe; a thread
/// does the work.
#[cfg(unix)]
mod signals {
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

    static PIPE_W: AtomicI32 = AtomicI32::new(-1);
    static CAUGHT: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(sig: libc::c_int) {
        if CAUGHT.swap(true, Ordering::SeqCst) {
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(128 + sig) };
        }
        let b = sig as u8;
        // SAFETY: write is async-signal-safe; the fd stays open for the
        // life of the process.
        unsafe { libc::write(PIPE_W.load(Ordering::SeqCst), (&b as *const u8).cast(), 1) };
    }

    pub fn install() {
        // SAFETY: plain libc calls on valid arguments, made before any other
        // thread exists.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let mut fds = [0 as libc::c_int; 2];
            if libc::pipe(fds.as_mut_ptr()) != 0 {
                return;
            }
            let read_fd = fds[0];
            PIPE_W.store(fds[1], Ordering::SeqCst);
            let spawned = std::thread::Builder::new()
                .name("signals".into())
                .spawn(move || loop {
                    let mut b = 0u8;
                    // SAFETY: reads one byte into a valid buffer. (Lexically
                    // inside the setup's unsafe block, but it runs later, on
                    // the signal thread: kept explicit.)
                    #[allow(unused_unsafe)]
                    let n = unsafe { libc::read(read_fd, (&mut b as *mut u8).cast(), 1) };
                    if n == 1 {
                        let removed = gptq_io::atomic::abandon_all();
                        let name = match i32::from(b) {
                            libc::SIGINT => "interrupted (Ctrl-C)",
                            libc::SIGTERM => "terminated (SIGTERM)",
                            _ => "hung up (SIGHUP)",
                        };
                        let note = if removed > 0 {
                            "; partial output removed"
                        } else {
                            ""
                        };
                        eprintln!("\nerror: {name}{note}");
                        std::process::exit(128 + i32::from(b));
                    }
                    if n < 0
                        && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                    {
                        return;
                    }
                });
            if spawned.is_err() {
                return;
            }
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(not(unix))]
mod signals {
    pub fn install() {}
}

fn main() -> ExitCode {
    tune_allocator();
    signals::install();
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
            ExitCode::from(exit_code(&e))
        }
    }
}
