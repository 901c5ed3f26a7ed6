"""Bytes touched per decode token and FLOPs per prefill token of an engine file (the model
of the package docstring's "Bytes touched" and "FLOPs" items), from the file header alone."""

from __future__ import annotations

import os
from collections.abc import Sequence

from spark_infer.config import ModelConfig

_F32 = 4  # KV cache element size: the engine keeps K and V in float32


def tensor_bytes(path: str | os.PathLike[str]) -> dict[str, int]:
    """Bytes of every tensor of an engine file (through the engine's reader; no data is read)."""
    from spark_infer.fileformat import open_engine_file

    return {name: a.nbytes for name, a in open_engine_file(path).tensors().items()}


def _engine_config(path: str | os.PathLike[str]) -> ModelConfig:
    from spark_infer.fileformat import open_engine_file

    return ModelConfig.from_json(open_engine_file(path).metadata["config"])


def _with_scale(tb: dict[str, int], name: str) -> int:
    return tb.get(name, 0) + tb.get(name + ".scale", 0)


def _visible(cfg: ModelConfig, layer: int, pos: int) -> int:
    """Keys a query at position `pos` sees in `layer` (itself included)."""
    n = pos + 1
    return min(n, cfg.sliding_window) if cfg.is_local(layer) else n


def decode_bytes_per_token(cfg: ModelConfig, tb: dict[str, int], context: int,
                           ffn_active: Sequence[float], attn_tokens: Sequence[float],
                           kv_dtype: str = "bf16", lm_head_rows: float | None = None) -> dict[str, float]:
    """Weight and KV bytes one decode step at context `context` touches (module docstring;
    `kv_dtype`: the cache's element type, "bf16" or "f32"),
    with the split by the engine's time components (attention: its norms, Q/K/V/O and the KV
    cache; ffn: its norms and matrices; logits: the tied embedding read as the LM head, or with
    the screened LM head the screen plus `lm_head_rows` rows of the embedding, the mean
    rescored a token: `Engine.screen_rescored`; None counts the screen alone)."""
    if cfg.lm_head_screen_margin > 0 and "token_embd_screen" in tb:
        row = _with_scale(tb, "token_embd") / cfg.vocab_size
        logits = float(tb["token_embd_screen"] + (lm_head_rows or 0.0) * row + tb.get("output_norm", 0))
    else:
        logits = float(_with_scale(tb, "token_embd") + tb.get("output_norm", 0))
    weights = logits
    ffn_bytes = 0.0
    kv = 0.0
    hd, ra, n_kv = cfg.head_dim, cfg.attn_predictor_dim, cfg.n_kv_heads
    group = cfg.n_heads // cfg.n_kv_heads
    esize = {"bf16": 2, "f32": _F32}[kv_dtype]
    for layer in range(cfg.n_layers):
        p = f"blk.{layer}."
        for name in ("attn_norm", "attn_post_norm", "attn_q_norm", "attn_k_norm"):
            weights += tb.get(p + name, 0)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            weights += _with_scale(tb, p + name)
        f = float(tb.get(p + "ffn_norm", 0) + tb.get(p + "ffn_post_norm", 0))
        if cfg.is_spark_ffn:
            f += _with_scale(tb, p + "ffn_k1")
            f += float(ffn_active[layer]) * (_with_scale(tb, p + "ffn_k2")
                                             + _with_scale(tb, p + "ffn_v"))
        elif cfg.is_sparse_ffn:
            # Read whole: the predictor (or the gate), and the up rows when abs_act ranks by
            # the whole product; only the kept rows of the rest.
            whole = ["ffn_gate_a", "ffn_gate_b", "ffn_select"]
            kept = ["ffn_down_t"]
            (kept if cfg.ffn_gate_rank else whole).append("ffn_gate")
            (whole if cfg.ffn_select_by in ("abs_act", "sqrt_abs_act") else kept).append("ffn_up")
            f += sum(_with_scale(tb, p + name) for name in whole)
            f += float(ffn_active[layer]) * sum(_with_scale(tb, p + name) for name in kept)
        else:
            for name in ("ffn_gate", "ffn_up", "ffn_down"):
                f += _with_scale(tb, p + name)
        weights += f
        ffn_bytes += f
        n = _visible(cfg, layer, context)
        if cfg.is_spark_attn:
            rows = min(float(n), group * float(attn_tokens[layer]))
            kv += n_kv * (n * ra + rows * (2 * hd - ra)) * esize
        elif cfg.is_sparse_attn:
            # The predictor scan over the candidates, then the kept rows, shared by the group.
            r_s = cfg.attn_sparse_dim
            rows = min(float(n), float(attn_tokens[layer]))
            kv += n_kv * (n * r_s + rows * (2 * hd - r_s)) * esize
            weights += tb.get(p + "attn_rot", 0)
        else:
            kv += n_kv * n * 2 * hd * esize
    return {"weights": weights, "kv": kv, "total": weights + kv,
            "by_component": {"attention": weights - logits - ffn_bytes + kv, "ffn": ffn_bytes,
                             "logits": logits}}


def prefill_flops_per_token(cfg: ModelConfig, prompt_tokens: int, ffn_active: Sequence[float],
                            attn_tokens: Sequence[float]) -> float:
    """FLOPs (FMA = 2) per token of a prefill of `prompt_tokens` from position 0."""
    d, hd, ra = cfg.d_model, cfg.head_dim, cfg.attn_predictor_dim
    macs = 0.0
    for layer in range(cfg.n_layers):
        macs += d * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)           # q, o; k, v
        if cfg.is_spark_ffn:
            r = cfg.ffn_predictor_dim
            macs += cfg.d_ff * r + float(ffn_active[layer]) * cfg.d_ff * ((d - r) + d)
        else:
            macs += 3 * cfg.d_ff * d
        mean_visible = sum(_visible(cfg, layer, t) for t in range(prompt_tokens)) / prompt_tokens
        if cfg.is_spark_attn:
            macs += cfg.n_heads * (mean_visible * ra + float(attn_tokens[layer]) * (2 * hd - ra))
        else:
            macs += cfg.n_heads * mean_visible * 2 * hd
    macs += cfg.vocab_size * d / prompt_tokens                             # LM head, last token
    return 2.0 * macs
