"""int8: per-row symmetric, q [rows, cols] int8 with one f32 scale per row,
w[r, c] = scale[r] * q[r, c] (the file stores the scales as `<name>.scale`, F32 [rows])."""

from __future__ import annotations

import numpy as np


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: q [rows, cols] int8 and scale [rows] f32 with
    scale[r] = max|w[r, :]| / 127 (0 for a zero row) and q = round_half_even(w / scale).
    |w - scale * q| <= scale / 2 per element, up to f32 rounding of the division."""
    w32 = np.asarray(w, dtype=np.float32)
    if w32.ndim != 2:
        raise ValueError(f"quantize_int8 wants a 2-D matrix, got shape {w32.shape}")
    amax = np.max(np.abs(w32), axis=1) if w32.shape[1] > 0 else np.zeros(w32.shape[0], np.float32)
    scale = (amax / np.float32(127.0)).astype(np.float32)
    q = np.zeros(w32.shape, dtype=np.float32)
    np.divide(w32, scale[:, None], out=q, where=scale[:, None] > 0)
    np.rint(q, out=q)
    np.clip(q, -127.0, 127.0, out=q)
    return q.astype(np.int8), scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 w[r, c] = scale[r] * q[r, c]."""
    return np.asarray(q, dtype=np.float32) * np.asarray(scale, dtype=np.float32)[:, None]
