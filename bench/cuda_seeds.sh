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
# BITS=N (default 4) sets the SmolLM2 bit width, GROUP=G (default 128, -1 per channel) its group size; WINDOWS=W
# (default 40) the WikiText-2 windows; EVAL_DEVICE=cpu evaluates on the host (the CPU backend's evaluator, the same
# command as bench/smollm2_seeds_cpu.sh, so GPU checkpoints evaluated here compare with CPU ones evaluated elsewhere).
# With EVAL_DEVICE set, each smol seed's evaluation runs while the next seeds quantize (EVAL_JOBS at once, default 2).
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
EV_ARGS="--max-windows ${WINDOWS:-40} ${EVAL_DEVICE:+--device $EVAL_DEVICE}"
# Quantizes SmolLM2 with seed $2 into $1 (extra quantize flags after), logging to $OUT.
smol_quant() {
  local dir=$1 s=$2; shift 2
  $B/gptq quantize $M -o $dir --dataset data/calib/brown-excerpt.txt --nsamples 64 --seqlen 512 \
    --group-size=${GROUP:-128} --bits ${BITS:-4} --seed $s --overwrite "$@" > $OUT/$(basename $dir).log 2>&1 \
    || echo "$dir: quantize failed"
}
smol_eval() { echo "bits ${BITS:-4} group ${GROUP:-128} seed $2 $3: $($B/gptq eval $1 --dataset .device-bin/wiki.test.raw $EV_ARGS 2>&1 | grep -E ' ppl ')"; }
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
    smol_quant /tmp/m-s$s $s --device cuda
    if [ -n "${EVAL_DEVICE:-}" ]; then
      # At most EVAL_JOBS (default 2) host evaluations at once.
      while [ "$(jobs -rp | wc -l)" -ge "${EVAL_JOBS:-2}" ]; do wait -n; done
      smol_eval /tmp/m-s$s $s cuda &
    else smol_eval /tmp/m-s$s $s cuda; fi
  done
  wait
  ;;
smol-host)
  smol_model
  for s in $SEEDS; do
    smol_quant /tmp/h-s$s $s --device cuda --host-forward
    smol_eval /tmp/h-s$s $s host &
  done
  wait
  ;;
esac
