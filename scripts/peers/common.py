"""Shared helpers for the peer-compatibility scripts (scripts/peers/*.py).

Nothing here imports gptqmodel; the scripts do, so that a missing peer is an
explicit error there.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch


def eval_text(spec: str) -> str:
    """The text `gptq eval --dataset FILE` scores: a .txt file read as is.

    (`.jsonl` and the embedded `wikitext2` are not reproduced here; pass the
    raw file path instead.)"""
    p = Path(spec)
    if p.suffix == ".jsonl":
        rows = [json.loads(l) for l in p.read_text(encoding="utf-8").splitlines() if l.strip()]
        return "\n\n".join(r["text"] for r in rows)
    return p.read_text(encoding="utf-8")


@torch.inference_mode()
def gptq_perplexity(model, tokenizer, text: str, seqlen: int, max_windows: int | None,
                    log_every: int = 0):
    """GPTQ protocol, as `gptq eval`: tokenize the whole text once WITH the
    tokenizer's special tokens, cut into non-overlapping windows of `seqlen`
    (tail dropped), score each window from scratch, ppl = exp(sum NLL /
    (windows * (seqlen - 1))). Log-softmax in float64."""
    ids = tokenizer(text, add_special_tokens=True, return_tensors="pt").input_ids[0]
    n_tokens = int(ids.numel())
    windows = n_tokens // seqlen
    if max_windows is not None:
        windows = min(windows, max(1, max_windows))
    nll = 0.0
    t0 = time.time()
    dev = next(model.parameters()).device
    for w in range(windows):
        x = ids[w * seqlen:(w + 1) * seqlen].unsqueeze(0).to(dev)
        logits = model(input_ids=x, use_cache=False).logits[0].double()
        lp = torch.log_softmax(logits[:-1], dim=-1)
        nll += float(-lp.gather(1, x[0, 1:].unsqueeze(1)).sum())
        if log_every and (w + 1) % log_every == 0:
            print(f"  window {w + 1}/{windows}: running ppl {math.exp(nll / ((w + 1) * (seqlen - 1))):.4f}",
                  flush=True)
    scored = windows * (seqlen - 1)
    return {
        "ppl": math.exp(nll / scored),
        "mean_nll": nll / scored,
        "windows": windows,
        "seqlen": seqlen,
        "scored_tokens": scored,
        "text_tokens": n_tokens,
        "seconds": time.time() - t0,
    }


def run_gptq_eval(gptq_bin: str, model_dir: str, dataset: str, seqlen: int, max_windows: int | None,
                  json_out: str) -> dict:
    cmd = [gptq_bin, "eval", model_dir, "--dataset", dataset, "--seqlen", str(seqlen), "--json", json_out]
    if max_windows is not None:
        cmd += ["--max-windows", str(max_windows)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(Path(json_out).read_text())["result"]


# --- reference dequantization (numpy), written from the GPTQ packing spec ----------
# qweight  int32 [in*bits/32, out]: each word holds 32/bits consecutive INPUT rows,
#          row k at bit offset bits*(k % (32/bits)) (low bits first). 3-bit: 32 rows
#          in 3 words, values straddle word boundaries.
# qzeros   int32 [groups, out*bits/32]: same packing along OUTPUT columns.
#          checkpoint_format "gptq" (v1) stores zero-1; "gptq_v2" stores zero.
# scales   f16 [groups, out];  g_idx int32 [in]: group of each input row.
# W[out, in] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o])

def _unpack_rows(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Unpack along axis 0: [n*bits/32 (ceil), C] int32 -> [n, C] int64."""
    p = packed.astype(np.int64) & 0xFFFFFFFF
    if bits in (2, 4, 8):
        per = 32 // bits
        shifts = (np.arange(per, dtype=np.int64) * bits)[None, :, None]
        v = (p[:, None, :] >> shifts) & ((1 << bits) - 1)
        return v.reshape(-1, p.shape[1])[:n]
    if bits == 3:
        # concatenate bit streams: each group of 3 words is a 96-bit little-endian
        # stream holding 32 values of 3 bits.
        words = p.reshape(-1, 3, p.shape[1])
        out = np.empty((words.shape[0] * 32, p.shape[1]), dtype=np.int64)
        w0, w1, w2 = words[:, 0, :], words[:, 1, :], words[:, 2, :]
        for k in range(32):
            bit = 3 * k
            val = np.zeros_like(w0)
            for b in range(3):
                pos = bit + b
                src = (w0, w1, w2)[pos // 32]
                val |= ((src >> (pos % 32)) & 1) << b
            out[k::32, :] = val
        return out[:n]
    raise ValueError(f"unsupported bits {bits}")


def reference_dequant(qweight, qzeros, scales, g_idx, bits: int, v1: bool) -> np.ndarray:
    """Returns W as float32 [out, in]."""
    out_f = scales.shape[1]
    in_f = g_idx.shape[0]
    q = _unpack_rows(qweight, bits, in_f)                         # [in, out]
    z = _unpack_rows(qzeros.T.copy(), bits, out_f).T              # [groups, out]
    if v1:
        z = z + 1
    g = g_idx.astype(np.int64)
    s = scales.astype(np.float32)
    w = s[g] * (q - z[g]).astype(np.float32)                      # [in, out]
    return w.T.copy()


def load_safetensors_dir(d: str) -> dict:
    from safetensors.numpy import load_file
    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def quant_config(d: str) -> dict:
    cfg = json.loads((Path(d) / "config.json").read_text())
    qc = cfg.get("quantization_config")
    if qc is None and (Path(d) / "quantize_config.json").exists():
        qc = json.loads((Path(d) / "quantize_config.json").read_text())
    return qc or {}


def versions() -> dict:
    import importlib.metadata as md
    out = {}
    for name in ("torch", "transformers", "gptqmodel", "optimum", "accelerate", "safetensors", "numpy", "tokenizers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def threads_from_env():
    n = os.environ.get("PEER_THREADS")
    if n:
        torch.set_num_threads(int(n))


def gptqmodel_small_cpu_workaround():
    """GPTQModel 7.7.0 sizes its 'cpu' worker pool as (os.cpu_count()+1)//2 but
    always asks for a 2-worker 'model_loader:cpu' sub-pool, so on a machine
    with <= 2 CPUs GPTQModel.load() raises
      ValueError: Virtual pool 'model_loader:cpu' requests 2 workers but parent 'cpu' only has 1
    (gptqmodel/__init__.py _build_device_thread_pool). Workaround: report at
    least 3 CPUs to os.cpu_count() BEFORE gptqmodel is imported. Only the
    worker-pool size changes; torch's own thread count is untouched."""
    if (os.cpu_count() or 1) <= 2 and os.environ.get("PEER_NO_CPU_WORKAROUND") != "1":
        real = os.cpu_count

        def cpu_count():
            return max(3, real() or 1)

        os.cpu_count = cpu_count
        return True
    return False
