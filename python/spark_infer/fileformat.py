"""Write and read engine files (`*.spark`): safetensors containers laid out per docs/engine-file.md.

Contract:
- Writing is Python's; reading is the engine's: `read_engine_file`, `read_engine_header` and
  `open_engine_file` wrap `_core.EngineFile` (cpp/model/engine_file.h), the one reader and
  validator of engine files, so Python accepts exactly the files the engine runs.
- `tensor_specs(cfg)` is the one table of tensors a config implies (name, shape, is_matrix) on
  the Python side: the writer and the tests use it (cpp/model/weights.cc is the reader's).
- Norm vectors are F32. Matrices are F32, BF16 (round to nearest even), I8 with a `<name>.scale`
  F32 [rows] companion, `w[r, c] = scale[r] * q[r, c]`, q4: U8 [rows, cols / 32 * 20], blocks
  of 32 weights along each row in GGML's Q4_1 layout, or q5: U8 [rows, cols / 32 * 22], GGML's
  Q5_0 blocks (the row bytes tell q4 and q5 apart). Each type's layout, encoder and decoder
  live in `spark_infer.weights`. Each matrix has its own type (`write_engine_file`'s dtype,
  embed_dtype and per-tensor tensor_dtypes), but for the LM-head screen `token_embd_screen`
  (only with lm_head_screen_margin > 0): its own layout, screen4 (`weights/screen4.py`), U8
  `screen4_shape(vocab, d_model)` = [ceil(vocab / 4), d_model / 128 * 272], written from
  token_embd's float values (`DERIVED_FROM`), so d_model must be a multiple of 128.
- Layout written here (the safetensors format allows no holes between tensors): the header is
  padded with spaces so the data starts at a multiple of 64 bytes; tensors follow contiguously,
  F32 first, then BF16, then I8 and U8 (each group in table order), so every tensor starts at a multiple
  of its element size. Readers should check alignment rather than assume it.
- The writer streams: it writes the header (computable from the config alone), pre-sizes the file
  and writes each tensor at its offset as the source hands it over, converting in row chunks of
  about `_CHUNK_ELEMS` elements, so peak memory is one source tensor plus one chunk. Output goes to
  a temporary file in the target directory, renamed over the target only on success.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple, Union

import numpy as np

from .config import ModelConfig
from .weights import (BLOCK_BYTES as _BLOCK_BYTES, DTYPES, ITEMSIZE as _ITEMSIZE, Q4_GROUP,
                      Q5_BLOCK_BYTES as _Q5_BLOCK_BYTES, SCREEN_BLOCK_BYTES, SCREEN_GROUP,
                      SCREEN_ROWS, decode, dequantize_screen4, encode, quantize_screen4,
                      screen4_shape)
from .weights import ST_DTYPE as _MATRIX_ST_DTYPE
from .weights import stored_shape as _stored_shape, stored_type as _stored_type

__all__ = [
    "FormatError", "TensorSpec", "RowBlocks", "tensor_specs", "write_engine_file",
    "read_engine_file", "read_engine_header", "dequantize_tensor", "open_engine_file",
    "FORMAT_NAME", "FORMAT_VERSION", "DTYPES",
]

FORMAT_NAME = "spark-infer"
FORMAT_VERSION = "1"
_HEADER_ALIGN = 64
# 1 Mi elements (4 MiB of f32) per chunk: temporaries stay in cache (measured ~1.5x faster bf16
# conversion than 4 Mi chunks), and numpy calls stay long enough to hide their overhead.
_CHUNK_ELEMS = 1 << 20


# The LM-head screen's layout (docs/engine-file.md, "The screened LM head"): not a matrix type
# users pick (DTYPES), so only the tensor token_embd_screen is written and read in it.
SCREEN_DTYPE = "screen4"
SCREEN_TENSOR = "token_embd_screen"
_ST_DTYPE = dict(_MATRIX_ST_DTYPE, **{SCREEN_DTYPE: "U8"})


class FormatError(ValueError):
    """An engine file that breaks docs/engine-file.md; the message names the tensor or field."""


class TensorSpec(NamedTuple):
    name: str
    shape: tuple[int, ...]
    is_matrix: bool


# Tensors the writer derives from another one's values, which sources never give: the LM-head
# screen is a 4-bit copy of token_embd (screen4).
DERIVED_FROM = {SCREEN_TENSOR: "token_embd"}


@dataclass(frozen=True)
class RowBlocks:
    """A tensor handed over as consecutive blocks of rows (each [n_i, *shape[1:]], sum n_i =
    shape[0]), for sources that never hold the whole tensor, e.g. a random generator."""

    shape: tuple[int, ...]
    blocks: Iterable[np.ndarray]


TensorValue = Union[np.ndarray, RowBlocks]
TensorSource = Union[Mapping[str, Any], Callable[[str, tuple[int, ...]], Any],
                     Iterable[tuple[str, Any]]]


# ------------------------------------------------------------------------------ tensor table

def tensor_specs(cfg: ModelConfig) -> list[TensorSpec]:
    """Every tensor `cfg` implies, in table order (docs/engine-file.md, "Tensors")."""
    d, hd, ff = cfg.d_model, cfg.head_dim, cfg.d_ff
    specs = [TensorSpec("token_embd", (cfg.vocab_size, d), True)]
    if cfg.lm_head_screen_margin > 0:   # logical shape; stored as screen4_shape(vocab, d)
        specs.append(TensorSpec(SCREEN_TENSOR, (cfg.vocab_size, d), True))
    specs.append(TensorSpec("output_norm", (d,), False))
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        specs += [TensorSpec(p + "attn_norm", (d,), False),
                  TensorSpec(p + "attn_post_norm", (d,), False),
                  TensorSpec(p + "ffn_norm", (d,), False),
                  TensorSpec(p + "ffn_post_norm", (d,), False)]
        if cfg.qk_norm:
            specs += [TensorSpec(p + "attn_q_norm", (hd,), False),
                      TensorSpec(p + "attn_k_norm", (hd,), False)]
        specs += [TensorSpec(p + "attn_q", (cfg.n_heads * hd, d), True),
                  TensorSpec(p + "attn_k", (cfg.n_kv_heads * hd, d), True),
                  TensorSpec(p + "attn_v", (cfg.n_kv_heads * hd, d), True),
                  TensorSpec(p + "attn_output", (d, cfg.n_heads * hd), True)]
        if cfg.is_spark_ffn:
            r = cfg.ffn_predictor_dim
            specs += [TensorSpec(p + "ffn_k1", (ff, r), True),
                      TensorSpec(p + "ffn_k2", (ff, d - r), True),
                      TensorSpec(p + "ffn_v", (ff, d), True)]
        elif cfg.is_sparse_ffn:
            specs += [TensorSpec(p + "ffn_gate", (ff, d), True),
                      TensorSpec(p + "ffn_up", (ff, d), True),
                      TensorSpec(p + "ffn_down_t", (ff, d), True)]
            if cfg.ffn_gate_rank:
                specs += [TensorSpec(p + "ffn_gate_a", (cfg.ffn_gate_rank, d), True),
                          TensorSpec(p + "ffn_gate_b", (ff, cfg.ffn_gate_rank), True)]
            if cfg.ffn_select_weighted:
                specs.append(TensorSpec(p + "ffn_select", (ff,), False))
        else:
            specs += [TensorSpec(p + "ffn_gate", (ff, d), True),
                      TensorSpec(p + "ffn_up", (ff, d), True),
                      TensorSpec(p + "ffn_down", (d, ff), True)]
        if cfg.is_sparse_attn:
            # Always F32 (not a weight of the matrix dtype): an orthogonal P per KV head.
            specs.append(TensorSpec(p + "attn_rot", (cfg.n_kv_heads * hd, hd), False))
    return specs


# ------------------------------------------------------------------------------ layout

class _Entry(NamedTuple):
    name: str
    shape: tuple[int, ...]  # as stored
    dtype: str             # weight type (DTYPES or SCREEN_DTYPE); "f32" for vectors and scales
    begin: int             # offset within the data section
    end: int

    @property
    def st_dtype(self) -> str:   # safetensors dtype: F32 | BF16 | I8 | U8 (q4 / q5 / screen4)
        return _ST_DTYPE[self.dtype]


def _layout(cfg: ModelConfig, dtype: str, embed_dtype: str,
            tensor_dtypes: Mapping[str, str] | None = None) -> dict[str, _Entry]:
    """Offsets of every tensor (and int8 scale) in the data section, F32 first, then BF16, I8."""
    wanted: list[tuple[str, tuple[int, ...], str]] = []
    for spec in tensor_specs(cfg):
        if not spec.is_matrix:
            wanted.append((spec.name, spec.shape, "f32"))
            continue
        if spec.name == SCREEN_TENSOR:
            wanted.append((spec.name, _screen_shape(spec.shape), SCREEN_DTYPE))
            continue
        t = (tensor_dtypes or {}).get(spec.name, embed_dtype if spec.name == "token_embd" else dtype)
        if t in _BLOCK_BYTES and spec.shape[1] % Q4_GROUP:
            raise ValueError(f"{t} needs rows of a multiple of {Q4_GROUP} weights: tensor "
                             f"{spec.name!r} has shape {spec.shape}")
        wanted.append((spec.name, _stored_shape(spec.shape, t), t))
        if t == "int8":
            wanted.append((spec.name + ".scale", (spec.shape[0],), "f32"))
    # Stable sort by decreasing element size: each tensor starts aligned to its element size.
    wanted.sort(key=lambda item: -_ITEMSIZE[_ST_DTYPE[item[2]]])
    entries: dict[str, _Entry] = {}
    offset = 0
    for name, shape, t in wanted:
        nbytes = int(np.prod(shape, dtype=np.int64)) * _ITEMSIZE[_ST_DTYPE[t]]
        entries[name] = _Entry(name, shape, t, offset, offset + nbytes)
        offset += nbytes
    return entries


def _screen_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The stored shape of the screen of a [vocab, d_model] head; ValueError naming the
    128-weight blocks when d_model does not fit them."""
    if shape[1] % SCREEN_GROUP:
        raise ValueError(f"the LM-head screen (lm_head_screen_margin > 0) needs d_model a multiple "
                         f"of {SCREEN_GROUP} (its screen4 blocks), got d_model {shape[1]}")
    return screen4_shape(shape[0], shape[1])


