"""The weight types as the engine file stores them: each type's safetensors dtype, element size
and stored shape, and the one switch over types for encoding and decoding a tensor."""

from __future__ import annotations

import numpy as np

from .bf16 import bf16_to_f32, f32_to_bf16
from .int8 import dequantize_int8, quantize_int8
from .q4 import Q4_BLOCK_BYTES, Q4_GROUP, dequantize_q4, quantize_q4

DTYPES = ("f32", "bf16", "int8", "q4")
# Safetensors dtype of each type (q4 stores its blocks as bytes), and its element size.
ST_DTYPE = {"f32": "F32", "bf16": "BF16", "int8": "I8", "q4": "U8"}
ITEMSIZE = {"F32": 4, "BF16": 2, "I8": 1, "U8": 1}


def stored_shape(shape: tuple[int, ...], st_dtype: str) -> tuple[int, ...]:
    """The safetensors shape of a matrix of logical `shape`: q4 (U8) stores its blocks."""
    if st_dtype == "U8":
        return (shape[0], shape[1] // Q4_GROUP * Q4_BLOCK_BYTES)
    return shape


def logical_shape(shape: tuple[int, ...], st_dtype: str) -> tuple[int, ...]:
    """The matrix shape a stored `shape` holds (the inverse of `stored_shape`)."""
    if st_dtype == "U8":
        return (shape[0], shape[1] // Q4_BLOCK_BYTES * Q4_GROUP)
    return shape


def encode(block: np.ndarray, st_dtype: str, importance: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """(stored values, int8 row scales or None) of float32 rows `block` in type `st_dtype`;
    importance weighs the q4 fit (`quantize_q4`)."""
    if st_dtype == "F32":
        return np.ascontiguousarray(block, dtype="<f4"), None
    if st_dtype == "BF16":
        return f32_to_bf16(block), None
    if st_dtype == "U8":
        return quantize_q4(block, importance), None
    if st_dtype == "I8":
        return quantize_int8(block.reshape(block.shape[0], -1))
    raise ValueError(f"unknown stored dtype {st_dtype!r}")


def decode(a: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """A new float32 array of stored values `a`, by their numpy dtype: uint16 bf16 widened
    exactly, int8 times its row `scale`, uint8 q4 blocks decoded, float32 copied."""
    if a.dtype == np.uint16:
        return bf16_to_f32(a)
    if a.dtype == np.int8:
        if scale is None:
            raise ValueError("int8 values need their row scales")
        return dequantize_int8(a, scale)
    if a.dtype == np.uint8:
        return dequantize_q4(a)
    return a.astype(np.float32)
