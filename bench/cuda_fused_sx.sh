#!/bin/bash
# Fused int4 variants with the activations staged in shared memory (`w4_mma_*_x`, issue 6) against the others:
# on the GPU machine from the repo root with .device-bin/gptq.gz: the kernel check (both activation types), then
# `gptq -v bench kernels --batches 16,32,64 --sweep` and per shape and batch the fastest fused variants of each
# kind, with cuBLAS f16 and the dispatcher's choice beside them. Writes $OUT/{check.txt,sw.md,sw.log,mma.txt}.
#   bash bench/cuda_fused_sx.sh
set -u; B=/tmp/bin; mkdir -p $B; gunzip -c .device-bin/gptq.gz > $B/gptq; chmod +x $B/gptq
source bench/cuda_env.sh /tmp > /dev/null
$B/gptq bench kernels --device cuda --check-only > $OUT/check.txt 2>&1; grep -E "rows" $OUT/check.txt | cut -c1-60
grep -E "FAILED" $OUT/check.txt | head -8
$B/gptq -v bench kernels --device cuda --batches ${BATCHES:-16,32,64} --samples 20 --sweep --markdown $OUT/sw.md \
  > $OUT/sw.log 2>&1
grep -h " us" $OUT/sw.log | sed 's/.*DEBUG[^ ]* //' | grep "w4_" | sort > $OUT/mma.txt
for sh in 4096x4096 4096x14336 14336x4096 8192x8192 8192x28672 28672x8192; do for m in $(echo ${BATCHES:-16,32,64} | tr , " "); do
  echo "$sh M=$m: plain $(grep "^$sh M=$m w4_mma" $OUT/mma.txt | grep -v "_x:" | sort -t: -k2 -n | head -2 | awk '{print $3, $4}' | tr '\n' ' ')"
  echo "$sh M=$m: sx    $(grep "^$sh M=$m w4_mma" $OUT/mma.txt | grep "_x:" | sort -t: -k2 -n | head -3 | awk '{print $3, $4}' | tr '\n' ' ')"
done; done
grep -E "^### |^\| [0-9]+ \|" $OUT/sw.md | cut -d"|" -f1-7,11,12
