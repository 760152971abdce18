# Sourced by the CUDA benchmark scripts (device machine, repo root, .device-bin/ carried; $OUT set by the caller):
#   cuda_unpack NAME...  .device-bin/NAME.gz to $B/NAME (B=/tmp/bin), then the library path (bench/cuda_env.sh)
#   cuda_check           the kernel check (every case along every path, f16 and bf16) into $OUT/check.txt, summarised
#   cuda_tables          torch's tinygemm (bench/torch_int4.py), then `gptq bench kernels` with bf16 and f16 activations
#                        at batches 1, 16, 64, 256 against it, into $OUT/{torch.json,torch.log,k-bf16.md,k-f16.md}
# With END set (a `date +%s` time), cuda_check and cuda_tables run each command under `timeout` until END and skip
# what would start with less than a minute left.
#   cuda_suites          the GPU test suites (forward_gpu, decode_gpu: unpack them first)
#   cuda_decode NAME [VAR=VALUE...]
#                        $B/NAME decodes 256 tokens of /tmp/q8b (cuda_q8b) with the variables set, under `timeout
#                        $DECODE_TIMEOUT` if that is set; prints its "generated ... tok/s" line or the error
B=/tmp/bin
S=.device-bin/stories260K
cuda_unpack() {
    mkdir -p $B
    for f in "$@"; do gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; done
    source bench/cuda_env.sh /tmp > /dev/null
}
# limit: the `timeout` prefix that stops a command at END (nothing without END); fails with under 60 s left.
limit() {
    [ -z "${END:-}" ] && return 0
    local rest=$(( END - $(date +%s) ))
    [ $rest -ge 60 ] && echo "timeout $rest"
}
cuda_check() {
    local t; t=$(limit) || { echo "check skipped: out of time"; return; }
    $t $B/gptq bench kernels --device cuda --check-only > $OUT/check.txt 2>&1 || echo "check failed or cut"
    grep -E "rows" $OUT/check.txt | cut -c1-60; grep FAILED $OUT/check.txt | head
}
cuda_tables() {
    local t; t=$(limit) || { echo "tables skipped: out of time"; return; }
    PYTHONUNBUFFERED=1 $t python3 bench/torch_int4.py --out $OUT/torch.json --batches 1,16,64,256 \
        > $OUT/torch.log 2>&1 || tail -3 $OUT/torch.log
    for act in bf16 f16; do
        t=$(limit) || { echo "$act table skipped: out of time"; break; }
        $t $B/gptq bench kernels --device cuda --act $act --batches 1,16,64,256 --torch-json $OUT/torch.json \
            --markdown $OUT/k-$act.md > /dev/null 2>&1 || echo "$act table failed or cut"
    done
    grep -h -A9 "### Targets" $OUT/k-bf16.md $OUT/k-f16.md 2>/dev/null
}
cuda_suites() {
    GPTQ_STORIES_DIR=$S GPTQ_TEST_MODELS=tests/data/models $B/forward_gpu --ignored 2>&1 | grep -E "test result|panicked"
    GPTQ_STORIES_DIR=$S $B/decode_gpu --ignored 2>&1 | grep -E "test result|panicked"
}
# cuda_sweep_pairs REGEX: from a sweep's debug log $OUT/sw.log, every wgmma variant's time ($OUT/wg.txt), then per
# shape and batch the best variant not matching REGEX and its µs, the best matching and its µs, and their ratio
# (> 1: the matching ones faster), into $OUT/best.txt and printed.
cuda_sweep_pairs() {
    grep -ah " us" $OUT/sw.log | sed 's/.*DEBUG[^ ]* //' | grep "w4_wg" | grep -v "again:\|round" | sort > $OUT/wg.txt
    awk -v re="$1" '{v=$3; sub(/:$/,"",v); key=$1" "$2; t=$4+0; g=(v ~ re);
          if (g) { if (!(key in bt) || t < bt[key]) { bt[key]=t; bv[key]=v } }
          else { if (!(key in st) || t < st[key]) { st[key]=t; sv[key]=v } } }
         END {for (k in st) if (k in bt) printf "%s %s %.2f %s %.2f %.3f\n", k, sv[k], st[k], bv[k], bt[k], st[k]/bt[k]}' \
        $OUT/wg.txt | sort -t' ' -k1,1 -k2,2V > $OUT/best.txt
    cat $OUT/best.txt
}
# cuda_q8b: the 8B-shaped model (scripts/research/synth_llama.py, 32 blocks) as a w4 g128 GPTQ checkpoint in /tmp/q8b,
# for the decode measurements: random codes written directly (--w4; the same shapes, format and kernels as the RTN
# quantization of the bf16 model used before 2026-12-05, without writing and quantizing 15 GB of bf16).
cuda_q8b() {
    python3 scripts/research/synth_llama.py /tmp/q8b 8b 32 $S --w4 2>&1 | tail -1
}
cuda_decode() {
    local g=$1; shift
    env "$@" ${DECODE_TIMEOUT:+timeout $DECODE_TIMEOUT} $B/$g --threads 16 -v generate /tmp/q8b --max-new-tokens 256 \
        --ignore-eos --device cuda 2>&1 | grep -E "generated|error" | sed 's/.*generated/generated/'
}
