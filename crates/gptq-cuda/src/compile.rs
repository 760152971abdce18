//! Run-time compilation of the kernel sources with NVRTC, for the device's
//! own architecture, with the CUBIN cached on disk.
//!
//! The cache key is a hash of the source and the compile options, the
//! target architecture, the driver version and the NVRTC version; the cache
//! folder is `$GPTQ_CUBIN_CACHE`, else `$XDG_CACHE_HOME/gptq/cubin`, else
//! `~/.cache/gptq/cubin`. A cache that cannot be written only costs a
//! recompilation.

use crate::{Error, Result};
use cudarc::nvrtc::sys as nv;
use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;

/// The kernel sources (embedded in the binary).
pub const W4_SOURCE: &str = include_str!("../kernels/w4.cu");

/// The GPTQ solver's kernels (see `solve.rs`).
pub const GPTQ_SOURCE: &str = include_str!("../kernels/gptq.cu");

/// The calibration forward's kernels (see `forward.rs`).
pub const BLOCK_SOURCE: &str = include_str!("../kernels/block.cu");

/// Every kernel source with the name its module is compiled under (the
/// name is part of the CUBIN cache's file names).
pub const SOURCES: &[(&str, &str)] = &[
    ("w4.cu", W4_SOURCE),
    ("gptq.cu", GPTQ_SOURCE),
    ("block.cu", BLOCK_SOURCE),
];

/// The header every source includes as `"common.cuh"` (types, f16
/// conversions, programmatic dependent launch), handed to NVRTC in memory.
pub const COMMON_HEADER: &str = include_str!("../kernels/common.cuh");

/// Options every compilation gets besides the architecture.
const BASE_OPTIONS: &[&str] = &["-std=c++17"];

/// NVRTC's `--gpu-architecture` for a compute capability: `sm_90a` on
/// Hopper (the arch-specific target), `sm_XY` elsewhere.
pub fn arch_for(major: i32, minor: i32) -> String {
    if (major, minor) == (9, 0) {
        "sm_90a".to_string()
    } else {
        format!("sm_{major}{minor}")
    }
}

/// Whether the NVRTC library can be loaded (never panics).
pub fn nvrtc_available() -> bool {
    std::panic::catch_unwind(|| unsafe { nv::is_culib_present() }).unwrap_or(false)
}

/// NVRTC's version `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_available() {
        return Err(Error::NoCuda(
            "the NVRTC library (libnvrtc.so) was not found; set LD_LIBRARY_PATH to the CUDA toolkit's lib64 \
             or to the lib folder of the nvidia-cuda-nvrtc wheel"
                .into(),
        ));
    }
    let (mut major, mut minor) = (0, 0);
    let r = unsafe { nv::nvrtcVersion(&mut major, &mut minor) };
    check(r, "nvrtcVersion")?;
    Ok((major, minor))
}

