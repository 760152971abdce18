#!/bin/bash
# GPU generation (`gptq generate --device cuda`) on the GPU machine, from the repo root with .device-bin/ carried:
# gptq.gz, decode_gpu.gz, forward_gpu.gz (stripped, gzipped), stories260K/, for part 2 the SmolLM2 GGUF halves
# (see bench/cuda_eval.sh: smol.aa stashed by `bash bench/cuda_eval.sh stash` in a call of its own just before).
#   bash bench/cuda_generate.sh 1   GPU tests (decode_gpu, forward_gpu); stories260K greedy text CPU vs GPU;
#                                   8B-shaped model (synth_llama.py, RTN w4 g128 on the GPU): decode tok/s with
#                                   and without the CUDA graph and layer stacking, fp16 for comparison; copy bandwidth
#   bash bench/cuda_generate.sh 2   SmolLM2 w4 g128 (quantized on the GPU): greedy text and tok/s CPU vs GPU
#   bash bench/cuda_generate.sh 3   short: decode_gpu, then the 8B-shaped w4 g128 decode rate twice
set -u
PART=${1:-1}
B=/tmp/bin; mkdir -p $B /tmp/keep
for f in gptq decode_gpu forward_gpu; do
  [ -f .device-bin/$f.gz ] && { gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; }
done
source bench/cuda_env.sh /tmp
S=.device-bin/stories260K
gen() { $B/gptq --threads 16 -v generate "$@" 2>&1 | sed 's/\x1b\[[0-9;]*m//g'; }
rate() { grep -E "generated|device:|error" | sed 's/.*INFO [a-z_:]*//'; }
case $PART in
1)
  GPTQ_STORIES_DIR=$S $B/decode_gpu --ignored --nocapture 2>&1 | grep -E "worst|test result|panicked|FAILED"
  GPTQ_STORIES_DIR=$S $B/forward_gpu --ignored 2>&1 | grep -E "test result|panicked|FAILED"
  for d in cpu cuda; do
    echo "stories260K greedy, --device $d:"; $B/gptq generate $S --max-new-tokens 200 --device $d 2>/dev/null | md5sum
  done
  python3 scripts/research/synth_llama.py /tmp/l8b 8b 32 $S 2>&1 | tail -1
  t0=$(date +%s)
  $B/gptq quantize /tmp/l8b -o /tmp/q8b --method rtn --bits 4 --group-size 128 --dataset $S/../tinystories_val.txt \
    --nsamples 4 --seqlen 128 --device cuda --overwrite > /tmp/q8b.log 2>&1 || { echo "quantize failed"; tail -3 /tmp/q8b.log; }
  echo "RTN w4 g128 quantize: $(( $(date +%s) - t0 )) s"
  for round in 1 2; do
    echo "round $round: 8B-shaped w4 g128, graph:"; gen /tmp/q8b --max-new-tokens 256 --ignore-eos --device cuda | rate
    echo "round $round: 8B-shaped w4 g128, no graph:"; GPTQ_CUDA_GRAPH=0 gen /tmp/q8b --max-new-tokens 256 --ignore-eos --device cuda | rate
    echo "round $round: 8B-shaped w4 g128, graph, q/k/v and gate/up unstacked:"
    GPTQ_CUDA_STACK=0 gen /tmp/q8b --max-new-tokens 256 --ignore-eos --device cuda | rate
  done
  echo "8B-shaped fp16 (bf16 checkpoint), graph:"; gen /tmp/l8b --max-new-tokens 128 --ignore-eos --device cuda | rate
  $B/gptq bench kernels --device cuda --batches 1 --samples 10 2>&1 | grep -iE "copy|GB/s" | head -3
  ;;
2)
  M=/tmp/keep/smol.gguf
  [ -f $M ] || cat /tmp/keep/smol.aa .device-bin/smol.ab > $M
  $B/gptq quantize $M -o /tmp/m4 --dataset data/calib/brown-excerpt.txt --nsamples 64 --seqlen 512 --group-size 128 \
    --bits 4 --device cuda --overwrite > /tmp/m4.log 2>&1 || { echo "quantize failed"; tail -3 /tmp/m4.log; }
  P="The history of the city begins"
  for d in cpu cuda; do
    echo "SmolLM2 w4 g128 --device $d, greedy text (CPU with exact f32 activations):"
    $B/gptq --threads 16 --activations f32 generate /tmp/m4 -p "$P" --max-new-tokens 48 --device $d 2>/dev/null
  done
  for round in 1 2; do for d in cpu cuda; do
    echo "round $round: SmolLM2 w4 g128 --device $d (16 threads, int8 activations on the CPU), 256 tokens:"
    gen /tmp/m4 -p "$P" --max-new-tokens 256 --ignore-eos --device $d | rate
  done; done
  ;;
3)
  GPTQ_STORIES_DIR=$S $B/decode_gpu --ignored --nocapture 2>&1 | grep -E "worst|test result|panicked|FAILED" | sort | uniq -c
  python3 scripts/research/synth_llama.py /tmp/l8b 8b 32 $S 2>&1 | tail -1
  $B/gptq quantize /tmp/l8b -o /tmp/q8b --method rtn --bits 4 --group-size 128 --dataset $S/../tinystories_val.txt \
    --nsamples 4 --seqlen 128 --device cuda --overwrite > /tmp/q8b.log 2>&1 || { echo "quantize failed"; tail -3 /tmp/q8b.log; }
  for round in 1 2; do
    echo "round $round: 8B-shaped w4 g128, graph:"; gen /tmp/q8b --max-new-tokens 256 --ignore-eos --device cuda | rate
  done
  ;;
esac
