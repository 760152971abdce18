#!/usr/bin/env python3
"""A plain PyTorch implementation of the published GPTQ algorithm (arXiv
2210.17323, with the reference code's details: lazy batches of 128 columns,
group parameters computed when a group starts, act-order, static groups,
damping = damp_percent x mean(diag H), asym grid that always holds 0), run
layer by layer on a Llama model read straight from a GGUF file.

It exists for two jobs:
  * quality research on SmolLM2-135M (issue "GPTQ engine on CPU"): variants of
    how calibration tokens enter the Hessian, damping, grids; each variant is
    quantized from the same calibration windows and evaluated on held-out
    texts in one run, on a GPU in seconds instead of CPU hours;
  * a baseline to hold the GPU quantization issue against.

Only torch (and its numpy) and `tokenizers` are needed. Everything runs in f32
with TF32 off, like the Rust engine.

  python3 gptq_torch.py --gguf M.gguf --tokenizer tokenizer.json \
      --calib brown.txt --eval wiki=wiki.test.raw --eval ptb=ptb.test.txt \
      --variant rtn:bits=4,group=128 --variant gptq:bits=4,group=128 ...
"""
import argparse
import json
import math
import random
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
DEV = "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- GGUF ----
def read_gguf(paths):
    """Reads a GGUF file (given as one path or its parts in order) into a
    dict of f32 numpy arrays with row-major [rows, cols] shapes, plus its
    metadata. Supports F32, F16, Q4_1 and Q8_0 (what SmolLM2's file has)."""
    buf = b"".join(open(p, "rb").read() for p in paths)
    pos = 0

    def rd(fmt):
        nonlocal pos
        fmt = "<" + fmt
        n = struct.calcsize(fmt)
        v = struct.unpack_from(fmt, buf, pos)
        pos += n
        return v

    def rstr():
        (n,) = rd("Q")
        nonlocal pos
        s = buf[pos:pos + n].decode("utf-8", "replace")
        pos += n
        return s

    scal = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def rval(t):
        if t in scal:
            return rd(scal[t])[0]
        if t == 8:
            return rstr()
        if t == 9:
            at, n = rd("IQ")
            return [rval(at) for _ in range(n)]
        raise ValueError(f"gguf value type {t}")

    assert buf[:4] == b"GGUF", "not a GGUF file"
    pos = 4
    (_ver,) = rd("I")
    nt, nkv = rd("QQ")
    meta = {}
    for _ in range(nkv):
        k = rstr()
        (t,) = rd("I")
        v = rval(t)
        meta[k] = v
    infos = []
    for _ in range(nt):
        name = rstr()
        (nd,) = rd("I")
        dims = rd("Q" * nd)
        t, off = rd("IQ")
        infos.append((name, dims, t, off))
    align = meta.get("general.alignment", 32)
    base = (pos + align - 1) // align * align
    out = {}
    for name, dims, t, off in infos:
        n = int(np.prod(dims))
        start = base + off
        if t == 0:
            a = np.frombuffer(buf, np.float32, n, start)
        elif t == 1:
            a = np.frombuffer(buf, np.float16, n, start).astype(np.float32)
        elif t == 3:  # Q4_1: f16 d, f16 m, 16 bytes of nibbles per 32
            nb = n // 32
            raw = np.frombuffer(buf, np.uint8, nb * 20, start).reshape(nb, 20)
            d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)
            m = raw[:, 2:4].copy().view(np.float16).astype(np.float32)
            qs = raw[:, 4:20]
            q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float32)
            a = (q * d + m).reshape(-1)
        elif t == 8:  # Q8_0: f16 d, 32 int8
            nb = n // 32
            raw = np.frombuffer(buf, np.uint8, nb * 34, start).reshape(nb, 34)
            d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)
            q = raw[:, 2:34].copy().view(np.int8).astype(np.float32)
            a = (q * d).reshape(-1)
        else:
            raise ValueError(f"{name}: gguf tensor type {t} not supported here")
        shape = tuple(reversed(dims))
        out[name] = a.reshape(shape).astype(np.float32)
    return out, meta


