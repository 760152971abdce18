#!/bin/bash
# Asymmetric calibration (the default) with the GPU calibration forward, on the GPU machine, from the repo root with
# .device-bin/ carried: gptq.gz, forward_gpu.gz, solve_gpu.gz (stripped, gzipped), stories260K/, tinystories_val.txt,
# wiki.test.raw from ../shared/data; for part 2 the SmolLM2 GGUF as /tmp/keep/smol.gguf.
#   bash bench/cuda_asym.sh 1   GPU tests; stories260K GPU forward vs CPU forward, default settings, w4/w3 g32
#   bash bench/cuda_asym.sh 2   SmolLM2 GPU forward vs host forward (default settings, w4 g128, 64×512)
#   bash bench/cuda_asym.sh 3   8B-shaped end to end: plain GPTQ and asymmetric, timings and peak memory
#   bash bench/cuda_asym.sh 4 ASYM GIB   GPU forward tests again (chunked states); 8B-shaped with --asym-calib ASYM
#                                        --max-gpu-memory GIB
# Results: bench/results/2026-12-03-cuda-asym.md.
set -u
PART=${1:-1}
B=/tmp/bin; mkdir -p $B
for f in gptq forward_gpu solve_gpu; do gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; done
source bench/cuda_env.sh /tmp
S=.device-bin/stories260K
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
q() { $B/gptq quantize "$@" --overwrite; }
ppl() { $B/gptq eval "$1" --dataset "$2" --max-windows 40 ${3:-} 2>&1 | grep -E " ppl "; }
case $PART in
1)
  GPTQ_STORIES_DIR=$S $B/forward_gpu --ignored --nocapture 2>&1 | grep -E "relative error|total error|test result|panicked|FAILED" | tail -40
  $B/solve_gpu --ignored --nocapture 2>&1 | grep -E "correction|largest|test result|panicked|FAILED"
  for b in 4 3; do for d in cpu cuda; do
    q $S -o /tmp/s$b-$d --dataset data/calib/brown-excerpt.txt --nsamples 32 --seqlen 256 --group-size 32 \
      --bits $b --device $d > $OUT/s$b-$d.log 2>&1 || echo "quantize $b $d failed"
    grep -E "^device" $OUT/s$b-$d.log
    echo "w$b $d: $(ppl /tmp/s$b-$d .device-bin/tinystories_val.txt '--seqlen 256')"
  done; python3 bench/compare_codes.py /tmp/s$b-cpu /tmp/s$b-cuda 2>&1 | tail -1; done
  ;;
2)
  M=/tmp/keep/smol.gguf
  [ -f $M ] || cat /tmp/keep/smol.aa .device-bin/smol.ab > $M
  for d in cuda host; do
    extra=""; [ $d = host ] && extra="--host-forward"
    /usr/bin/time -f "wall %e s" $B/gptq quantize $M -o /tmp/m-$d --dataset data/calib/brown-excerpt.txt --nsamples 64 \
      --seqlen 512 --group-size 128 --bits 4 --device cuda $extra --overwrite > $OUT/m-$d.log 2>&1 || echo "quantize $d failed"
    sed 's/\x1b\[[0-9;]*m//g' $OUT/m-$d.log | grep -E "^device|calibration forward on the GPU|wall"
    echo "smollm2 w4 g128 $d forward: $(ppl /tmp/m-$d .device-bin/wiki.test.raw)"
  done
  python3 bench/compare_codes.py /tmp/m-host /tmp/m-cuda 2>&1 | tail -1
  ;;
3)
  python3 scripts/research/synth_llama.py /tmp/l8b 8b 32 $S 2>&1 | tail -1
  for a in false true; do
    echo "== 8B-shaped, --asym-calib $a"
    /usr/bin/time -f "wall %e s, max RSS %M KiB" timeout 260 $B/gptq quantize /tmp/l8b -o /tmp/q8b --bits 4 \
      --group-size 128 --dataset data/calib/brown-excerpt.txt --nsamples 128 --seqlen 2048 --asym-calib $a \
      --device cuda --overwrite > $OUT/q8b-$a.log 2>&1
    echo rc=$?
    sed 's/\x1b\[[0-9;]*m//g' $OUT/q8b-$a.log | grep -E "calibration forward on the GPU|layers quantized|peak GPU|wall"
  done
  ;;
4)
  GPTQ_STORIES_DIR=$S $B/forward_gpu --ignored --nocapture 2>&1 | grep -E "chunks Some.*block 4|total error|test result|panicked|FAILED" | tail -20
  [ -d /tmp/l8b ] || python3 scripts/research/synth_llama.py /tmp/l8b 8b 32 $S 2>&1 | tail -1
  ASYM=${2:-false}; GIB=${3:-12}
  for cfg in "$ASYM $GIB"; do set -- $cfg
    echo "== 8B-shaped, --asym-calib $1 --max-gpu-memory $2"
    /usr/bin/time -f "wall %e s, max RSS %M KiB" timeout 280 $B/gptq quantize /tmp/l8b -o /tmp/q8b --bits 4 \
      --group-size 128 --dataset data/calib/brown-excerpt.txt --nsamples 128 --seqlen 2048 --asym-calib $1 \
      --max-gpu-memory $2 --device cuda --overwrite > $OUT/q8b-$1-mem$2.log 2>&1
    echo rc=$?
    sed 's/\x1b\[[0-9;]*m//g' $OUT/q8b-$1-mem$2.log | grep -E "states on the host|calibration forward on the GPU|layers quantized|peak GPU|wall|error"
  done
  ;;
esac
