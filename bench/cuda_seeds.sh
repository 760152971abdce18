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
#   bash bench/cuda_seeds.sh smol-batch "SEEDS"  as smol, for as many seeds as fit in DEADLINE seconds (default 480):
#       QJOBS (default 2) GPU quantizations at once, each checkpoint evaluated on the GPU ($OUT/gpu-gpueval.txt), the
#       first CAL (default 8) also on the host CPU ($OUT/gpu-hosteval.txt: the CPU evaluator of
#       bench/smollm2_seeds_cpu.sh, to carry the VM's CPU seeds over to the GPU evaluator). Meanwhile CPU_SEEDS are
#       quantized on the host CPU (--device cpu, CPU_JOBS at once, default 1, of CPU_THREADS threads, default 8;
#       with SEEDS "" the call makes CPU seeds only, e.g. CPU_JOBS=7 CPU_THREADS=2; none starts later than
#       CPU_MARGIN seconds, default 120, before DEADLINE) and evaluated both ways (CPU_HOSTEVAL=0: on the GPU only)
#       ($OUT/cpu-gpueval.txt, $OUT/cpu-hosteval.txt); the sha256 of each CPU checkpoint goes to $OUT/cpu-sha.txt
#       (seed 0 made on the VM: 255bf485...). Checkpoints are deleted once evaluated.
set -u
PART=$1; SEEDS=${2-"0 1 2 3 4 5 6 7"}
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
smol-batch)
  smol_model
  T0=$(date +%s)
  # left [MARGIN]: whether MARGIN seconds (default 0) remain before DEADLINE.
  left() { [ $(( $(date +%s) - T0 + ${1:-0} )) -lt ${DEADLINE:-480} ]; }
  WIN="--dataset .device-bin/wiki.test.raw --max-windows ${WINDOWS:-40}"
  # ev DIR SEED TAG FILE DEVICE [THREADS]: one evaluation line into FILE.
  ev() { echo "bits ${BITS:-4} group ${GROUP:-128} seed $2 $3: $($B/gptq --threads ${6:-16} eval $1 $WIN --device $5 2>&1 \
    | grep -E ' ppl |rror')" >> $OUT/$4; }
  # cpu_seed S: one host-CPU seed, quantized, hashed, evaluated both ways.
  cpu_seed() {
    smol_quant /tmp/c-s$1 $1 --device cpu --threads ${CPU_THREADS:-8}
    [ -f /tmp/c-s$1/model.safetensors ] || { echo "cpu seed $1: quantize failed" >> $OUT/cpu-gpueval.txt; return; }
    echo "seed $1: $(sha256sum /tmp/c-s$1/model.safetensors | cut -c1-16) $(date +%T)" >> $OUT/cpu-sha.txt
    ev /tmp/c-s$1 $1 cpu cpu-gpueval.txt cuda
    [ "${CPU_HOSTEVAL:-1}" = 1 ] && ev /tmp/c-s$1 $1 cpu cpu-hosteval.txt cpu 4
    rm -rf /tmp/c-s$1
  }
  ( for s in ${CPU_SEEDS:-}; do
      left ${CPU_MARGIN:-120} || break  # a CPU seed takes ~2-4 min
      while [ "$(jobs -rp | wc -l)" -ge "${CPU_JOBS:-1}" ]; do wait -n; done
      cpu_seed $s &
    done; wait ) > /dev/null 2>&1 &
  CPU_JOB=$!; disown
  n=0
  for s in $SEEDS; do
    left || break
    while [ "$(jobs -rp | wc -l)" -ge "${QJOBS:-2}" ]; do wait -n; done
    n=$((n + 1))
    ( smol_quant /tmp/m-s$s $s --device cuda
      ev /tmp/m-s$s $s cuda gpu-gpueval.txt cuda
      [ $n -le ${CAL:-8} ] && ev /tmp/m-s$s $s cuda gpu-hosteval.txt cpu 4
      rm -rf /tmp/m-s$s ) &
  done
  wait
  while kill -0 $CPU_JOB 2>/dev/null; do sleep 2; done
  echo "$(date +%T): $(cat $OUT/gpu-gpueval.txt 2>/dev/null | wc -l) GPU seeds, $(cat $OUT/cpu-gpueval.txt 2>/dev/null | wc -l) host CPU seeds"
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
