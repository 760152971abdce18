#!/bin/bash
# Quantize speed on the CPU: gptq against the plain PyTorch reference implementation of the published algorithm
# (scripts/research/gptq_torch.py), back to back on the same machine with the same settings: SmolLM2-135M-Instruct
# (the Q4_1 GGUF), 4-bit, groups of 128, asymmetric grid, 1 % damping, no act-order, true-sequential, the paper's
# calibration (no --asym-calib, which would double our forward work), N random windows of
# 2048 tokens of ../shared's Brown corpus, seed 0 (both draw the same windows).
#   bash bench/cpu_vs_reference.sh GGUF TOKENIZER_JSON VENV [N]      (VENV: python with torch, numpy, tokenizers)
set -u
G=$1; TOK=$2; VENV=$3; N=${4:-8}
BROWN=../shared/data/text/brown/brown.txt
OUT=$(mktemp -d)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "torch: $($VENV/bin/python -c 'import torch; print(torch.__version__, "threads", torch.get_num_threads())')"
run() { /usr/bin/time -f "wall %e s, user %U s, max RSS %M KiB" "$@"; }
echo "== gptq (this repo, release build)"
run ./target/release/gptq quantize "$G" -o $OUT/ours --bits 4 --group-size 128 --asym --damp-percent 0.01 \
  --true-sequential true --asym-calib false --dataset $BROWN --nsamples $N --seqlen 2048 --seed 0 --overwrite 2>&1 \
  | grep -E "^time:|time: |wall |error" | sed 's/\x1b\[[0-9;]*m//g'
echo "== reference (scripts/research/gptq_torch.py, torch on the CPU)"
run $VENV/bin/python scripts/research/gptq_torch.py --gguf "$G" --tokenizer "$TOK" --calib $BROWN \
  --variant gptq:bits=4,group=128 --nsamples $N --seqlen 2048 --seed 0 2>&1 | grep -E "quantize_s|wall |loaded|Error"
rm -rf $OUT
