#!/bin/bash
# Where the wgmma GEMM's warps stall, per SASS instruction (issue 6): Nsight Compute's source counters (warp-state
# samples per instruction) for one launch of a variant, real clocks. On the GPU machine, repo root, .device-bin/gptq.gz:
#   bash bench/cuda_wgmma_ncu3.sh "SHAPE M VARIANT" ...     writes $OUT/src-VARIANT-M.csv and a summary
set -u; source bench/cuda_common.sh; cuda_unpack gptq
for spec in "$@"; do set -- $spec
/usr/local/cuda/bin/ncu --clock-control none -k "regex:^$3\$" --launch-skip 1 --launch-count 1 \
  --section SourceCounters --section WarpStateStats --section SpeedOfLight \
  --page source --print-source sass --csv \
  $B/gptq bench kernels --device cuda --shapes $1 --batches $2 --samples 3 --sweep > $OUT/src-$3-$2.csv 2> $OUT/src-$3-$2.err
echo "== $*: $(wc -l < $OUT/src-$3-$2.csv) lines"; head -3 $OUT/src-$3-$2.csv | cut -c1-600
done
