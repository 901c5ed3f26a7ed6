"""The weight types as the engine file stores them: each type's safetensors dtype, element size
and stored shape, and the one switch over types for encoding and decoding a tensor.

q4 and q5 are both stored as U8 blocks; the row bytes tell them apart (cols / 32 * 20 or 22
for a matrix of cols columns). In memory (`read_engine_file`, the kernels) a q4 matrix is
uint8 [rows, cols / 32 * 20], a q5 matrix uint8 [rows, cols / 32, 22]: the block axis apart, so
that the array alone says its type. The LM-head screen's layout (`screen4.py`) is not one of
these types: only `token_embd_screen` has it, and the file format names that tensor itself."""

from __future__ import annotations

import numpy as np

from .bf16 import bf16_to_f32, f32_to_bf16
from .int8 import dequantize_int8, quantize_int8
from .q4 import Q4_BLOCK_BYTES, Q4_GROUP, dequantize_q4, quantize_q4
from .q5 import Q5_BLOCK_BYTES, dequantize_q5, quantize_q5

DTYPES = ("f32", "bf16", "int8", "q4", "q5")
# Safetensors dtype of each type (q4 and q5 store their blocks as bytes), and its element size.
ST_DTYPE = {"f32": "F32", "bf16": "BF16", "int8": "I8", "q4": "U8", "q5": "U8"}
ITEMSIZE = {"F32": 4, "BF16": 2, "I8": 1, "U8": 1}
# Bytes per block of 32 weights of the block types.
BLOCK_BYTES = {"q4": Q4_BLOCK_BYTES, "q5": Q5_BLOCK_BYTES}


def stored_shape(shape: tuple[int, ...], dtype: str) -> tuple[int, ...]:
    """The safetensors shape of a matrix of logical `shape` in type `dtype` (a DTYPES name):
    q4 and q5 store their blocks, [rows, cols / 32 * block bytes]."""
    if dtype in BLOCK_BYTES:
        return (shape[0], shape[1] // Q4_GROUP * BLOCK_BYTES[dtype])
    return shape


def logical_shape(shape: tuple[int, ...], dtype: str) -> tuple[int, ...]:
    """The matrix shape a stored `shape` of type `dtype` holds (the inverse of `stored_shape`)."""
    if dtype in BLOCK_BYTES:
        return (shape[0], shape[1] // BLOCK_BYTES[dtype] * Q4_GROUP)
    return shape


def stored_type(st_dtype: str, shape: tuple[int, ...], cols: int) -> str:
    """The type (a DTYPES name) of a stored tensor of safetensors dtype `st_dtype` and `shape`
    holding rows of `cols` weights: U8 is q4 or q5 by its row bytes. ValueError for neither."""
    if st_dtype != "U8":
        return {v: k for k, v in ST_DTYPE.items() if k not in BLOCK_BYTES}[st_dtype]
    for name in BLOCK_BYTES:
        if cols % Q4_GROUP == 0 and tuple(shape[1:]) == stored_shape((0, cols), name)[1:]:
            return name
    raise ValueError(f"U8 tensor of shape {tuple(shape)} holds neither q4 nor q5 rows of "
                     f"{cols} weights")


def encode(block: np.ndarray, dtype: str, importance: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """(stored values, int8 row scales or None) of float32 rows `block` in type `dtype` (a DTYPES
    name); importance weighs the q4 fit (`quantize_q4`)."""
    if dtype == "f32":
        return np.ascontiguousarray(block, dtype="<f4"), None
    if dtype == "bf16":
        return f32_to_bf16(block), None
    if dtype == "q4":
        return quantize_q4(block, importance), None
    if dtype == "q5":
        return quantize_q5(block), None
    if dtype == "int8":
        return quantize_int8(block.reshape(block.shape[0], -1))
    raise ValueError(f"unknown dtype {dtype!r}")


def decode(a: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """A new float32 array of stored values `a`, by their numpy dtype and shape: uint16 bf16
    widened exactly, int8 times its row `scale`, uint8 [rows, blocks, 22] q5 blocks and uint8
    [rows, bytes] q4 blocks decoded, float32 copied."""
    if a.dtype == np.uint16:
        return bf16_to_f32(a)
    if a.dtype == np.int8:
        if scale is None:
            raise ValueError("int8 values need their row scales")
        return dequantize_int8(a, scale)
    if a.dtype == np.uint8:
        if a.ndim == 3 and a.shape[2] == Q5_BLOCK_BYTES:
            return dequantize_q5(a.reshape(a.shape[0], -1))
        return dequantize_q4(a)
    return a.astype(np.float32)
