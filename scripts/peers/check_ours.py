#!/usr/bin/env python3
"""Load one of OUR GPTQ checkpoints with the Python peers and compare.

    .dev/venv-peers/bin/python scripts/peers/check_ours.py QDIR \
        --dataset /work/shared/data/text/tinystories/tinystories_val.txt \
        --seqlen 256 --max-windows 200 --gptq target/release/gptq [--dense ORIG_DIR] \
        [--json OUT.json]

What is compared (and nothing more):
  1. LOAD: transformers.AutoModelForCausalLM.from_pretrained(QDIR) on CPU; in
     transformers 5.x that goes through GPTQModel (its QuantLinear kernels).
     We list which decoder linears became QuantLinear and which stayed
     torch.nn.Linear, and check that against quantize_config `dynamic` rules:
     a module excluded by a `-:` rule must be a plain Linear holding the f16
     weight stored in the checkpoint (bit-exact).
  2. WEIGHTS: for every QuantLinear, the peer's own dequantize_weight() vs an
     independent numpy dequantization of the stored qweight/qzeros/scales/g_idx
     written from the GPTQ packing spec (scripts/peers/common.py,
     reference_dequant; v1 zero-1 vs v2 zero). This checks that the peer reads
     the packing the way our writer meant it. Our Rust reader's dequantized
     weights are NOT dumped by any CLI command, so they are not compared
     directly; the perplexity comparison (3) covers our reader end to end.
     With --dense, each layer's |W_deq - W_dense| is also printed (that is
     quantization error, informational, not a compatibility check).
  3. PERPLEXITY: the peer's perplexity with the `gptq eval` protocol (same
     text, seqlen, windows) vs `gptq eval` on the same folder (run here when
     --gptq is given, or read from --ours-json). Token counts must match.
  4. LOGITS: max |logit difference| between the peer's quantized model and a
     plain float32 transformers model whose weights are the numpy reference
     dequantization (--logit-windows windows). Our CLI has no logits dump, so
     our own logits are not in this comparison.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (eval_text, gptq_perplexity, load_safetensors_dir, quant_config,  # noqa: E402
                    reference_dequant, run_gptq_eval, threads_from_env, versions,
                    gptqmodel_small_cpu_workaround)


def dynamic_excluded(dynamic: dict | None, name: str) -> bool:
    """GPTQModel semantics: first matching rule wins; '-:' prefix = skip."""
    if not dynamic:
        return False
    for pat in dynamic:
        if pat.startswith("-:"):
            if re.match(pat[2:], name):
                return True
        elif re.match(pat[2:] if pat.startswith("+:") else pat, name):
            return False
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("qdir")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--seqlen", type=int, required=True)
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--gptq", help="path of our gptq binary; runs `gptq eval` for the comparison")
    ap.add_argument("--ours-json", help="a `gptq eval --json` file instead of running --gptq")
    ap.add_argument("--dense", help="the unquantized HF folder (for informational quantization error)")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                    help="dtype passed to from_pretrained (GPTQModel's torch kernel supports f16/bf16)")
    ap.add_argument("--loader", default="transformers", choices=["transformers", "gptqmodel"],
                    help="transformers.AutoModelForCausalLM (HF integration: optimum + GPTQModel kernels) "
                         "or GPTQModel.load (GPTQModel's own loader)")
    ap.add_argument("--backend", default="auto",
                    help="GPTQModel kernel for --loader gptqmodel (auto, torch, torch_aten, ...)")
    ap.add_argument("--logit-windows", type=int, default=2)
    ap.add_argument("--rel-tol", type=float, default=1e-3)
    ap.add_argument("--json", help="write a JSON summary here")
    args = ap.parse_args()
    threads_from_env()
    if gptqmodel_small_cpu_workaround():
        print("note: os.cpu_count() reported as >= 3 for GPTQModel's worker pool (2-CPU bug workaround, see common.py)")

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    summary = {"qdir": args.qdir, "loader": args.loader, "backend": args.backend, "versions": versions(), "ok": True, "failures": []}
    print("versions:", json.dumps(summary["versions"]))
    qc = quant_config(args.qdir)
    bits, fmt, dynamic = qc.get("bits"), qc.get("checkpoint_format", "gptq"), qc.get("dynamic")
    v1 = fmt == "gptq"
    print(f"checkpoint: bits={bits} group_size={qc.get('group_size')} sym={qc.get('sym')} "
          f"desc_act={qc.get('desc_act')} checkpoint_format={fmt} dynamic_rules={len(dynamic or {})}")

    # ---- 1. load -------------------------------------------------------------------
    dtype = getattr(torch, args.dtype)
    tok = AutoTokenizer.from_pretrained(args.qdir)
    try:
        if args.loader == "gptqmodel":
            from gptqmodel import GPTQModel
            kw = {} if args.backend == "auto" else {"backend": args.backend}
            model = GPTQModel.load(args.qdir, device="cpu", dtype=dtype, **kw).model
        else:
            model = AutoModelForCausalLM.from_pretrained(args.qdir, device_map="cpu", dtype=dtype)
    except Exception as e:  # report the exact error
        summary["ok"] = False
        summary["load_error"] = f"{type(e).__name__}: {e}"
        print("LOAD FAILED:", summary["load_error"])
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2))
        sys.exit(1)
    model.eval()
    tensors = load_safetensors_dir(args.qdir)

    quant, dense = [], []
    for name, mod in model.named_modules():
        if ".layers." not in name:
            continue
        if hasattr(mod, "qweight"):
            quant.append((name, mod))
        elif isinstance(mod, torch.nn.Linear):
            dense.append((name, mod))
    kinds = sorted({type(m).__module__ + "." + type(m).__name__ for _, m in quant})
    print(f"loaded: {len(quant)} QuantLinear ({', '.join(kinds)}), {len(dense)} plain Linear in decoder layers")
    summary["quant_modules"] = len(quant)
    summary["dense_modules"] = [n for n, _ in dense]
    summary["kernels"] = kinds

    # dynamic-rule check
    mism = []
    for n, _ in quant:
        if dynamic_excluded(dynamic, n):
            mism.append(f"{n}: excluded by dynamic but loaded as QuantLinear")
    for n, m in dense:
        if not dynamic_excluded(dynamic, n):
            mism.append(f"{n}: not excluded by dynamic but loaded as plain Linear")
        stored = tensors.get(n + ".weight")
        if stored is None:
            mism.append(f"{n}: plain Linear but no {n}.weight in the checkpoint")
            continue
        got = m.weight.detach().float().numpy()
        d = float(np.abs(got - stored.astype(np.float32)).max())
        if d != 0.0:
            mism.append(f"{n}: plain Linear weight differs from stored f16 by {d:g}")
    summary["dynamic_check"] = mism
    print(f"dynamic rules honoured: {'yes' if not mism else 'NO'}"
          + (f" ({len(dense)} excluded layers loaded as plain Linear with the stored f16 weights)" if not mism else ""))
    for m in mism:
        print("  ", m)
    if mism:
        summary["ok"] = False
        summary["failures"].append("dynamic")

    # ---- 2. weights ----------------------------------------------------------------
    dense_t = load_safetensors_dir(args.dense) if args.dense else None
    worst, worst_name, deq_ref = 0.0, None, {}
    rows = []
    no_packed = [n for n, _ in quant if n + ".qweight" not in tensors]
    if no_packed:
        print(f"{len(no_packed)} QuantLinear modules have NO packed tensors in the checkpoint "
              f"(their qweight/qzeros/scales stay uninitialised; the stored .weight is ignored): "
              f"{', '.join(no_packed[:3])}, ...")
        summary["quant_without_tensors"] = no_packed
        summary["ok"] = False
        summary["failures"].append("uninitialised-quantlinear")
    for n, m in quant:
        if n in no_packed:
            continue
        ref = reference_dequant(tensors[n + ".qweight"], tensors[n + ".qzeros"], tensors[n + ".scales"],
                                tensors[n + ".g_idx"], bits, v1)
        deq_ref[n] = ref
        with torch.inference_mode():
            w = m.dequantize_weight()
        w = w.detach().float().numpy()
        if w.shape == (ref.shape[1], ref.shape[0]):  # GPTQModel returns [in, out]
            w = w.T
        d = float(np.abs(w - ref).max())
        row = {"layer": n, "shape": list(ref.shape), "max_abs_peer_vs_ref": d}
        if dense_t is not None and n + ".weight" in dense_t:
            wd = dense_t[n + ".weight"].astype(np.float32)
            row["max_abs_vs_dense"] = float(np.abs(ref - wd).max())
            row["rel_fro_vs_dense"] = float(np.linalg.norm(ref - wd) / np.linalg.norm(wd))
        rows.append(row)
        if d >= worst:
            worst, worst_name = d, n
    summary["weights"] = rows
    summary["weights_max_abs_peer_vs_ref"] = worst
    print(f"dequantized weights, peer dequantize_weight() vs numpy spec reference: max |diff| = {worst:.3g}"
          f" over {len(rows)} layers (worst {worst_name})")
    if rows and "rel_fro_vs_dense" in rows[0]:
        rf = [r["rel_fro_vs_dense"] for r in rows]
        print(f"  (informational) quantization error vs dense: rel Frobenius median {np.median(rf):.4f}, "
              f"max {max(rf):.4f}; max |W_q - W_dense| {max(r['max_abs_vs_dense'] for r in rows):.4f}")
    # f16 scales times small ints are exact in f32; the peer computes in its dtype
    tol = 0.0 if args.dtype == "float32" else 2e-3 * max(1.0, max(float(np.abs(r).max()) for r in deq_ref.values()) if deq_ref else 1.0)
    if worst > tol:
        summary["ok"] = False
        summary["failures"].append("weights")

    # ---- 3. perplexity ------------------------------------------------------------
    text = eval_text(args.dataset)
    print(f"peer perplexity (dtype {args.dtype}) ...", flush=True)
    peer = gptq_perplexity(model, tok, text, args.seqlen, args.max_windows, log_every=0)
    summary["peer_ppl"] = peer
    print(f"peer: ppl {peer['ppl']:.6f} ({peer['windows']} windows x {peer['seqlen']}, "
          f"{peer['text_tokens']} text tokens, {peer['seconds']:.1f}s)")
    ours = None
    if args.ours_json:
        ours = json.loads(Path(args.ours_json).read_text())["result"]
    elif args.gptq:
        out = str(Path(args.qdir).with_name(Path(args.qdir).name + ".ours-eval.json"))
        ours = run_gptq_eval(args.gptq, args.qdir, args.dataset, args.seqlen, args.max_windows, out)
    if ours is not None:
        rel = abs(peer["ppl"] - ours["ppl"]) / ours["ppl"]
        summary["ours_ppl"] = ours
        summary["ppl_rel_diff"] = rel
        same_tok = ours["text_tokens"] == peer["text_tokens"] and ours["windows"] == peer["windows"]
        print(f"ours: ppl {ours['ppl']:.6f} ({ours['windows']} windows, {ours['text_tokens']} text tokens)")
        print(f"perplexity relative difference: {rel:.2e} (tolerance {args.rel_tol:g}); "
              f"token counts {'match' if same_tok else 'DIFFER'}")
        if rel > args.rel_tol or not same_tok:
            summary["ok"] = False
            summary["failures"].append("perplexity")

    # ---- 4. logits vs a float32 model with the reference weights ------------------
    if args.logit_windows > 0:
        cfg = AutoConfig.from_pretrained(args.qdir)
        if hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
        ref_model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
        sd = {}
        for k in ref_model.state_dict():
            mod = k[: -len(".weight")] if k.endswith(".weight") else None
            if mod in deq_ref:
                sd[k] = torch.from_numpy(deq_ref[mod])
            elif k in tensors:
                sd[k] = torch.from_numpy(tensors[k].astype(np.float32))
        missing, unexpected = ref_model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
        if missing:
            print("reference model: missing", missing[:5])
        if cfg.tie_word_embeddings:
            ref_model.tie_weights()
        ids = tok(text, add_special_tokens=True, return_tensors="pt").input_ids[0]
        md, mref = 0.0, 0.0
        with torch.inference_mode():
            for w in range(min(args.logit_windows, ids.numel() // args.seqlen)):
                x = ids[w * args.seqlen:(w + 1) * args.seqlen].unsqueeze(0)
                a = model(input_ids=x, use_cache=False).logits.float()
                b = ref_model(input_ids=x, use_cache=False).logits.float()
                md = max(md, float((a - b).abs().max()))
                mref = max(mref, float(b.abs().max()))
        summary["logits_max_abs_peer_vs_f32_reference"] = md
        print(f"logits, peer ({args.dtype}) vs float32 model with reference-dequantized weights: "
              f"max |diff| = {md:.4g} (max |logit| {mref:.3g}) over {args.logit_windows} windows")

    print("RESULT:", "OK" if summary["ok"] else "FAIL " + ",".join(summary["failures"]))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
