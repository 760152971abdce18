#!/bin/bash
# The one-LOP3 nibble extraction (issue 6) against the previous build, same run, on the GPU machine from the repo root
# with .device-bin/{gptq,gptq-old,decode_gpu}.gz, stories260K/ and tinystories_val.txt: the kernel check, decode_gpu,
# `gptq bench kernels --batches 1,8,16 --sweep` of both builds (-v logs every variant), then the 8B-shaped w4 g128 model
# (synth_llama.py, RTN) decoded 256 tokens by both builds (GPTQ_CUDA_FOLD was a dispatcher switch of that build) and
# its greedy text. Writes $OUT/{check.txt,sw-*.md,sw-*.log}.
#   bash bench/cuda_gemv_lop3.sh
set -u; B=/tmp/bin; mkdir -p $B; for f in gptq gptq-old decode_gpu; do gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; done
source bench/cuda_env.sh /tmp > /dev/null
$B/gptq bench kernels --device cuda --check-only > $OUT/check.txt 2>&1; grep -E "rows" $OUT/check.txt | cut -c1-60; grep -E "FAILED" $OUT/check.txt | head -5
GPTQ_STORIES_DIR=.device-bin/stories260K $B/decode_gpu --ignored 2>&1 | grep -E "test result|panicked"
for b in gptq-old gptq; do $B/$b -v bench kernels --device cuda --batches 1,8,16 --sweep --markdown $OUT/sw-$b.md > $OUT/sw-$b.log 2>&1; done
S=.device-bin/stories260K
python3 scripts/research/synth_llama.py /tmp/l8b 8b 32 $S 2>&1 | tail -1
$B/gptq quantize /tmp/l8b -o /tmp/q8b --method rtn --bits 4 --group-size 128 --dataset .device-bin/tinystories_val.txt \
    --nsamples 4 --seqlen 128 --device cuda --overwrite > /tmp/q8b.log 2>&1 || { echo "quantize failed"; tail -3 /tmp/q8b.log; }
for run in "gptq-old 0" "gptq 0" "gptq 1" "gptq-old 0" "gptq 0" "gptq 1"; do set -- $run
  echo "$1 FOLD=$2: $(GPTQ_CUDA_FOLD=$2 $B/$1 --threads 16 -v generate /tmp/q8b --max-new-tokens 256 --ignore-eos --device cuda 2>&1 | grep -E "generated|error" | tail -1)"
done
for f in 0 1; do echo "text FOLD=$f: $(GPTQ_CUDA_FOLD=$f $B/gptq generate /tmp/q8b --max-new-tokens 64 --device cuda 2>/dev/null | md5sum)"; done
echo "text old: $($B/gptq-old generate /tmp/q8b --max-new-tokens 64 --device cuda 2>/dev/null | md5sum)"
