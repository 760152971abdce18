#!/bin/bash
# The fused int4 kernel before and after a change, same run: .device-bin/gptq-old.gz (the previous build) and
# .device-bin/gptq.gz (this tree). On the GPU machine from the repo root with .device-bin/ carried (both binaries,
# stories260K/, decode_gpu.gz). Prints: the decoder tests (SwiGLU epilogue) and the new kernels' check against the
# f64 reference; `gptq bench kernels` for both; 1024 decoded
# tokens of an 8B-shaped w4 g128 model of BLOCKS blocks (RTN) with each binary, twice, alternating; greedy text hashes.
#   bash bench/cuda_kernel_ab.sh [BLOCKS]
set -u
BLOCKS=${1:-8}
B=/tmp/bin; mkdir -p $B
for f in gptq gptq-old decode_gpu; do gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; done
source bench/cuda_env.sh /tmp > /dev/null
S=.device-bin/stories260K
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
GPTQ_STORIES_DIR=$S $B/decode_gpu --ignored 2>&1 | grep -E "test result|panicked|FAILED"
$B/gptq bench kernels --device cuda --check-only 2>&1 | grep -E "failed|rows|error" | head -5
SH=4096x4096,4096x14336,14336x4096,8192x28672
for b in gptq-old gptq; do
  $B/$b bench kernels --device cuda --shapes $SH --markdown $OUT/kernels-$b.md > /dev/null 2>&1 || echo "$b bench failed"
done
python3 scripts/research/synth_llama.py /tmp/l8b-$BLOCKS 8b $BLOCKS $S 2>&1 | tail -1
$B/gptq quantize /tmp/l8b-$BLOCKS -o /tmp/q8b --method rtn --bits 4 --group-size 128 --dataset $S/../tinystories_val.txt \
    --nsamples 4 --seqlen 128 --device cuda --overwrite > /tmp/q8b.log 2>&1 || { echo "quantize failed"; tail -3 /tmp/q8b.log; }
for round in 1 2; do for b in gptq-old gptq; do
  echo "$b round $round: $($B/$b --threads 16 -v generate /tmp/q8b --max-new-tokens 1024 --ignore-eos --device cuda 2>&1 | grep -E 'generated|error')"
done; done
for b in gptq-old gptq; do echo "$b text $($B/$b generate /tmp/q8b --max-new-tokens 64 --device cuda 2>/dev/null | md5sum)"; done
grep -E "^\| (1|2|4|8|16) \|" $OUT/kernels-gptq-old.md | head -40 > $OUT/old.txt
grep -E "^\| (1|2|4|8|16) \|" $OUT/kernels-gptq.md | head -40 > $OUT/new.txt
paste -d'#' $OUT/old.txt $OUT/new.txt | awk -F'#' '{split($1,a,"|"); split($2,b,"|"); printf "M=%s old %s new %s\n", a[2], a[3], b[3]}'
