"""Checkpoint converters: GGUF (``gemma2`` / ``gemma3``), Hugging Face safetensors
directories (``Gemma2ForCausalLM``, ``Gemma3ForCausalLM``, the text part of
``Gemma3ForConditionalGeneration``), the trainer's checkpoint directories (``checkpoint.py``)
and dense engine files -> engine file
(``docs/engine-file.md``), optionally sparsified on the way (``sparsify.py``).

``convert(src, out, dtype)`` streams one tensor at a time (dequantized to float32, then written
as f32 / bf16 / int8 / q4 / q5 by ``fileformat.write_engine_file``), so peak memory is about one float32
tensor (the 262k x 640 embedding of Gemma 3 270M: 0.7 GB).  Every failure raises
:class:`ConversionError` naming the tensor, field or file, and leaves no output file behind.

The foreign formats' readers live here (``gguf.py``, ``gguf_tokenizer.py``: GGUF vocabulary ->
SentencePiece, ``hf.py``, ``checkpoint.py``), with sparsification (``sparsify.py``,
``importance.py``). It may import the runtime's ``config``, ``fileformat``, ``tokenizer``,
``reference``, ``limits`` and ``data``; the runtime never imports it at module level (only
``models`` and ``cli`` call :func:`convert`, lazily), nor does ``serve``.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from ._errors import ConversionError
from .sparsify import MAX_CALIBRATION_TOKENS, SparsifySpec

__all__ = ["ConversionError", "convert", "kept_precision", "load_source", "load_weights",
           "source_kind", "SparsifySpec"]


def source_kind(src: str | os.PathLike) -> str:
    """``"gguf"``, ``"hf"``, ``"checkpoint"`` (the trainer's) or ``"engine"`` (raises
    ConversionError for anything else)."""
    from .checkpoint import is_spark_checkpoint

    p = Path(src)
    if p.is_dir():
        return "checkpoint" if is_spark_checkpoint(p) else "hf"
    if not p.exists():
        raise ConversionError(f"{p}: no such file or directory")
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise ConversionError(f"{p}: cannot read: {e}") from None
    if magic == b"GGUF":
        return "gguf"
    from ..fileformat import FormatError, read_engine_header

    try:
        read_engine_header(p)
        return "engine"
    except (FormatError, OSError, ValueError):
        pass
    raise ConversionError(f"{p}: not a GGUF file, a Hugging Face checkpoint directory nor an "
                          f"engine file")


class _Source:
    """An open checkpoint: ``cfg`` (ModelConfig), ``tokenizer_proto``, ``get(name)``, and
    ``kinds``: for a quantized source, each matrix's precision ("q4", "q5", "int8" or "float",
    see ``gguf.precision_kind``) by engine name; None for a float one."""

    def __init__(self, cfg, tokenizer_proto, getter, closer, names, kinds=None):
        self.cfg = cfg
        self.tokenizer_proto = tokenizer_proto
        self.get = getter
        self.close = closer
        self.names = names
        self.kinds = kinds


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
        from ..tokenizer import TokenizerError
        from .gguf_tokenizer import proto_from_gguf_metadata

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

            kinds = {n: g.precision_kind(f.tensors[gn].ggml_type) for n, gn in mapping.items()
                     if len(f.tensors[gn].shape) == 2}
            quantized = any(k != "float" for k in kinds.values())
            yield _Source(cfg, proto, get, f.close, list(mapping), kinds if quantized else None)
        finally:
            f.close()
    elif kind == "engine":
        yield _engine_source(src)
    elif kind == "checkpoint":
        from .checkpoint import SparkCheckpoint

        with SparkCheckpoint(src) as ck:
            yield _Source(ck.cfg, ck.tokenizer_proto, ck.get, ck.close, ck.names)
    else:
        from .hf import HFCheckpoint

        ck = HFCheckpoint(src)
        try:
            cfg = _make_config(ck.fields, str(ck.path / "config.json"))
            yield _Source(cfg, ck.tokenizer_proto, ck.get, ck.close, list(ck.names))
        finally:
            ck.close()


def _engine_source(src: str | os.PathLike) -> _Source:
    """An engine file as a source: tensors dequantized to float32 one at a time, from views over
    the file's memory map (the engine's reader, which validated every name, dtype and shape)."""
    from ..fileformat import (DERIVED_FROM, FormatError, dequantize_tensor, read_engine_file,
                              tensor_specs)

    try:
        cfg, proto, stored = read_engine_file(src)
    except FormatError as e:
        raise ConversionError(str(e)) from None
    # A file with q4 / q5 blocks (a quantized GGUF's mix, say) keeps each matrix's type; one of
    # only float and int8 matrices is a float source for q4.
    kinds = {s.name: _stored_kind(stored[s.name]) for s in tensor_specs(cfg)
             if s.is_matrix and s.name not in DERIVED_FROM}   # the screen is remade, not kept
    quantized = any(k in ("q4", "q5") for k in kinds.values())
    return _Source(cfg, proto, lambda name: dequantize_tensor(stored, name), stored.clear,
                   [s.name for s in tensor_specs(cfg) if s.name not in DERIVED_FROM],
                   kinds if quantized else None)


def _stored_kind(a: np.ndarray) -> str:
    """The precision of a stored matrix as `read_engine_file` gives it (q5: 3-D uint8)."""
    if a.dtype == np.uint8:
        return "q5" if a.ndim == 3 else "q4"
    return "int8" if a.dtype == np.int8 else "float"


def kept_precision(kinds: dict[str, str] | None, cfg, dtype: str, embed_dtype: str | None
                   ) -> dict[str, str]:
    """The matrix types that keep a quantized source's precision: every matrix of `cfg` asked
    for in q4 (`dtype`, or `embed_dtype` for token_embd) whose source precision is known
    (`_Source.kinds`) gets the nearest engine type with at least its bits, as llama.cpp's
    Q4_K_M is itself a mix: 4-bit blocks -> q4, 5-bit -> q5, 6- and 8-bit and float -> int8.
    Matrices the source does not hold as they are written (a sparsified model's transposed
    ffn_down_t, its predictors) are not in `kinds`: they get the requested type."""
    from ..fileformat import tensor_specs

    if not kinds:
        return {}
    keep = {"q4": "q4", "q5": "q5", "int8": "int8", "float": "int8"}
    return {spec.name: keep[kinds[spec.name]] for spec in tensor_specs(cfg)
            if spec.is_matrix and _asked(spec.name, dtype, embed_dtype) == "q4"
            and spec.name in kinds}


def _asked(name: str, dtype: str, embed_dtype: str | None) -> str:
    """The type asked for a matrix: embed_dtype (default dtype) for token_embd, else dtype."""
    return (embed_dtype or dtype) if name == "token_embd" else dtype


def load_weights(src: str | os.PathLike):
    """(ModelConfig, {engine name: float32 array}, tokenizer proto or None), all in memory
    (for small models and tests)."""
    with load_source(src) as s:
        return s.cfg, {n: s.get(n) for n in s.names}, s.tokenizer_proto


def convert(src: str | os.PathLike, out: str | os.PathLike, dtype: str = "bf16",
            progress: bool = True, embed_dtype: str | None = None,
            sparsify: "str | SparsifySpec | None" = None,
            calibrate: str | os.PathLike | None = None,
            lm_head_screen: float | None = None) -> Path:
    """Convert a GGUF file, an HF checkpoint directory or an engine file into an engine file at
    ``out``.

    dtype: matrix dtype ``"f32"``, ``"bf16"``, ``"int8"``, ``"q4"`` or ``"q5"`` (norms are
    always f32); embed_dtype: ``token_embd``'s dtype (default: ``dtype``). From a quantized
    source (a quantized GGUF, or an engine file with q4 / q5 matrices) q4 keeps each matrix's
    own precision (``kept_precision``: Q4_K -> q4, Q5_0 -> q5, Q6_K / Q8_0 -> int8); from a
    float source every q4 matrix is q4.
    sparsify: e.g. ``"ffn=0.5"`` or ``"ffn=0.5,attn=128"`` (see SparsifySpec.parse): a dense
      model becomes a sparsified one (training-free; docs/engine-file.md).
    calibrate: a UTF-8 text file; with it the FFN's per-layer quantiles are calibrated so the
      realised fraction on that text is F (its first 2048 tokens; a ``refit`` of the down
      projection reads all of it, up to MAX_REFIT_TOKENS). Attention rotations, the low-rank
      predictor and the refit always need text: without ``calibrate`` they use the text shipped
      in ``spark_infer/data`` (``calibration_long.txt`` for a refit), and the FFN uses the
      Gaussian quantile Q(1 - F) on every layer. q4 matrices of a dense model
      (not sparsified here) are fitted weighted by their inputs' mean squares on the same text
      (``convert.importance``); a checkpoint without a tokenizer is fitted unweighted.
    lm_head_screen: a margin m > 0 (logits, e.g. 10) adds the screened LM head: a 4-bit copy
      of ``token_embd`` (screen4: 128-weight blocks, so d_model must be a multiple of 128)
      scores every token, and the logits within m of the largest are recomputed
      from ``token_embd`` itself (docs/engine-file.md); 0 removes it; None keeps the source's.
    Returns ``Path(out)``. Raises ConversionError; on failure nothing is left at ``out`` (an
    existing file there is kept unchanged).
    """
    from ..fileformat import DTYPES, SCREEN_GROUP, write_engine_file
    from .sparsify import SparsifySpec

    if dtype not in DTYPES:
        raise ConversionError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if embed_dtype is not None and embed_dtype not in DTYPES:
        raise ConversionError(f"embed_dtype must be one of {DTYPES}, got {embed_dtype!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = SparsifySpec.parse(sparsify) if isinstance(sparsify, str) else sparsify
    if lm_head_screen is not None and (isinstance(lm_head_screen, bool) or not isinstance(
            lm_head_screen, (int, float)) or not math.isfinite(lm_head_screen) or lm_head_screen < 0):
        raise ConversionError(f"lm_head_screen must be a finite margin >= 0 (0: none), got "
                              f"{lm_head_screen!r}")
    q4 = "q4" in (dtype, embed_dtype)
    if calibrate is not None and spec is None and not q4:
        raise ConversionError("--calibrate needs --sparsify or a q4 dtype")
    with load_source(src) as s:
        cfg, get, metadata, importance = s.cfg, s.get, None, None
        if spec is not None:
            sp = _sparsify_source(s, spec, calibrate)
            cfg, get, metadata = sp.cfg, sp.get, sp.metadata()
        if lm_head_screen is not None:
            try:
                cfg = cfg.replace(lm_head_screen_margin=float(lm_head_screen))
            except ValueError as e:
                raise ConversionError(f"lm_head_screen: {e}") from None
            if cfg.lm_head_screen_margin > 0 and cfg.d_model % SCREEN_GROUP:
                raise ConversionError(f"lm_head_screen: the screen's 4-bit blocks (screen4) hold "
                                      f"{SCREEN_GROUP} weights, so d_model must be a multiple of "
                                      f"{SCREEN_GROUP}; this model's is {cfg.d_model}")
        kept = kept_precision(s.kinds, cfg, dtype, embed_dtype)
        # q4 matrices that were 4-bit blocks come back exactly from any fit: only others need
        # the weighted one.
        from ..fileformat import DERIVED_FROM, tensor_specs

        refit = any(kept.get(t.name, _asked(t.name, dtype, embed_dtype)) == "q4"
                    and (s.kinds or {}).get(t.name) != "q4"
                    for t in tensor_specs(cfg) if t.is_matrix and t.name not in DERIVED_FROM)
        if calibrate is not None and spec is None and not refit:
            raise ConversionError("--calibrate has nothing to calibrate: every q4 matrix keeps "
                                  "the quantized source's own blocks (no weighted fit) and there "
                                  "is no --sparsify")
        if kept:
            metadata = dict(metadata or {})
            metadata["quantize"] = json.dumps({"kept_source_precision": {
                t: sum(v == t for v in kept.values()) for t in sorted(set(kept.values()))}})
        if spec is None and refit and s.tokenizer_proto is not None and not (
                cfg.is_spark_ffn or cfg.is_spark_attn or cfg.is_sparse_ffn or cfg.is_sparse_attn):
            from .importance import activation_importance

            ids, name = _calibration_ids(s, calibrate)
            importance = activation_importance(cfg, get, ids)
            metadata = dict(metadata or {})
            metadata["quantize"] = json.dumps(json.loads(metadata.get("quantize", "{}")) | {
                "q4_fit": "least squares weighted by the inputs' mean squares",
                "calibration": {"text": name, "tokens": len(ids)}})
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(s.names), unit="tensor", desc=f"converting to {out.name}",
                       leave=False)

        def source(name: str, shape: tuple[int, ...]) -> np.ndarray:
            a = get(name)
            if bar is not None:
                bar.update(1)
            return a

        try:
            write_engine_file(out, cfg, source, dtype=dtype, tokenizer_proto=s.tokenizer_proto,
                              embed_dtype=embed_dtype, extra_metadata=metadata,
                              q4_importance=importance, tensor_dtypes=kept)
        except ConversionError:
            raise
        except ValueError as e:
            raise ConversionError(f"{src}: {e}") from None
        finally:
            if bar is not None:
                bar.close()
    return out


# Calibration texts are cut at MAX_CALIBRATION_TOKENS (sparsify.py: the numpy pass holds
# [heads, T, T] scores, and its attention costs T^2; 2048 tokens: ~20 s for Gemma 3 270M on 2
# cores). A down-projection refit reads the whole text, as sequences of MAX_CALIBRATION_TOKENS (each
# costs about as much as a sparsification without refit).
MAX_REFIT_TOKENS = 65536


def _calibration_ids(s: _Source, calibrate, limit: int = MAX_CALIBRATION_TOKENS
                     ) -> tuple[list[int], str]:
    """Token ids (with <bos>, at most `limit`) of the calibration text, and its file name:
    `calibrate`, or a text shipped in spark_infer/data (the long one when more than one
    sequence is read)."""
    from ..data import calibration_text_path, long_calibration_text_path
    from ..tokenizer import Tokenizer

    path = Path(calibrate) if calibrate is not None else (
        long_calibration_text_path() if limit > MAX_CALIBRATION_TOKENS else calibration_text_path())
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConversionError(f"calibration text {path}: {e}") from None
    ids = Tokenizer(s.tokenizer_proto).encode(text, add_bos=True)[:limit]
    if len(ids) < 16:
        raise ConversionError(f"calibration text {path} has only {len(ids)} tokens; give a "
                              f"text of at least a few hundred")
    return ids, path.name


def _sparsify_source(s: _Source, spec, calibrate):
    from .sparsify import sparsify

    if s.tokenizer_proto is None:
        raise ConversionError("sparsifying needs the model's tokenizer (for the calibration "
                              "text), and this checkpoint has none")
    ids, name = _calibration_ids(s, calibrate,
                                 MAX_REFIT_TOKENS if spec.refit else MAX_CALIBRATION_TOKENS)
    return sparsify(s.cfg, s.get, spec, ids, calibration_name=name,
                    calibrate_ffn=calibrate is not None)
