"""bf16: the upper 16 bits of an f32, stored as uint16 bit patterns (numpy has no bfloat16)."""

from __future__ import annotations

import numpy as np


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) of float32(x), rounded to nearest, ties to even.

    Integer rounding on the f32 bits: add 0x7FFF plus the lowest kept bit, then drop 16 bits.
    A carry into the exponent is the correct rounding (up to inf past the bf16 maximum). NaN
    keeps its sign and top payload bits and is forced quiet, so it never rounds into inf.
    """
    x32 = np.asarray(x, dtype=np.float32)
    bits = x32.view(np.uint32)
    t = bits >> 16
    t &= 1
    t += 0x7FFF
    t += bits             # wraps only for NaN bit patterns, which are replaced below
    t >>= 16
    out = t.astype(np.uint16)
    nan = np.isnan(x32)
    if nan.any():
        out[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return out


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """float32 values of bf16 bit patterns (uint16, or any 2-byte dtype viewed as uint16)."""
    b = np.asarray(bits)
    if b.dtype != np.uint16:
        b = b.view(np.uint16)
    return (b.astype(np.uint32) << 16).view(np.float32)
