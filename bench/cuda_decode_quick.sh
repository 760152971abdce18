#!/bin/bash
# GPU machine, repo root, .device-bin/ carried (gptq.gz, decode_gpu.gz, stories260K/, tinystories_val.txt):
# decode_gpu tests, then the 8B-shaped w4 g128 model (synth_llama.py, RTN on the GPU) decoded 256 tokens with
# programmatic dependent launch (GPTQ_CUDA_PDL) and the SwiGLU epilogue (GPTQ_CUDA_FUSE) on and off, and its greedy
# text with and without the epilogue.
set -u
B=/tmp/bin; mkdir -p $B
for f in gptq decode_gpu; do gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; done
source bench/cuda_env.sh /tmp > /dev/null
S=.device-bin/stories260K
GPTQ_STORIES_DIR=$S $B/decode_gpu --ignored --nocapture 2>&1 | grep -E "test result|panicked|FAILED" | sort | uniq -c
python3 scripts/research/synth_llama.py /tmp/l8b 8b 32 $S 2>&1 | tail -1
$B/gptq quantize /tmp/l8b -o /tmp/q8b --method rtn --bits 4 --group-size 128 --dataset $S/../tinystories_val.txt \
    --nsamples 4 --seqlen 128 --device cuda --overwrite > /tmp/q8b.log 2>&1 || { echo "quantize failed"; tail -3 /tmp/q8b.log; }
for cfg in "GPTQ_CUDA_PDL=1 GPTQ_CUDA_FUSE=1" "GPTQ_CUDA_PDL=0 GPTQ_CUDA_FUSE=1" "GPTQ_CUDA_PDL=1 GPTQ_CUDA_FUSE=0" "GPTQ_CUDA_PDL=1 GPTQ_CUDA_FUSE=1"; do
  echo "8B-shaped w4 g128, $cfg:"
  env $cfg $B/gptq --threads 16 -v generate /tmp/q8b --max-new-tokens 256 --ignore-eos --device cuda 2>&1 | grep -E "generated|error"
done
for f in 1 0; do
  echo "8B-shaped greedy text, GPTQ_CUDA_FUSE=$f:"
  GPTQ_CUDA_FUSE=$f $B/gptq generate /tmp/q8b --max-new-tokens 64 --device cuda 2>/dev/null | md5sum
done