def llama_from_gguf(paths):
    t, meta = read_gguf(paths)
    cfg = dict(
        layers=meta["llama.block_count"],
        hidden=meta["llama.embedding_length"],
        heads=meta["llama.attention.head_count"],
        kv_heads=meta["llama.attention.head_count_kv"],
        theta=meta.get("llama.rope.freq_base", 10000.0),
        eps=meta["llama.attention.layer_norm_rms_epsilon"],
    )

    def unpermute(w, nh):
        rows, cols = w.shape
        return w.reshape(nh, rows // nh // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)

    g = lambda k: torch.from_numpy(np.ascontiguousarray(t[k])).to(DEV)
    layers = []
    for i in range(cfg["layers"]):
        p = f"blk.{i}."
        layers.append({
            "in_norm": g(p + "attn_norm.weight"),
            "post_norm": g(p + "ffn_norm.weight"),
            "q": torch.from_numpy(unpermute(t[p + "attn_q.weight"], cfg["heads"]).copy()).to(DEV),
            "k": torch.from_numpy(unpermute(t[p + "attn_k.weight"], cfg["kv_heads"]).copy()).to(DEV),
            "v": g(p + "attn_v.weight"),
            "o": g(p + "attn_output.weight"),
            "gate": g(p + "ffn_gate.weight"),
            "up": g(p + "ffn_up.weight"),
            "down": g(p + "ffn_down.weight"),
        })
    embed = g("token_embd.weight")
    head = g("output.weight") if "output.weight" in t else embed
    return cfg, embed, layers, g("output_norm.weight"), head


# --------------------------------------------------------------- model ----
def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(cfg, seq):
    hd = cfg["hidden"] // cfg["heads"]
    inv = 1.0 / (cfg["theta"] ** (torch.arange(0, hd, 2, device=DEV, dtype=torch.float32) / hd))
    f = torch.outer(torch.arange(seq, device=DEV, dtype=torch.float32), inv)
    e = torch.cat([f, f], -1)
    return e.cos(), e.sin()


def rot(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin


def block_forward(cfg, L, x, rope, tap=None):
    """One Llama block on x [B, S, H]. `tap(name, input)` sees each linear's
    input (q/k/v share one, gate/up share one) before it is applied."""
    B, S, H = x.shape
    nh, nkv = cfg["heads"], cfg["kv_heads"]
    hd = H // nh
    cos, sin = rope
    n = rmsnorm(x, L["in_norm"], cfg["eps"])
    if tap:
        tap("qkv", n)
    q = (n @ L["q"].T).view(B, S, nh, hd).transpose(1, 2)
    k = (n @ L["k"].T).view(B, S, nkv, hd).transpose(1, 2)
    v = (n @ L["v"].T).view(B, S, nkv, hd).transpose(1, 2)
    q, k = rot(q, cos, sin), rot(k, cos, sin)
    k = k.repeat_interleave(nh // nkv, 1)
    v = v.repeat_interleave(nh // nkv, 1)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    a = a.transpose(1, 2).reshape(B, S, H)
    if tap:
        tap("o", a)
    h = x + a @ L["o"].T
    n = rmsnorm(h, L["post_norm"], cfg["eps"])
    if tap:
        tap("gateup", n)
    m = F.silu(n @ L["gate"].T) * (n @ L["up"].T)
    if tap:
        tap("down", m)
    return h + m @ L["down"].T


INPUT_OF = {"q": "qkv", "k": "qkv", "v": "qkv", "o": "o", "gate": "gateup", "up": "gateup", "down": "down"}
SEQUENTIAL = [["k", "v", "q"], ["o"], ["up", "gate"], ["down"]]


@torch.no_grad()
def perplexity(cfg, embed, layers, norm, head, ids, seqlen, batch=8, max_windows=None):
    n = len(ids) // seqlen
    if max_windows:
        n = min(n, max_windows)
    data = torch.tensor(ids[: n * seqlen], device=DEV).view(n, seqlen)
    rope = rope_tables(cfg, seqlen)
    nll = 0.0
    for b in range(0, n, batch):
        x = embed[data[b:b + batch]]
        for L in layers:
            x = block_forward(cfg, L, x, rope)
        logits = rmsnorm(x, norm, cfg["eps"]) @ head.T
        lp = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), data[b:b + batch, 1:].reshape(-1), reduction="sum")
        nll += lp.item()
    return math.exp(nll / (n * (seqlen - 1)))


# -------------------------------------------------------------- solver ----
def find_params(x, bits, sym, mse=False, grid=100, maxshrink=0.8, norm=2.4):
    """Per-row scale and zero of the reference quantizer (weight=True)."""
    maxq = 2 ** bits - 1
    xmin = torch.minimum(x.min(1).values, torch.zeros(1, device=x.device))
    xmax = torch.maximum(x.max(1).values, torch.zeros(1, device=x.device))
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        neg = xmin < 0
        xmin[neg] = -xmax[neg]
    both0 = (xmin == 0) & (xmax == 0)
    xmin[both0], xmax[both0] = -1, 1
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    if mse:
        best = torch.full([x.shape[0]], float("inf"), device=x.device)
        for i in range(int(maxshrink * grid)):
            p = 1 - i / grid
            xmin1, xmax1 = p * xmin, p * xmax
            s1 = (xmax1 - xmin1) / maxq
            z1 = torch.round(-xmin1 / s1) if not sym else zero
            q = quant(x, s1.unsqueeze(1), z1.unsqueeze(1), maxq)
            err = (q - x).abs().pow(norm).sum(1)
            better = err < best
            best[better] = err[better]
            scale[better], zero[better] = s1[better], z1[better]
    return scale.unsqueeze(1), zero.unsqueeze(1)


def quant(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def rtn(W, bits, group, sym, mse=False):
    maxq = 2 ** bits - 1
    if group == -1:
        s, z = find_params(W, bits, sym, mse)
        return quant(W, s, z, maxq)
    Q = torch.empty_like(W)
    for c in range(0, W.shape[1], group):
        s, z = find_params(W[:, c:c + group], bits, sym, mse)
        Q[:, c:c + group] = quant(W[:, c:c + group], s, z, maxq)
    return Q


def gptq(W, H, bits, group, sym, damp=0.01, actorder=False, static=False, mse=False, block=128):
    """The published column loop. Returns the dequantized Q (same layout as W)."""
    W = W.clone().float()
    H = H.clone()
    cols = W.shape[1]
    maxq = 2 ** bits - 1
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    groups = None
    if static and group != -1:
        groups = [find_params(W[:, c:c + group], bits, sym, mse) for c in range(0, cols, group)]
    perm = None
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
        invperm = torch.argsort(perm)
    H = H + damp * torch.mean(torch.diag(H)) * torch.eye(cols, device=H.device)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    Hinv = torch.linalg.cholesky(Hinv, upper=True)
    Q = torch.zeros_like(W)
    s = z = None
    if group == -1:
        s, z = find_params(W, bits, sym, mse)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        E1 = torch.zeros_like(W1)
        Hi = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hi[i, i]
            if group != -1:
                if groups is None:
                    if (i1 + i) % group == 0:
                        s, z = find_params(W[:, i1 + i:i1 + i + group], bits, sym, mse)
                else:
                    c = i1 + i
                    if perm is not None:
                        c = perm[c].item()
                    s, z = groups[c // group]
            q = quant(w.unsqueeze(1), s, z, maxq).flatten()
            Q1[:, i] = q
            e = (w - q) / d
            W1[:, i:] -= e.unsqueeze(1) @ Hi[i, i:].unsqueeze(0)
            E1[:, i] = e
        Q[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, invperm]
    return Q


# ---------------------------------------------------------- variants ----
def parse_variant(spec):
    """`method:key=val,...` e.g. `gptq:bits=4,group=128,actorder=1,clip=4`."""
    method, _, rest = spec.partition(":")
    v = dict(method=method, bits=4, group=128, sym=0, damp=0.01, actorder=0, static=0, mse=0,
             clip=0.0, dropfirst=0, sinkw=-1.0, asymcal=0, name=spec)
    for kv in filter(None, rest.split(",")):
        k, _, val = kv.partition("=")
        if k not in v:
            raise SystemExit(f"unknown variant key {k}")
        v[k] = type(v[k])(val) if not isinstance(v[k], str) else val
    return v


def token_weights(x, v):
    """Per-token multipliers of a linear's input rows before they enter H.
    x: [B, S, C]. Returns x transformed."""
    if v["clip"] > 0:
        nrm = x.norm(dim=-1, keepdim=True)
        cap = v["clip"] * nrm.median(dim=1, keepdim=True).values
        x = x * torch.clamp(cap / nrm.clamp_min(1e-30), max=1.0)
    if v["dropfirst"]:
        x = x.clone()
        x[:, 0] = 0
    if v["sinkw"] >= 0:
        x = x.clone()
        x[:, 0] *= v["sinkw"]
    return x


@torch.no_grad()
def quantize_model(cfg, embed, layers0, samples, v, batch=8):
    layers = [{k: t.clone() for k, t in L.items()} for L in layers0]
    n, S = samples.shape
    rope = rope_tables(cfg, S)
    inps = torch.cat([embed[samples[b:b + batch]] for b in range(0, n, batch)])
    finps = inps.clone() if v["asymcal"] else None
    for li, L in enumerate(layers):
        if v["method"] == "rtn":
            for name in INPUT_OF:
                L[name] = rtn(L[name], v["bits"], v["group"], v["sym"], v["mse"])
        else:
            for grp in SEQUENTIAL:
                points = {INPUT_OF[g] for g in grp}
                Hs, Cs = {}, {}
                fp_in = {}

                def fp_tap(p, x):
                    if p in points:
                        fp_in[p] = token_weights(x, v).reshape(-1, x.shape[-1])

                def tap(p, x):
                    if p not in points:
                        return
                    x = token_weights(x, v).reshape(-1, x.shape[-1])
                    if p not in Hs:
                        Hs[p] = torch.zeros(x.shape[1], x.shape[1], device=DEV)
                        Cs[p] = torch.zeros(x.shape[1], x.shape[1], device=DEV)
                    Hs[p].addmm_(x.T, x)
                    if v["asymcal"]:
                        # C = (X - X~)^T X~ over tokens (rows): the GPTAQ cross term
                        Cs[p].addmm_((fp_in[p] - x).T, x)

                for b in range(0, n, batch):
                    if v["asymcal"]:
                        block_forward(cfg, layers0[li], finps[b:b + batch], rope, fp_tap)
                    block_forward(cfg, L, inps[b:b + batch], rope, tap)
                for g in grp:
                    H = Hs[INPUT_OF[g]] * (2.0 / n)
                    W = L[g]
                    if v["asymcal"]:
                        # min ||Q X~ - W X||: GPTQ on X~ with the target moved to
                        # W' = W + W C (H~ + damp)^-1 (its least-squares optimum).
                        C = Cs[INPUT_OF[g]] * (2.0 / n)
                        Hd = H + v["damp"] * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], device=DEV)
                        W = W + torch.linalg.solve(Hd, (W @ C).T).T
                    L[g] = gptq(W, H, v["bits"], v["group"], v["sym"], v["damp"], v["actorder"], v["static"], v["mse"])
        inps = torch.cat([block_forward(cfg, L, inps[b:b + batch], rope) for b in range(0, n, batch)])
        if finps is not None:
            finps = torch.cat([block_forward(cfg, layers0[li], finps[b:b + batch], rope) for b in range(0, n, batch)])
    return layers


def bench_solve(shapes, reps=2):
    """Times the per-layer solve (Hessian given) of the published loop for
    Llama-shaped layers, 4-bit g128 asym, act-order off and on."""
    out = []
    g = torch.Generator(device=DEV).manual_seed(0)
    for cols, rows in shapes:
        X = torch.randn(4096, cols, device=DEV, generator=g)
        X[:, :8] *= 30.0  # a few large-magnitude input channels
        H = X.T @ X * (2.0 / 4096)
        W = torch.randn(rows, cols, device=DEV, generator=g) * 0.02
        for act in (0, 1):
            gptq(W, H, 4, 128, 0, actorder=act)  # warm-up
            torch.cuda.synchronize()
            t0 = time.time()
            for _ in range(reps):
                gptq(W, H, 4, 128, 0, actorder=act)
            torch.cuda.synchronize()
            r = dict(cols=cols, rows=rows, actorder=act, seconds=round((time.time() - t0) / reps, 4))
            out.append(r)
            print(json.dumps(r), flush=True)
    return out


def main():
    if "--bench-solve" in sys.argv:
        shapes = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192), (8192, 28672), (28672, 8192)]
        print(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__}))
        bench_solve(shapes)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", nargs="+", required=True, help="the GGUF file, or its parts in order")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--eval", action="append", default=[], help="NAME=FILE (wikitext raw files are joined as HF rows)")
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--fp", action="store_true", help="also evaluate the unquantized model")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(a.tokenizer)
    t0 = time.time()
    cfg, embed, layers, norm, head = llama_from_gguf(a.gguf)
    print(f"loaded {len(layers)} layers in {time.time() - t0:.1f}s", flush=True)

    calib = open(a.calib, encoding="utf-8").read()
    ids = tok.encode(calib).ids
    random.seed(a.seed)
    wins = []
    for _ in range(a.nsamples):
        i = random.randint(0, len(ids) - a.seqlen - 1)
        wins.append(ids[i:i + a.seqlen])
    samples = torch.tensor(wins, device=DEV)
    evals = {}
    for spec in a.eval:
        name, _, path = spec.partition("=")
        raw = open(path, encoding="utf-8").read()
        if "wiki" in path:
            rows = ["" if l.strip() == "" else l for l in raw.splitlines(keepends=True)]
            raw = "\n\n".join(rows)
        evals[name] = tok.encode(raw).ids
    print(f"calib {len(ids)} tokens; eval " + ", ".join(f"{k} {len(v)}" for k, v in evals.items()), flush=True)

    results = []

    def report(name, lay, secs):
        r = {"variant": name, "quantize_s": round(secs, 1)}
        for k, e in evals.items():
            r[k] = round(perplexity(cfg, embed, lay, norm, head, e, a.seqlen, max_windows=a.max_windows), 4)
        results.append(r)
        print(json.dumps(r), flush=True)
        if a.json:
            json.dump(results, open(a.json, "w"), indent=1)

    if a.fp:
        report("fp", layers, 0.0)
    for spec in a.variant:
        v = parse_variant(spec)
        torch.cuda.synchronize() if DEV == "cuda" else None
        t0 = time.time()
        q = quantize_model(cfg, embed, layers, samples, v)
        torch.cuda.synchronize() if DEV == "cuda" else None
        report(spec, q, time.time() - t0)
        del q


if __name__ == "__main__":
    main()
