"""Checkpoint converters: GGUF (``gemma2`` / ``gemma3``) and Hugging Face safetensors
directories (``Gemma2ForCausalLM``, ``Gemma3ForCausalLM``, the text part of
``Gemma3ForConditionalGeneration``) -> engine file (``docs/engine-file.md``).

``convert(src, out, dtype)`` streams one tensor at a time (dequantized to float32, then written
as f32 / bf16 / int8 by ``fileformat.write_engine_file``), so peak memory is about one float32
tensor (the 262k x 640 embedding of Gemma 3 270M: 0.7 GB).  Every failure raises
:class:`ConversionError` naming the tensor, field or file, and leaves no output file behind.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from ._errors import ConversionError

__all__ = ["ConversionError", "convert", "load_source", "load_weights", "source_kind"]


def source_kind(src: str | os.PathLike) -> str:
    """``"gguf"`` or ``"hf"`` (raises ConversionError for anything else)."""
    p = Path(src)
    if p.is_dir():
        return "hf"
    if not p.exists():
        raise ConversionError(f"{p}: no such file or directory")
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise ConversionError(f"{p}: cannot read: {e}") from None
    if magic == b"GGUF":
        return "gguf"
    raise ConversionError(f"{p}: not a GGUF file nor a Hugging Face checkpoint directory")


class _Source:
    """An open checkpoint: ``cfg`` (ModelConfig), ``tokenizer_proto``, ``get(name)``."""

    def __init__(self, cfg, tokenizer_proto, getter, closer, names):
        self.cfg = cfg
        self.tokenizer_proto = tokenizer_proto
        self.get = getter
        self.close = closer
        self.names = names


def _make_config(fields: dict, where: str):
    from ..config import ModelConfig

    try:
        return ModelConfig(**fields)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{where}: invalid model config: {e}") from None


@contextmanager
def load_source(src: str | os.PathLike) -> Iterator[_Source]:
    """Open a checkpoint for streaming: yields an object with ``cfg``, ``tokenizer_proto``,
    ``names`` (engine tensor names, table order) and ``get(name) -> float32 array``."""
    kind = source_kind(src)
    if kind == "gguf":
        from . import gguf as g
        from ..tokenizer import TokenizerError, proto_from_gguf_metadata

        f, fields, mapping = g.load_gguf(src)
        try:
            cfg = _make_config(fields, f.path)
            proto = None
            if "tokenizer.ggml.tokens" in f.metadata:
                try:
                    proto = proto_from_gguf_metadata(f.metadata)
                except TokenizerError as e:
                    raise ConversionError(f"{f.path}: tokenizer: {e}") from None

            def get(name: str) -> np.ndarray:
                gname = mapping[name]
                a = f.dequantize(gname)
                if g.is_norm(gname):
                    a -= np.float32(1.0)
                if not np.all(np.isfinite(a)):
                    raise ConversionError(f"{f.path}: tensor {gname!r} has non-finite values")
                return a

            yield _Source(cfg, proto, get, f.close, list(mapping))
        finally:
            f.close()
    else:
        from .hf import HFCheckpoint

        ck = HFCheckpoint(src)
        try:
            cfg = _make_config(ck.fields, str(ck.path / "config.json"))
            yield _Source(cfg, ck.tokenizer_proto, ck.get, ck.close, list(ck.names))
        finally:
            ck.close()


def load_weights(src: str | os.PathLike):
    """(ModelConfig, {engine name: float32 array}, tokenizer proto or None), all in memory
    (for small models and tests)."""
    with load_source(src) as s:
        return s.cfg, {n: s.get(n) for n in s.names}, s.tokenizer_proto


def convert(src: str | os.PathLike, out: str | os.PathLike, dtype: str = "bf16",
            progress: bool = True, embed_dtype: str | None = None) -> Path:
    """Convert a GGUF file or an HF checkpoint directory into an engine file at ``out``.

    dtype: matrix dtype ``"f32"``, ``"bf16"`` or ``"int8"`` (norms are always f32);
    embed_dtype: ``token_embd``'s dtype (default: ``dtype``).  Returns ``Path(out)``.
    Raises ConversionError; on failure nothing is left at ``out`` (an existing file there is
    kept unchanged).
    """
    from ..fileformat import DTYPES, write_engine_file

    if dtype not in DTYPES:
        raise ConversionError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if embed_dtype is not None and embed_dtype not in DTYPES:
        raise ConversionError(f"embed_dtype must be one of {DTYPES}, got {embed_dtype!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with load_source(src) as s:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(s.names), unit="tensor", desc=f"converting to {out.name}",
                       leave=False)

        def source(name: str, shape: tuple[int, ...]) -> np.ndarray:
            a = s.get(name)
            if bar is not None:
                bar.update(1)
            return a

        try:
            write_engine_file(out, s.cfg, source, dtype=dtype, tokenizer_proto=s.tokenizer_proto,
                              embed_dtype=embed_dtype)
        except ConversionError:
            raise
        except ValueError as e:
            raise ConversionError(f"{src}: {e}") from None
        finally:
            if bar is not None:
                bar.close()
    return out
