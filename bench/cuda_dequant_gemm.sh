#!/bin/bash
# Dequantize-then-cuBLAS from the fused layout for large batches (issue 6). GPU machine, repo root, .device-bin/
# carried (gptq.gz, gptq-old.gz = the build before the change, decode_gpu.gz, forward_gpu.gz, stories260K/,
# tinystories_val.txt): the kernel check, the GPU tests, `gptq -v bench kernels --batches 256,512,1024,2048 --sweep`
# (every path's time: the int4 kernels, dequantize+cuBLAS, cuBLAS), then the GPU decoder's prefill of long prompts
# (the GEMMs of ≥ 512 rows take the new path) of the 8B-shaped w4 g128 model with the old and the new build. The
# decoder tests run twice, the second time with every int4 GEMM dequantized (GPTQ_CUDA_DQ_FROM=1). Writes $OUT/{check.txt,sw.md,sw.log,paths.txt}.
#   bash bench/cuda_dequant_gemm.sh
set -u; B=/tmp/bin; mkdir -p $B; for f in gptq gptq-old decode_gpu forward_gpu; do gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; done
source bench/cuda_env.sh /tmp > /dev/null
S=.device-bin/stories260K; T=.device-bin/tinystories_val.txt
$B/gptq bench kernels --device cuda --check-only > $OUT/check.txt 2>&1; grep -E "rows" $OUT/check.txt | cut -c1-60; grep FAILED $OUT/check.txt | head
GPTQ_STORIES_DIR=$S GPTQ_TEST_MODELS=tests/data/models $B/forward_gpu --ignored 2>&1 | grep -E "test result|panicked"
GPTQ_STORIES_DIR=$S $B/decode_gpu --ignored 2>&1 | grep -E "test result|panicked"
echo "decode_gpu with every int4 GEMM dequantized (GPTQ_CUDA_DQ_FROM=1):"
GPTQ_CUDA_DQ_FROM=1 GPTQ_STORIES_DIR=$S $B/decode_gpu --ignored 2>&1 | grep -E "test result|panicked"
$B/gptq -v bench kernels --device cuda --batches 256,512,1024,2048 --samples 10 --sweep --markdown $OUT/sw.md > $OUT/sw.log 2>&1
grep -h " us" $OUT/sw.log | sed 's/.*DEBUG[^ ]* //' | sort > $OUT/paths.txt
grep -E "^### |^\| [0-9]+ \|" $OUT/sw.md | cut -d"|" -f1-7,11,12
python3 scripts/research/synth_llama.py /tmp/l8b 8b 32 $S 2>&1 | tail -1
$B/gptq quantize /tmp/l8b -o /tmp/q8b --method rtn --bits 4 --group-size 128 --dataset $T \
    --nsamples 4 --seqlen 128 --device cuda --overwrite > /tmp/q8b.log 2>&1 || { echo "quantize failed"; tail -3 /tmp/q8b.log; }
P="$(head -c 5000 $T | tr '\n' ' ')"
for g in gptq-old gptq gptq-old gptq; do echo "$g 8B-shaped prefill: $($B/$g -v generate /tmp/q8b --prompt "$P" --max-new-tokens 8 --device cuda 2>&1 | grep -aE 'prompt [0-9]+ tokens|rror' | sed 's/.*INFO.. //')"; done
