#!/bin/bash
# wgmma GEMM with 256-row batch tiles (wgmma.m64n256k16, `w4_wg_b256_*`, issue 6): on the GPU machine from the repo
# root with .device-bin/gptq.gz: the kernel check, then `gptq -v bench kernels --sweep` at BATCHES (default
# 128,192,256,384) and per shape and batch the dispatcher's time, the best 64/128-row variant and the best 256-row
# one. Writes $OUT/{check.txt,sw.md,sw.log,wg.txt,best.txt}.
#   bash bench/cuda_wgmma_b256.sh
set -u; source bench/cuda_common.sh; cuda_unpack gptq
cuda_check
$B/gptq -v bench kernels --device cuda --batches ${BATCHES:-128,192,256,384} --samples 20 --sweep --markdown $OUT/sw.md > $OUT/sw.log 2>&1 || echo "sweep failed"
grep -ah " us" $OUT/sw.log | sed 's/.*DEBUG[^ ]* //' | grep "w4_wg" | grep -v again: | sort > $OUT/wg.txt
# shape M=m: best variant of 64/128 rows and its µs, best of 256 rows and its µs, their ratio (> 1: b256 faster).
awk '{v=$3; sub(/:$/,"",v); key=$1" "$2; t=$4+0; big=(v ~ /_b256_/);
      if (big) { if (!(key in bt) || t < bt[key]) { bt[key]=t; bv[key]=v } }
      else { if (!(key in st) || t < st[key]) { st[key]=t; sv[key]=v } } }
     END {for (k in st) if (k in bt) printf "%s %s %.2f %s %.2f %.3f\n", k, sv[k], st[k], bv[k], bt[k], st[k]/bt[k]}' \
    $OUT/wg.txt | sort -t' ' -k1,1 -k2,2V > $OUT/best.txt
cat $OUT/best.txt
grep -E "^### |^\| [0-9]+ \|" $OUT/sw.md | cut -d"|" -f1-4,6,7,10