def _header_bytes(cfg: ModelConfig, entries: dict[str, _Entry],
                  tokenizer_proto: bytes | None, extra_metadata: Mapping[str, str] | None = None
                  ) -> bytes:
    metadata = dict(extra_metadata or {})
    metadata.update({"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                     "config": cfg.to_json()})
    if tokenizer_proto is not None:
        metadata["tokenizer"] = base64.b64encode(bytes(tokenizer_proto)).decode("ascii")
    header: dict[str, Any] = {"__metadata__": metadata}
    for e in sorted(entries.values(), key=lambda e: e.begin):
        header[e.name] = {"dtype": e.st_dtype, "shape": list(e.shape),
                          "data_offsets": [e.begin, e.end]}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Spaces after the JSON (as the safetensors writer does) put the data start on a 64-byte line.
    pad = (-(8 + len(text))) % _HEADER_ALIGN
    text += b" " * pad
    return len(text).to_bytes(8, "little") + text


# ------------------------------------------------------------------------------ writer

def _check_dtype_name(kind: str, value: str) -> str:
    if value not in DTYPES:
        raise ValueError(f"{kind} must be one of {DTYPES}, got {value!r}")
    return value


def _value_shape(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, RowBlocks):
        return tuple(int(n) for n in value.shape)
    if not hasattr(value, "shape"):
        raise ValueError(f"tensor {name!r}: expected a numpy array or RowBlocks, got "
                         f"{type(value).__name__}")
    return tuple(int(n) for n in value.shape)


def _as_float_block(name: str, block: Any) -> np.ndarray:
    a = np.asarray(block)
    # ml_dtypes' bfloat16 is not an np.floating subtype but converts exactly to f32.
    if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
        raise ValueError(f"tensor {name!r}: expected floating-point values, got dtype {a.dtype}")
    return a.astype(np.float32, copy=False)


def _row_blocks(name: str, value: Any, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """Yield float32 blocks of whole rows (of elements for a 1-D tensor), shape-checked."""
    if isinstance(value, RowBlocks):
        rows_seen = 0
        for block in value.blocks:
            b = _as_float_block(name, block)
            if b.ndim != len(shape) or tuple(b.shape[1:]) != shape[1:]:
                raise ValueError(f"tensor {name!r}: block of shape {b.shape} does not fit "
                                 f"shape {shape}")
            rows_seen += b.shape[0]
            if rows_seen > shape[0]:
                raise ValueError(f"tensor {name!r}: blocks give more than {shape[0]} rows")
            yield b
        if rows_seen != shape[0]:
            raise ValueError(f"tensor {name!r}: blocks give {rows_seen} rows, expected {shape[0]}")
        return
    a = np.asarray(value)
    if len(shape) == 1:
        yield _as_float_block(name, a)
        return
    cols = int(np.prod(shape[1:], dtype=np.int64))
    step = max(1, _CHUNK_ELEMS // max(cols, 1))
    for r0 in range(0, shape[0], step):
        yield _as_float_block(name, a[r0:r0 + step])


def _write_tensor(f: BinaryIO, data_start: int, entries: dict[str, _Entry], name: str,
                  value: Any, want: tuple[int, ...], importance: np.ndarray | None = None,
                  derived: Sequence[str] = ()) -> None:
    """Writes `value` as tensor `name`, and as each tensor in `derived` (in its own layout,
    fitted unweighted)."""
    entry = entries[name]
    shape = _value_shape(name, value)
    if shape != want:
        raise ValueError(f"tensor {name!r} has shape {shape}, expected {want}")
    row_elems = int(np.prod(entry.shape[1:], dtype=np.int64))   # 1 for a vector
    row = 0
    # Rows of each derived tensor not written yet: a screen4 tile holds 4 rows, and the source's
    # blocks need not be whole tiles.
    carry = {other: np.zeros((0, *shape[1:]), np.float32) for other in derived}
    for block in _row_blocks(name, value, shape):
        if not np.all(np.isfinite(block)):
            raise ValueError(f"tensor {name!r} has NaN or infinite values")
        n_rows = block.shape[0]
        out, scale = encode(block, entry.dtype, importance)
        if scale is not None:   # int8: the row scales go to `<name>.scale`
            scale_entry = entries[name + ".scale"]
            f.seek(data_start + scale_entry.begin + 4 * row)
            f.write(np.ascontiguousarray(scale, dtype="<f4").data)
        f.seek(data_start + entry.begin + row * row_elems * _ITEMSIZE[entry.st_dtype])
        f.write(np.ascontiguousarray(out).data)
        row += n_rows
        for other in derived:
            rows = np.concatenate([carry[other], block]) if len(carry[other]) else block
            unit = _rows_per_stored_row(entries[other])
            whole = len(rows) // unit * unit
            _write_derived(f, data_start, entries[other], row - len(rows), rows[:whole])
            carry[other] = rows[whole:]
    for other in derived:   # the last, partial tile (padded by the encoder)
        _write_derived(f, data_start, entries[other], row - len(carry[other]), carry[other])


def _rows_per_stored_row(e: _Entry) -> int:
    return SCREEN_ROWS if e.dtype == SCREEN_DTYPE else 1


def _write_derived(f: BinaryIO, data_start: int, e: _Entry, first: int, rows: np.ndarray) -> None:
    """Writes float `rows`, rows first.. of derived tensor `e` (first at a stored row's start)."""
    if not len(rows):
        return
    out = quantize_screen4(rows) if e.dtype == SCREEN_DTYPE else encode(rows, e.dtype)[0]
    stored_row_bytes = (e.end - e.begin) // e.shape[0]
    f.seek(data_start + e.begin + first // _rows_per_stored_row(e) * stored_row_bytes)
    f.write(np.ascontiguousarray(out).data)


def _iter_source(source: TensorSource, specs: list[TensorSpec]) -> Iterator[tuple[str, Any]]:
    """(name, value) pairs of every tensor; a mapping is checked in full before this returns."""
    if isinstance(source, Mapping):
        _check_mapping(source, specs)
        return ((s.name, source[s.name]) for s in specs)
    return _iter_lazy_source(source, specs)


def _check_mapping(source: Mapping[str, Any], specs: list[TensorSpec]) -> None:
    names = [s.name for s in specs]
    missing = [n for n in names if n not in source]
    if missing:
        raise ValueError(f"missing tensor {missing[0]!r}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = sorted(set(source) - set(names))
    if unexpected:
        raise ValueError(f"unexpected tensor {unexpected[0]!r} (not in the table for this "
                         f"config)")
    # Shapes are known up front: fail before the first byte is written.
    for spec in specs:
        shape = _value_shape(spec.name, source[spec.name])
        if shape != spec.shape:
            raise ValueError(f"tensor {spec.name!r} has shape {shape}, expected {spec.shape}")


def _iter_lazy_source(source: Any, specs: list[TensorSpec]) -> Iterator[tuple[str, Any]]:
    names = {s.name for s in specs}
    if callable(source):
        for spec in specs:
            yield spec.name, source(spec.name, spec.shape)
    else:
        seen: set[str] = set()
        for item in source:
            name, value = item
            if name not in names:
                raise ValueError(f"unexpected tensor {name!r} (not in the table for this config)")
            if name in seen:
                raise ValueError(f"tensor {name!r} given twice")
            seen.add(name)
            yield name, value
        missing = [s.name for s in specs if s.name not in seen]
        if missing:
            raise ValueError(f"missing tensor {missing[0]!r}"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def write_engine_file(path: str | os.PathLike[str], cfg: ModelConfig, tensors: TensorSource,
                      dtype: str = "bf16", tokenizer_proto: bytes | None = None,
                      embed_dtype: str | None = None,
                      extra_metadata: Mapping[str, str] | None = None,
                      q4_importance: Mapping[str, np.ndarray] | None = None,
                      tensor_dtypes: Mapping[str, str] | None = None) -> None:
    """Write an engine file at `path` (atomically: a temporary file renamed at the end).

    tensors: every tensor of `tensor_specs(cfg)` as float values (float32 preferred), given as
      - a mapping name -> array or RowBlocks (all names and shapes checked before writing), or
      - a callable (name, shape) -> array or RowBlocks, called once per tensor in table order, or
      - an iterable of (name, array or RowBlocks) pairs, in any order.
    dtype: matrix dtype, "f32" | "bf16" | "int8" | "q4" | "q5" (q4, q5: rows must be multiples
    of 32 weights); embed_dtype: token_embd's (default: dtype); tensor_dtypes: a type per
    matrix name, over both (e.g. a quantized GGUF's mix, `convert.gguf.matrix_dtypes`).
    extra_metadata: more `__metadata__` entries (str -> str), e.g. "sparsify" (what a
    sparsifying conversion did); the format's own keys cannot be overridden.
    q4_importance: optional per-matrix column importance [cols] for the q4 fit
    (`weights.quantize_q4`), by tensor name; matrices without an entry are fitted unweighted.
    With lm_head_screen_margin > 0 the writer derives token_embd_screen from token_embd (screen4;
    ValueError unless d_model is a multiple of 128).
    Raises ValueError naming the tensor for a missing, unexpected, misshapen or non-finite one;
    no file is left at `path` (nor a temporary) when anything fails.
    """
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    _check_dtype_name("dtype", dtype)
    embed_dtype = _check_dtype_name("embed_dtype", dtype if embed_dtype is None else embed_dtype)
    if tokenizer_proto is not None and not isinstance(tokenizer_proto, (bytes, bytearray,
                                                                        memoryview)):
        raise ValueError("tokenizer_proto must be bytes (a serialized SentencePiece ModelProto)")
    all_specs = tensor_specs(cfg)
    specs = [s for s in all_specs if s.name not in DERIVED_FROM]   # what the source gives
    derived = {s.name: [d.name for d in all_specs if DERIVED_FROM.get(d.name) == s.name]
               for s in specs}
    matrices = {s.name for s in specs if s.is_matrix}
    for name, t in (tensor_dtypes or {}).items():
        if name not in matrices:
            raise ValueError(f"tensor_dtypes names {name!r}, not a matrix of this config")
        _check_dtype_name(f"tensor_dtypes[{name!r}]", t)
    entries = _layout(cfg, dtype, embed_dtype, tensor_dtypes)
    for key, value in (extra_metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError("extra_metadata must map str to str")
    header = _header_bytes(cfg, entries, tokenizer_proto, extra_metadata)
    data_start = len(header)
    data_size = max((e.end for e in entries.values()), default=0)
    source_iter = _iter_source(tensors, specs)

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "w+b") as f:
            f.write(header)
            f.truncate(data_start + data_size)
            shapes = {s.name: s.shape for s in specs}
            for name, value in source_iter:
                _write_tensor(f, data_start, entries, name, value, shapes[name],
                              (q4_importance or {}).get(name), derived[name])
        os.chmod(tmp, 0o644)   # mkstemp makes 0600; an engine file is not a secret
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# ------------------------------------------------------------------------------ reader

def open_engine_file(path: str | os.PathLike[str]) -> Any:
    """The engine's own reader and validator over `path` (`_core.EngineFile`): format and
    version, the config, every tensor's name, dtype and shape against the table, alignment and
    the header limits, all checked as the engine checks them. FormatError (naming the field or
    tensor) for a file that breaks docs/engine-file.md; FileNotFoundError if it does not exist."""
    from . import _core

    try:
        return _core.EngineFile(os.fspath(path))
    except _core.FormatError as e:
        raise FormatError(str(e)) from None


def _config_of(f: Any) -> ModelConfig:
    # The engine validated the config already; this builds the Python object of it.
    try:
        return ModelConfig.from_json(f.metadata["config"])
    except ValueError as e:
        raise FormatError(f"{f.path}: metadata 'config': {e}") from None


def read_engine_file(path: str | os.PathLike[str], dequantize: bool = False
                     ) -> tuple[ModelConfig, bytes | None, dict[str, np.ndarray]]:
    """Read an engine file: (config, tokenizer proto bytes or None, tensors).

    Tensors are the table's names (plus `<name>.scale` for I8 matrices unless dequantized).
    dequantize=False: read-only views over the file's memory map: F32 as float32, BF16 as
    uint16 bit patterns, I8 as int8, q4 as its uint8 blocks [rows, cols / 32 * 20], q5 as its
    uint8 blocks [rows, cols / 32, 22] (the shape the kernels take q5 in), the LM-head screen
    as its uint8 screen4 tiles [ceil(vocab / 4), d_model / 128 * 272].
    dequantize=True: every table tensor as float32 (bf16 widened exactly, int8 times scale, q4
    and q5 by `weights.dequantize_q4` / `dequantize_q5`, the screen [vocab, d_model] by
    `weights.dequantize_screen4`).
    Raises FormatError (naming the tensor or field) for a file that breaks the contract.
    """
    try:
        f = open_engine_file(path)
    except OSError as e:
        raise FormatError(f"{os.fspath(path)}: not a readable safetensors file: {e}") from None
    meta = f.metadata
    cfg = _config_of(f)
    tokenizer = None
    if "tokenizer" in meta:
        try:
            tokenizer = base64.b64decode(meta["tokenizer"], validate=True)
        except ValueError as e:
            raise FormatError(f"metadata 'tokenizer' is not base64: {e}") from None
    views = _typed_views(f, cfg)
    out: dict[str, np.ndarray] = {}
    for spec in tensor_specs(cfg):
        if dequantize:
            out[spec.name] = dequantize_tensor(views, spec.name)
            continue
        out[spec.name] = views[spec.name]
        if views[spec.name].dtype == np.int8:
            out[spec.name + ".scale"] = views[spec.name + ".scale"]
    return cfg, tokenizer, out


def _typed_views(f: Any, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The file's tensors by name, q5 matrices with their block axis apart (the engine's
    reader checked every U8 matrix to hold q4 or q5 rows, and the screen to be screen4)."""
    views = dict(f.tensors())
    for spec in tensor_specs(cfg):
        a = views[spec.name]
        if spec.is_matrix and spec.name != SCREEN_TENSOR and a.dtype == np.uint8 and \
                spec.shape[1] and a.shape[1] == spec.shape[1] // Q4_GROUP * _Q5_BLOCK_BYTES:
            views[spec.name] = a.reshape(a.shape[0], -1, _Q5_BLOCK_BYTES)
    return views


def dequantize_tensor(stored: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """A new float32 array of tensor `name` from the stored ones (`read_engine_file` with
    dequantize=False): bf16 widened exactly, int8 times its scale, q4 and q5 by
    `weights.dequantize_q4` / `dequantize_q5`, the LM-head screen by `weights.dequantize_screen4`
    (its rows: token_embd's)."""
    a = stored[name]
    if name == SCREEN_TENSOR:
        return dequantize_screen4(a, stored["token_embd"].shape[0],
                                  a.shape[1] // SCREEN_BLOCK_BYTES * SCREEN_GROUP)
    return decode(a, stored[name + ".scale"] if a.dtype == np.int8 else None)


def read_engine_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What `spark-infer info` shows, without reading tensor data (the file is checked as the
    engine checks it, `open_engine_file`).

    Returns {path, file_bytes, format, format_version, config (dict), parameters, dtypes
    {safetensors dtype: tensor count}, matrix_types {weight type: matrix count, e.g. a quantized
    GGUF's mix of q4, q5 and int8}, has_tokenizer, sparsify (the conversion's record, or
    None)}. Raises
    FormatError for a file that is not an engine file (or of an unknown format version),
    FileNotFoundError if it does not exist.
    """
    f = open_engine_file(path)
    meta = f.metadata
    cfg = _config_of(f)
    st_dtypes = f.tensor_dtypes()
    dtypes: dict[str, int] = {}
    for st_dtype in st_dtypes.values():
        dtypes[st_dtype] = dtypes.get(st_dtype, 0) + 1
    views = f.tensors()
    params = 0
    matrix_types: dict[str, int] = {}
    for spec in tensor_specs(cfg):
        if spec.name in DERIVED_FROM:
            continue                    # a copy (the LM-head screen), not more parameters
        params += int(np.prod(spec.shape))
        if spec.is_matrix:
            t = _stored_type(st_dtypes[spec.name], views[spec.name].shape, spec.shape[1])
            matrix_types[t] = matrix_types.get(t, 0) + 1
    return {"path": f.path, "file_bytes": f.file_bytes, "format": meta["format"],
            "format_version": meta["format_version"], "config": cfg.to_dict(),
            "parameters": params, "dtypes": dtypes, "matrix_types": matrix_types,
            "has_tokenizer": bool(meta.get("tokenizer")),
            "sparsify": _sparsify_record(f.path, meta)}


def _sparsify_record(path: str, meta: Mapping[str, str]) -> dict[str, Any] | None:
    """The `sparsify` metadata entry (what a sparsifying conversion did), or None."""
    if "sparsify" not in meta:
        return None
    try:
        record = json.loads(meta["sparsify"])
    except ValueError as e:
        raise FormatError(f"{path}: metadata 'sparsify' is not JSON: {e}") from None
    if not isinstance(record, dict):
        raise FormatError(f"{path}: metadata 'sparsify' is not a JSON object")
    return record
