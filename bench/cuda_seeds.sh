#!/bin/bash
# Quantization over calibration seeds, for the GPU-vs-CPU perplexity comparison of issue 5
# (bench/results/2026-12-03-gpu-vs-cpu-seeds.md). On the GPU machine, from the repo root with .device-bin/ carried:
# gptq.gz, stories260K/, wiki.test.raw, smol.ab (the SmolLM2 GGUF's tail; its head smol.aa stashed in /tmp/keep by
# `bash bench/cuda_seeds.sh stash` in a call just before).
#   bash bench/cuda_seeds.sh stories-both "SEEDS"   stories260K w4/w3 g32, 32 × 256 Brown tokens, defaults, with
#                                                   both backends, every checkpoint evaluated here (GPU)
#   bash bench/cuda_seeds.sh smol "SEEDS"      SmolLM2 w4 g128, 64 × 512 Brown tokens, defaults; WikiText-2 on the GPU
#   bash bench/cuda_seeds.sh smol-host "SEEDS" the same with --host-forward (the CPU backend's codes); each seed's
#                                              evaluation runs while the next seed quantizes
# BITS=N (default 4) sets the SmolLM2 bit width.
set -u
PART=$1; SEEDS=${2:-"0 1 2 3 4 5 6 7"}
mkdir -p /tmp/keep
if [ "$PART" = stash ]; then cp .device-bin/smol.aa /tmp/keep/; exit 0; fi
B=/tmp/bin; mkdir -p $B
gunzip -c .device-bin/gptq.gz > $B/gptq; chmod +x $B/gptq
source bench/cuda_env.sh /tmp > /dev/null
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
# The SmolLM2 GGUF, joined from its stashed head and carried tail.
smol_model() { M=/tmp/keep/smol.gguf; [ -f $M ] || cat /tmp/keep/smol.aa .device-bin/smol.ab > $M; }
case $PART in
stories-both)
  # Both backends here, every checkpoint evaluated by the same command (the GPU evaluation).
  echo "bits seed cpu_ppl cuda_ppl"
  for s in $SEEDS; do for b in 4 3; do
    for d in cpu cuda; do
      $B/gptq quantize .device-bin/stories260K -o /tmp/st-$d-b$b-s$s --dataset data/calib/brown-excerpt.txt \
        --nsamples 32 --seqlen 256 --group-size 32 --bits $b --seed $s --device $d --overwrite > /tmp/st.log 2>&1 \
        || { echo "stories $d b$b s$s failed"; tail -2 /tmp/st.log; }
    done
    p() { $B/gptq eval /tmp/st-$1-b$b-s$s --dataset .device-bin/tinystories_val.txt --max-windows 40 --seqlen 256 2>&1 \
      | grep -oE "ppl [0-9.]+" | cut -d' ' -f2; }
    echo "$b $s $(p cpu) $(p cuda)"
  done; done
  ;;
smol)
  smol_model
  for s in $SEEDS; do
    $B/gptq quantize $M -o /tmp/m-s$s --dataset data/calib/brown-excerpt.txt --nsamples 64 --seqlen 512 \
      --group-size 128 --bits ${BITS:-4} --seed $s --device cuda --overwrite > $OUT/smol-b${BITS:-4}-s$s.log 2>&1 \
      || echo "smol s$s failed"
    echo "bits ${BITS:-4} seed $s cuda: $($B/gptq eval /tmp/m-s$s --dataset .device-bin/wiki.test.raw --max-windows 40 2>&1 | grep -E ' ppl ')"
  done
  ;;
smol-host)
  smol_model
  ev() { echo "bits ${BITS:-4} seed $1 host: $($B/gptq eval /tmp/h-s$1 --dataset .device-bin/wiki.test.raw --max-windows 40 2>&1 | grep -E ' ppl ')"; }
  for s in $SEEDS; do
    $B/gptq quantize $M -o /tmp/h-s$s --dataset data/calib/brown-excerpt.txt --nsamples 64 --seqlen 512 \
      --group-size 128 --bits ${BITS:-4} --seed $s --device cuda --host-forward --overwrite > $OUT/smol-host-b${BITS:-4}-s$s.log 2>&1 \
      || echo "smol host s$s failed"
    ev $s &
  done
  wait
  ;;
esac
