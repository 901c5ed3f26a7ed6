"""Small random Gemma 2 / Gemma 3 checkpoints with the real tensor names and config keys, in
Hugging Face (config.json + safetensors) and GGUF form, for the converter tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

# A tiny Gemma-like vocabulary: specials, turn markers at Gemma 3's ids, 256 byte pieces.
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


def tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, types) of a 400-token SPM-BPE vocabulary (GGUF conventions)."""
    tokens, types = list(SPECIALS), [3, 3, 3, 3, 3]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("ABCDEFGHIJ.,!?'")
    normal = letters + ["\u2581" + c for c in letters] + ["\u2581", "he", "\u2581the", "ll",
                                                          "\u2581he", "lo"]
    normal = normal[:100]
    tokens += normal
    types += [1] * len(normal)
    while len(tokens) < 105:
        tokens.append(f"<unused{len(tokens)}>")
        types.append(3)
    tokens += ["<start_of_turn>", "<end_of_turn>"]
    types += [3, 3]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    tokens += ["\n", "\n\n", "  ", "   ", "<b>"]
    types += [4] * 5
    while len(tokens) < 400:
        tokens.append(f"<unused{len(tokens)}>")
        types.append(3)
    scores = [0.0] * len(tokens)
    for i, t in enumerate(tokens):
        if types[i] == 1:
            scores[i] = -float(i)
    return tokens, scores, types


