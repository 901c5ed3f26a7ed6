#!/usr/bin/env python3
"""Write an engine file with seeded random weights, for tests and benchmarks.

    python tools/make_random_model.py --preset spark-2b --dtype bf16 --seed 0 -o spark-2b.spark
    python tools/make_random_model.py --preset gemma3-270m --n-layers 2 --vocab-size 512 -o t.spark
    python tools/make_random_model.py --config cfg.json --dtype f32 -o t.spark

Weights are uniform with the variance of the intended normal (uniform draws are ~4x faster than
normal ones in numpy, and the sums that reach any activation are near-normal anyway):
- token_embd: std 1/sqrt(d_model), so the embedding times sqrt(d_model) has unit RMS and tied
  logits have std ~1;
- other matrices: std 1/sqrt(cols) (fan-in), so each projection keeps unit scale;
- norm vectors w: std 0.1 around 0, i.e. (1 + w) near 1.
Each tensor draws from its own generator, seeded by (seed, index in the tensor table), in blocks
of rows, so the file is a function of (config, seed) only and peak memory is one block.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterator

import numpy as np

try:
    from spark_infer.config import ModelConfig, preset
    from spark_infer.fileformat import DTYPES, RowBlocks, tensor_specs, write_engine_file
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    from spark_infer.config import ModelConfig, preset
    from spark_infer.fileformat import DTYPES, RowBlocks, tensor_specs, write_engine_file

_BLOCK_ELEMS = 1 << 20
_NORM_STD = 0.1


def _uniform_blocks(rng: np.random.Generator, shape: tuple[int, ...], std: float
                    ) -> Iterator[np.ndarray]:
    """Blocks of rows of U(-a, a) with a = std * sqrt(3) (variance std^2)."""
    cols = int(np.prod(shape[1:], dtype=np.int64))
    step = max(1, _BLOCK_ELEMS // max(cols, 1))
    a = np.float32(std * math.sqrt(3.0))
    for r0 in range(0, shape[0], step):
        block = rng.random((min(step, shape[0] - r0), *shape[1:]), dtype=np.float32)
        block -= np.float32(0.5)
        block *= 2 * a
        yield block


def random_tensor_source(cfg: ModelConfig, seed: int):
    """A write_engine_file source: (name, shape) -> RowBlocks of seeded random values."""
    index = {spec.name: i for i, spec in enumerate(tensor_specs(cfg))}

    def source(name: str, shape: tuple[int, ...]) -> RowBlocks:
        rng = np.random.default_rng([seed, index[name]])
        if len(shape) == 1:
            std = _NORM_STD
        elif name == "token_embd":
            std = 1.0 / math.sqrt(cfg.d_model)
        else:
            std = 1.0 / math.sqrt(shape[1])
        return RowBlocks(shape, _uniform_blocks(rng, shape, std))

    return source


def make_random_model(path: str | os.PathLike[str], cfg_or_preset: ModelConfig | str,
                      dtype: str = "bf16", seed: int = 0, tokenizer_proto: bytes | None = None,
                      embed_dtype: str | None = None) -> ModelConfig:
    """Write a random engine file for a config (or preset name); returns the config used."""
    cfg = preset(cfg_or_preset) if isinstance(cfg_or_preset, str) else cfg_or_preset
    write_engine_file(path, cfg, random_tensor_source(cfg, seed), dtype=dtype,
                      tokenizer_proto=tokenizer_proto, embed_dtype=embed_dtype)
    return cfg


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
