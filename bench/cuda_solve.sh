#!/usr/bin/env bash
# Issue 5's solve benchmark and GPU solver tests on a CUDA machine, in one go:
# the GPU-vs-CPU solver tests, the PyTorch reference's per-layer solve
# (scripts/research/gptq_torch.py --bench-solve) and `gptq bench solve
# --device cuda` on the same GPU, merged into one Markdown table.
#   bash bench/cuda_solve.sh GPTQ_BINARY SOLVE_TEST_BINARY OUT_DIR [extra gptq bench args...]
# (SOLVE_TEST_BINARY: `cargo test --release -p gptq-cuda --test solve_gpu --no-run` prints its path;
# pass "-" to skip the tests.)
set -euo pipefail
bin=${1:?usage: cuda_solve.sh GPTQ_BINARY SOLVE_TEST_BINARY OUT_DIR [args...]}
tests=${2:?usage: cuda_solve.sh GPTQ_BINARY SOLVE_TEST_BINARY OUT_DIR [args...]}
out=${3:?usage: cuda_solve.sh GPTQ_BINARY SOLVE_TEST_BINARY OUT_DIR [args...]}
shift 3
mkdir -p "$out"
source "$(dirname "$0")/cuda_env.sh" "$out"
if [ "$tests" != "-" ]; then
    "$tests" --ignored --nocapture --test-threads 1 2>&1 | tee "$out/solve-tests.log"
fi
PYTHONUNBUFFERED=1 python3 scripts/research/gptq_torch.py --bench-solve 2>&1 | tee "$out/torch-solve.jsonl"
"$bin" bench solve --device cuda --torch-solve "$out/torch-solve.jsonl" \
    --markdown "$out/cuda-solve.md" "$@" 2>&1 | tee "$out/gptq-solve.log"
