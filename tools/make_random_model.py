#!/usr/bin/env python3
"""Write an engine file with seeded random weights, for tests and benchmarks.

    python tools/make_random_model.py --preset spark-2b --dtype bf16 --seed 0 -o spark-2b.spark
    python tools/make_random_model.py --preset gemma3-270m --n-layers 2 --vocab-size 512 -o t.spark
    python tools/make_random_model.py --config cfg.json --dtype f32 -o t.spark

The weights' distribution is documented in spark_infer/random_model.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

try:
    from spark_infer.config import ModelConfig, preset
    from spark_infer.fileformat import DTYPES, tensor_specs
    from spark_infer.random_model import make_random_model
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    from spark_infer.config import ModelConfig, preset
    from spark_infer.fileformat import DTYPES, tensor_specs
    from spark_infer.random_model import make_random_model


def _apply_overrides(cfg: ModelConfig, args: argparse.Namespace) -> ModelConfig:
    changes = {}
    for field in ("n_layers", "vocab_size", "d_ff", "sliding_window"):
        value = getattr(args, field)
        if value is not None:
            changes[field] = value
    if "vocab_size" in changes:
        # A random model has no real tokenizer; special ids only need to be valid ids.
        v = changes["vocab_size"]
        for name in ("bos_id", "eos_id", "pad_id", "start_of_turn_id", "end_of_turn_id"):
            if getattr(cfg, name) >= v:
                changes[name] = getattr(cfg, name) % v
    return cfg.replace(**changes) if changes else cfg


def _load_config(text_or_path: str) -> ModelConfig:
    if os.path.exists(text_or_path):
        with open(text_or_path, encoding="utf-8") as f:
            text_or_path = f.read()
    return ModelConfig.from_json(text_or_path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", help="gemma2-2b, spark-2b, gemma3-270m, gemma3-1b, "
                                        "spark-gemma3-270m")
    which.add_argument("--config", help="model config: a JSON file or a JSON string")
    ap.add_argument("--dtype", choices=DTYPES, default="bf16", help="matrix dtype (bf16)")
    ap.add_argument("--embed-dtype", choices=DTYPES, help="token_embd dtype (default: --dtype)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", required=True, help="engine file to write")
    ap.add_argument("--tokenizer", help="SentencePiece .model file to embed")
    ap.add_argument("--n-layers", type=int, help="override n_layers (layer pattern repeats)")
    ap.add_argument("--vocab-size", type=int, help="override vocab_size")
    ap.add_argument("--d-ff", type=int, help="override d_ff")
    ap.add_argument("--sliding-window", type=int, help="override sliding_window")
    args = ap.parse_args(argv)

    try:
        cfg = preset(args.preset) if args.preset else _load_config(args.config)
        cfg = _apply_overrides(cfg, args)
    except ValueError as e:
        ap.error(str(e))
    tokenizer = None
    if args.tokenizer:
        with open(args.tokenizer, "rb") as f:
            tokenizer = f.read()
    t0 = time.perf_counter()
    make_random_model(args.output, cfg, dtype=args.dtype, seed=args.seed,
                      tokenizer_proto=tokenizer, embed_dtype=args.embed_dtype)
    n_params = sum(int(np.prod(s.shape)) for s in tensor_specs(cfg))
    print(f"{args.output}: {n_params / 1e6:.1f} M params, {args.dtype}, "
          f"{os.path.getsize(args.output) / 2**30:.2f} GiB, {time.perf_counter() - t0:.1f} s")
    print(json.dumps(cfg.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
