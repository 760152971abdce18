#!/usr/bin/env python3
"""A checkpoint with some blocks taken from another quantization of the same model (which blocks make a
quantization seed good or bad: issue 5's seed-to-seed spread). Both checkpoints must be single-file safetensors of
the same layout (ours, same settings, different seeds); tensors of the chosen blocks (`model.layers.N.`) are copied
byte for byte from DONOR, everything else from BASE, and BASE's other files are copied alongside.
    python3 scripts/research/swap_blocks.py BASE_DIR DONOR_DIR OUT_DIR BLOCKS [PART]
BLOCKS: e.g. 0-14 or 3,7,11-12; PART: only tensors whose name contains it (e.g. mlp.down_proj)."""
import json
import shutil
import struct
import sys
from pathlib import Path


def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), 8 + n


def blocks(spec):
    out = set()
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def main():
    base, donor, out, spec = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    chosen = blocks(spec)
    part = sys.argv[5] if len(sys.argv) > 5 else ""
    hb, ob = header(base / "model.safetensors")
    hd, od = header(donor / "model.safetensors")
    data = bytearray((base / "model.safetensors").read_bytes())
    dbytes = (donor / "model.safetensors").read_bytes()
    swapped = 0
    for name, t in hb.items():
        if name == "__metadata__" or not name.startswith("model.layers."):
            continue
        if int(name.split(".")[2]) not in chosen or part not in name:
            continue
        d = hd[name]
        if (d["dtype"], d["shape"]) != (t["dtype"], t["shape"]):
            sys.exit(f"{name}: {d['dtype']} {d['shape']} in the donor, {t['dtype']} {t['shape']} in the base")
        (b0, b1), (d0, d1) = t["data_offsets"], d["data_offsets"]
        data[ob + b0:ob + b1] = dbytes[od + d0:od + d1]
        swapped += 1
    out.mkdir(parents=True, exist_ok=True)
    for f in base.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy(f, out / f.name)
    (out / "model.safetensors").write_bytes(data)
    print(f"{out}: {swapped} tensors of blocks {spec} from {donor}")


if __name__ == "__main__":
    main()
