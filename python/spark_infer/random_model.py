"""Seeded random weights for any model config, written as an engine file (tests, benchmarks).

Weights are uniform with the variance of the intended normal (uniform draws are ~4x faster than
normal ones in numpy, and the sums that reach any activation are near-normal anyway):
- token_embd: std 1/sqrt(d_model), so the embedding times sqrt(d_model) has unit RMS and tied
  logits have std ~1;
- other matrices: std 1/sqrt(cols) (fan-in), so each projection keeps unit scale;
- norm vectors w: std 0.1 around 0, i.e. (1 + w) near 1;
- sparsified models: attention rotations orthogonal, FFN selection weights in [0.5, 1.5).
Each tensor draws from its own generator, seeded by (seed, index in the tensor table), in blocks
of rows, so the file is a function of (config, seed) only and peak memory is one block.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np

from spark_infer.config import ModelConfig, preset
from spark_infer.fileformat import RowBlocks, tensor_specs, write_engine_file

__all__ = ["make_random_model", "random_tensor_source"]

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

    def source(name: str, shape: tuple[int, ...]) -> RowBlocks | np.ndarray:
        rng = np.random.default_rng([seed, index[name]])
        if name.endswith(".attn_rot"):
            # An orthogonal P per KV head (Q of a Gaussian matrix), as a PCA would give.
            hd = shape[1]
            return np.concatenate([np.linalg.qr(rng.standard_normal((hd, hd)))[0].T
                                   for _ in range(shape[0] // hd)]).astype(np.float32)
        if name.endswith(".ffn_select"):
            return (0.5 + rng.random(shape, dtype=np.float32)).astype(np.float32)  # weights > 0
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
