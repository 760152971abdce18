#!/usr/bin/env bash
# Download the NVRTC library (no GPU needed) from the PyPI wheel
# nvidia-cuda-nvrtc==13.0.88 and verify it, so the kernel sources can be
# compiled on a machine without CUDA (the crate gptq-cuda's
# `kernels_compile_with_nvrtc` test).
#
#   scripts/fetch-nvrtc.sh DIR    -> prints the (absolute) folder holding libnvrtc.so.13
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$1
whl=nvidia_cuda_nvrtc-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl
want=ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)   # absolute: the path goes into LD_LIBRARY_PATH
lib=$dir/nvidia/cu13/lib
if [ -f "$lib/libnvrtc.so.13" ] && [ -f "$dir/.ok" ]; then
    echo "$lib"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    --only-binary=:all: --platform manylinux2010_x86_64 nvidia-cuda-nvrtc==13.0.88 -d "$tmp" >&2
got=$(sha256sum "$tmp/$whl" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then echo "error: $whl sha256 $got, expected $want" >&2; exit 1; fi
python3 -m zipfile -e "$tmp/$whl" "$dir" >&2
touch "$dir/.ok"
echo "$lib"
