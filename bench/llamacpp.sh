#!/usr/bin/env bash
# CPU comparison against llama.cpp on SmolLM2-135M-Instruct, 2 threads.
#
# 1. Builds llama.cpp's tools (CPU only, -DGGML_NATIVE=ON) from the vendor dir
#    of the llama-cpp-python==0.3.36 sdist (PyPI) into .dev/llamacpp (git-ignored).
#    cmake comes from PyPI too when it is not installed.
# 2. llama-bench -t 2 -p 512 -n 128 on the Q4_1 GGUF and on its Q4_0
#    requantization (llama-quantize --allow-requantize).
# 3. Our GPTQ 4-bit g128 and g32 checkpoints of the same model (gptq convert,
#    then gptq quantize on data/calib/brown-excerpt.txt, 32 × 512 tokens) and
#    `gptq bench --threads 2 --seqlen 512 --decode-tokens 128` (int8
#    activations, the default; g128 also with --activations f32).
#    Steps 2 and 3 alternate for ROUNDS rounds (default 3), so a noisy
#    machine affects both sides alike; compare medians.
# 4. Perplexity on WikiText-2 test: llama-perplexity -c 512 (scores the second
#    half of each 512-token window) and gptq eval --seqlen 512 (scores whole
#    windows, the GPTQ paper's protocol); the Q4_1 GGUF is run through both to
#    tie the two protocols together.
#
#   [ROUNDS=3] bench/llamacpp.sh [WINDOWS]     (WINDOWS: perplexity windows, default 40)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
windows=${1:-40}
dev=.dev/llamacpp
smol=.dev/smollm2
gguf=$smol/SmolLM2-135M-Instruct.Q4_1.gguf
gptq=${GPTQ_BIN:-target/release/gptq}
mkdir -p "$dev"

[ -f "$gguf" ] || bash scripts/fetch-smollm2.sh "$smol" >/dev/null
[ -x "$gptq" ] || cargo build --release -p gptq-cli

# --- llama.cpp ---------------------------------------------------------------
if ! command -v cmake >/dev/null; then
    # --only-binary: without it pip may pick cmake's sdist and bootstrap cmake from source (tens of minutes).
    [ -x "$dev/venv/bin/cmake" ] || { python3 -m venv "$dev/venv" && "$dev/venv/bin/pip" install -q --only-binary=:all: cmake; }
    export PATH=$root/$dev/venv/bin:$PATH
fi
if [ ! -d "$dev/src" ]; then
    # The sdist straight from PyPI's simple index (checked against its sha256): `pip download` of an sdist
    # prepares its metadata, which installs its build backend and cmake and may build cmake from source.
    mkdir -p "$dev/dl"
    python3 - "$dev/dl" <<'PY'
import hashlib, re, sys, urllib.request
name = "llama_cpp_python-0.3.36.tar.gz"
page = urllib.request.urlopen("https://pypi.org/simple/llama-cpp-python/").read().decode()
url, sha = re.search(r'href="([^"]*/' + re.escape(name) + r')#sha256=([0-9a-f]{64})"', page).groups()
data = urllib.request.urlopen(url).read()
assert hashlib.sha256(data).hexdigest() == sha, "sha256 mismatch"
open(sys.argv[1] + "/" + name, "wb").write(data)
PY
    tar xzf "$dev"/dl/llama_cpp_python-0.3.36.tar.gz -C "$dev"
    mv "$dev/llama_cpp_python-0.3.36/vendor/llama.cpp" "$dev/src"
fi
bin=$dev/build/bin
if [ ! -x "$bin/llama-bench" ] || [ ! -x "$bin/llama-quantize" ] || [ ! -x "$bin/llama-perplexity" ]; then
    cmake -S "$dev/src" -B "$dev/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
        -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
    cmake --build "$dev/build" -j2 --target llama-bench llama-quantize llama-perplexity
fi
q40=$smol/SmolLM2-135M-Instruct.Q4_0.gguf
[ -f "$q40" ] || "$bin/llama-quantize" --allow-requantize "$gguf" "$q40" Q4_0 >/dev/null 2>&1

# --- ours ----------------------------------------------------------------------
hf=$smol/hf-f16
[ -f "$hf/config.json" ] || "$gptq" convert "$gguf" "$hf" --dtype f16 --overwrite
for g in 128 32; do
    out=$smol/gptq-w4g$g
    [ -f "$out/config.json" ] || "$gptq" --threads 2 quantize "$hf" -o "$out" --bits 4 --group-size $g \
        --dataset data/calib/brown-excerpt.txt --nsamples 32 --seqlen 512 --overwrite
done

# --- speed, alternating --------------------------------------------------------
for r in $(seq "${ROUNDS:-3}"); do
    echo "## round $r: llama.cpp, llama-bench -t 2 -p 512 -n 128"
    for m in "$gguf" "$q40"; do "$bin/llama-bench" -m "$m" -t 2 -p 512 -n 128 | grep -E "pp512|tg128"; done
    for run in "128 int8" "32 int8" "128 f32"; do
        set -- $run
        echo "## round $r: gptq --activations $2 bench $smol/gptq-w4g$1 (2 threads)"
        "$gptq" --threads 2 --activations "$2" bench "$smol/gptq-w4g$1" --seqlen 512 --decode-tokens 128 \
            --no-kernels | grep -E "prefill forward|^decode"
    done
done

# --- perplexity ----------------------------------------------------------------
echo "## perplexity, WikiText-2 test, $windows windows of 512"
for m in "$gguf" "$q40"; do
    echo "llama-perplexity $m"
    "$bin/llama-perplexity" -m "$m" -t 2 -c 512 --chunks "$windows" -f data/wikitext2/wiki.test.raw 2>&1 \
        | grep -E "Final estimate|^\[" | tail -2
done
echo "gptq eval $gguf"
"$gptq" --threads 2 eval "$gguf" --dataset wikitext2 --seqlen 512 --max-windows "$windows" 2>&1 | tail -1
for m in "$smol/gptq-w4g128" "$smol/gptq-w4g32"; do
    for a in int8 f32; do
        echo "gptq --activations $a eval $m"
        "$gptq" --threads 2 --activations $a eval "$m" --dataset wikitext2 --seqlen 512 \
            --max-windows "$windows" 2>&1 | tail -1
    done
done
