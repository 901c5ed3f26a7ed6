"""Limits every reader of an untrusted file applies before it allocates (engine files,
Hugging Face safetensors, GGUF), so a hostile file costs an error, not gigabytes or a crash.

- A safetensors header (JSON) is at most `MAX_HEADER_BYTES`: an engine file's holds the config
  and the base64 tokenizer, 6.6 MiB for the default model (a 262k-token vocabulary), so 32 MiB
  leaves ~4.8x; a checkpoint's is tens of KB. The format itself allows 100 MB.
- A JSON header holds at most `MAX_JSON_VALUES` values (the default model's has 1,785, a
  62-layer sparsified int8 model 11,063) and nests at most `MAX_DEPTH` deep; so do GGUF arrays.
- A count read from a file (items of an array, tensors, key/values) is checked against the
  bytes left in the file, at the least size one item can take, before anything is sized by it;
  a checkpoint's layer count against its tensors (each layer has several), before per-layer
  lists are built.

The C++ reader (cpp/model/safetensors.h, cpp/util/json.h) has the same numbers; a test holds
them equal. Each function raises `error` (the caller's ConversionError or FormatError) with a
message in plain words.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_HEADER_BYTES", "MAX_JSON_VALUES", "MAX_DEPTH", "check_header_size",
           "parse_json_header", "check_count", "check_depth", "check_layers"]

MAX_HEADER_BYTES = 32 << 20
MAX_JSON_VALUES = 1 << 18
MAX_DEPTH = 64


def check_header_size(n: int, where: str, error: type[Exception]) -> None:
    """Refuse a JSON header (or JSON file) of `n` bytes over MAX_HEADER_BYTES, before reading."""
    if n > MAX_HEADER_BYTES:
        raise error(f"{where}: a JSON header of {n} bytes is over the {MAX_HEADER_BYTES >> 20} "
                    "MiB limit: not a file this reader accepts")


def parse_json_header(raw: bytes, where: str, error: type[Exception]) -> Any:
    """json.loads of a header, refused before parsing when it could hold over MAX_JSON_VALUES
    values: every value after a container's first follows a comma, and every first one an
    opening bracket, so 1 + the count of ',', '[' and '{' bounds them (commas inside strings
    count too, which only errs on the safe side)."""
    raw = bytes(raw)
    bound = 1 + raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    if bound > MAX_JSON_VALUES:
        raise error(f"{where}: header has more than {MAX_JSON_VALUES} JSON values (up to "
                    f"{bound}): not a file this reader accepts")
    try:
        value = json.loads(raw)
    except RecursionError:
        value = None
        depth = MAX_DEPTH + 1
    except ValueError as e:   # JSONDecodeError and UnicodeDecodeError
        raise error(f"{where}: header is not JSON: {e}") from None
    else:
        depth = _depth(value)
    if depth > MAX_DEPTH:
        raise error(f"{where}: header JSON nests deeper than {MAX_DEPTH}")
    return value


def _depth(value: Any) -> int:
    """Deepest value's depth (the document is at 0), as the C++ parser counts it; stops
    counting past MAX_DEPTH."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            break
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        stack.extend((c, d + 1) for c in children)
    return deepest


def check_count(count: int, item_bytes: int, remaining: int, what: str,
                error: type[Exception]) -> None:
    """Refuse `count` items of at least `item_bytes` bytes each that cannot fit in the
    `remaining` bytes of the file (a count that would size a list or an array)."""
    if count * item_bytes > remaining:
        raise error(f"{what}: {count} items of at least {item_bytes} bytes each do not fit in "
                    f"the {max(remaining, 0)} bytes left in the file (truncated or corrupt)")


def check_depth(depth: int, what: str, error: type[Exception]) -> None:
    """Refuse nesting deeper than MAX_DEPTH (arrays of arrays)."""
    if depth > MAX_DEPTH:
        raise error(f"{what}: arrays nested deeper than {MAX_DEPTH}")


def check_layers(n_layers: int, n_tensors: int, what: str, error: type[Exception]) -> None:
    """Refuse a layer count that the checkpoint's `n_tensors` tensors cannot hold (every layer
    has at least one tensor of its own), before anything is built per layer."""
    if n_layers > n_tensors:
        raise error(f"{what}: {n_layers} layers, but the checkpoint has only {n_tensors} "
                    "tensors (truncated or corrupt)")
