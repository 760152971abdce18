#!/bin/bash
# This build against an older one (issue 6): GPU machine, repo root, .device-bin/ carried (gptq.gz, gptq-old.gz,
# decode_gpu.gz, forward_gpu.gz, stories260K/, tinystories_val.txt): the kernel check and GPU suites of this build,
# the f16 kernel table at BATCHES (default 64,128,256) of both, Nsight Compute's duration of `wg_prep_x` at 64 rows
# of 4096x4096 in both, then the 8B-shaped w4 g128 model (synth_llama.py, RTN on the GPU) decoded 256 tokens by both
# builds, alternating, RUNS (default 3) times each. Writes $OUT/{check.txt,k-new.md,k-old.md,prep-*.txt}.
#   bash bench/cuda_ab.sh
set -u; source bench/cuda_common.sh; cuda_unpack gptq gptq-old decode_gpu forward_gpu
cuda_check
cuda_suites
for g in gptq gptq-old; do
  $B/$g bench kernels --device cuda --act f16 --batches ${BATCHES:-64,128,256} --markdown $OUT/k-$g.md > /dev/null 2>&1 || echo "$g table failed"
  /usr/local/cuda/bin/ncu --clock-control none -k "regex:^wg_prep_x\$" --launch-skip 3 --launch-count 1 --section SpeedOfLight \
    $B/$g bench kernels --device cuda --shapes 4096x4096 --batches 64 --samples 3 > $OUT/prep-$g.txt 2>&1
  echo "$g wg_prep_x: $(grep -E "^ +Duration" $OUT/prep-$g.txt)"
done
paste -d'|' <(grep -E "^### |^\| [0-9]+ \|" $OUT/k-gptq.md | cut -d"|" -f1-4,7,11) <(grep -E "^### |^\| [0-9]+ \|" $OUT/k-gptq-old.md | cut -d"|" -f3,4,7,11)
cuda_q8b
for i in $(seq ${RUNS:-3}); do for g in gptq-old gptq; do echo -n "$g: "; cuda_decode $g; done; done
