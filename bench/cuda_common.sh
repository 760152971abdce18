# Sourced by the CUDA benchmark scripts (device machine, repo root, .device-bin/ carried; $OUT set by the caller):
#   cuda_unpack NAME...  .device-bin/NAME.gz to $B/NAME (B=/tmp/bin), then the library path (bench/cuda_env.sh)
#   cuda_check           the kernel check (every case along every path, f16 and bf16) into $OUT/check.txt, summarised
#   cuda_suites          the GPU test suites (forward_gpu, decode_gpu: unpack them first)
B=/tmp/bin
S=.device-bin/stories260K
cuda_unpack() {
    mkdir -p $B
    for f in "$@"; do gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; done
    source bench/cuda_env.sh /tmp > /dev/null
}
cuda_check() {
    $B/gptq bench kernels --device cuda --check-only > $OUT/check.txt 2>&1
    grep -E "rows" $OUT/check.txt | cut -c1-60; grep FAILED $OUT/check.txt | head
}
cuda_suites() {
    GPTQ_STORIES_DIR=$S GPTQ_TEST_MODELS=tests/data/models $B/forward_gpu --ignored 2>&1 | grep -E "test result|panicked"
    GPTQ_STORIES_DIR=$S $B/decode_gpu --ignored 2>&1 | grep -E "test result|panicked"
}