fn check(r: nv::nvrtcResult, what: &str) -> Result<()> {
    if r == nv::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        let msg = unsafe {
            let p = nv::nvrtcGetErrorString(r);
            if p.is_null() {
                format!("{r:?}")
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        Err(Error::Nvrtc(format!("{what}: {msg}")))
    }
}

/// Destroys the program on every path out of [`compile_cubin`].
struct Program(nv::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        unsafe {
            nv::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

/// Compiles `src` to a CUBIN for `arch` (e.g. `sm_90a`); needs no GPU.
/// Returns the image and NVRTC's log (warnings, `-Xptxas -v` output).
pub fn compile_cubin(
    src: &str,
    name: &str,
    arch: &str,
    extra: &[&str],
) -> Result<(Vec<u8>, String)> {
    nvrtc_version()?;
    let c_src = CString::new(src).map_err(|_| Error::Nvrtc("source contains a NUL byte".into()))?;
    let c_name = CString::new(name).map_err(|_| Error::Nvrtc("name contains a NUL byte".into()))?;
    let mut opts: Vec<CString> = Vec::new();
    for o in BASE_OPTIONS
        .iter()
        .map(|s| s.to_string())
        .chain(std::iter::once(format!("--gpu-architecture={arch}")))
        .chain(extra.iter().map(|s| s.to_string()))
    {
        opts.push(CString::new(o).map_err(|_| Error::Nvrtc("option contains a NUL byte".into()))?);
    }
    let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let header = CString::new(COMMON_HEADER)
        .map_err(|_| Error::Nvrtc("header contains a NUL byte".into()))?;
    let header_name = c"common.cuh";
    let mut raw: nv::nvrtcProgram = std::ptr::null_mut();
    let r = unsafe {
        nv::nvrtcCreateProgram(
            &mut raw,
            c_src.as_ptr(),
            c_name.as_ptr(),
            1,
            &header.as_ptr(),
            &header_name.as_ptr(),
        )
    };
    check(r, "nvrtcCreateProgram")?;
    let prog = Program(raw);
    let r = unsafe { nv::nvrtcCompileProgram(prog.0, ptrs.len() as i32, ptrs.as_ptr()) };
    let log = program_log(&prog);
    if r != nv::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::Nvrtc(format!(
            "compiling {name} for {arch} failed ({r:?}):\n{log}"
        )));
    }
    let mut size = 0usize;
    check(
        unsafe { nv::nvrtcGetCUBINSize(prog.0, &mut size) },
        "nvrtcGetCUBINSize",
    )?;
    if size == 0 {
        return Err(Error::Nvrtc(format!(
            "NVRTC produced no CUBIN for {arch} (is it a real architecture?)"
        )));
    }
    let mut image = vec![0u8; size];
    check(
        unsafe { nv::nvrtcGetCUBIN(prog.0, image.as_mut_ptr() as *mut c_char) },
        "nvrtcGetCUBIN",
    )?;
    Ok((image, log))
}

fn program_log(prog: &Program) -> String {
    let mut size = 0usize;
    if unsafe { nv::nvrtcGetProgramLogSize(prog.0, &mut size) } != nv::nvrtcResult::NVRTC_SUCCESS
        || size <= 1
    {
        return String::new();
    }
    let mut buf = vec![0u8; size];
    if unsafe { nv::nvrtcGetProgramLog(prog.0, buf.as_mut_ptr() as *mut c_char) }
        != nv::nvrtcResult::NVRTC_SUCCESS
    {
        return String::new();
    }
    String::from_utf8_lossy(&buf)
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

/// 64-bit FNV-1a, twice with different offsets, as a 128-bit cache key.
pub fn source_hash(parts: &[&[u8]]) -> u128 {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x6c62_272e_07bb_0142;
    for p in parts {
        for &byte in p.iter().chain((p.len() as u64).to_le_bytes().iter()) {
            a = (a ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
            b = (b ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    ((a as u128) << 64) | b as u128
}

/// The CUBIN cache folder (not created here).
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = env("GPTQ_CUBIN_CACHE") {
        return Some(p);
    }
    if let Some(p) = env("XDG_CACHE_HOME") {
        return Some(p.join("gptq").join("cubin"));
    }
    env("HOME").map(|h| h.join(".cache").join("gptq").join("cubin"))
}

/// Where a compiled module came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CubinSource {
    /// Read from this cache file.
    Cache(PathBuf),
    /// Compiled now (and written to this cache file, if it could be).
    Compiled(Option<PathBuf>),
}

/// A CUBIN for `arch` from the cache, or compiled and cached.
pub fn cubin_cached(
    src: &str,
    name: &str,
    arch: &str,
    driver_version: i32,
) -> Result<(Vec<u8>, CubinSource)> {
    let (nv_major, nv_minor) = nvrtc_version()?;
    let key = source_hash(&[
        src.as_bytes(),
        COMMON_HEADER.as_bytes(),
        BASE_OPTIONS.join(" ").as_bytes(),
        arch.as_bytes(),
        &driver_version.to_le_bytes(),
        &nv_major.to_le_bytes(),
        &nv_minor.to_le_bytes(),
    ]);
    let stem = name.trim_end_matches(".cu");
    let file = cache_dir().map(|d| {
        d.join(format!(
            "{stem}-{arch}-drv{driver_version}-nvrtc{nv_major}.{nv_minor}-{key:032x}.cubin"
        ))
    });
    if let Some(f) = &file {
        if let Ok(bytes) = std::fs::read(f) {
            if !bytes.is_empty() {
                return Ok((bytes, CubinSource::Cache(f.clone())));
            }
        }
    }
    let (image, _log) = compile_cubin(src, name, arch, &[])?;
    let written = file.filter(|f| write_atomic(f, &image).is_ok());
    Ok((image, CubinSource::Compiled(written)))
}

fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() {
        assert_eq!(arch_for(9, 0), "sm_90a");
        assert_eq!(arch_for(8, 6), "sm_86");
        assert_eq!(arch_for(10, 0), "sm_100");
    }

    #[test]
    fn hash_separates_parts() {
        let a = source_hash(&[b"ab", b"c"]);
        let b = source_hash(&[b"a", b"bc"]);
        assert_ne!(a, b);
        assert_eq!(a, source_hash(&[b"ab", b"c"]));
    }

    /// Compiles the kernel sources for Hopper and Ampere with NVRTC alone
    /// (no GPU needed). CI puts NVRTC on the library path with
    /// `scripts/fetch-nvrtc.sh` and sets `GPTQ_REQUIRE_NVRTC`, which turns a
    /// skip into a failure; elsewhere the test skips when libnvrtc is not
    /// found (`LD_LIBRARY_PATH=$(scripts/fetch-nvrtc.sh target/nvrtc)`).
    #[test]
    fn kernels_compile_with_nvrtc() {
        if !nvrtc_available() {
            assert!(
                std::env::var_os("GPTQ_REQUIRE_NVRTC").is_none(),
                "GPTQ_REQUIRE_NVRTC is set but libnvrtc cannot be loaded (LD_LIBRARY_PATH?)"
            );
            eprintln!("skipped: libnvrtc not found (pip install nvidia-cuda-nvrtc and set LD_LIBRARY_PATH to enable)");
            return;
        }
        for arch in ["sm_90a", "sm_80"] {
            let (image, log) = compile_cubin(GPTQ_SOURCE, "gptq.cu", arch, &["-Xptxas=-v"])
                .unwrap_or_else(|e| panic!("{arch}: {e}"));
            assert!(image.len() > 1000, "{arch}: CUBIN of {} bytes", image.len());
            for name in crate::solve::SOLVE_FUNCTIONS {
                assert!(log.contains(name), "{arch}: no {name} in the ptxas report");
            }
            // The batch kernel keeps its 128 columns per warp in registers:
            // a spill would put them in local memory.
            assert!(
                !log.lines().any(|l| l.contains("spill")
                    && !l.contains("0 bytes spill stores, 0 bytes spill loads")),
                "{arch}: a solver kernel spills:\n{log}"
            );
            let (image, log) = compile_cubin(BLOCK_SOURCE, "block.cu", arch, &["-Xptxas=-v"])
                .unwrap_or_else(|e| panic!("{arch}: {e}"));
            assert!(image.len() > 1000, "{arch}: CUBIN of {} bytes", image.len());
            for name in crate::forward::BLOCK_FUNCTIONS {
                assert!(log.contains(name), "{arch}: no {name} in the ptxas report");
            }
            // The plain norm kernels keep a row's values in registers
            // (forward::norm_kernel): a spill would put them in local memory.
            for name in ["blk_rms_norm", "blk_layer_norm"] {
                let props = log
                    .split(&format!("Function properties for {name}\n"))
                    .nth(1)
                    .and_then(|r| r.lines().next())
                    .unwrap_or("");
                assert!(
                    props.contains("0 bytes spill stores, 0 bytes spill loads"),
                    "{arch} {name}: {props}"
                );
            }
            let (image, log) = compile_cubin(W4_SOURCE, "w4.cu", arch, &["-Xptxas=-v"])
                .unwrap_or_else(|e| panic!("{arch}: {e}"));
            assert!(image.len() > 1000, "{arch}: CUBIN of {} bytes", image.len());
            // GPTQ_DUMP_CUBIN=DIR keeps the image (for `cuobjdump -sass`; the
            // tools: scripts/fetch-sass-tools.sh).
            if let Some(d) = std::env::var_os("GPTQ_DUMP_CUBIN") {
                let f = std::path::Path::new(&d).join(format!("w4-{arch}.cubin"));
                std::fs::write(&f, &image).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            }
            for name in crate::kernels::all_functions() {
                assert!(
                    log.contains(name.as_str()),
                    "{arch}: no {name} in the ptxas report"
                );
            }
            // No register spills on the target we tune for, except in the
            // 64-row (m8) variants, which hold the most accumulators.
            if arch != "sm_90a" {
                continue;
            }
            if std::env::var_os("GPTQ_PRINT_PTXAS").is_some() {
                eprintln!("{log}");
            }
            let mut current = String::new();
            let mut wg_seen = 0;
            for line in log.lines() {
                if let Some(i) = line.find("Compiling entry function '") {
                    current = line[i + 26..].split('\'').next().unwrap_or("").to_string();
                }
                if line.contains("spill") && !current.contains("_m8_") {
                    assert!(
                        line.contains("0 bytes spill stores, 0 bytes spill loads"),
                        "{arch} {current}: {line}"
                    );
                }
                // The wgmma kernels' bodies are compiled only for sm_90a
                // (`WG_OK`): one that came out empty would use a handful of
                // registers, not the accumulators of a 64 x 64 tile.
                if current.starts_with("w4_wg_") {
                    if let Some(r) = line.split("Used ").nth(1) {
                        let regs: u32 = r
                            .split(' ')
                            .next()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        assert!(regs >= 64, "{current}: {line}");
                        wg_seen += 1;
                    }
                }
            }
            // Each wgmma kernel for f16 and bf16 activations (the splits of
            // K across blocks share one kernel).
            let kernels: std::collections::HashSet<String> = crate::kernels::WG_VARIANTS
                .iter()
                .map(|v| v.symbol())
                .collect();
            assert_eq!(wg_seen, 2 * kernels.len(), "{log}");
        }
    }
}
