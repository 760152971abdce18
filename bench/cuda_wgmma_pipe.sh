#!/bin/bash
# wgmma GEMM pipelined inside each chunk (`_p` variants, issue 6): on the GPU machine from the repo root with
# .device-bin/gptq.gz: the kernel check, then `gptq -v bench kernels --batches 64,128,256 --samples 20 --sweep`, and
# per shape and batch each wgmma variant's time beside its `_p` twin's. Writes $OUT/{check.txt,sw.md,sw.log,wg.txt,ab.txt}.
#   bash bench/cuda_wgmma_pipe.sh
set -u; source bench/cuda_common.sh; cuda_unpack gptq
cuda_check
$B/gptq -v bench kernels --device cuda --batches ${BATCHES:-64,128,256} --samples 20 --sweep --markdown $OUT/sw.md > $OUT/sw.log 2>&1
grep -ah " us" $OUT/sw.log | sed 's/.*DEBUG[^ ]* //' | grep "w4_wg" | sort > $OUT/wg.txt
# variant shape M=m time: the plain variant, its _p twin, their ratio (> 1: _p faster).
awk '{v=$3; sub(/:$/,"",v); k=v; sub(/_p$/,"",k); key=k" "$1" "$2; if (v ~ /_p$/) p[key]=$4; else q[key]=$4}
     END {for (x in q) if (x in p) printf "%s %s %s %.3f\n", x, q[x], p[x], q[x]/p[x]}' $OUT/wg.txt | sort > $OUT/ab.txt
cat $OUT/ab.txt
