#!/bin/bash
# bf16 activations in the int4 kernels (issue 6). On the GPU machine from the repo root, with .device-bin/gptq.gz,
# decode_gpu.gz, forward_gpu.gz and stories260K/ (this tree's build): the kernel check of every path for f16 and bf16
# activations against the f64 reference, the GPU test suites, then `gptq bench kernels` with f16 and with bf16
# activations back to back (results in $OUT/k-f16.md and $OUT/k-bf16.md).
#   bash bench/cuda_bf16.sh
set -u; B=/tmp/bin; mkdir -p $B; for f in gptq decode_gpu forward_gpu; do gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; done
source bench/cuda_env.sh /tmp > /dev/null
/usr/bin/time -f "check %e s" $B/gptq bench kernels --device cuda --check-only > $OUT/check.txt 2>&1; tail -1 $OUT/check.txt; grep -E "rows|bf16" $OUT/check.txt | head -20; grep FAILED $OUT/check.txt | head
GPTQ_STORIES_DIR=.device-bin/stories260K GPTQ_TEST_MODELS=tests/data/models $B/forward_gpu --ignored 2>&1 | grep -E "test result|panicked"
GPTQ_STORIES_DIR=.device-bin/stories260K $B/decode_gpu --ignored 2>&1 | grep -E "test result|panicked"
for a in f16 bf16; do $B/gptq bench kernels --device cuda --act $a --batches 1,16,64,256 --markdown $OUT/k-$a.md > /dev/null 2>&1 || echo "$a failed"; done
grep -A8 "### Targets" $OUT/k-f16.md $OUT/k-bf16.md
