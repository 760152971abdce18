#!/bin/bash
# wgmma GEMM with the warpgroup index made warp-uniform, running stage indices and descriptors advanced per k tile
# (issue 6): same-run A/B of .device-bin/gptq-old.gz (the build before) and gptq.gz (this tree), with decode_gpu.gz,
# forward_gpu.gz and stories260K/: the kernel check and GPU suites of the new build, then
# `gptq bench kernels --batches 64,128,256` of old, new, old, new; prints "M/µs path" of the dispatched path for the six
# default shapes in order, one line per build and repeat. Writes $OUT/{check.txt,k-*.md}.
#   bash bench/cuda_wgmma_uniform.sh
set -u; source bench/cuda_common.sh; cuda_unpack gptq gptq-old decode_gpu forward_gpu
cuda_check
cuda_suites
for r in 1 2; do for b in gptq-old gptq; do $B/$b bench kernels --device cuda --batches ${BATCHES:-64,128,256} --markdown $OUT/k-$b-$r.md > /dev/null 2>&1; grep -E "^\| [0-9]+ \|" $OUT/k-$b-$r.md | awk -F'|' '{printf "%s/%s ", $2+0, $3+0}'; echo " $b"; done; done
