#!/bin/bash
# Issue 6's closing measurement in one device call, the most needed first, each step under its own time limit so a
# call cut short still brings back what ran (GPU machine, repo root, .device-bin/ carried: gptq.gz of this tree,
# gptq-old.gz of an older build for the decode A/B, decode_gpu.gz, forward_gpu.gz, cubin/, stories260K/,
# tinystories_val.txt):
#   1. the GPU test suites (forward_gpu, decode_gpu)
#   2. the 8B-shaped w4 g128 model decoded 256 tokens by gptq and gptq-old, round-robin, RUNS times (default 2), and
#      by gptq with programmatic dependent launch (GPTQ_CUDA_PDL=1), same rounds
#   3. torch's tinygemm (bench/torch_int4.py), then `gptq bench kernels` with bf16 and f16 activations, batches 1, 16,
#      64, 256 (the table: ours, cuBLAS, the int4 floor, tinygemm), into $OUT/k-bf16.md, $OUT/k-f16.md
#   4. the kernel check (every case along every path, f16 and bf16) into $OUT/check.txt
# Everything after step 1 runs until DEADLINE seconds (default 540) after the start (END, see bench/cuda_common.sh).
#   export OUT; bash bench/cuda_issue6_final.sh
set -u; source bench/cuda_common.sh
END=$(( $(date +%s) + ${DEADLINE:-540} ))
cuda_unpack gptq gptq-old decode_gpu forward_gpu
echo "== suites $(date -u +%T)"; cuda_suites
echo "== decode $(date -u +%T)"; cuda_q8b
for i in $(seq ${RUNS:-2}); do
  for cfg in gptq gptq-old gptq+pdl; do
    [ $(( END - $(date +%s) )) -ge 30 ] || break 2
    g=${cfg%+pdl}; pdl=0; [ "$cfg" != "$g" ] && pdl=1
    echo -n "$cfg: "; DECODE_TIMEOUT=60 cuda_decode $g GPTQ_CUDA_PDL=$pdl
  done
done
echo "== tables $(date -u +%T)"; cuda_tables
echo "== check $(date -u +%T)"; cuda_check
echo "== done $(date -u +%T)"
