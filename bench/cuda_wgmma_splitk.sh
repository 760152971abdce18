#!/bin/bash
# wgmma GEMM with K split across blocks (`_z` kernels, issue 6): GPU machine, repo root, .device-bin/ carried
# (gptq.gz, decode_gpu.gz, forward_gpu.gz, stories260K/): the kernel check (every case along every path, the `_z`
# kernels included), the GPU test suites, then `gptq -v bench kernels --batches 64,128,256 --samples 20 --sweep`;
# prints per shape and batch the dispatched path and each `_z2` variant beside its one-block twin.
# Writes $OUT/{check.txt,sw.md,sw.log,all.txt}.
#   bash bench/cuda_wgmma_splitk.sh
BATCHES=${BATCHES:-64,128,256}
set -u; source bench/cuda_common.sh; cuda_unpack gptq decode_gpu forward_gpu
cuda_check
cuda_suites
$B/gptq -v bench kernels --device cuda --act f16 --batches $BATCHES --samples 20 --sweep --markdown $OUT/sw.md > $OUT/sw.log 2>&1
grep -ah " us" $OUT/sw.log | sed 's/.*DEBUG[^ ]* //' | sort > $OUT/all.txt
for sh in 4096x4096 4096x14336 14336x4096 8192x8192 8192x28672 28672x8192; do for m in ${BATCHES//,/ }; do
  echo "$sh M=$m: $(grep "^$sh M=$m " $OUT/all.txt | grep -E "_z2:|b64_k4_r1_s4:|b128_k3_r1_s3:" | awk '{print $3, $4}' | tr '\n' ' ') best: $(grep "^$sh M=$m " $OUT/all.txt | sort -t: -k2 -n | head -1 | awk '{print $3, $4}')"; done; done
grep -E "^### |^\| [0-9]+ \|" $OUT/sw.md | cut -d"|" -f1-7,10,11,12
