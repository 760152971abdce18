#!/bin/bash
# The wgmma int4 GEMM (issue 6) against the previous build, same run: .device-bin/gptq-old.gz (the build before) and
# .device-bin/gptq.gz (this tree), with decode_gpu.gz, forward_gpu.gz and stories260K/ beside them. On the GPU machine
# from the repo root: the kernel check of every path against the f64 reference, the GPU test suites, then
# `gptq bench kernels` (default shapes, M = 1..256) of both builds.
#   bash bench/cuda_wgmma.sh
set -u
B=/tmp/bin; mkdir -p $B
for f in gptq gptq-old decode_gpu forward_gpu; do gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; done
source bench/cuda_env.sh /tmp > /dev/null
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
$B/gptq bench kernels --device cuda --check-only > $OUT/check.txt 2>&1
grep -E "rows" $OUT/check.txt; grep FAILED $OUT/check.txt | head -5
GPTQ_STORIES_DIR=.device-bin/stories260K GPTQ_TEST_MODELS=tests/data/models $B/forward_gpu --ignored 2>&1 | grep -E "test result|panicked"
GPTQ_STORIES_DIR=.device-bin/stories260K $B/decode_gpu --ignored 2>&1 | grep -E "test result|panicked"
for b in gptq-old gptq; do
  $B/$b bench kernels --device cuda --batches 1,16,32,64,128,256 --markdown $OUT/kernels-$b.md > /dev/null 2>&1 || echo "$b bench failed"
done
