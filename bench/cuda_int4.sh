#!/usr/bin/env bash
# Produces bench/results/cuda-int4-kernels.md on a CUDA machine in one go:
# the kernel check, torch's tinygemm timings (bench/torch_int4.py) and
# `gptq bench kernels --device cuda` merging them.
#   bash bench/cuda_int4.sh GPTQ_BINARY OUT_DIR [extra gptq bench args...]
set -euo pipefail
bin=${1:?usage: cuda_int4.sh GPTQ_BINARY OUT_DIR [args...]}
out=${2:?usage: cuda_int4.sh GPTQ_BINARY OUT_DIR [args...]}
shift 2
mkdir -p "$out"
source "$(dirname "$0")/cuda_env.sh" "$out"
PYTHONUNBUFFERED=1 python3 bench/torch_int4.py --out "$out/torch.json" 2>&1 | tee "$out/torch.log" || true
"$bin" bench kernels --device cuda --check --sweep --torch-json "$out/torch.json" \
    --markdown "$out/cuda-int4-kernels.md" "$@" 2>&1 | tee "$out/gptq.log"
