"""A Llama-shaped checkpoint with seeded random weights, for timing GPTQ at
real sizes without downloading a model (issue 5's whole-model benchmark).

    python3 scripts/research/synth_llama.py OUT_DIR {8b|70b} LAYERS TOKENIZER_DIR [--w4]

Weights are bf16 N(0, 0.02²); each block's two RMSNorm weights are ones with
8 random channels at 20, and the embedding has 8 channels scaled by 20, so
every layer input has a few large-magnitude channels and the Hessians are as
lopsided as a real model's (needs torch and a CUDA GPU). The tokenizer
(tokenizer.json and its config) is copied from TOKENIZER_DIR; the vocabulary
follows it.

With --w4 it writes a 4-bit GPTQ checkpoint instead (v1 format, group size
128, symmetric, no act-order; the layout the quantizer writes): random codes,
one scale for every group, f16 embedding and output layer from a fixed
pattern. Pure Python (no torch, no GPU), for timing inference: a decode
measurement then skips writing the bf16 model and quantizing it.
"""
import json, os, random, shutil, struct, sys

SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
                num_key_value_heads=8, head_dim=128),
}


def main():
    args = [a for a in sys.argv[1:] if a != "--w4"]
    out, shape, layers, tok_dir = args[0], args[1], int(args[2]), args[3]
    s = SHAPES[shape]
    tok = json.load(open(os.path.join(tok_dir, "tokenizer.json")))
    ids = list(tok["model"]["vocab"].values()) + [t["id"] for t in tok.get("added_tokens", [])]
    vocab = max(ids) + 1
    os.makedirs(out, exist_ok=True)
    write = write_w4 if "--w4" in sys.argv[1:] else write_bf16
    index, files, extra = write(out, s, layers, vocab)
    json.dump({"metadata": {}, "weight_map": index},
              open(os.path.join(out, "model.safetensors.index.json"), "w"))
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", num_hidden_layers=layers,
               vocab_size=vocab, max_position_embeddings=8192, rms_norm_eps=1e-5,
               rope_theta=500000.0, tie_word_embeddings=False, hidden_act="silu", **s, **extra)
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
    if "quantization_config" in extra:
        json.dump(extra["quantization_config"], open(os.path.join(out, "quantize_config.json"), "w"), indent=1)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        if os.path.exists(os.path.join(tok_dir, f)):
            shutil.copy(os.path.join(tok_dir, f), out)
    print(f"{out}: {shape} x {layers} blocks, vocab {vocab}, {len(files)} shards")


def linears(s):
    """(name, out, in) of a block's linear layers."""
    h, i, d = s["hidden_size"], s["intermediate_size"], s["head_dim"]
    nh, nkv = s["num_attention_heads"], s["num_key_value_heads"]
    return [("self_attn.q_proj", nh * d, h), ("self_attn.k_proj", nkv * d, h),
            ("self_attn.v_proj", nkv * d, h), ("self_attn.o_proj", h, nh * d),
            ("mlp.gate_proj", i, h), ("mlp.up_proj", i, h), ("mlp.down_proj", h, i)]


def save_raw(path, tensors):
    """A safetensors file from {name: (dtype, shape, bytes)}."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for k, (dt, shape, data) in tensors.items():
        header[k] = {"dtype": dt, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for _, _, data in tensors.values():
            f.write(data)
    os.replace(tmp, path)


def write_w4(out, s, layers, vocab, group=128):
    rng = random.Random(0)
    h = s["hidden_size"]

    def f16(values):
        return struct.pack(f"<{len(values)}e", *values)

    def pattern(n, mult):
        # Small f16 values in [-0.04, 0.04] from a fixed sequence (no NaN, no infinity).
        return f16([((k * mult) % 2001 - 1000) * 4e-5 for k in range(n)])

    # Weights (q − 8)·s with uniform codes: sd ≈ 4.6·s, about the 0.02 of the bf16 model.
    scale = 0.0043
    index, files, shard = {}, [], {}

    def flush():
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_raw(os.path.join(out, name), shard)
        for k in shard:
            index[k] = name
        files.append(name)
        shard.clear()

    shard["model.embed_tokens.weight"] = ("F16", [vocab, h], pattern(vocab * h, 2654435761))
    shard["model.norm.weight"] = ("F16", [h], f16([1.0] * h))
    shard["lm_head.weight"] = ("F16", [vocab, h], pattern(vocab * h, 40503))
    for b in range(layers):
        p = f"model.layers.{b}."
        for n in ["input_layernorm", "post_attention_layernorm"]:
            shard[p + n + ".weight"] = ("F16", [h], f16([1.0] * h))
        for name, n_out, n_in in linears(s):
            groups = n_in // group
            q = p + name + "."
            shard[q + "qweight"] = ("I32", [n_in // 8, n_out], rng.randbytes(n_in * n_out // 2))
            # v1 stores zero − 1: the symmetric zero 8 as 7 in every nibble.
            shard[q + "qzeros"] = ("I32", [groups, n_out // 8], b"\x77" * (groups * n_out // 2))
            shard[q + "scales"] = ("F16", [groups, n_out], f16([scale]) * (groups * n_out))
            shard[q + "g_idx"] = ("I32", [n_in], struct.pack(f"<{n_in}i", *(k // group for k in range(n_in))))
        if b % 4 == 3:
            flush()
    if shard:
        flush()
    qc = dict(bits=4, group_size=group, desc_act=False, sym=True, lm_head=False, quant_method="gptq",
              checkpoint_format="gptq", pack_dtype="int32", damp_percent=0.01, static_groups=False,
              true_sequential=True)
    return index, files, dict(torch_dtype="float16", quantization_config=qc)


def write_bf16(out, s, layers, vocab):
    import torch
    from safetensors.torch import save_file
    g = torch.Generator(device="cuda").manual_seed(0)
    h = s["hidden_size"]

    def rand(*shape, std=0.02):
        return (torch.randn(*shape, generator=g, device="cuda") * std).to(torch.bfloat16).cpu()

    def norm():
        w = torch.ones(h)
        w[torch.randperm(h, generator=torch.Generator().manual_seed(len(index)))[:8]] = 20.0
        return w.to(torch.bfloat16)

    index = {}
    emb = torch.randn(vocab, h, generator=g, device="cuda")
    emb[:, torch.arange(8, device="cuda") * (h // 8)] *= 20.0
    shard = {"model.embed_tokens.weight": emb.to(torch.bfloat16).cpu(),
             "model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
             "lm_head.weight": rand(vocab, h)}
    files = []

    def flush():
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, os.path.join(out, name), metadata={"format": "pt"})
        for k in shard:
            index[k] = name
        files.append(name)
        shard.clear()

    for b in range(layers):
        p = f"model.layers.{b}."
        shard[p + "input_layernorm.weight"] = norm()
        shard[p + "post_attention_layernorm.weight"] = norm()
        for name, n_out, n_in in linears(s):
            shard[p + name + ".weight"] = rand(n_out, n_in)
        if b % 4 == 3:
            flush()
    if shard:
        flush()
    return index, files, dict(torch_dtype="bfloat16")


if __name__ == "__main__":
    main()
