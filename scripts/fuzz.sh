#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz + libFuzzer) for SECONDS each
# (default 600), at most JOBS (default 2) at a time, and fails if any target
# finds a crash, a hang (> 10 s per input), more than 2 GiB of RSS or a
# single allocation over 1 GiB. Results: docs/reliability.md.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs `cargo install cargo-fuzz`. Only stable Rust is required:
# RUSTC_BOOTSTRAP=1 lets it accept the -Zsanitizer flags cargo-fuzz passes.
# Crash inputs land in fuzz/artifacts/TARGET/; the corpus grows in
# fuzz/corpus/TARGET/ (seeded from fuzz/seeds/, made by fuzz/make_seeds.py).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-600}"
shift || true
jobs="${JOBS:-2}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi
[ -d seeds ] || python3 make_seeds.py
export RUSTC_BOOTSTRAP=1
cargo fuzz build
mkdir -p logs && rm -f logs/*.result
run() {
  local t="$1"
  mkdir -p "corpus/$t" "seeds/$t"
  if cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
      -max_len=65536 -print_final_stats=1 >"logs/$t.log" 2>&1; then
    echo "ok    $t: $(grep -E '^stat::number_of_executed_units' "logs/$t.log" | awk '{print $2}') execs in ${secs}s"
  else
    echo "FAIL  $t: see fuzz/logs/$t.log and fuzz/artifacts/$t/"
    return 1
  fi
}
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
  run "$t" >"logs/$t.result" &
done
wait
cat logs/*.result
! grep -q '^FAIL' logs/*.result
