#!/bin/bash
# As bench/cuda_forward.sh (same carried .device-bin/): two 70B- and two 8B-shaped blocks, for per-block times.
# Device run 2: per-block time of 70B-shaped and 8B-shaped blocks (2 blocks each), GPU calibration forward.
set -u
B=/tmp/bin; mkdir -p $B
gunzip -c .device-bin/gptq.gz > $B/gptq; chmod +x $B/gptq
source bench/cuda_env.sh /tmp
for shape in 70b 8b; do
  python3 scripts/research/synth_llama.py /tmp/l$shape $shape 2 .device-bin/stories260K 2>&1 | tail -1
  echo "== quantize $shape x 2 blocks"
  /usr/bin/time -f "wall %e s, max RSS %M KiB" timeout 250 $B/gptq quantize /tmp/l$shape -o /tmp/q$shape --bits 4 --group-size 128 \
    --dataset data/calib/brown-excerpt.txt --nsamples 128 --seqlen 2048 --asym-calib false --device cuda --overwrite \
    > $OUT/q$shape.log 2>&1
  echo rc=$?
  grep -E "block .* done|layers quantized|peak GPU|wall|device:" $OUT/q$shape.log
  cp /tmp/q$shape/quantize_report.json $OUT/report-$shape.json 2>/dev/null
  rm -rf /tmp/l$shape /tmp/q$shape
done
