"""Neuron-selection rules for the training-free sparse FFN, compared offline on the calibration
text (issue 9: what would it take to reach 50 % FFN sparsity within 3 % perplexity?).

A float32 numpy forward pass of Gemma 3 270M (the converter's, convert/sparsify.py) over the
first --tokens tokens of spark_infer/data/calibration.txt, every layer's FFN sparsified by a
rule at kept fraction F (each layer's threshold calibrated on these tokens, layer by layer with
the earlier layers already sparse, as `convert --calibrate` does). Reported per rule: the mean KL
divergence of the next-token distribution from the dense model's and the change of the text's
NLL, both over a restricted vocabulary (each position's 32 most likely tokens under the dense
model plus the text's next tokens: the rest of the 262k vocabulary carries almost no
probability), and the share of the dropped terms' energy that their mean over tokens holds
(what a constant bias could give back). Only the rules the engine has ("stat") can be converted;
the others say how much a different rule would give.

    python bench/sparsity_rules.py --output bench/results/sparsity-rules-gemma3-270m.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from spark_infer import bench as B
from spark_infer.convert import load_source
from spark_infer.convert.sparsify import _attention, _rms
from spark_infer.reference import gelu_tanh, softcap

TOP = 32
RULES = {
    "abs_act": "|gelu(g) up|, statistical threshold (the engine's by=abs_act)",
    "abs_act_wina": "|gelu(g) up| x ||down row||, statistical (by=abs_act,wina)",
    "abs_act_post": "|gelu(g) up| x ||(1 + w_post) * down row||, statistical",
    "abs_act_invstd": "|gelu(g) up| / its std over tokens, statistical",
    "abs_act_std": "|gelu(g) up| x its std over tokens, statistical",
    "sqrt_abs_act": "|gelu(g) up|^0.5, statistical",
    "sq_act": "(gelu(g) up)^2, statistical",
    "topk": "|gelu(g) up|, exactly round(F d_ff) per token",
    "energy": "the largest terms holding a fixed share of each token's sum of squares",
    "abs_act_sink4": "abs_act, the first 4 positions dense",
}


def _kept(rule: str, act: np.ndarray, c: np.ndarray | None, f: float) -> np.ndarray:
    """The kept mask [T, d_ff] of `rule` at mean kept fraction f over these tokens."""
    a = np.abs(act)
    if rule == "topk":
        k = max(1, int(round(f * a.shape[1])))
        return a >= -np.partition(-a, k - 1, axis=1)[:, k - 1:k]
    if rule == "energy":
        sq = -np.sort(-a * a, axis=1)
        share = np.cumsum(sq, axis=1) / np.maximum(sq.sum(axis=1, keepdims=True), 1e-30)
        lo, hi = 0.0, 1.0
        for _ in range(40):               # bisect the share whose mean count is f
            mid = (lo + hi) / 2
            if np.mean(np.sum(share < mid, axis=1) + 1) > f * a.shape[1]:
                hi = mid
            else:
                lo = mid
        n = np.sum(share < lo, axis=1) + 1
        return a * a >= np.take_along_axis(sq, (n - 1)[:, None], axis=1)
    s = {"sqrt_abs_act": np.sqrt(a), "sq_act": a * a}.get(rule, a)
    if c is not None:
        s = s * c
    mean, std = s.mean(axis=1, keepdims=True), s.std(axis=1, keepdims=True)
    z = (s - mean) / np.maximum(std, 1e-30)
    kept = s > mean + std * np.float32(np.quantile(z, 1.0 - f))
    if rule == "abs_act_sink4":
        kept[:4] = True
    return kept


def _weights(rule: str, get, layer: int, act: np.ndarray) -> np.ndarray | None:
    p = f"blk.{layer}."
    if rule == "abs_act_wina":
        return np.linalg.norm(get(p + "ffn_down"), axis=0)
    if rule == "abs_act_post":
        return np.linalg.norm((1.0 + get(p + "ffn_post_norm"))[:, None] * get(p + "ffn_down"),
                              axis=0)
    if rule == "abs_act_invstd":
        return 1.0 / (act.std(axis=0) + 1e-6)
    if rule == "abs_act_std":
        return act.std(axis=0) + 1e-6
    return None


def run(cfg, get, ids: np.ndarray, rules: list[str], fractions: list[float]) -> list[dict]:
    def forward(rule: str | None, f: float) -> tuple[np.ndarray, list[float]]:
        h = get("token_embd")[ids].astype(np.float32) * np.float32(math.sqrt(cfg.d_model))
        mean_share = []
        for layer in range(cfg.n_layers):
            p = f"blk.{layer}."
            heads, _ = _attention(cfg, layer, get, _rms(h, get(p + "attn_norm"), cfg.norm_eps))
            h = h + _rms(heads @ get(p + "attn_output").T, get(p + "attn_post_norm"),
                         cfg.norm_eps)
            x = _rms(h, get(p + "ffn_norm"), cfg.norm_eps)
            act = (gelu_tanh(x @ get(p + "ffn_gate").T) * (x @ get(p + "ffn_up").T)
                   ).astype(np.float32)
            if rule is not None:
                kept = _kept(rule, act, _weights(rule, get, layer, act), f)
                dropped = (act * ~kept) @ get(p + "ffn_down").T
                mean_share.append(float(np.sum(dropped.mean(axis=0) ** 2)
                                        / max(np.mean(np.sum(dropped ** 2, axis=1)), 1e-30)))
                act = act * kept
            h = h + _rms(act @ get(p + "ffn_down").T, get(p + "ffn_post_norm"), cfg.norm_eps)
        return _rms(h, get("output_norm"), cfg.norm_eps), mean_share

    def log_probs(normed: np.ndarray, rows: np.ndarray) -> np.ndarray:
        z = softcap(normed @ rows.T, cfg.final_softcap).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    dense_normed, _ = forward(None, 1.0)
    embed = get("token_embd")
    vocab = [ids[1:]]
    for i in range(0, len(ids), 64):
        logits = dense_normed[i:i + 64] @ embed.T
        vocab.append(np.argpartition(logits, -TOP, axis=1)[:, -TOP:].ravel())
    vocab = np.unique(np.concatenate(vocab))
    rows = embed[vocab]
    dense = log_probs(dense_normed, rows)
    nxt = (np.arange(len(ids) - 1), np.searchsorted(vocab, ids[1:]))
    out = []
    for f in fractions:
        for rule in rules:
            t0 = time.perf_counter()
            normed, mean_share = forward(rule, f)
            sparse = log_probs(normed, rows)
            kl = float(np.mean(np.sum(np.exp(dense) * (dense - sparse), axis=1)))
            d_nll = float(np.mean(dense[nxt] - sparse[nxt]))
            out.append({"rule": rule, "what": RULES[rule], "fraction": f, "kl": kl,
                        "nll_change": d_nll, "dropped_mean_energy_share": mean_share,
                        "seconds": time.perf_counter() - t0})
            print(f"F={f} {rule:16s} KL {kl:.4f}  NLL {d_nll:+.4f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--rules", nargs="*", default=list(RULES), choices=list(RULES))
    ap.add_argument("--fractions", nargs="*", type=float, default=[0.5])
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)
    from spark_infer import models
    from spark_infer.convert import _calibration_ids

    with load_source(models.resolve_model("gemma3-270m", dtype="bf16")) as s:
        cache: dict[str, np.ndarray] = {}

        def get(name: str) -> np.ndarray:       # 270M in float32 fits; read each tensor once
            if name not in cache:
                cache[name] = s.get(name)
            return cache[name]

        ids, text = _calibration_ids(s, None)
        ids = np.asarray(ids[:args.tokens], np.int64)
        rows = run(s.cfg, get, ids, args.rules, args.fractions)
    if args.output:
        report = {"command": " ".join(["python", "bench/sparsity_rules.py",
                                       *(argv or sys.argv[1:])]),
                  "commit": B._commit(), "machine": B.machine_info(), "text": text,
                  "tokens": len(ids), "top_tokens": TOP, "rows": rows}
        Path(args.output).write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
