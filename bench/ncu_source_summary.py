#!/usr/bin/env python3
"""Summarises Nsight Compute source-page CSVs (`bench/cuda_wgmma_ncu3.sh`): the share of warp-state samples per
stall reason over the whole kernel, and the instructions with the most samples (their two largest reasons).
    python3 bench/ncu_source_summary.py FILE.csv [TOP]"""
import csv
import sys


def summarise(path, top):
    lines = open(path).read().split("\n")
    start = next(i for i, l in enumerate(lines) if l.startswith('"Address"'))
    rows = list(csv.reader(lines[start:]))
    head = rows[0]
    rows = [r for r in rows[1:] if len(r) == len(head)]
    col = head.index("Warp Stall Sampling (All Samples)")
    total = sum(float(r[col] or 0) for r in rows)
    reasons = [c for c in head if c.startswith("stall_") and "Not Issued" not in c]
    agg = {c: sum(float(r[head.index(c)] or 0) for r in rows) for c in reasons}
    print(f"== {path}: {total:.0f} samples")
    print(" ".join(f"{c[6:]}={v / total:.2f}" for c, v in sorted(agg.items(), key=lambda x: -x[1]) if v / total > 0.01))
    for r in sorted(rows, key=lambda r: -float(r[col] or 0))[:top]:
        d = sorted(((c[6:], float(r[head.index(c)] or 0)) for c in reasons), key=lambda x: -x[1])[:2]
        print(f"{100 * float(r[col]) / total:5.1f}%  {r[1].strip()[:58]:58s} {d}")


if __name__ == "__main__":
    for f in sys.argv[1:2]:
        summarise(f, int(sys.argv[2]) if len(sys.argv) > 2 else 20)
