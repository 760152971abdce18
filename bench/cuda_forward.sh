#!/bin/bash
# Run on the GPU machine from the repo root, with .device-bin/ carried: gptq.gz (stripped release binary, gzipped),
# stories260K/ and tinystories_val.txt from ../shared/data. Results: bench/results/2026-12-02-cuda-calibration-forward.md.
# Device run 3: 8B-shaped end to end with the timing breakdown; stories260K GPU forward vs CPU forward quality.
set -u
B=/tmp/bin; mkdir -p $B
gunzip -c .device-bin/gptq.gz > $B/gptq; chmod +x $B/gptq
source bench/cuda_env.sh /tmp
S=.device-bin/stories260K
for b in 4 3; do for d in cpu cuda; do
  $B/gptq quantize $S -o /tmp/s$b-$d --dataset data/calib/brown-excerpt.txt --nsamples 32 --seqlen 256 --group-size 32 \
     --bits $b --asym-calib false --device $d --overwrite > $OUT/s$b-$d.log 2>&1 || echo "quantize $b $d failed"
  $B/gptq eval /tmp/s$b-$d --dataset .device-bin/tinystories_val.txt --max-windows 40 --seqlen 256 2>&1 | grep -i perplex | sed "s/^/w$b $d: /"
done; python3 bench/compare_codes.py /tmp/s$b-cpu /tmp/s$b-cuda 2>&1 | tail -3; done
python3 scripts/research/synth_llama.py /tmp/l8b 8b 32 $S 2>&1 | tail -1
echo "== quantize 8b"
/usr/bin/time -f "wall %e s, max RSS %M KiB" timeout 280 $B/gptq quantize /tmp/l8b -o /tmp/q8b --bits 4 --group-size 128 \
  --dataset data/calib/brown-excerpt.txt --nsamples 128 --seqlen 2048 --asym-calib false --device cuda --overwrite \
  > $OUT/q8b.log 2>&1
echo rc=$?
sed 's/\x1b\[[0-9;]*m//g' $OUT/q8b.log | grep -E "calibration forward on the GPU:|layers quantized|peak GPU|wall"
