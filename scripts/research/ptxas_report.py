#!/usr/bin/env python3
"""Registers and spills of every kernel of one source file of crates/gptq-cuda/kernels at a git revision (or the
working tree), compiled by the NVRTC library alone (no GPU), as the crate compiles it (-std=c++17, common.cuh in
memory) plus -Xptxas=-v. Compare two revisions to see what a change did to a kernel before spending device time:
    LD_LIBRARY_PATH=$(bash scripts/fetch-nvrtc.sh target/nvrtc) \
        python3 scripts/research/ptxas_report.py REV|WT block.cu [ARCH] [--cubin OUT]
prints `function registers spill_stores spill_loads`; --cubin keeps the image (cuobjdump -sass, fetch-sass-tools.sh)."""
import ctypes
import re
import subprocess
import sys


def source(rev, name):
    if rev == "WT":
        return open(f"crates/gptq-cuda/kernels/{name}").read()
    return subprocess.check_output(["git", "show", f"{rev}:crates/gptq-cuda/kernels/{name}"]).decode()


def compile_source(src, header, name, arch):
    lib = ctypes.CDLL("libnvrtc.so.13")
    prog = ctypes.c_void_p()
    hdr = (ctypes.c_char_p * 1)(header.encode())
    hdr_name = (ctypes.c_char_p * 1)(b"common.cuh")
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 1, hdr, hdr_name) != 0:
        sys.exit("nvrtcCreateProgram failed")
    opts = [b"-std=c++17", f"--gpu-architecture={arch}".encode(), b"-Xptxas=-v"]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        sys.exit(f"compilation failed ({rc}):\n{log.value.decode()}")
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
    cubin = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetCUBIN(prog, cubin)
    return log.value.decode(), cubin.raw


def main():
    args = sys.argv[1:]
    out = None
    if "--cubin" in args:
        i = args.index("--cubin")
        out, args = args[i + 1], args[:i] + args[i + 2:]
    if len(args) < 2:
        sys.exit(__doc__)
    rev, name = args[0], args[1]
    arch = args[2] if len(args) > 2 else "sm_90a"
    log, cubin = compile_source(source(rev, name), source(rev, "common.cuh"), name, arch)
    if out:
        open(out, "wb").write(cubin)
    rows, cur = {}, None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            cur = m.group(1)
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and cur:
            rows.setdefault(cur, [0, 0, 0])[1:] = [int(m.group(1)), int(m.group(2))]
        m = re.search(r"Used (\d+) registers", line)
        if m and cur:
            rows.setdefault(cur, [0, 0, 0])[0] = int(m.group(1))
    for f in sorted(rows):
        print(f, *rows[f])


if __name__ == "__main__":
    main()
