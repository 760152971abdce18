#!/usr/bin/env python3
"""Quantize a model with GPTQModel (the Python peer), then score the peer's
checkpoint with the peer (transformers + GPTQModel) and with our `gptq eval`.

    .dev/venv-peers/bin/python scripts/peers/peer_quantize.py MODEL_DIR -o OUT \
        --bits 4 --group-size 32 --asym --calib /work/shared/data/text/brown/brown.txt \
        --nsamples 32 --calib-seqlen 256 \
        --dataset /work/shared/data/text/tinystories/tinystories_val.txt --seqlen 256 \
        --max-windows 100 --gptq target/release/gptq --json OUT.json

Calibration: the calibration text is tokenized once (with special tokens) and
`nsamples` windows of `calib-seqlen` tokens are taken at random offsets
(numpy seed --seed). The peer gets them as input_ids/attention_mask lists.
After saving, the script prints, for every decoder linear, how the peer stored
it (quantized: qweight/qzeros/scales shapes; or left as a dense `.weight`), and
the peer's own quantize_config (incl. any `dynamic` rules it wrote).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (eval_text, gptq_perplexity, load_safetensors_dir, quant_config,  # noqa: E402
                    run_gptq_eval, threads_from_env, versions,
                    gptqmodel_small_cpu_workaround)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--asym", action="store_true")
    ap.add_argument("--desc-act", action="store_true")
    ap.add_argument("--calib", required=True)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", required=True, help="eval text (.txt read as is)")
    ap.add_argument("--seqlen", type=int, required=True)
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--gptq", help="our gptq binary, for `gptq eval` on the peer's checkpoint")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--json")
    args = ap.parse_args()
    threads_from_env()
    if gptqmodel_small_cpu_workaround():
        print("note: os.cpu_count() reported as >= 3 for GPTQModel's worker pool (2-CPU bug workaround, see common.py)")

    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = {"model": args.model, "output": args.output, "versions": versions(), "args": vars(args)}
    print("versions:", json.dumps(summary["versions"]))

    tok = AutoTokenizer.from_pretrained(args.model)
    ids = tok(Path(args.calib).read_text(encoding="utf-8"), add_special_tokens=True).input_ids
    rng = np.random.default_rng(args.seed)
    starts = rng.integers(0, len(ids) - args.calib_seqlen, size=args.nsamples)
    calib = [{"input_ids": ids[s:s + args.calib_seqlen], "attention_mask": [1] * args.calib_seqlen}
             for s in starts]

    qcfg = QuantizeConfig(bits=args.bits, group_size=args.group_size, sym=not args.asym,
                          desc_act=args.desc_act)
    t0 = time.time()
    try:
        model = GPTQModel.load(args.model, qcfg, device="cpu", dtype=getattr(torch, args.dtype))
        model.quantize(calib, batch_size=1)
        model.save(args.output)
    except Exception as e:
        import traceback
        traceback.print_exc()
        summary["quantize_error"] = f"{type(e).__name__}: {e}"
        print("PEER QUANTIZE FAILED:", summary["quantize_error"])
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
        sys.exit(1)
    summary["quantize_seconds"] = time.time() - t0
    print(f"peer quantized + saved in {summary['quantize_seconds']:.1f}s -> {args.output}")
    del model

    # ---- how did the peer store each decoder linear? -------------------------
    qc = quant_config(args.output)
    summary["peer_quant_config"] = qc
    print("peer quantization_config:", json.dumps(qc, default=str)[:2000])
    t = load_safetensors_dir(args.output)
    layers = {}
    for k, v in t.items():
        if ".layers." not in k:
            continue
        mod, leaf = k.rsplit(".", 1)
        layers.setdefault(mod, {})[leaf] = list(v.shape)
    stored = {}
    for mod, leaves in sorted(layers.items()):
        if "qweight" in leaves:
            stored[mod] = {"quantized": True, **leaves}
        elif "weight" in leaves and len(leaves["weight"]) == 2:
            stored[mod] = {"quantized": False, "weight": leaves["weight"]}
    summary["stored"] = stored
    nq = sum(1 for v in stored.values() if v["quantized"])
    print(f"peer stored {nq} quantized linears, {len(stored) - nq} dense linears in decoder layers")
    for mod, v in stored.items():
        if ".layers.0." in mod:
            print(f"  {mod}: {json.dumps(v)}")

    # ---- perplexity: peer (transformers + GPTQModel) vs ours -----------------
    text = eval_text(args.dataset)
    tokp = AutoTokenizer.from_pretrained(args.output)
    try:
        pm = AutoModelForCausalLM.from_pretrained(args.output, device_map="cpu", dtype=getattr(torch, args.dtype)).eval()
        peer = gptq_perplexity(pm, tokp, text, args.seqlen, args.max_windows)
        summary["peer_ppl"] = peer
        print(f"peer (transformers+GPTQModel) ppl {peer['ppl']:.6f} ({peer['windows']} windows x {args.seqlen}, "
              f"{peer['text_tokens']} tokens, {peer['seconds']:.1f}s)")
    except Exception as e:
        summary["peer_load_error"] = f"{type(e).__name__}: {e}"
        print("PEER RELOAD FAILED:", summary["peer_load_error"])
        peer = None
    if args.gptq:
        try:
            ours = run_gptq_eval(args.gptq, args.output, args.dataset, args.seqlen, args.max_windows,
                                 str(Path(args.output).with_name(Path(args.output).name + ".ours-eval.json")))
            summary["ours_ppl"] = ours
            print(f"ours (gptq eval) ppl {ours['ppl']:.6f} ({ours['windows']} windows, {ours['text_tokens']} tokens)")
            if peer:
                rel = abs(peer["ppl"] - ours["ppl"]) / ours["ppl"]
                summary["ppl_rel_diff"] = rel
                print(f"perplexity relative difference: {rel:.2e}")
        except Exception as e:
            summary["ours_error"] = f"{type(e).__name__}: {e}"
            print("OUR EVAL FAILED:", summary["ours_error"])
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
