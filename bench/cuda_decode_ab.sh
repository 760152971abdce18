#!/bin/bash
# Decoding A/B of several builds (issue 6): GPU machine, repo root, .device-bin/ carried (each build's NAME.gz,
# decode_gpu.gz, forward_gpu.gz of the first build, stories260K/). The GPU test suites of the
# first build's test binaries (SUITES=decode: decode_gpu only, carried alone), then the 8B-shaped w4 g128 model
# (cuda_q8b) decoded 256 tokens by every build of BUILDS (default "gptq gptq-old"), round-robin, RUNS (default 3)
# times; then per build Nsight Compute's durations of NCU_KERNEL (a regex, default blk_rms_norm) in 8 launches of a
# decode with graphs off, into $OUT/ncu-NAME.txt.
#   BUILDS="gptq-new gptq gptq-old" bash bench/cuda_decode_ab.sh
set -u; source bench/cuda_common.sh
BUILDS=${BUILDS:-"gptq gptq-old"}
if [ "${SUITES:-all}" = decode ]; then
  cuda_unpack $BUILDS decode_gpu
  GPTQ_STORIES_DIR=$S $B/decode_gpu --ignored 2>&1 | grep -E "test result|panicked"
else cuda_unpack $BUILDS decode_gpu forward_gpu; cuda_suites; fi
cuda_q8b
for i in $(seq ${RUNS:-3}); do for g in $BUILDS; do echo -n "$g: "; cuda_decode $g; done; done
for g in $BUILDS; do
  GPTQ_CUDA_GRAPH=0 /usr/local/cuda/bin/ncu --clock-control none -k "regex:${NCU_KERNEL:-blk_rms_norm}" --launch-skip 64 \
    --launch-count 8 --section SpeedOfLight $B/$g generate /tmp/q8b --max-new-tokens 8 --ignore-eos --device cuda \
    > $OUT/ncu-$g.txt 2>&1
  echo "$g ${NCU_KERNEL:-blk_rms_norm} durations: $(grep -E "^ +Duration" $OUT/ncu-$g.txt | awk '{printf "%s %s, ", $(NF), $(NF-1)}')"
done
