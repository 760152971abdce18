#!/bin/bash
# Calibration states on the host (`--max-gpu-memory`): page-locked memory with copies overlapped on a second stream
# vs ordinary memory with copies on the compute stream (`GPTQ_CUDA_PINNED=0`, the path before), same binary, one run.
# On the GPU machine, from the repo root with .device-bin/ carried (gptq.gz, forward_gpu.gz, stories260K/).
#   bash bench/cuda_staging.sh [BLOCKS]    GPU forward tests (chunked states), then an 8B-shaped model of BLOCKS
#                                          blocks (default 8), 128 × 2048 calibration tokens, w4 g128:
#                                          plain GPTQ at --max-gpu-memory 12, asymmetric at 20, each both ways.
set -u
BLOCKS=${1:-8}
B=/tmp/bin; mkdir -p $B
for f in gptq forward_gpu; do gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; done
source bench/cuda_env.sh /tmp
S=.device-bin/stories260K
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
GPTQ_STORIES_DIR=$S GPTQ_TEST_MODELS=tests/data/models $B/forward_gpu --ignored --nocapture 2>&1 \
  | grep -E "chunks|total error|test result|panicked|FAILED" | tail -20
M=/tmp/l8b-$BLOCKS
[ -d $M ] || python3 scripts/research/synth_llama.py $M 8b $BLOCKS $S 2>&1 | tail -1
for cfg in "false 12" "true 20"; do set -- $cfg
  for pinned in 0 1; do
    log=$OUT/q8b-$1-mem$2-pinned$pinned.log
    echo "== 8B-shaped, $BLOCKS blocks, --asym-calib $1 --max-gpu-memory $2, GPTQ_CUDA_PINNED=$pinned"
    GPTQ_CUDA_PINNED=$pinned /usr/bin/time -f "wall %e s, max RSS %M KiB" timeout 280 $B/gptq quantize $M \
      -o /tmp/q8b --bits 4 --group-size 128 --dataset data/calib/brown-excerpt.txt --nsamples 128 --seqlen 2048 \
      --asym-calib $1 --max-gpu-memory $2 --device cuda --overwrite > $log 2>&1
    echo rc=$?
    sed 's/\x1b\[[0-9;]*m//g' $log | grep -E "states on the host|block [0-9]+/[0-9]+ done|layers quantized|peak GPU|time:|wall|rror" | tail -7
  done
done
