#!/usr/bin/env python3
"""Times torch's tinygemm int4 kernel (torch.ops.aten._weight_int4pack_mm) on
the shapes and batch sizes of `gptq bench kernels --device cuda`, measured the
same way: one call per CUDA-graph node, weights rotated over copies of at
least 384 MiB (so every call reads HBM, not L2), median over replays timed
with CUDA events. Writes JSON that `gptq bench kernels --torch-json` merges.

tinygemm takes bf16 activations and a bf16 [K/group, N, 2] scale-and-zero
tensor; the weights are random 4-bit codes packed by
torch.ops.aten._convert_weight_to_int4pack (inner K tiles = 8).

Usage: python3 bench/torch_int4.py --out torch.json [--shapes 4096x4096,...]
       [--batches 1,2,4,8,16,64,256] [--group-size 128] [--samples 30]
"""

import argparse
import json
import statistics
import sys

import torch

SHAPES = "4096x4096,4096x14336,14336x4096,8192x8192,8192x28672,28672x8192"
BATCHES = "1,2,4,8,16,64,256"
TARGET_BYTES = 384 << 20


def pack_weight(n, k, inner_k_tiles):
    codes = torch.randint(0, 16, (n, k), dtype=torch.int32, device="cuda")
    # [N, K/2] uint8: two codes per byte, the even column in the high nibble.
    u8 = ((codes[:, 0::2] << 4) | codes[:, 1::2]).to(torch.uint8)
    return torch.ops.aten._convert_weight_to_int4pack(u8, inner_k_tiles)


def time_us(fn, calls, samples):
    """Median µs of one call: `calls` calls captured in a CUDA graph."""
    for i in range(calls):
        fn(i)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        for i in range(calls):  # warm-up on the capture stream
            fn(i)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, stream=stream):
            for i in range(calls):
                fn(i)
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    times = []
    for s in range(samples + 3):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        if s >= 3:
            times.append(start.elapsed_time(end) * 1e3 / calls)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--batches", default=BATCHES)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--inner-k-tiles", type=int, default=8)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    torch.manual_seed(0)
    dev = torch.cuda.get_device_name()
    out = {
        "torch": torch.__version__,
        "device": dev,
        "op": "torch.ops.aten._weight_int4pack_mm",
        "activation_dtype": "bf16",
        "group_size": a.group_size,
        "inner_k_tiles": a.inner_k_tiles,
        "results": [],
        "errors": [],
    }
    batches = [int(b) for b in a.batches.split(",")]
    for shape in a.shapes.split(","):
        k, n = (int(v) for v in shape.lower().split("x"))
        try:
            w0 = pack_weight(n, k, a.inner_k_tiles)
            wbytes = w0.numel() * w0.element_size()
            copies = max(1, min(64, -(-TARGET_BYTES // wbytes)))
            ws = [w0] + [w0.clone() for _ in range(copies - 1)]
            sz = (torch.rand(k // a.group_size, n, 2, device="cuda") * 0.01).to(torch.bfloat16)
            calls = copies * max(1, 8 // copies)
            for m in batches:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

                def call(i, x=x):
                    return torch.ops.aten._weight_int4pack_mm(x, ws[i % copies], a.group_size, sz)

                us = time_us(call, calls, a.samples)
                out["results"].append({"k": k, "n": n, "m": m, "us": us})
                print(f"{k}x{n} M={m}: {us:.2f} us", flush=True)
            del ws, w0
            torch.cuda.empty_cache()
        except Exception as e:  # keep going: report what failed
            msg = f"{k}x{n}: {type(e).__name__}: {e}"
            print(msg, file=sys.stderr, flush=True)
            out["errors"].append(msg)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
