#!/bin/bash
# Final check of a build (issue 6): GPU machine, repo root, .device-bin/ carried (gptq.gz, decode_gpu.gz,
# forward_gpu.gz, stories260K/): the kernel check (f16 and bf16), the GPU test suites and the f16 kernel table at
# BATCHES (default 1,2,16,64,128,256). Writes $OUT/{check.txt,k-f16.md}.
#   bash bench/cuda_final_check.sh
set -u; source bench/cuda_common.sh; cuda_unpack gptq decode_gpu forward_gpu
cuda_check
cuda_suites
$B/gptq bench kernels --device cuda --act f16 --batches ${BATCHES:-1,2,16,64,128,256} --markdown $OUT/k-f16.md > /dev/null 2>&1 || echo "f16 failed"
grep -E "^### |^\| [0-9]+ \|" $OUT/k-f16.md | cut -d"|" -f1-4,6,7,10,11,12
# DECODE=1: also the 8B-shaped w4 g128 model (synth_llama.py, RTN on the GPU; needs .device-bin/tinystories_val.txt)
# decoded 256 tokens twice.
if [ -n "${DECODE:-}" ]; then
  cuda_q8b
  for i in 1 2; do cuda_decode gptq; done
fi
