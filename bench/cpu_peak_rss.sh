#!/bin/bash
# Peak RSS and wall time of a CPU `gptq quantize` of SmolLM2-135M-Instruct (issue 4's memory bound), with the VmRSS
# of the process sampled every 0.5 s (to see which phase peaks).
#   bash bench/cpu_peak_rss.sh GPTQ_BINARY NSAMPLES OUT_PREFIX [extra quantize flags...]
# Writes OUT_PREFIX.log (the quantize output), OUT_PREFIX.rss (seconds, VmRSS kB), OUT_PREFIX.time (/usr/bin/time).
set -u
BIN=$1; N=$2; P=$3; shift 3
M=${GPTQ_SMOLLM2:-.dev/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
/usr/bin/time -f "%e s %M KiB" -o $P.time $BIN quantize $M -o $P.out --dataset ../shared/data/text/brown/brown.txt \
  --nsamples $N --seqlen 2048 --seed 0 --overwrite "$@" > $P.log 2>&1 &
TPID=$!
sleep 0.2
PID=$(pgrep -P $TPID | head -1)
: > $P.rss
T0=$(date +%s.%N)
while kill -0 $TPID 2>/dev/null; do
  R=$(awk '/VmRSS/ {print $2}' /proc/$PID/status 2>/dev/null)
  [ -n "$R" ] && echo "$(echo "$(date +%s.%N) - $T0" | bc) $R" >> $P.rss
  sleep 0.5
done
wait $TPID
cat $P.time
