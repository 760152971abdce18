#!/bin/bash
# wgmma GEMM with row groups sharing the activation stages (`w4_wg_*_gN`, issue 6): on the GPU machine from the repo
# root with .device-bin/ carried (gptq.gz, decode_gpu.gz, forward_gpu.gz, stories260K/): the kernel check, the GPU
# test suites, then `gptq -v bench kernels --sweep` at BATCHES (default 128,192,256) and per shape and batch the
# dispatcher's time, the best variant without row groups and the best with. Writes $OUT/{check.txt,sw.md,sw.log,
# wg.txt,best.txt}.
#   bash bench/cuda_wgmma_groups.sh
set -u; source bench/cuda_common.sh; cuda_unpack gptq decode_gpu forward_gpu
cuda_check
cuda_suites
$B/gptq -v bench kernels --device cuda --batches ${BATCHES:-128,192,256} --samples 20 --sweep --markdown $OUT/sw.md > $OUT/sw.log 2>&1 || echo "sweep failed"
cuda_sweep_pairs "_g[0-9]"
grep -E "^### |^\| [0-9]+ \|" $OUT/sw.md | cut -d"|" -f1-4,6,7,10
