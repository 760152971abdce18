//! Fills the CUBIN cache for a GPU this machine need not have: NVRTC alone,
//! no driver or GPU.
//!
//! ```text
//! GPTQ_CUBIN_CACHE=DIR cargo run --release -p gptq-cuda --example precompile -- ARCH DRIVER_VERSION
//! ```
//!
//! `ARCH` as NVRTC names it (`sm_90a` for Hopper), `DRIVER_VERSION` as the
//! driver reports it (`13000` for CUDA 13.0): both are part of the cache key
//! (`compile::cubin_cached`), so the files only serve a machine with that
//! driver and the same NVRTC major.minor. The device scripts copy
//! `.device-bin/cubin/` into their cache (`bench/cuda_env.sh`), so a build's
//! first launch on the GPU machine skips compiling its kernels there.

use gptq_cuda::compile::{cache_dir, cubin_cached, CubinSource, SOURCES};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (arch, driver) =
        match args.as_slice() {
            [arch, driver] => match driver.parse::<i32>() {
                Ok(d) if d > 0 => (arch.as_str(), d),
                _ => {
                    return fail(&format!(
                        "driver version `{driver}` is not a positive integer (13000 for CUDA 13.0)"
                    ))
                }
            },
            _ => return fail(
                "usage: GPTQ_CUBIN_CACHE=DIR precompile ARCH DRIVER_VERSION (e.g. sm_90a 13000)",
            ),
        };
    if cache_dir().is_none() {
        return fail("no cache folder: set GPTQ_CUBIN_CACHE");
    }
    for (name, src) in SOURCES {
        match cubin_cached(src, name, arch, driver) {
            Ok((image, CubinSource::Compiled(Some(f)))) => {
                println!("{}: {} bytes", f.display(), image.len())
            }
            Ok((_, CubinSource::Cache(f))) => println!("{}: already cached", f.display()),
            Ok((_, CubinSource::Compiled(None))) => {
                return fail(&format!(
                    "{name}: compiled, but the cache file could not be written"
                ))
            }
            Err(e) => return fail(&format!("{name}: {e}")),
        }
    }
    ExitCode::SUCCESS
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}
