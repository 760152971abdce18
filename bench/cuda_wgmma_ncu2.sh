#!/bin/bash
# Where the wgmma GEMM's time goes at M = 256 on 4096 x 14336 (issue 6): Nsight Compute (real clocks) on the
# dispatched variant, the shared-memory-A variant and cuBLAS's kernel: L2 and DRAM traffic, tensor-pipe share,
# stall reasons. GPU machine, repo root, .device-bin/gptq.gz; writes $OUT/ncu2-*.txt
# (The shared-memory-A `_sa` variant was never committed: at HEAD only the first and last profile run.)
#   bash bench/cuda_wgmma_ncu2.sh
set -u; B=/tmp/bin; mkdir -p $B; gunzip -c .device-bin/gptq.gz > $B/gptq; chmod +x $B/gptq
source bench/cuda_env.sh /tmp > /dev/null
M=lts__t_bytes.sum.per_second,lts__t_bytes.sum,lts__throughput.avg.pct_of_peak_sustained_elapsed,l1tex__m_xbar2l1tex_read_bytes.sum,dram__bytes_read.sum,gpu__time_duration.sum,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_membar_per_issue_active.ratio,smsp__average_warps_issue_stalled_sleeping_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio,smsp__average_warps_issue_stalled_misc_per_issue_active.ratio,smsp__average_warps_issue_stalled_branch_resolving_per_issue_active.ratio,sm__warps_active.avg.per_cycle_active,smsp__inst_executed.sum
for spec in "w4_wg_b128_k2_r2_s4$ wg" "w4_wg_b128_k1_r2_s4_sa$ sa" "nvjet|xmma|gemm|cutlass cublas"; do set -- $spec
/usr/local/cuda/bin/ncu --clock-control none -k "regex:$1" --launch-skip 3 --launch-count 1 --metrics $M \
  $B/gptq bench kernels --device cuda --shapes 4096x14336 --batches 256 --samples 3 --sweep > $OUT/ncu2-$2.txt 2>&1
echo "== $2"; grep -E "^  [a-zA-Z_0-9]+ \(|^    [a-z]" $OUT/ncu2-$2.txt | awk '{$1=$1; print}' | head -40
done
