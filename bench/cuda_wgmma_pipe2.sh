#!/bin/bash
# The dispatcher after the `_p` wgmma variant and the batch-1 row changes (issue 6). GPU machine, repo root,
# .device-bin/ carried (gptq.gz, decode_gpu.gz, forward_gpu.gz, stories260K/): the kernel check (f16 and bf16), the
# GPU test suites, then `gptq -v bench kernels --act f16 --batches 1,2,8,128,256 --samples 30 --sweep` (every
# variant's time in the same run: the old choice beside the new) and the bf16 table. Writes
# $OUT/{check.txt,sw.md,sw.log,all.txt,k-bf16.md}.
#   bash bench/cuda_wgmma_pipe2.sh
set -u; source bench/cuda_common.sh; cuda_unpack gptq decode_gpu forward_gpu
cuda_check
cuda_suites
$B/gptq -v bench kernels --device cuda --act f16 --batches ${BATCHES:-1,2,8,128,256} --samples 30 --sweep --markdown $OUT/sw.md > $OUT/sw.log 2>&1
grep -ah " us" $OUT/sw.log | sed 's/.*DEBUG[^ ]* //' | sort > $OUT/all.txt
for v in w4_mma_m1_r2_w1_k8_s4 w4_mma_m1_r2_w1_k8_s4_s w4_mma_m1_r4_w1_k8_s4_s w4_wg_b128_k2_r2_s4 w4_wg_b128_k2_r2_s4_p; do
  echo "$v: $(grep " $v: " $OUT/all.txt | awk '{print $1, $2, $4}' | tr '\n' ';')"; done
grep -E "^### |^\| [0-9]+ \|" $OUT/sw.md | cut -d"|" -f1-7,11,12
$B/gptq bench kernels --device cuda --act bf16 --batches 1,8,256 --markdown $OUT/k-bf16.md > /dev/null 2>&1 || echo "bf16 failed"
grep -E "^### |^\| [0-9]+ \|" $OUT/k-bf16.md | cut -d"|" -f1-7,11,12
