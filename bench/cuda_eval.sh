#!/bin/bash
# Whole-model perplexity on the GPU (`gptq eval --device cuda`) against the CPU, on the GPU machine, from the repo root
# with .device-bin/ carried: gptq.gz, forward_gpu.gz, solve_gpu.gz (stripped, gzipped), stories260K/,
# tinystories_val.txt, wiki.test.raw from ../shared/data; for part 2 the SmolLM2 GGUF in two halves (the carry limit):
# .device-bin/smol.aa carried in a call of its own just before (kept in /tmp/keep; a warm machine keeps /tmp for
# a few seconds of idleness only), .device-bin/smol.ab with part 2.
#   bash bench/cuda_eval.sh 1   GPU tests (incl. gpu_perplexity_matches_cpu); stories260K eval GPU vs CPU
#   bash bench/cuda_eval.sh stash  (with smol.aa only)
#   bash bench/cuda_eval.sh 2   SmolLM2: fp and w4 g128 (quantized on the GPU) eval GPU vs CPU; full WikiText-2 on the GPU
#   bash bench/cuda_eval.sh 3   8B-shaped model (scripts/research/synth_llama.py): eval time on the GPU
#   bash bench/cuda_eval.sh 4 SEEDS...   SmolLM2 w4 g128 (64 × 512 calibration) quantized with the GPU forward and
#                                        with --host-forward for each seed, both scored on the GPU (40 × 2048)
set -u
PART=${1:-1}
B=/tmp/bin; mkdir -p $B /tmp/keep
[ -f .device-bin/smol.aa ] && cp .device-bin/smol.aa /tmp/keep/ && [ "$PART" = stash ] && exit 0
for f in gptq forward_gpu solve_gpu; do gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; done
source bench/cuda_env.sh /tmp
S=.device-bin/stories260K
ev() { /usr/bin/time -f "  wall %e s" $B/gptq --threads 16 --activations f32 eval "$@" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' | grep -E " ppl |wall|device|error"; }
case $PART in
1)
  GPTQ_STORIES_DIR=$S $B/forward_gpu --ignored --nocapture 2>&1 | grep -E "NLL|block 4: output|total error|test result|panicked|FAILED" | tail -20
  $B/solve_gpu --ignored 2>&1 | grep -E "test result|panicked|FAILED"
  $B/gptq quantize $S -o /tmp/s4 --dataset data/calib/brown-excerpt.txt --nsamples 32 --seqlen 256 --group-size 32 \
    --bits 4 --device cuda --overwrite > /tmp/s4.log 2>&1 || { echo "quantize failed"; tail -3 /tmp/s4.log; }
  for m in $S /tmp/s4; do for d in cpu cuda; do
    echo "stories260K $(basename $m) --device $d:"; ev $m --dataset .device-bin/tinystories_val.txt --seqlen 256 --device $d
  done; done
  ;;
2)
  M=/tmp/keep/smol.gguf
  [ -f $M ] || cat /tmp/keep/smol.aa .device-bin/smol.ab > $M
  $B/gptq quantize $M -o /tmp/m4 --dataset data/calib/brown-excerpt.txt --nsamples 64 --seqlen 512 --group-size 128 \
    --bits 4 --device cuda --overwrite > /tmp/m4.log 2>&1 || { echo "quantize failed"; tail -3 /tmp/m4.log; }
  for m in $M /tmp/m4; do for d in cpu cuda; do
    echo "SmolLM2 $(basename $m) --device $d, WikiText-2 40 x 2048:"
    ev $m --dataset .device-bin/wiki.test.raw --seqlen 2048 --max-windows 40 --device $d
  done; done
  echo "SmolLM2 m4 --device cuda, all of WikiText-2 test:"; ev /tmp/m4 --dataset .device-bin/wiki.test.raw --seqlen 2048 --device cuda
  ;;
4)
  M=/tmp/keep/smol.gguf
  [ -f $M ] || cat /tmp/keep/smol.aa .device-bin/smol.ab > $M
  shift
  for seed in "$@"; do for d in cuda host; do
    extra=""; [ $d = host ] && extra="--host-forward"
    t0=$(date +%s.%N)
    $B/gptq quantize $M -o /tmp/m-$d --dataset data/calib/brown-excerpt.txt --nsamples 64 --seqlen 512 --group-size 128 \
      --bits 4 --seed $seed --device cuda $extra --overwrite > /tmp/m-$d.log 2>&1 || { echo "quantize failed"; tail -3 /tmp/m-$d.log; }
    t1=$(date +%s.%N)
    echo "seed $seed $d forward ($(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s): $(ev /tmp/m-$d --dataset .device-bin/wiki.test.raw --seqlen 2048 --max-windows 40 --device cuda | grep ' ppl ')"
  done; done
  ;;
3)
  python3 scripts/research/synth_llama.py /tmp/l8b 8b 32 $S 2>&1 | tail -1
  echo "8B-shaped (fp16), --device cuda, 40 x 2048:"; ev /tmp/l8b --dataset .device-bin/wiki.test.raw --seqlen 2048 --max-windows 40 --device cuda -v
  ;;
esac
