#!/bin/bash
# Our int4 kernels with bf16 and f16 activations against torch's tinygemm (bf16 only), same run (issue 6). On the GPU
# machine from the repo root with .device-bin/gptq.gz (this tree's build): bench/torch_int4.py, then
# `gptq bench kernels --device cuda --act bf16 --torch-json` and `--act f16` (batches 1, 16, 64, 256).
# Writes $OUT/{torch.json,torch.log,k-bf16.md,k-f16.md}.
#   bash bench/cuda_bf16_tinygemm.sh
set -u
B=/tmp/bin; mkdir -p $B; gunzip -c .device-bin/gptq.gz > $B/gptq; chmod +x $B/gptq
source bench/cuda_env.sh /tmp > /dev/null
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
PYTHONUNBUFFERED=1 python3 bench/torch_int4.py --out $OUT/torch.json --batches 1,16,64,256 > $OUT/torch.log 2>&1 || tail -3 $OUT/torch.log
$B/gptq bench kernels --device cuda --act bf16 --batches 1,16,64,256 --torch-json $OUT/torch.json --markdown $OUT/k-bf16.md > /dev/null 2>&1 || echo "bf16 bench failed"
$B/gptq bench kernels --device cuda --act f16 --batches 1,16,64,256 --torch-json $OUT/torch.json --markdown $OUT/k-f16.md > /dev/null 2>&1 || echo "f16 bench failed"
grep -A9 "### Targets" $OUT/k-bf16.md $OUT/k-f16.md
