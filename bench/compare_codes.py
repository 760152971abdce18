#!/usr/bin/env python3
"""Compares the packed weights of two GPTQ checkpoints (single-file
model.safetensors): differing 4-bit fields of `qweight` (for 4-bit layers
these are the codes; for other widths any differing bit still shows), per
block and per linear kind, and whether every other tensor except
scales/qzeros is identical. Standard library only (reads the safetensors
header itself), so it runs on the CPU machine as on the device.
  python3 bench/compare_codes.py DIR_A DIR_B
Prints the per-block and per-kind percentages, then one JSON line."""
import collections
import json
import struct
import sys


def open_st(d):
    f = open(f"{d}/model.safetensors", "rb")
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return f, header, 8 + n


def read(st, k):
    f, header, base = st
    s, e = header[k]["data_offsets"]
    f.seek(base + s)
    return f.read(e - s)


def differing_nibbles(x, y):
    """4-bit fields that differ between two equally long byte strings."""
    z = int.from_bytes(x, "little") ^ int.from_bytes(y, "little")
    low = int.from_bytes(b"\x11" * len(x), "little")
    return ((z | z >> 1 | z >> 2 | z >> 3) & low).bit_count()


def main():
    a, b = open_st(sys.argv[1]), open_st(sys.argv[2])
    if set(a[1]) != set(b[1]):
        sys.exit("the checkpoints hold different tensors")
    tot = diff = 0
    worst = (0.0, "")
    same_other = True
    by_block = collections.defaultdict(lambda: [0, 0])
    by_kind = collections.defaultdict(lambda: [0, 0])
    for k in sorted(a[1]):
        if k.endswith(".scales") or k.endswith(".qzeros"):
            continue
        x, y = read(a, k), read(b, k)
        if k.endswith(".qweight"):
            if len(x) != len(y):
                sys.exit(f"{k}: sizes differ")
            d, n = differing_nibbles(x, y), 2 * len(x)
            tot += n
            diff += d
            worst = max(worst, (d / n, k))
            parts = k.split(".")
            block = next((p for p in parts if p.isdigit()), "-")
            for acc, key in ((by_block, block), (by_kind, parts[-2])):
                acc[key][0] += d
                acc[key][1] += n
        else:
            same_other &= x == y
    pct = lambda acc, key: f"{key}:{100 * acc[key][0] / max(acc[key][1], 1):.1f}"
    order = sorted(by_block, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0))
    print("differing codes per block, %:", " ".join(pct(by_block, s) for s in order))
    print("per linear kind, %:", " ".join(pct(by_kind, s) for s in sorted(by_kind)))
    print(json.dumps(dict(codes=tot, differing=diff, fraction=diff / max(tot, 1),
                          worst_layer=worst, other_tensors_identical=same_other)))


if __name__ == "__main__":
    main()
