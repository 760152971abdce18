#!/bin/bash
# Nsight Compute sections of the batch-1 fused int4 kernel, plain and folded (where their time goes: DRAM throughput,
# warp stalls, issue slots), on the GPU machine from the repo root with .device-bin/gptq.gz carried.
#   bash bench/cuda_gemv_profile.sh [SHAPE] [KERNEL]   default 4096x14336, w4_mma_m1_r2_w1_k8_s4; writes $OUT/gemv-ncu*.txt
set -u
B=/tmp/bin; mkdir -p $B
gunzip -c .device-bin/gptq.gz > $B/gptq; chmod +x $B/gptq
source bench/cuda_env.sh /tmp > /dev/null
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
SHAPE=${1:-4096x14336}; KER=${2:-w4_mma_m1_r2_w1_k8_s4}
for v in "$KER\$" "${KER}_f\$"; do
  tag=$(echo $v | tr -d '$')
  GPTQ_CUDA_GRAPH=0 /usr/local/cuda/bin/ncu -k "regex:$v" --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy --section InstructionStats \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
    $B/gptq bench kernels --device cuda --shapes $SHAPE --kernel-rounds 1 --sweep > $OUT/gemv-ncu-$tag.txt 2> $OUT/gemv-ncu.err
  echo "== $tag"
  grep -E "Duration|DRAM Throughput|Issued Warp|No Eligible|Achieved Active|Executed Ipc|Instructions|stalled" $OUT/gemv-ncu-$tag.txt \
    | awk '$NF+0 >= 0.05 || !/stalled/' | head -40
done
