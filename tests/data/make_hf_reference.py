"""Write the Hugging Face oracle files used by tests/test_reference.py (needs torch + transformers).

    PYTHONPATH=python python tests/data/make_hf_reference.py

For each tiny model below: draw weights from a seed (named as in docs/engine-file.md), load them
into transformers' Gemma2ForCausalLM / Gemma3ForCausalLM (float32, eager attention), run one
causal forward pass and save config, weights, tokens and HF logits to tests/data/hf_<name>.npz.
The test then needs only numpy. HF norm weights are stored as w and applied as (1 + w), as ours.

Window convention: transformers' sliding-window mask keeps key j for query t iff
t - window < j <= t (masking_utils.sliding_window_overlay), i.e. itself plus window - 1 earlier
keys, the same as docs/engine-file.md, so both sides use the same `sliding_window` value.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import transformers
from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))
from spark_infer.config import ModelConfig  # noqa: E402
from spark_infer.fileformat import tensor_specs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SEQ_LEN = 14

# Our name suffix -> HF parameter suffix within model.layers.{i}.
_LAYER_MAP = {
    "attn_norm": "input_layernorm.weight",
    "attn_post_norm": "post_attention_layernorm.weight",
    "ffn_norm": "pre_feedforward_layernorm.weight",
    "ffn_post_norm": "post_feedforward_layernorm.weight",
    "attn_q_norm": "self_attn.q_norm.weight",
    "attn_k_norm": "self_attn.k_norm.weight",
    "attn_q": "self_attn.q_proj.weight",
    "attn_k": "self_attn.k_proj.weight",
    "attn_v": "self_attn.v_proj.weight",
    "attn_output": "self_attn.o_proj.weight",
    "ffn_gate": "mlp.gate_proj.weight",
    "ffn_up": "mlp.up_proj.weight",
    "ffn_down": "mlp.down_proj.weight",
}


def hf_name(name: str) -> str:
    if name == "token_embd":
        return "model.embed_tokens.weight"
    if name == "output_norm":
        return "model.norm.weight"
    _, layer, suffix = name.split(".", 2)
    return f"model.layers.{layer}.{_LAYER_MAP[suffix]}"


def random_weights(cfg: ModelConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Weights large enough that soft-caps and softmax saturation matter (logit std ~ 8)."""
    w = {}
    for spec in tensor_specs(cfg):
        if spec.name == "token_embd":
            a = rng.standard_normal(spec.shape)
        elif not spec.is_matrix:
            a = 0.3 * rng.standard_normal(spec.shape)          # norm w around 0: (1 + w) ~ 1
        elif spec.name.endswith(("attn_q", "attn_k")):
            a = 2.0 * rng.standard_normal(spec.shape) / np.sqrt(spec.shape[1])
        else:
            a = rng.standard_normal(spec.shape) / np.sqrt(spec.shape[1])
        w[spec.name] = a.astype(np.float32)
    return w


def hf_layer_types(cfg: ModelConfig) -> list[str]:
    return ["sliding_attention" if t == "local" else "full_attention" for t in cfg.layer_types]


def gemma2_case() -> tuple[ModelConfig, transformers.PreTrainedModel]:
    cfg = ModelConfig(
        arch="gemma2", vocab_size=97, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2,
        head_dim=16, d_ff=96, query_scale=24.0 ** -0.5, layer_types=("local", "global", "local"),
        attn_softcap=5.0, final_softcap=10.0, qk_norm=False, sliding_window=4,
        rope_base_global=10000.0, rope_base_local=10000.0, bos_id=2, eos_id=1, pad_id=0,
        start_of_turn_id=3, end_of_turn_id=4)
    hf_cfg = Gemma2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=cfg.norm_eps,
        query_pre_attn_scalar=24, sliding_window=cfg.sliding_window,
        layer_types=hf_layer_types(cfg), attn_logit_softcapping=cfg.attn_softcap,
        final_logit_softcapping=cfg.final_softcap,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base_global},
        pad_token_id=0, bos_token_id=2, eos_token_id=1, tie_word_embeddings=True)
    hf_cfg._attn_implementation = "eager"
    return cfg, Gemma2ForCausalLM(hf_cfg)


def gemma3_case() -> tuple[ModelConfig, transformers.PreTrainedModel]:
    # GQA 4:1 as in the real Gemma 3 270M / 1B; linear RoPE scaling on global layers only.
    cfg = ModelConfig(
        arch="gemma3", vocab_size=97, d_model=64, n_layers=4, n_heads=4, n_kv_heads=1,
        head_dim=16, d_ff=96, query_scale=16.0 ** -0.5,
        layer_types=("local", "local", "global", "local"), qk_norm=True, sliding_window=4,
        rope_base_global=1_000_000.0, rope_base_local=10000.0, rope_scale_global=2.0,
        bos_id=2, eos_id=1, pad_id=0, start_of_turn_id=3, end_of_turn_id=4)
    hf_cfg = Gemma3TextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=cfg.norm_eps,
        query_pre_attn_scalar=16, sliding_window=cfg.sliding_window,
        layer_types=hf_layer_types(cfg), attn_logit_softcapping=None,
        final_logit_softcapping=None,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": cfg.rope_scale_global,
                               "rope_theta": cfg.rope_base_global},
            "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_base_local}},
        pad_token_id=0, bos_token_id=2, eos_token_id=1, tie_word_embeddings=True)
    hf_cfg._attn_implementation = "eager"
    return cfg, Gemma3ForCausalLM(hf_cfg)


def make_case(name: str, case, seed: int) -> str:
    torch.manual_seed(seed)
    cfg, model = case()
    rng = np.random.default_rng(seed)
    weights = random_weights(cfg, rng)
    state = {hf_name(n): torch.from_numpy(a) for n, a in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # lm_head is tied to embed_tokens, so it is the only key we may leave out.
    assert set(missing) <= {"lm_head.weight"}, missing
    assert not unexpected, unexpected
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model = model.float().eval()
    assert model.config._attn_implementation == "eager"
    tokens = rng.integers(0, cfg.vocab_size, size=SEQ_LEN)
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens)[None]).logits[0].double().numpy()

    path = os.path.join(HERE, f"hf_{name}.npz")
    arrays = {f"w/{n}": a for n, a in weights.items()}
    np.savez_compressed(
        path, config_json=np.array(cfg.to_json()), tokens=tokens.astype(np.int64),
        logits=logits.astype(np.float32),
        hf_config_json=np.array(json.dumps(model.config.to_dict(), default=str)),
        versions=np.array(f"torch {torch.__version__}, transformers {transformers.__version__}"),
        **arrays)
    return path


def main() -> None:
    for name, case, seed in (("gemma2_tiny", gemma2_case, 1234), ("gemma3_tiny", gemma3_case, 4321)):
        path = make_case(name, case, seed)
        print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
