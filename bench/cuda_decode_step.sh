#!/bin/bash
# GPU check of a decoder change (.device-bin/: gptq.gz, decode_gpu.gz, forward_gpu.gz, stories260K/): decode_gpu and
# forward_gpu tests, `gptq bench kernels --check` at M = 1, 4, 16, greedy stories260K text CPU vs GPU (PDL on/off),
# then the 8B-shaped w4 g128 decode rate in three settings, twice.
set -u
B=/tmp/bin; mkdir -p $B
for f in gptq decode_gpu forward_gpu; do
  [ -f .device-bin/$f.gz ] && { gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; }
done
source bench/cuda_env.sh /tmp > /dev/null
S=.device-bin/stories260K
GPTQ_STORIES_DIR=$S $B/decode_gpu --ignored --nocapture 2>&1 | grep -E "worst|test result|panicked|FAILED" | sort | uniq -c
GPTQ_STORIES_DIR=$S $B/forward_gpu --ignored 2>&1 | grep -E "test result|panicked|FAILED"
[ -d /tmp/q8b ] || {
python3 scripts/research/synth_llama.py /tmp/l8b 8b 32 $S 2>&1 | tail -1
$B/gptq quantize /tmp/l8b -o /tmp/q8b --method rtn --bits 4 --group-size 128 --dataset $S/../tinystories_val.txt \
    --nsamples 4 --seqlen 128 --device cuda --overwrite > /tmp/q8b.log 2>&1 || { echo "quantize failed"; tail -3 /tmp/q8b.log; }
}
$B/gptq bench kernels --device cuda --check --batches 1,4,16 2>&1 | grep -E "failed|K.N|^\| *(1|4|16) \|" | head -40
for d in cpu cuda; do
  echo "stories260K greedy, --device $d:"; $B/gptq generate $S --max-new-tokens 200 --device $d 2>/dev/null | md5sum
done
echo "stories260K greedy, --device cuda, GPTQ_CUDA_PDL=0:"
GPTQ_CUDA_PDL=0 $B/gptq generate $S --max-new-tokens 200 --device cuda 2>/dev/null | md5sum
for round in 1 2; do
  for cfg in "GPTQ_CUDA_PDL=1 GPTQ_CUDA_FUSE=1" "GPTQ_CUDA_PDL=0 GPTQ_CUDA_FUSE=1" "GPTQ_CUDA_PDL=1 GPTQ_CUDA_FUSE=0"; do
    echo "round $round: 8B-shaped w4 g128, $cfg:"
    env $cfg $B/gptq --threads 16 -v generate /tmp/q8b --max-new-tokens 256 --ignore-eos --device cuda 2>&1 | grep -E "generated|error"
  done
done
for f in 1 0; do
  echo "8B-shaped greedy text, GPTQ_CUDA_FUSE=$f:"
  GPTQ_CUDA_FUSE=$f $B/gptq generate /tmp/q8b --max-new-tokens 64 --device cuda 2>/dev/null | md5sum
done
