#!/bin/bash
# wgmma GEMM with 256-row batch tiles (wgmma.m64n256k16, `w4_wg_b256_*`, issue 6): on the GPU machine from the repo
# root with .device-bin/gptq.gz: the kernel check, then `gptq -v bench kernels --sweep` at BATCHES (default
# 128,192,256,384) and per shape and batch the dispatcher's time, the best 64/128-row variant and the best 256-row
# one. Writes $OUT/{check.txt,sw.md,sw.log,wg.txt,best.txt}.
#   bash bench/cuda_wgmma_b256.sh
set -u; source bench/cuda_common.sh; cuda_unpack gptq
cuda_check
$B/gptq -v bench kernels --device cuda --batches ${BATCHES:-128,192,256,384} --samples 20 --sweep --markdown $OUT/sw.md > $OUT/sw.log 2>&1 || echo "sweep failed"
cuda_sweep_pairs "_b256_"
grep -E "^### |^\| [0-9]+ \|" $OUT/sw.md | cut -d"|" -f1-4,6,7,10
