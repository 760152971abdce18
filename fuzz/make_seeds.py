#!/usr/bin/env python3
"""Writes small, valid seed inputs for every fuzz target into fuzz/seeds/<target>/.

Run by scripts/fuzz.sh when the seeds are missing. Seeds are tiny on purpose
(libFuzzer mutates faster on small inputs); the fuzzers grow them.
"""
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(ROOT)
OUT = os.path.join(ROOT, "seeds")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- safetensors -----------------------------------------------------------

def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, bytes)."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    off = 0
    data = b""
    for name, dtype, shape, b in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(b)]}
        off += len(b)
        data += b
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def f32(vals):
    return struct.pack("<%df" % len(vals), *vals)


put("safetensors_header", "small", safetensors([
    ("a", "F32", [2, 2], f32([1, 2, 3, 4])),
    ("b", "F16", [3], b"\x00\x3c" * 3),
    ("c", "BF16", [1, 1], b"\x80\x3f"),
    ("d", "I32", [2], b"\x01\x00\x00\x00" * 2),
    ("e", "I64", [0], b""),
    ("f", "U8", [4], b"abcd"),
    ("g", "I8", [1], b"\xff"),
    ("h", "F64", [1], struct.pack("<d", 0.5)),
], {"format": "pt"}))
put("safetensors_header", "empty", safetensors([]))

put("safetensors_index", "two", json.dumps({
    "metadata": {"total_size": 24},
    "weight_map": {"a": "model-00001-of-00002.safetensors",
                   "b": "model-00002-of-00002.safetensors"}}))
put("safetensors_index", "escape", json.dumps({"weight_map": {"a": "../x.safetensors"}}))

# --- GGUF ------------------------------------------------------------------

def gguf(version, meta, tensors, alignment=32):
    wide = version >= 2
    cnt = (lambda n: struct.pack("<Q", n)) if wide else (lambda n: struct.pack("<I", n))

    def string(s):
        b = s.encode()
        return cnt(len(b)) + b

    def value(t, v):
        fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
               10: "<Q", 11: "<q", 12: "<d"}
        if t in fmt:
            return struct.pack(fmt[t], v)
        if t == 7:
            return bytes([1 if v else 0])
        if t == 8:
            return string(v)
        et, items = v
        return struct.pack("<I", et) + cnt(len(items)) + b"".join(value(et, x) for x in items)

    out = b"GGUF" + struct.pack("<I", version) + cnt(len(tensors)) + cnt(len(meta))
    for k, t, v in meta:
        out += string(k) + struct.pack("<I", t) + value(t, v)
    data = b""
    infos = b""
    for name, ne, ty, b in tensors:
        while len(data) % alignment:
            data += b"\0"
        infos += string(name) + struct.pack("<I", len(ne)) + b"".join(cnt(d) for d in ne)
        infos += struct.pack("<IQ", ty, len(data))
        data += b
    out += infos
    while len(out) % alignment:
        out += b"\0"
    return out + data


def llama_meta(vocab):
    m = [
        ("general.architecture", 8, "llama"),
        ("llama.block_count", 4, 1),
        ("llama.embedding_length", 4, 8),
        ("llama.feed_forward_length", 4, 16),
        ("llama.attention.head_count", 4, 2),
        ("llama.attention.head_count_kv", 4, 2),
        ("llama.context_length", 4, 32),
        ("llama.rope.freq_base", 6, 10000.0),
        ("llama.attention.layer_norm_rms_epsilon", 6, 1e-5),
    ]
    if vocab == "llama":
        toks = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % i for i in range(4)] + ["▁a", "b", "▁ab"]
        m += [
            ("tokenizer.ggml.model", 8, "llama"),
            ("tokenizer.ggml.tokens", 9, (8, toks)),
            ("tokenizer.ggml.scores", 9, (6, [0.0] * len(toks))),
            ("tokenizer.ggml.token_type", 9, (5, [2, 3, 3] + [6] * 4 + [1] * 3)),
            ("tokenizer.ggml.bos_token_id", 4, 1),
            ("tokenizer.ggml.eos_token_id", 4, 2),
        ]
    elif vocab == "gpt2":
        toks = ["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġa"]
        m += [
            ("tokenizer.ggml.model", 8, "gpt2"),
            ("tokenizer.ggml.pre", 8, "smollm"),
            ("tokenizer.ggml.tokens", 9, (8, toks)),
            ("tokenizer.ggml.merges", 9, (8, ["a b", "Ġ a"])),
            ("tokenizer.ggml.token_type", 9, (5, [3, 1, 1, 1, 1, 1])),
            ("tokenizer.chat_template", 8, "{{ messages }}"),
        ]
    return m


