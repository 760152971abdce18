#!/bin/bash
# What bounds the wgmma GEMM at 128-256 batch rows (issue 6): Nsight Compute's throughput sections (speed of light,
# memory and compute workload, warp states, occupancy) for one launch of a variant, real clocks. On the GPU machine,
# repo root, .device-bin/gptq.gz:
#   bash bench/cuda_wgmma_ncu_big.sh "SHAPE M VARIANT" ...     writes $OUT/big-VARIANT-SHAPE-M.txt and prints the key lines
set -u; source bench/cuda_common.sh; cuda_unpack gptq
for spec in "$@"; do set -- $spec
f=$OUT/big-$3-$1-$2.txt
/usr/local/cuda/bin/ncu --clock-control none -k "regex:^$3\$" --launch-skip 1 --launch-count 1 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
  --section WarpStateStats --section Occupancy --section LaunchStats \
  --metrics lts__t_bytes.sum,dram__bytes_read.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum \
  $B/gptq bench kernels --device cuda --shapes $1 --batches $2 --samples 3 --sweep > $f 2> $f.err
echo "== $*"
grep -E "Duration|Throughput|L2 Cache|DRAM|lts__t_bytes|dram__bytes|hmma|inst_executed|Registers|Achieved Occ|Stall|Warp Cycles|Grid Size|Block Size|Shared Memory Config|Dynamic Shared" $f | head -40
done
