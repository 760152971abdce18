#!/usr/bin/env python3
"""Compares the packed weights of two GPTQ checkpoints (single-file
model.safetensors): differing 4-bit fields of `qweight` (for 4-bit layers
these are the codes; for other widths any differing bit still shows), and
whether every other tensor except scales/qzeros is identical.
  python3 bench/compare_codes.py DIR_A DIR_B"""
import json
import sys

import numpy as np
from safetensors.numpy import load_file

a, b = (load_file(f"{d}/model.safetensors") for d in sys.argv[1:3])
tot = diff = 0
worst = (0.0, "")
same_other = True
for k in a:
    if k.endswith(".qweight"):
        x, y = a[k].view(np.uint32), b[k].view(np.uint32)
        cx = np.stack([(x >> (4 * i)) & 15 for i in range(8)])
        cy = np.stack([(y >> (4 * i)) & 15 for i in range(8)])
        d = int((cx != cy).sum())
        tot += cx.size
        diff += d
        worst = max(worst, (d / cx.size, k))
    elif not (k.endswith(".scales") or k.endswith(".qzeros")):
        same_other &= bool(np.array_equal(a[k], b[k]))
print(json.dumps(dict(codes=tot, differing=diff, fraction=diff / max(tot, 1),
                      worst_layer=worst, other_tensors_identical=same_other)))
