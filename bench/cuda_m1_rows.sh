#!/bin/bash
# Batch-1 fused kernels with more rows per warp or more K splits (`m1_r4_*`, `m1_r2_w1_k16`, `m1_r2_w1_k8_s6`; issue 6):
# on the GPU machine from the repo root with .device-bin/gptq.gz: the kernel check, then
# `gptq -v bench kernels --batches 1,8 --samples 30 --sweep` and every m1 variant's time per shape and batch, fastest
# first. Writes $OUT/{check.txt,sw.md,sw.log,m1.txt}.
#   bash bench/cuda_m1_rows.sh
set -u; source bench/cuda_common.sh; cuda_unpack gptq
cuda_check
$B/gptq -v bench kernels --device cuda --batches 1,8 --samples 30 --sweep --markdown $OUT/sw.md > $OUT/sw.log 2>&1
grep -ah " us" $OUT/sw.log | sed 's/.*DEBUG[^ ]* //' | grep "w4_mma_m1_" | sort > $OUT/m1.txt
for sh in 4096x4096 4096x14336 14336x4096 8192x8192 8192x28672 28672x8192; do for m in 1 8; do echo "$sh M=$m: $(grep "^$sh M=$m " $OUT/m1.txt | sort -t: -k2 -n | awk '{print $3, $4}' | head -6 | tr '\n' ' ')"; done; done
grep -E "^\| (1|8) \|" $OUT/sw.md | head -12
