#!/bin/bash
# Same-run A/B of two builds (issue 6): .device-bin/gptq-old.gz (the build before) and gptq.gz (this tree), with
# decode_gpu.gz, forward_gpu.gz and stories260K/: the kernel check and GPU suites of the new build, then
# `gptq bench kernels --batches 1,8,16` of old, new, old, new; prints "M/µs" of the dispatched path for the six
# default shapes in order, one line per build and repeat.
#   bash bench/cuda_kernel_ab2.sh
set -u; B=/tmp/bin; mkdir -p $B; for f in gptq gptq-old decode_gpu forward_gpu; do gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; done
source bench/cuda_env.sh /tmp > /dev/null
$B/gptq bench kernels --device cuda --check-only > $OUT/check.txt 2>&1; grep -E "rows" $OUT/check.txt | cut -c1-60; grep -E "FAILED" $OUT/check.txt | head -5
GPTQ_STORIES_DIR=.device-bin/stories260K GPTQ_TEST_MODELS=tests/data/models $B/forward_gpu --ignored 2>&1 | grep -E "test result|panicked"
GPTQ_STORIES_DIR=.device-bin/stories260K $B/decode_gpu --ignored 2>&1 | grep -E "test result|panicked"
for b in gptq-old gptq gptq-old gptq; do $B/$b bench kernels --device cuda --batches 1,8,16 --markdown $OUT/k-$b.md > /dev/null 2>&1; grep -E "^\| (1|8|16) \|" $OUT/k-$b.md | awk -F'|' '{printf "%s/%s ", $2+0, $3+0}'; echo " $b"; done
