#!/bin/bash
# wgmma variants (issue 6; the warp-specialised `w4_wgp_*` it was written for are in commit c96a80e only): on the GPU machine from the
# repo root with .device-bin/gptq.gz: the kernel check (both activation types), then
# `gptq -v bench kernels --batches 64,128,256 --samples 20 --sweep` and every wgmma variant's time per shape and batch,
# fastest first, with cuBLAS f16 beside it. Writes $OUT/{check.txt,sw.md,sw.log,wg.txt}.
#   bash bench/cuda_wgmma_ws.sh
set -u; B=/tmp/bin; mkdir -p $B; gunzip -c .device-bin/gptq.gz > $B/gptq; chmod +x $B/gptq
source bench/cuda_env.sh /tmp > /dev/null
$B/gptq bench kernels --device cuda --check-only > $OUT/check.txt 2>&1; grep -E "rows" $OUT/check.txt | cut -c1-60
grep -E "FAILED" $OUT/check.txt | head -8
$B/gptq -v bench kernels --device cuda --batches ${BATCHES:-64,128,256} --samples 20 --sweep --markdown $OUT/sw.md \
  > $OUT/sw.log 2>&1
grep -h " us" $OUT/sw.log | sed 's/.*DEBUG[^ ]* //' | grep "w4_wg" | sort > $OUT/wg.txt
for sh in 4096x4096 4096x14336 14336x4096 8192x8192 8192x28672 28672x8192; do for m in $(echo ${BATCHES:-64,128,256} | tr , " "); do
  echo "$sh M=$m: $(grep "^$sh M=$m " $OUT/wg.txt | sort -t: -k2 -n | head -6 | awk '{print $3, $4}' | tr '\n' ' ')"
done; done
grep -E "^### |^\| [0-9]+ \|" $OUT/sw.md | cut -d"|" -f1-7,11,12
