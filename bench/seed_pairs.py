#!/usr/bin/env python3
"""Paired per-seed perplexities of two quantizations (issue 5's GPU-vs-CPU comparison over calibration seeds).
Reads the `seed S ...: ... ppl P` lines of bench/smollm2_seeds_cpu.sh logs and the `... seed S cuda: ... ppl P`
lines of bench/cuda_seeds.sh, and prints per seed both values and their ratio, then mean, sd and the standard error
of the mean per-seed ratio over the seeds both have; then, unpaired, the ratio of the two means over every seed
each side has, and bootstrap intervals of the ratios of the means and of the medians.
    python3 bench/seed_pairs.py [--scale-a R] A_LOG [A_LOG2 ...] -- B_LOG ...   (A: reference, B: compared)
--scale-a R multiplies every A perplexity by R: A scored by another evaluator, R = the mean ratio of the two
evaluators on the same checkpoints (itself from this script: the same checkpoints' two evaluations as A and B)."""
import random
import re
import statistics as st
import sys


BOOT = 10000


def read(paths):
    out = {}
    for p in paths:
        for line in open(p):
            m = re.search(r"seed (\d+)\b.*ppl ([0-9.]+)", line)
            if m:
                out[int(m.group(1))] = float(m.group(2))
    return out


def main():
    args = sys.argv[1:]
    scale = 1.0
    if args[:1] == ["--scale-a"]:
        scale, args = float(args[1]), args[2:]
    cut = args.index("--")
    a, b = read(args[:cut]), read(args[cut + 1:])
    a = {s: v * scale for s, v in a.items()}
    seeds = sorted(set(a) & set(b))
    ratios = []
    for s in seeds:
        r = b[s] / a[s] - 1
        ratios.append(r)
        print(f"seed {s:3d}  {a[s]:8.4f}  {b[s]:8.4f}  {100 * r:+6.2f} %")
    for name, v in (("A", [a[s] for s in seeds]), ("B", [b[s] for s in seeds])):
        print(f"{name}: n {len(v)}, mean {st.mean(v):.4f}, sd {st.stdev(v):.4f} ({100 * st.stdev(v) / st.mean(v):.2f} %)")
    if len(ratios) > 1:
        se = st.stdev(ratios) / len(ratios) ** 0.5
        print(f"B/A - 1 per seed: mean {100 * st.mean(ratios):+.2f} %, sd {100 * st.stdev(ratios):.2f} %, "
              f"standard error {100 * se:.2f} %, median {100 * st.median(ratios):+.2f} %")
    # Unpaired, over every seed each side has (the per-seed pairs are uncorrelated when the quantizations differ
    # chaotically, so all seeds of either side count): ratio of the means, its standard error to first order.
    va, vb = list(a.values()), list(b.values())
    if len(va) > 1 and len(vb) > 1:
        ma, mb = st.mean(va), st.mean(vb)
        rel = ((st.stdev(va) / ma) ** 2 / len(va) + (st.stdev(vb) / mb) ** 2 / len(vb)) ** 0.5
        print(f"all seeds: A n {len(va)} mean {ma:.4f} sd {100 * st.stdev(va) / ma:.2f} %; "
              f"B n {len(vb)} mean {mb:.4f} sd {100 * st.stdev(vb) / mb:.2f} %; "
              f"mean B / mean A - 1 {100 * (mb / ma - 1):+.2f} % +- {100 * rel:.2f} % (standard error)")
        # Percentile bootstrap (each side resampled on its own, fixed seed so reruns agree): 95 % intervals of the
        # ratio of the means and of the medians. The perplexities have a heavy upper tail (a few seeds 10-15 %
        # above the rest on either backend), which the mean feels and the median does not.
        rng = random.Random(0)
        boot = {"means": [], "medians": []}
        for _ in range(BOOT):
            ra, rb = rng.choices(va, k=len(va)), rng.choices(vb, k=len(vb))
            boot["means"].append(st.mean(rb) / st.mean(ra) - 1)
            boot["medians"].append(st.median(rb) / st.median(ra) - 1)
        point = {"means": mb / ma - 1, "medians": st.median(vb) / st.median(va) - 1}
        for k, v in boot.items():
            v.sort()
            lo, hi = v[int(0.025 * BOOT)], v[int(0.975 * BOOT) - 1]
            print(f"ratio of the {k} - 1: {100 * point[k]:+.2f} %, 95 % bootstrap interval "
                  f"[{100 * lo:+.2f} %, {100 * hi:+.2f} %]")


if __name__ == "__main__":
    main()
