#!/usr/bin/env bash
# CPU forward benchmarks for issue "Load and run models", in one run:
#   1. gptq bench: prefill GFLOP/s vs plain GEMM on the same shapes, decode tok/s
#      vs memory bandwidth (SmolLM2-135M-Instruct, f32 weights dequantized from its GGUF);
#   2. the full WikiText-2 test perplexity at seqlen 2048 (GPTQ protocol).
# Results go to bench/results/DATE-cpu-forward-HOST.{txt,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p gptq-cli
gguf=${GPTQ_SMOLLM2_GGUF:-$(bash scripts/fetch-smollm2.sh .dev/smollm2)}
date=$(date -u +%Y-%m-%d)
out=bench/results/$date-cpu-forward-$(hostname -s)
{
    echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(git rev-parse --short HEAD) on $(hostname -s): $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "\$ gptq bench SmolLM2-135M-Instruct.Q4_1.gguf --seqlen 2048 --decode-tokens 64"
    target/release/gptq bench "$gguf" --seqlen 2048 --decode-tokens 64 --json "$out-bench.json" 2>/dev/null
    echo "\$ gptq eval SmolLM2-135M-Instruct.Q4_1.gguf --dataset wikitext2 --seqlen 2048"
    target/release/gptq eval "$gguf" --dataset wikitext2 --seqlen 2048 --json "$out-eval.json" 2>/dev/null
} | tee "$out.txt"
