#!/bin/bash
# Where the fused kernel's time goes at M = 1 and M = 16 on 8192 x 28672 (issue 6): Nsight Compute (real clocks) on
# the batch-1 variant, the 16-row one with activations from L2 and the one with activations staged in shared memory:
# DRAM and L2 traffic, issue and tensor-pipe activity, warps per SM, stall reasons.
# GPU machine, repo root, .device-bin/gptq.gz; writes $OUT/ncu-fused-*.txt
#   bash bench/cuda_fused_ncu.sh
set -u; B=/tmp/bin; mkdir -p $B; gunzip -c .device-bin/gptq.gz > $B/gptq; chmod +x $B/gptq
source bench/cuda_env.sh /tmp > /dev/null
M=gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_bytes.sum,lts__throughput.avg.pct_of_peak_sustained_elapsed,l1tex__m_xbar2l1tex_read_bytes.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum,sm__warps_active.avg.per_cycle_active,launch__registers_per_thread,launch__occupancy_limit_registers,launch__occupancy_limit_shared_mem,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_not_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_selected_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,smsp__average_warps_issue_stalled_no_instruction_per_issue_active.ratio,smsp__average_warps_issue_stalled_tex_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_drain_per_issue_active.ratio
for spec in "w4_mma_m1_r2_w1_k8_s4$ 1 m1" "w4_mma_m2_r2_w1_k8_s4$ 16 m2" "w4_mma_m2_r2_w2_k8_s4_x$ 16 m2x"; do set -- $spec
/usr/local/cuda/bin/ncu --clock-control none -k "regex:$1" --launch-skip 3 --launch-count 1 --metrics $M \
  $B/gptq bench kernels --device cuda --shapes 8192x28672 --batches $2 --samples 3 --sweep > $OUT/ncu-fused-$3.txt 2>&1
echo "== $3"; grep -E "^    [a-z]" $OUT/ncu-fused-$3.txt | awk '{print $1, $NF}' | sed 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//'
done
