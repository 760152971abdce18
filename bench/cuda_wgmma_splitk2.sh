#!/bin/bash
# K split across blocks, for real this time (issue 6): the split-K experiment of 2ce94cf launched the plain kernel
# (its symbol had no `_z`), which ignores grid z, so every block computed its tile's whole K. On the GPU machine from
# the repo root with .device-bin/gptq.gz: the kernel check (every case along every path, the `_z` kernels included),
# then `gptq -v bench kernels --sweep` at BATCHES (default 64,128) on SHAPES, and per shape and batch every wgmma
# variant's time, fastest first. Writes $OUT/{check.txt,sw.md,sw.log,wg.txt}.
#   bash bench/cuda_wgmma_splitk2.sh
set -u; source bench/cuda_common.sh; cuda_unpack gptq
cuda_check
$B/gptq -v bench kernels --device cuda --shapes ${SHAPES:-4096x4096,14336x4096,4096x14336,8192x8192} \
    --batches ${BATCHES:-64,128} --samples 20 --sweep --markdown $OUT/sw.md > $OUT/sw.log 2>&1 || echo "sweep failed"
grep -ah " us" $OUT/sw.log | sed 's/.*DEBUG[^ ]* //' | grep -v round | sort -k1,1 -k2,2V -k4,4n > $OUT/wg.txt
awk '{k=$1" "$2; if (n[k] < 6) {printf "%s %s %s %s\n", $1, $2, $3, $4; n[k]++}}' $OUT/wg.txt
grep -E "^### |^\| [0-9]+ \|" $OUT/sw.md | cut -d"|" -f1-4,6,7,10
