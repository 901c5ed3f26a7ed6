"""Checkpoints of `SparkLM` and export to the engine file.

A checkpoint is a directory:
- `model.safetensors`: every tensor of `fileformat.tensor_specs(cfg)` by its engine name, F32;
- `spark_config.json`: the `ModelConfig` (the engine file's config JSON);
- `tokenizer.model`: the serialized SentencePiece model, when the model has one.
`spark-infer convert DIR out.spark` reads it (spark_infer/convert/checkpoint.py), as does
`load_checkpoint` here. The engine file is written by `fileformat.write_engine_file` only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from ..convert.checkpoint import CONFIG_NAME, TOKENIZER_NAME, WEIGHTS_NAME, SparkCheckpoint
from ..fileformat import write_engine_file
from .modules import SparkLM

__all__ = ["save_checkpoint", "load_checkpoint", "export_engine", "CONFIG_NAME", "WEIGHTS_NAME",
           "TOKENIZER_NAME"]


def _arrays(model: SparkLM) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v.detach().to(torch.float32).cpu().numpy())
            for k, v in model.engine_tensors().items()}


def save_checkpoint(model: SparkLM, directory: str | os.PathLike[str],
                    tokenizer_proto: bytes | None = None) -> Path:
    """Write the checkpoint directory (created if needed); returns its path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file(_arrays(model), str(d / WEIGHTS_NAME), metadata={"format": "spark-infer-train"})
    (d / CONFIG_NAME).write_text(model.cfg.to_json() + "\n", encoding="utf-8")
    if tokenizer_proto is not None:
        (d / TOKENIZER_NAME).write_bytes(tokenizer_proto)
    return d


def load_checkpoint(directory: str | os.PathLike[str]) -> tuple[SparkLM, bytes | None]:
    """(model, tokenizer proto or None) from a checkpoint directory, through the converter's
    reader (same checks: names, shapes, finite values)."""
    with SparkCheckpoint(directory) as ck:
        model = SparkLM(ck.cfg, seed=None)
        with torch.no_grad():
            for name, p in model.engine_tensors().items():
                p.copy_(torch.from_numpy(ck.get(name)))
        return model, ck.tokenizer_proto


def export_engine(model: SparkLM, path: str | os.PathLike[str], dtype: str = "f32",
                  tokenizer_proto: bytes | None = None,
                  extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Write `model` as an engine file (matrices as `dtype`: f32, bf16 or int8)."""
    write_engine_file(path, model.cfg, _arrays(model), dtype=dtype,
                      tokenizer_proto=tokenizer_proto, extra_metadata=extra_metadata)
    return Path(path)

