"""Statistics of the samples: one result point per (model, mode, threads, context) with its
bytes, GB/s and FLOPs, and the per-sample ratios between models."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from spark_infer.bench.bytes_model import _visible, decode_bytes_per_token, prefill_flops_per_token
from spark_infer.bench.engine_runner import COMPONENTS, Sample
from spark_infer.config import preset


def _stats(values: Sequence[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "samples": list(values)}


def _mean_list(samples: list[Sample], attr: str) -> list[float] | None:
    rows = [getattr(s, attr) for s in samples]
    if any(r is None for r in rows):
        return None
    return np.mean(np.asarray(rows, np.float64), axis=0).tolist()


def _bandwidth_fields(r: dict[str, Any], gbs: list[float], probes: list[float] | None) -> None:
    r["effective_gbs"] = {"median": statistics.median(gbs), "min": min(gbs), "max": max(gbs)}
    if probes and len(probes) == len(gbs):
        # Sample i and probe i ran back to back: their ratio cancels the machine's drift.
        r["bandwidth_gbs"] = statistics.median(probes)
        r["bandwidth_fraction"] = statistics.median(g / b for g, b in zip(gbs, probes))


def _point(runner: Any, mode: str, threads: int, context: int, samples: list[Sample],
           probes: list[float] | None, prefill_tokens: int) -> dict[str, Any]:
    tok_s = [s.tok_s for s in samples]
    r: dict[str, Any] = {"model": runner.label, "mode": mode, "threads": threads,
                         "context": context, "tokens": samples[0].tokens,
                         "tok_s": _stats(tok_s),
                         "ms_per_token": 1e3 / statistics.median(tok_s)}
    if samples[0].times is not None:
        r["breakdown_ms_per_token"] = {
            k: statistics.median(1e3 * s.times[k] / s.tokens for s in samples)
            for k in COMPONENTS}
    ffn = _mean_list(samples, "ffn_active")
    att = _mean_list(samples, "attn_tokens")
    if ffn is not None and att is not None:
        r["ffn_active_fraction"] = ffn
        r["attn_mean_tokens"] = att
        r["ffn_active_mean"] = float(np.mean(ffn))
        r["attn_tokens_mean"] = float(np.mean(att))
    cfg = getattr(runner, "cfg", None)
    if mode == "decode" and cfg is not None and ffn is not None:
        rows = [s.lm_head_rows for s in samples if s.lm_head_rows is not None]
        b = decode_bytes_per_token(cfg, runner.tb, context, ffn, att, runner.kv_dtype,
                                   float(np.mean(rows)) if rows else None)
        r["bytes_per_token"] = b
        _bandwidth_fields(r, [b["total"] * t / 1e9 for t in tok_s], probes)
    elif mode == "decode" and runner.kind == "llama.cpp":
        # Approximate: the GGUF's bytes (all weights, LM head included) + an f16 KV cache.
        g = preset("gemma3-270m")  # the only model peers run
        kv = sum(g.n_kv_heads * _visible(g, layer, context) * 2 * g.head_dim * 2
                 for layer in range(g.n_layers))
        total = runner.path.stat().st_size + kv
        r["bytes_per_token"] = {"weights": float(runner.path.stat().st_size), "kv": float(kv),
                                "total": float(total), "approximate": True}
        _bandwidth_fields(r, [total * t / 1e9 for t in tok_s], probes)
    if mode == "prefill" and cfg is not None and ffn is not None:
        f = prefill_flops_per_token(cfg, prefill_tokens, ffn, att)
        r["gflop_per_token"] = f / 1e9
        r["gflops"] = f * statistics.median(tok_s) / 1e9
    return r


# Our weight type -> the peers' types compared with it. A mix with q4 ("int8+q4+q5": q4 from
# the Q4_K_M GGUF, each matrix at its own precision) is the Q4_K_M file's counterpart.
_PEER_MATCH = {"bf16": ("BF16", "bf16"), "int8": ("Q8_0",), "q4": ("Q4_K_M",),
               "f32": ("F32", "f32")}


def _peer_types(dtype: str) -> tuple[str, ...]:
    parts = dtype.split("+")
    return _PEER_MATCH["q4"] if len(parts) > 1 and "q4" in parts else _PEER_MATCH.get(dtype, ())


def _default_pairs(runners: list[Any]) -> list[tuple[str, str]]:
    """Ratios reported without --vs: each Spark engine over each dense engine of the same
    weight type, and each engine running the real model over the peers of its weight type."""
    engines = [r for r in runners if r.kind == "engine"]
    pairs = [(a.label, b.label) for a in engines for b in engines
             if a.info()["spark"] and not b.info()["spark"] and a.dtype == b.dtype]
    for a in engines:
        if a.source != "real":
            continue
        for p in runners:
            if p.kind != "engine" and p.dtype in _peer_types(a.dtype):
                pairs.append((a.label, p.label))
    return pairs


def ratios(results: list[dict[str, Any]], pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Per point, the median of the per-sample ratios tok/s(a) / tok/s(b)."""
    index = {(r["model"], r["mode"], r["threads"], r["context"]): r for r in results}
    out = []
    for a, b in pairs:
        for (model, mode, threads, context), ra in index.items():
            if model != a:
                continue
            rb = index.get((b, mode, threads, context))
            if rb is None:
                continue
            per = [x / y for x, y in zip(ra["tok_s"]["samples"], rb["tok_s"]["samples"])]
            out.append({"a": a, "b": b, "mode": mode, "threads": threads, "context": context,
                        **_stats(per)})
    return out
