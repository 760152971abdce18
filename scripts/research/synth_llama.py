"""A Llama-shaped checkpoint with seeded random weights, for timing GPTQ at
real sizes without downloading a model (issue 5's whole-model benchmark).

    python3 scripts/research/synth_llama.py OUT_DIR {8b|70b} LAYERS TOKENIZER_DIR

Weights are bf16 N(0, 0.02²); each block's two RMSNorm weights are ones with
8 random channels at 20, and the embedding has 8 channels scaled by 20, so
every layer input has a few large-magnitude channels and the Hessians are as
lopsided as a real model's. The tokenizer (tokenizer.json and its config)
is copied from TOKENIZER_DIR; the vocabulary follows it.
"""
import json, os, shutil, sys

import torch
from safetensors.torch import save_file

SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
                num_key_value_heads=8, head_dim=128),
}


def main():
    out, shape, layers, tok_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    s = SHAPES[shape]
    tok = json.load(open(os.path.join(tok_dir, "tokenizer.json")))
    ids = list(tok["model"]["vocab"].values()) + [t["id"] for t in tok.get("added_tokens", [])]
    vocab = max(ids) + 1
    os.makedirs(out, exist_ok=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    h, i, d = s["hidden_size"], s["intermediate_size"], s["head_dim"]
    nh, nkv = s["num_attention_heads"], s["num_key_value_heads"]

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
        shard[p + "self_attn.q_proj.weight"] = rand(nh * d, h)
        shard[p + "self_attn.k_proj.weight"] = rand(nkv * d, h)
        shard[p + "self_attn.v_proj.weight"] = rand(nkv * d, h)
        shard[p + "self_attn.o_proj.weight"] = rand(h, nh * d)
        shard[p + "mlp.gate_proj.weight"] = rand(i, h)
        shard[p + "mlp.up_proj.weight"] = rand(i, h)
        shard[p + "mlp.down_proj.weight"] = rand(h, i)
        if b % 4 == 3:
            flush()
    if shard:
        flush()
    json.dump({"metadata": {}, "weight_map": index},
              open(os.path.join(out, "model.safetensors.index.json"), "w"))
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", num_hidden_layers=layers,
               vocab_size=vocab, max_position_embeddings=8192, rms_norm_eps=1e-5,
               rope_theta=500000.0, tie_word_embeddings=False, torch_dtype="bfloat16",
               hidden_act="silu", **s)
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        if os.path.exists(os.path.join(tok_dir, f)):
            shutil.copy(os.path.join(tok_dir, f), out)
    print(f"{out}: {shape} x {layers} blocks, vocab {vocab}, {len(files)} shards")


if __name__ == "__main__":
    main()
