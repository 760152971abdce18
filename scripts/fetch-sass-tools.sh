#!/usr/bin/env bash
# Download cuobjdump and nvdisasm (no GPU needed) from their PyPI wheels, so the SASS of the NVRTC-built kernels can
# be read on the CPU machine:
#   tools=$(bash scripts/fetch-sass-tools.sh target/sass-tools)
#   LD_LIBRARY_PATH=$(bash scripts/fetch-nvrtc.sh target/nvrtc) GPTQ_DUMP_CUBIN=/tmp/cubin \
#       cargo test --release -p gptq-cuda --lib kernels_compile
#   PATH=$tools:$PATH cuobjdump -sass -fun w4_mma_m1_r2_w1_k8_s4 /tmp/cubin/w4-sm_90a.cubin
# Prints the folder holding both tools.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
mkdir -p "$1"
dir=$(cd "$1" && pwd)
bin=$dir/nvidia/cu13/bin
if [ -x "$bin/cuobjdump" ] && [ -x "$bin/nvdisasm" ]; then echo "$bin"; exit 0; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check --only-binary=:all: \
    --platform manylinux2014_x86_64 nvidia-cuda-cuobjdump==13.2.78 nvidia-cuda-nvdisasm==13.5.37 -d "$tmp" >&2
for w in "$tmp"/*.whl; do python3 -m zipfile -e "$w" "$dir" >&2; done
chmod +x "$bin/cuobjdump" "$bin/nvdisasm"
echo "$bin"
