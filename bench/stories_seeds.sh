#!/bin/bash
# stories260K over calibration seeds on the CPU machine: the CPU backend's checkpoints (made here) and the GPU
# forward's (made on the GPU machine by `bash bench/cuda_seeds.sh stories`, in GPU_DIR), all evaluated here on the CPU
# with the same command, so only the quantization differs.
#   bash bench/stories_seeds.sh GPTQ_BIN GPU_DIR OUT_DIR "SEEDS"
set -u
BIN=$1; GPU=$2; OUT=$3; SEEDS=${4:-"0 1 2 3 4 5 6 7"}
S=../shared/data/models/stories260K
mkdir -p $OUT
ppl() { $BIN eval "$1" --dataset ../shared/data/text/tinystories/tinystories_val.txt --max-windows 40 --seqlen 256 \
  --device cpu 2>&1 | grep -E " ppl " | grep -oE "ppl [0-9.]+" | cut -d' ' -f2; }
echo "bits seed cpu cuda"
for s in $SEEDS; do for b in 4 3; do
  $BIN quantize $S -o $OUT/st-b$b-s$s --dataset data/calib/brown-excerpt.txt --nsamples 32 --seqlen 256 \
    --group-size 32 --bits $b --seed $s --device cpu --overwrite > $OUT/st-b$b-s$s.log 2>&1 || echo "cpu b$b s$s failed"
  g="-"; [ -d $GPU/st-b$b-s$s ] && g=$(ppl $GPU/st-b$b-s$s)
  echo "$b $s $(ppl $OUT/st-b$b-s$s) $g"
done; done
