#!/usr/bin/env bash
# Python peers for the compatibility checks in scripts/peers/ (transformers +
# optimum + GPTQModel on CPU). Versions verified on 2026-11-24
# (bench/results/2026-11-24-peer-compat.md).
#
#   bash scripts/peers/setup.sh [VENV]      # default .dev/venv-peers
#
# Why a separate venv (not .dev/venv): GPTQModel 7.7.0 requires torch>=2.14.1
# and transformers>=5.20.2, while .dev/venv pins torch 2.11 / transformers 5.17
# for the golden fixtures (scripts/fixtures/make_golden.py). Installing
# gptqmodel there would silently upgrade both. Pass .dev/venv explicitly if
# you really want that.
#
# GPTQModel 7.7.0 is a pure-Python sdist install (no CUDA build at install
# time; its CPU C++ kernels are JIT-compiled at first use and fall back to
# torch when that fails). PyPI's torch wheel is the CUDA build (~3 GB of nvidia-*
# wheels); it runs on CPU-only machines unchanged.
set -euo pipefail
VENV="${1:-.dev/venv-peers}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install --upgrade pip >/dev/null
"$VENV/bin/pip" install \
  gptqmodel==7.7.0 \
  torch==2.15.0 \
  transformers==5.24.0 \
  optimum==2.3.0 \
  accelerate==1.15.0 \
  safetensors==0.8.0 \
  tokenizers==0.23.3 \
  numpy==2.4.6
# transformers 5.24 refuses GPTQ checkpoints without optimum:
#   ImportError: Loading a GPTQ quantized model requires optimum (`pip install optimum`)
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for n in ("gptqmodel", "torch", "transformers", "optimum", "accelerate", "safetensors", "numpy"):
    print(f"{n}=={md.version(n)}")
PY
