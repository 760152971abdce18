#!/bin/bash
# Our int4 kernels with bf16 and f16 activations against torch's tinygemm (bf16 only), same run (issue 6). On the GPU
# machine from the repo root with .device-bin/gptq.gz (this tree's build): bench/torch_int4.py, then
# `gptq bench kernels --device cuda --act bf16 --torch-json` and `--act f16` (batches 1, 16, 64, 256).
# Writes $OUT/{torch.json,torch.log,k-bf16.md,k-f16.md}.
#   bash bench/cuda_bf16_tinygemm.sh
set -u; source bench/cuda_common.sh; cuda_unpack gptq
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
cuda_tables
