#!/bin/bash
# wgmma GEMM with the warpgroup index made warp-uniform, running stage indices and descriptors advanced per k tile
# (issue 6): same-run A/B of .device-bin/gptq-old.gz (the build before) and gptq.gz (this tree), with decode_gpu.gz,
# forward_gpu.gz and stories260K/: the kernel check and GPU suites of the new build, then
# `gptq bench kernels --batches 64,128,256` of old, new, old, new; prints "M/µs path" of the dispatched path for the six
# default shapes in order, one line per build and repeat. Writes $OUT/{check.txt,k-*.md}.
#   bash bench/cuda_wgmma_uniform.sh
set -u; B=/tmp/bin; mkdir -p $B; for f in gptq gptq-old decode_gpu forward_gpu; do gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; done
source bench/cuda_env.sh /tmp > /dev/null
$B/gptq bench kernels --device cuda --check-only > $OUT/check.txt 2>&1; grep -E "rows" $OUT/check.txt | cut -c1-60; grep -E "FAILED" $OUT/check.txt | head -5
GPTQ_STORIES_DIR=.device-bin/stories260K GPTQ_TEST_MODELS=tests/data/models $B/forward_gpu --ignored 2>&1 | grep -E "test result|panicked"
GPTQ_STORIES_DIR=.device-bin/stories260K $B/decode_gpu --ignored 2>&1 | grep -E "test result|panicked"
for r in 1 2; do for b in gptq-old gptq; do $B/$b bench kernels --device cuda --batches ${BATCHES:-64,128,256} --markdown $OUT/k-$b-$r.md > /dev/null 2>&1; grep -E "^\| [0-9]+ \|" $OUT/k-$b-$r.md | awk -F'|' '{printf "%s/%s ", $2+0, $3+0}'; echo " $b"; done; done
