"""Checkpoints written by the trainer (`spark_infer.train.checkpoint`, no torch needed here):
a directory with `spark_config.json` (the engine config JSON), `model.safetensors` (every
tensor by its engine name) and optionally `tokenizer.model`. Read with hf.py's safetensors
reader, checked against `fileformat.tensor_specs(cfg)`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._errors import ConversionError
from .hf import SafetensorsFile, _read_json

__all__ = ["SparkCheckpoint", "is_spark_checkpoint", "CONFIG_NAME", "WEIGHTS_NAME",
           "TOKENIZER_NAME"]

CONFIG_NAME = "spark_config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.model"


def is_spark_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


class SparkCheckpoint:
    """An open trainer checkpoint: ``cfg``, ``names`` (table order), ``get(name)`` (float32),
    ``tokenizer_proto`` (bytes or None)."""

    def __init__(self, path: str | os.PathLike):
        from ..config import ModelConfig
        from ..fileformat import tensor_specs

        self.path = Path(path)
        self._file: SafetensorsFile | None = None
        cfg_path = self.path / CONFIG_NAME
        try:
            self.cfg = ModelConfig.from_dict(_read_json(cfg_path))
        except ValueError as e:
            raise ConversionError(f"{cfg_path}: invalid model config: {e}") from None
        tok = self.path / TOKENIZER_NAME
        self.tokenizer_proto = tok.read_bytes() if tok.is_file() else None
        if self.tokenizer_proto is not None:
            from ..tokenizer import Tokenizer, TokenizerError
            try:
                Tokenizer(self.tokenizer_proto)
            except TokenizerError as e:
                raise ConversionError(f"{tok}: {e}") from None
        weights = self.path / WEIGHTS_NAME
        if not weights.is_file():
            raise ConversionError(f"{self.path}: no {WEIGHTS_NAME}")
        self._file = SafetensorsFile(weights)
        try:
            self.names = self._check(tensor_specs(self.cfg), weights)
        except BaseException:
            self.close()
            raise

    def _check(self, specs, weights: Path) -> list[str]:
        assert self._file is not None
        for spec in specs:
            if spec.name not in self._file.tensors:
                raise ConversionError(f"{weights}: missing tensor {spec.name!r}")
            if self._file.shape(spec.name) != spec.shape:
                raise ConversionError(f"{weights}: tensor {spec.name!r} has shape "
                                      f"{list(self._file.shape(spec.name))}, expected "
                                      f"{list(spec.shape)}")
        extra = sorted(set(self._file.tensors) - {s.name for s in specs})
        if extra:
            raise ConversionError(f"{weights}: unexpected tensor {extra[0]!r} for this config")
        return [s.name for s in specs]

    def get(self, name: str) -> np.ndarray:
        assert self._file is not None
        a = self._file.get(name)
        if not np.all(np.isfinite(a)):
            raise ConversionError(f"{self.path / WEIGHTS_NAME}: tensor {name!r} has non-finite "
                                  f"values")
        return a

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "SparkCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
