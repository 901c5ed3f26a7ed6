"""q5: 5-bit, symmetric, in blocks of 32 weights along a row (GGML's Q5_0 block).

Stored as uint8 [rows, cols / 32 * 22]: block b of row r (weights w[r, 32b : 32b + 32]) is 22
bytes, f16 d (little-endian), 4 bytes qh (a little-endian u32, bit j the fifth bit of code j),
then 16 code bytes, byte j = (q_j & 15) | (q_(j+16) & 15) << 4; w = d (q - 16), q in 0..31.
cols must be a multiple of 32. The C++ side of the same layout is cpp/weights/types.h.

The encoder is GGML's quantize_row_q5_0 rule (d from the block's largest |w|, codes rounded half
up), so a block that a Q5_0 file dequantized comes back bit-exactly: the converter keeps a
Q5_0 tensor of a GGUF as it was.
"""

from __future__ import annotations

import numpy as np

from .q4 import Q4_GROUP, block_matrix, split_blocks

Q5_BLOCK_BYTES = 22   # f16 d, u32 qh, 16 bytes of low code nibbles


def quantize_q5(w: np.ndarray) -> np.ndarray:
    """5-bit per block of 32 weights along each row: uint8 [rows, cols / 32 * 22] (the layout is
    in this module's docstring). As GGML's quantize_row_q5_0: per block, m = the weight of
    largest |w| (the first one, with its sign), d = m / -16 (f32; stored as f16), then
    q = min(31, floor(w / d + 16.5)) with 1 / d computed in f32 (q = 16, w = 0, when d = 0).
    cols must be a multiple of 32; |w| must fit f16 (65504)."""
    w32 = block_matrix(w, "q5")
    rows = w32.shape[0]
    g = w32.reshape(-1, Q4_GROUP)
    m = g[np.arange(g.shape[0]), np.argmax(np.abs(g), axis=1)]
    d = m / np.float32(-16.0)
    inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d != 0)
    # GGML: (int8_t)(x * id + 16.5f), a truncation, = floor here (the value is > 0).
    q = np.minimum(np.float32(31.0), np.floor(g * inv[:, None] + np.float32(16.5))).astype(np.uint32)
    out = np.empty((g.shape[0], Q5_BLOCK_BYTES), dtype=np.uint8)
    out[:, 0:2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    qh = ((q >> 4) << np.arange(Q4_GROUP, dtype=np.uint32)).sum(axis=1, dtype=np.uint32)
    out[:, 2:6] = qh.astype("<u4").view(np.uint8).reshape(-1, 4)
    out[:, 6:] = ((q[:, :16] & 15) | ((q[:, 16:] & 15) << 4)).astype(np.uint8)
    return out.reshape(rows, -1)


def dequantize_q5(blocks: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] of q5 blocks uint8 [rows, cols / 32 * 22]: w = d (q - 16)."""
    g, d = split_blocks(blocks, Q5_BLOCK_BYTES, "q5")
    rows = g.shape[0]
    qh = g[..., 2:6].copy().view("<u4")[..., 0]
    c = g[..., 6:]
    q = np.concatenate([c & 15, c >> 4], axis=2).astype(np.int32)
    q |= (((qh[..., None] >> np.arange(Q4_GROUP, dtype=np.uint32)) & 1) << 4).astype(np.int32)
    return (d[..., None] * (q - 16).astype(np.float32)).reshape(rows, -1)
