#!/bin/bash
# Per-kernel times of one decode step of the 8B-shaped w4 g128 model (Nsight Compute, kernel by kernel).
set -u
B=/tmp/bin; mkdir -p $B
gunzip -c .device-bin/gptq.gz > $B/gptq; chmod +x $B/gptq
source bench/cuda_env.sh /tmp > /dev/null
S=.device-bin/stories260K
[ -d /tmp/q8b ] || {
python3 scripts/research/synth_llama.py /tmp/l8b 8b 32 $S 2>&1 | tail -1
$B/gptq quantize /tmp/l8b -o /tmp/q8b --method rtn --bits 4 --group-size 128 --dataset $S/../tinystories_val.txt \
    --nsamples 4 --seqlen 128 --device cuda --overwrite > /tmp/q8b.log 2>&1 || { echo "quantize failed"; tail -3 /tmp/q8b.log; }
}
$B/gptq --threads 16 -v generate /tmp/q8b --max-new-tokens 256 --ignore-eos --device cuda 2>&1 | grep -E "generated|error"
GPTQ_CUDA_GRAPH=0 /usr/local/cuda/bin/ncu --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv \
  --launch-skip ${SKIP:-2000} --launch-count ${COUNT:-600} \
  $B/gptq --threads 16 generate /tmp/q8b --max-new-tokens 20 --ignore-eos --device cuda > $OUT/ncu.csv 2>$OUT/ncu.err
tail -3 $OUT/ncu.err; wc -l $OUT/ncu.csv
