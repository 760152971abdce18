#!/bin/bash
# Final check of a build (issue 6): GPU machine, repo root, .device-bin/ carried (gptq.gz, decode_gpu.gz,
# forward_gpu.gz, stories260K/): the kernel check (f16 and bf16), the GPU test suites and the f16 kernel table at
# BATCHES (default 1,2,16,64,128,256). Writes $OUT/{check.txt,k-f16.md}.
#   bash bench/cuda_final_check.sh
set -u; B=/tmp/bin; mkdir -p $B; for f in gptq decode_gpu forward_gpu; do gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; done
source bench/cuda_env.sh /tmp > /dev/null
S=.device-bin/stories260K
$B/gptq bench kernels --device cuda --check-only > $OUT/check.txt 2>&1; grep -E "rows" $OUT/check.txt | cut -c1-60; grep FAILED $OUT/check.txt | head
GPTQ_STORIES_DIR=$S GPTQ_TEST_MODELS=tests/data/models $B/forward_gpu --ignored 2>&1 | grep -E "test result|panicked"
GPTQ_STORIES_DIR=$S $B/decode_gpu --ignored 2>&1 | grep -E "test result|panicked"
$B/gptq bench kernels --device cuda --act f16 --batches ${BATCHES:-1,2,16,64,128,256} --markdown $OUT/k-f16.md > /dev/null 2>&1 || echo "f16 failed"
grep -E "^### |^\| [0-9]+ \|" $OUT/k-f16.md | cut -d"|" -f1-4,6,7,10,11,12