def blocks(ty, n):
    # Bytes of n elements of ggml type ty (block geometry as in ggml).
    geo = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 8: (32, 34), 14: (256, 210)}
    bs, bb = geo[ty]
    return bytes((i * 37 + 11) % 251 for i in range(n // bs * bb))


def llama_tensors(ty):
    t = []
    t.append(("token_embd.weight", [8, 10], 0, blocks(0, 80)))
    t.append(("output_norm.weight", [8], 0, blocks(0, 8)))
    t.append(("blk.0.attn_norm.weight", [8], 0, blocks(0, 8)))
    t.append(("blk.0.ffn_norm.weight", [8], 0, blocks(0, 8)))
    for n in ["attn_q", "attn_k", "attn_v", "attn_output"]:
        t.append(("blk.0.%s.weight" % n, [32, 8] if ty not in (0, 1, 30) else [8, 8], ty,
                  blocks(ty, 256 if ty not in (0, 1, 30) else 64)))
    return t


for v in (1, 2, 3):
    put("gguf", "v%d_plain" % v, gguf(v, llama_meta("llama"), llama_tensors(0)))
for ty, name in [(1, "f16"), (30, "bf16"), (2, "q4_0"), (3, "q4_1"), (8, "q8_0")]:
    put("gguf", "v3_" + name, gguf(3, llama_meta("gpt2"), llama_tensors(ty)))
put("gguf", "v3_q6k_unsupported", gguf(3, llama_meta(None), [("blk.0.attn_q.weight", [256, 1], 14, blocks(14, 256))]))
put("gguf", "v3_meta_types", gguf(3, [
    ("u8", 0, 1), ("i8", 1, -1), ("u16", 2, 2), ("i16", 3, -2), ("u32", 4, 3), ("i32", 5, -3),
    ("f32", 6, 1.5), ("bool", 7, True), ("str", 8, "x"), ("u64", 10, 4), ("i64", 11, -4),
    ("f64", 12, 2.5), ("arr", 9, (9, [(4, [1, 2]), (4, [3])])), ("general.alignment", 4, 64),
], [], alignment=64))

# --- configs ---------------------------------------------------------------

models = os.path.join(REPO, "tests", "data", "models")
if os.path.isdir(models):
    for m in sorted(os.listdir(models)):
        p = os.path.join(models, m, "config.json")
        if os.path.isfile(p):
            put("model_config", m, open(p, "rb").read())
put("model_config", "llama3_rope", json.dumps({
    "model_type": "llama", "hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 16,
    "num_hidden_layers": 1, "vocab_size": 10, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}}))

put("quantize_config", "autogptq", json.dumps({
    "bits": 4, "group_size": 128, "damp_percent": 0.01, "desc_act": True, "static_groups": False,
    "sym": True, "true_sequential": True, "model_name_or_path": None,
    "model_file_base_name": "model"}))
put("quantize_config", "gptqmodel", json.dumps({
    "bits": 4, "group_size": 32, "desc_act": False, "sym": False, "lm_head": False,
    "quant_method": "gptq", "checkpoint_format": "gptq_v2", "pack_dtype": "int32",
    "dynamic": {r"-:^model\.layers\.0\.mlp\.up_proj$": {},
                r"+:.*\.(q|k)_proj": {"bits": 8, "group_size": -1},
                r"model\.layers\.1[0-9]\.(?:mlp)\..*": {"desc_act": True}},
    "meta": {"quantizer": ["x"], "damp_percent": 0.05}}))
put("quantize_config", "config_json", json.dumps({
    "model_type": "llama", "quantization_config": {
        "bits": 8, "group_size": -1, "quant_method": "gptq", "format": "gptq"}}))

# --- tokenizer, calibration ------------------------------------------------

tok = os.path.join(REPO, "tests", "data", "tokenizers", "stories260k", "tokenizer.json")
if os.path.isfile(tok):
    t = json.load(open(tok))
    put("tokenizer", "stories260k", json.dumps(t) + "\0" + json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}}))
put("tokenizer", "wordlevel", json.dumps({
    "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
    "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
    "decoder": None, "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "a": 1, "b": 2},
                               "unk_token": "<unk>"}}))
put("tokenizer", "bytelevel_bpe", json.dumps({
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True}],
    "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                                           "trim_offsets": True, "use_regex": True},
    "post_processor": None, "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
              "vocab": {"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3}, "merges": ["a b"]}}))

story = "Once upon a time there was a cat. It liked to play in the sun.\n"
put("calib", "txt", b"\x00" + (story * 20).encode())
put("calib", "jsonl", b"\x05" + "".join(json.dumps({"text": story}) + "\n" for _ in range(10)).encode())
put("calib", "jsonl_content", b"\x85" + json.dumps({"content": story}).encode() + b"\n")

print("seeds written to", OUT, file=sys.stderr)
