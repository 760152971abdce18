#!/bin/bash
# The CPU side of the GPU-forward vs CPU comparison over calibration seeds (issue 5's "perplexity within 0.5 %"):
# SmolLM2 quantized on the CPU backend with the settings of bench/cuda_asym.sh part 2 (defaults, w4 g128, 64 × 512
# Brown tokens) for each seed, then WikiText-2 (40 × 2048) on the CPU. That evaluation uses int8 activations (the CPU
# default), so its perplexities are not comparable with the GPU evaluation of bench/cuda_seeds.sh smol.
#   bash bench/smollm2_seeds_cpu.sh GPTQ_BIN SMOL_GGUF OUT_DIR SEED...
# BITS (default 4), GROUP (default 128; -1 per channel) and WINDOWS (default 40) change the setting.
# GPTQ_CALIB_REVERSE=1 in the environment feeds the same samples in reverse order (the same arithmetic with its f32
# sums in another order: bench/results/2026-12-05-sum-order.md).
set -u
BIN=$1; M=$2; OUT=$3; shift 3
mkdir -p $OUT
for s in "$@"; do
  $BIN quantize $M -o $OUT/cpu-s$s --dataset data/calib/brown-excerpt.txt --nsamples 64 --seqlen 512 \
    --group-size=${GROUP:-128} --bits ${BITS:-4} --seed $s --device cpu --overwrite > $OUT/cpu-s$s.log 2>&1 || echo "seed $s: quantize failed"
  echo "seed $s cpu: $(sed 's/\x1b\[[0-9;]*m//g' $OUT/cpu-s$s.log | grep -E 'layers quantized')"
  echo "seed $s cpu: $($BIN eval $OUT/cpu-s$s --dataset ../shared/data/text/wikitext2/wiki.test.raw --max-windows ${WINDOWS:-40} \
    --device cpu 2>&1 | grep -E ' ppl ')"
done
