#!/bin/bash
# GPU machine, repo root, .device-bin/ carried (gptq.gz, decode_gpu.gz, forward_gpu.gz, stories260K/): the GPU
# calibration forward and pipeline against the host's (stories260K and the OPT test models of tests/data/models,
# pre-LN and post-LN), then the decoder tests.
set -u
B=/tmp/bin; mkdir -p $B
for f in decode_gpu forward_gpu; do gunzip -c .device-bin/$f.gz > $B/$f; chmod +x $B/$f; done
source bench/cuda_env.sh /tmp > /dev/null
export GPTQ_STORIES_DIR=.device-bin/stories260K GPTQ_TEST_MODELS=tests/data/models
$B/forward_gpu --ignored --nocapture 2>&1 | grep -E "output relative|total|test |test result|panicked|FAILED" | sed 's/.*models\///'
$B/decode_gpu --ignored 2>&1 | grep -E "test |test result|panicked|FAILED"
