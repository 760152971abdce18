#!/bin/bash
# SmolLM2-135M-Instruct quantized on the CPU with gptq's defaults at the setting (128 random 2048-token windows
# of ../shared's Brown corpus, seed 0; w4 g128, symmetric grid, asymmetric calibration), then WikiText-2 and PTB
# perplexity of the result (2048-token windows).   bash bench/smollm2_full_cpu.sh GGUF OUT_DIR
set -u
G=$1; OUT=$2
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u '+%Y-%m-%d %H:%M UTC')"
/usr/bin/time -f "quantize: wall %e s, user %U s, max RSS %M KiB" ./target/release/gptq quantize "$G" -o "$OUT" \
  --dataset ../shared/data/text/brown/brown.txt --nsamples 128 --seqlen 2048 --seed 0 --overwrite 2>&1 \
  | grep -E "time: |layers quantized|quantize:|error" | sed 's/\x1b\[[0-9;]*m//g'
for d in wikitext2 ../shared/data/text/ptb/ptb.test.txt; do
  /usr/bin/time -f "eval: wall %e s" ./target/release/gptq eval "$OUT" --dataset $d 2>&1 | grep -iE "ppl|eval:|error" | sed 's/\x1b\[[0-9;]*m//g'
done
echo "done $(date -u '+%H:%M UTC')"