def gemma_shapes(cfg: dict, arch: str) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape."""
    d, hd, ff = cfg["hidden_size"], cfg["head_dim"], cfg["intermediate_size"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    s = {"model.embed_tokens.weight": (cfg["vocab_size"], d), "model.norm.weight": (d,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s.update({
            p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
            p + "pre_feedforward_layernorm.weight": (d,),
            p + "post_feedforward_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (q, d), p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, q),
            p + "mlp.gate_proj.weight": (ff, d), p + "mlp.up_proj.weight": (ff, d),
            p + "mlp.down_proj.weight": (d, ff),
        })
        if arch == "gemma3":
            s[p + "self_attn.q_norm.weight"] = (hd,)
            s[p + "self_attn.k_norm.weight"] = (hd,)
    return s


def gemma2_config(**over) -> dict:
    c = {
        "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
        "attention_bias": False, "attention_dropout": 0.0, "attn_logit_softcapping": 50.0,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        "final_logit_softcapping": 30.0, "head_dim": 16, "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 32,
        "initializer_range": 0.02, "intermediate_size": 64, "max_position_embeddings": 8192,
        "num_attention_heads": 2, "num_hidden_layers": 2, "num_key_value_heads": 1,
        "query_pre_attn_scalar": 24, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
        "sliding_window": 3, "torch_dtype": "float32", "transformers_version": "4.42.4",
        "use_cache": True, "vocab_size": 400,
    }
    c.update(over)
    return c


def gemma3_config(**over) -> dict:
    c = {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "attention_bias": False, "attention_dropout": 0.0, "attn_logit_softcapping": None,
        "bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0,
        "final_logit_softcapping": None, "head_dim": 16, "hidden_activation":
        "gelu_pytorch_tanh", "hidden_size": 32, "initializer_range": 0.02,
        "intermediate_size": 64, "max_position_embeddings": 32768, "num_attention_heads": 2,
        "num_hidden_layers": 6, "num_key_value_heads": 1, "query_pre_attn_scalar": 16,
        "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0, "rope_scaling": None,
        "rope_theta": 1000000.0, "sliding_window": 3, "sliding_window_pattern": 6,
        "torch_dtype": "bfloat16", "transformers_version": "4.50.0", "use_cache": True,
        "vocab_size": 400,
    }
    c.update(over)
    return c


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            out[name] = rng.normal(0.0, 0.3, shape).astype(np.float32)   # w near 0
        else:
            out[name] = (rng.normal(0.0, 1.0, shape) / np.sqrt(shape[-1])).astype(np.float32)
    return out


def _bf16_bits(a: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even bf16 bits."""
    b = a.astype(np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtypes: dict[str, str]
                      | None = None, metadata: dict | None = None) -> dict[str, np.ndarray]:
    """Write tensors as F32 / F16 / BF16 (per-name ``dtypes``, default F32).  Returns the
    float32 values the file actually holds."""
    dtypes = dtypes or {}
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    blobs, held, off = [], {}, 0
    for name, a in tensors.items():
        dt = dtypes.get(name, "F32")
        if dt == "BF16":
            bits = _bf16_bits(a)
            raw = bits.tobytes()
            held[name] = (bits.astype(np.uint32) << 16).view(np.float32).reshape(a.shape)
        elif dt == "F16":
            h = a.astype("<f2")
            raw = h.tobytes()
            held[name] = h.astype(np.float32)
        else:
            raw = a.astype("<f4").tobytes()
            held[name] = a.astype(np.float32)
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((-len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    return held


def write_hf_checkpoint(directory: Path, config: dict, weights: dict[str, np.ndarray],
                        dtypes: dict[str, str] | None = None, shards: int = 1,
                        extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """config.json + model.safetensors (or ``shards`` files + index).  Returns what the files
    hold (float32) by HF name."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    allw = dict(weights)
    allw.update(extra or {})
    names = list(allw)
    held = {}
    if shards == 1:
        held.update(write_safetensors(directory / "model.safetensors", allw, dtypes))
    else:
        wm = {}
        for k in range(shards):
            part = names[k::shards]
            fn = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            held.update(write_safetensors(directory / fn, {n: allw[n] for n in part}, dtypes))
            wm.update({n: fn for n in part})
        (directory / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": 0}, "weight_map": wm}))
    return held


HF_TO_ENGINE = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "attn_post_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "ffn_post_norm",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def hf_to_engine_name(name: str) -> str:
    """Independent (test-side) mapping of HF names to engine names."""
    if name == "model.embed_tokens.weight":
        return "token_embd"
    if name == "model.norm.weight":
        return "output_norm"
    parts = name.split(".")
    assert parts[0] == "model" and parts[1] == "layers" and parts[-1] == "weight", name
    return f"blk.{parts[2]}." + HF_TO_ENGINE[".".join(parts[3:-1])]


# ---------------------------------------------------------------------------------- GGUF

GGUF_NAMES = {
    "attn_norm": "attn_norm", "attn_post_norm": "post_attention_norm", "ffn_norm": "ffn_norm",
    "ffn_post_norm": "post_ffw_norm", "attn_q_norm": "attn_q_norm",
    "attn_k_norm": "attn_k_norm", "attn_q": "attn_q", "attn_k": "attn_k", "attn_v": "attn_v",
    "attn_output": "attn_output", "ffn_gate": "ffn_gate", "ffn_up": "ffn_up",
    "ffn_down": "ffn_down",
}


def engine_to_gguf_name(name: str) -> str:
    if name in ("token_embd", "output_norm"):
        return name + ".weight"
    _, i, rest = name.split(".", 2)
    return f"blk.{i}.{GGUF_NAMES[rest]}.weight"


def write_gguf(path: Path, arch: str, meta: dict, weights: dict[str, np.ndarray],
               qtypes: dict[str, str] | None = None, tokenizer: bool = True,
               drop: tuple[str, ...] = (), extra_tensors: dict | None = None
               ) -> dict[str, np.ndarray]:
    """Write a GGUF of engine-named ``weights`` (norms given as ``w``, stored as ``1 + w``, as
    llama.cpp does).  ``qtypes``: engine name -> "F32" | "F16" | "BF16" | "Q8_0" | "Q5_0".
    ``meta``: ``{arch}.``-relative keys -> python values (int -> uint32, float -> float32).
    Returns what the file holds, dequantized (float32, engine names; norms as stored 1 + w)."""
    import gguf
    from gguf.quants import dequantize, quantize

    Q = gguf.GGMLQuantizationType
    qtypes = qtypes or {}
    w = gguf.GGUFWriter(str(path), arch)
    for k, v in meta.items():
        key = f"{arch}.{k}"
        if isinstance(v, bool):
            w.add_bool(key, v)
        elif isinstance(v, int):
            w.add_uint32(key, v)
        elif isinstance(v, float):
            w.add_float32(key, v)
        elif isinstance(v, str):
            w.add_string(key, v)
        else:
            w.add_array(key, v)
    if tokenizer:
        tokens, scores, types = tiny_vocab()
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(False)
    held = {}
    items = list(weights.items()) + list((extra_tensors or {}).items())
    for name, a in items:
        gname = engine_to_gguf_name(name) if name in weights else name
        if name in drop:
            continue
        a = a.astype(np.float32)
        if a.ndim == 1:
            a = a + np.float32(1.0)
        qt = qtypes.get(name, "F32")
        if qt == "F32":
            w.add_tensor(gname, a)
            held[name] = a.copy()
        elif qt == "F16":
            h = a.astype(np.float16)
            w.add_tensor(gname, h)
            held[name] = h.astype(np.float32)
        else:
            q = quantize(a, Q[qt])
            w.add_tensor(gname, q, raw_dtype=Q[qt])
            held[name] = dequantize(q, Q[qt]).reshape(a.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def engine_weights(cfg_fields: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random engine-named weights for dense gemma config fields."""
    from spark_infer.config import ModelConfig
    from spark_infer.fileformat import tensor_specs

    cfg = ModelConfig(**cfg_fields)
    return random_weights({s.name: s.shape for s in tensor_specs(cfg)}, seed)
