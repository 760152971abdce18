#!/bin/bash
# The batch-1 kernel with four row tiles per warp on wide layers of K ≤ 4096 (issue 6): GPU machine, repo root,
# .device-bin/ carried (gptq.gz, gptq-old.gz = the build before, decode_gpu.gz, forward_gpu.gz, stories260K/): the
# kernel check, the GPU test suites, then the 8B-shaped w4 g128 model (synth_llama.py, RTN on the GPU) decoded 256
# tokens by both builds, alternating, three times each. Writes $OUT/check.txt.
#   bash bench/cuda_m1_decode.sh
set -u; source bench/cuda_common.sh; cuda_unpack gptq gptq-old decode_gpu forward_gpu
cuda_check
cuda_suites
python3 scripts/research/synth_llama.py /tmp/l8b 8b 32 $S 2>&1 | tail -1
$B/gptq quantize /tmp/l8b -o /tmp/q8b --method rtn --bits 4 --group-size 128 --dataset $S/../tinystories_val.txt \
    --nsamples 4 --seqlen 128 --device cuda --overwrite > /tmp/q8b.log 2>&1 || { echo "quantize failed"; tail -3 /tmp/q8b.log; }
for i in 1 2 3; do for g in gptq-old gptq; do echo -n "$g: "; cuda_decode $g; done; done
