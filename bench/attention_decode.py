"""Decode attention alone: milliseconds per step, and the KV cache read rate, at given contexts.

A preset's attention shape (heads, KV heads, head_dim, window, soft-cap) with 2 layers and a
small vocabulary, random weights: the engine's attention time per decode step (`Engine.times()`,
which also holds the q/k/v/o projections: reported separately, measured at context 1) is the
split attention over the cache. The cache bytes read per step over that time is the rate to
hold against the read probe (`spark-infer bench` prints it). For work on the decode attention
kernels (SplitAttention: key scores, then the value sums).

    python bench/attention_decode.py [--preset gemma2-2b] [--context 1024 4096] [--dtype q4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from spark_infer import _core
from spark_infer.bench import machine_info
from spark_infer.config import preset
from spark_infer.random_model import make_random_model


def attention_ms(engine, tokens: np.ndarray, context: int, steps: int) -> float:
    engine.reset()
    if context > 1:
        engine.prefill(tokens[:context - 1], chunk=512)
    times = []
    for i in range(steps):
        engine.decode(int(tokens[i]))
        times.append(engine.times()["attention"])
    return 1e3 * statistics.median(times[steps // 5:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="gemma2-2b")
    ap.add_argument("--context", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--dtype", default="q4", help="weight type (the projections' bytes)")
    ap.add_argument("--kv-dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args(argv)
    cfg = preset(args.preset)
    cfg = cfg.replace(n_layers=2, layer_types=cfg.layer_types[:2], vocab_size=1024)
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "attn.spark")
        make_random_model(path, cfg, dtype=args.dtype, seed=1)
        top = max(args.context)
        engine = _core.Engine(path, context_length=top + args.steps, kv_dtype=args.kv_dtype)
        engine.threads = args.threads
        tokens = np.random.default_rng(0).integers(1, cfg.vocab_size, top + args.steps)
        tokens = tokens.astype(np.int32)
        base = attention_ms(engine, tokens, 1, args.steps)
        info = machine_info()
        print(f"# {args.preset} attention, 2 layers, {args.dtype} weights, {args.kv_dtype} KV, "
              f"{args.threads} threads; {info['cpu']}, Highway {info['highway_target']}")
        print(f"context 1 (projections): {base:.3f} ms/step")
        kv_row = 2 * cfg.head_dim * (2 if args.kv_dtype == "bf16" else 4)  # K and V
        for n in args.context:
            ms = attention_ms(engine, tokens, n, args.steps)
            seen = [min(n, cfg.sliding_window) if cfg.is_local(layer) and cfg.sliding_window
                    else n for layer in range(cfg.n_layers)]
            kv_bytes = sum(seen) * cfg.n_kv_heads * kv_row
            rate = kv_bytes / max(ms - base, 1e-9) / 1e6
            print(f"context {n}: {ms:.3f} ms/step, cache {kv_bytes / 1e6:.1f} MB at "
                  f"{rate:.1f} GB/s (time above context 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
