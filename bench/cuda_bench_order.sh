#!/bin/bash
# Order effects in `gptq bench kernels` (issue 6): the dispatcher's path, timed first for each batch size, came out
# 5-44 % slower at 128-256 rows than the same kernel timed later in the sweep. On the GPU machine from the repo root
# with .device-bin/gptq.gz: the sweep on two shapes at 128,256 rows with the default warm-up and with WARM_MS (default
# 300) ms, the GPU's SM clock, power and clock-event reasons sampled every 20 ms meanwhile. Writes $OUT/{order-*.log,
# smi.csv,order.txt}: per run, shape and batch the first timing, the same path again after the sweep, the sweep's.
#   bash bench/cuda_bench_order.sh
set -u; source bench/cuda_common.sh; cuda_unpack gptq
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.active \
    --format=csv,noheader -lms 20 > $OUT/smi.csv 2>&1 &
SMI=$!
for w in 25 ${WARM_MS:-300}; do
    GPTQ_BENCH_WARM_MS=$w $B/gptq -v bench kernels --device cuda --shapes 8192x8192,8192x28672 --batches 128,256 \
        --samples 20 --sweep --markdown $OUT/order-$w.md > $OUT/order-$w.log 2>&1 || echo "warm $w failed"
    echo "warm-up $w ms: shape M first again sweep-same-variant"
    grep -E "^### |^\| [0-9]+ \|" $OUT/order-$w.md | cut -d"|" -f1-4 | awk -F'|' -v L=$OUT/order-$w.log '
        /^###/ {split($0, a, " = "); shape=a[2]; sub("×", "x", shape); next}
        {m=$2; t=$3; v=$4; gsub(/ /, "", m); gsub(/ /, "", t); gsub(/ /, "", v);
         cmd="grep -a \"" shape " M=" m " \" " L " | sed \"s/.*DEBUG[^ ]* //\"";
         again="-"; same="-";
         while ((cmd | getline line) > 0) { n=split(line, f, " "); if (f[3] == "again:" v ":") again=f[4];
                                            else if (f[3] == v ":") same=f[4] }
         close(cmd); printf "  %s %s %s %s %s\n", shape, m, t, again, same}'
done | tee $OUT/order.txt
kill $SMI
