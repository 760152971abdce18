#!/bin/bash
# Where the time of the 4096-row layers at 64 rows goes (issue 6: every kernel, cuBLAS included, takes 11-16 µs on
# 4096x4096 there). On the GPU machine from the repo root with .device-bin/gptq.gz: (1) the table at 1,16,64,128 rows
# on 4096x4096 and 14336x4096, with the default shared-memory carveout and with every kernel preferring 100 %
# (GPTQ_CUDA_CARVEOUT=100: no L1/shared reconfiguration between kernels); (2) Nsight Compute's duration of single
# launches of the fused kernel, wg_prep_x and the wgmma kernel at 64 rows (no graph, caches flushed), to set against
# the per-call time of graph replays. Writes $OUT/{carve-*.md,ncu-*.txt,m64.txt}.
#   bash bench/cuda_m64_narrow.sh
# (GPTQ_CUDA_CARVEOUT was a knob of the build measured, 1303564^; removed after it showed no gain.)
set -u; source bench/cuda_common.sh; cuda_unpack gptq
{
for c in default 100; do
    GPTQ_CUDA_CARVEOUT=$c $B/gptq bench kernels --device cuda --shapes 4096x4096,14336x4096 --batches 1,16,64,128 \
        --markdown $OUT/carve-$c.md > /dev/null 2>&1 || echo "carveout $c failed"
    echo "carveout $c:"; grep -E "^### |^\| [0-9]+ \|" $OUT/carve-$c.md | cut -d"|" -f1-4,6,7
done
for k in w4_mma_m4_r2_w2_k8_s4 wg_prep_x w4_wg_b64_k4_r1_s4 w4_wg_b128_k3_r1_s3; do
    /usr/local/cuda/bin/ncu --clock-control none -k "regex:^$k\$" --launch-skip 4 --launch-count 2 \
        --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size,launch__block_size,sm__warps_active.avg.pct_of_peak_sustained_active \
        $B/gptq bench kernels --device cuda --shapes 4096x4096 --batches 64 --samples 3 --sweep > $OUT/ncu-$k.txt 2>&1
    echo "== ncu $k (4096x4096, 64 rows):"
    grep -E "gpu__time_duration|dram__throughput|sm__throughput|launch__grid_size|launch__block_size|warps_active" $OUT/ncu-$k.txt | awk '{print "   ", $1, $(NF-1), $NF}' | head -12
done
} 2>&1 | tee $OUT/m64.txt
