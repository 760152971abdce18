#!/bin/bash
# The dispatcher after `2026-12-04-wgmma-pipe.md` (issue 6): the kernel check, then one sweep at 1-4, 8, 64, 128 and
# 256 rows (every variant's time and the dispatcher's path in the same run). GPU machine, repo root, .device-bin/
# carried. Writes $OUT/{check.txt,sw.md,sw.log,all.txt}.
#   bash bench/cuda_wgmma_pipe3.sh
set -u; source bench/cuda_common.sh; cuda_unpack gptq
cuda_check
$B/gptq -v bench kernels --device cuda --act f16 --batches 1,2,3,4,8,64,128,256 --samples 30 --sweep --markdown $OUT/sw.md > $OUT/sw.log 2>&1
grep -ah " us" $OUT/sw.log | sed 's/.*DEBUG[^ ]* //' | sort > $OUT/all.txt
for sh in 4096x14336 8192x28672; do for m in 1 2 3 4 8; do echo "$sh M=$m: $(grep "^$sh M=$m " $OUT/all.txt | grep m1_r | sort -t: -k2 -n | awk '{print $3, $4}' | head -4 | tr '\n' ' ')"; done; done
grep -E "^### |^\| [0-9]+ \|" $OUT/sw.md | cut -d"|" -f1-7,10,11,12
