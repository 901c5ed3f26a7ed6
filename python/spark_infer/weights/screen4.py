"""screen4: the LM-head screen's layout (docs/engine-file.md, "The screened LM head").

The screen only has to find the few logits near the top, which the head then recomputes
exactly, so it trades accuracy for bytes and arithmetic: 4-bit symmetric codes in blocks of 128
weights along a row with one f32 scale each (4.25 bits a weight), the rows of each group of 4
interleaved block by block so the decode kernel reads one contiguous stream per 4 rows.

Layout, for a [rows, cols] matrix (cols % 128 == 0): uint8 [ceil(rows / 4), G * 272], G =
cols / 128. Row t of it (a tile) holds matrix rows 4t .. 4t + 3; rows past `rows` are padding
(codes 0, scale 0). In a tile:
- bytes [(4 g + r) * 64, +64): block g of tile row r; byte j holds the code of column
  128 g + j in its low nibble and of column 128 g + 64 + j in its high nibble;
- bytes [256 G + (4 g + r) * 4, +4): that block's scale d, f32 little-endian.
A weight is d * (c - 7.5), c in 0..15: sixteen levels symmetric about 0, no zero level.

The decode product (the engine's kernel, `screen4_logits` here) meets x quantized to int8 per
row: a = max|x|, q = rint(x * (127 / a)) (nearest, ties to even; 0 when a == 0), and
    s_v = (a / 127) * sum_g d_vg * (c_vg . q_g - 7.5 * sum(q_g)).
"""

from __future__ import annotations

import numpy as np

SCREEN_GROUP = 128   # weights per block along a row
SCREEN_ROWS = 4      # rows per tile
SCREEN_BLOCK_BYTES = SCREEN_GROUP // 2 * SCREEN_ROWS + 4 * SCREEN_ROWS   # 272 per block of 4 rows
_FIT_STEPS = 2


def screen4_shape(rows: int, cols: int) -> tuple[int, int]:
    """The stored shape of a [rows, cols] matrix; ValueError if cols % 128 != 0."""
    if cols % SCREEN_GROUP or cols <= 0 or rows <= 0:
        raise ValueError(f"screen4 needs rows > 0 and cols a positive multiple of {SCREEN_GROUP}, "
                         f"got [{rows}, {cols}]")
    return (rows + SCREEN_ROWS - 1) // SCREEN_ROWS, cols // SCREEN_GROUP * SCREEN_BLOCK_BYTES


def _codes(g: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The nearest level's code, c = clip(floor(w / d + 8), 0, 15) (0 where d == 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.floor(g / d[..., None] + 8.0)
    return np.where(d[..., None] > 0, np.clip(c, 0, 15), 0).astype(np.uint8)


def screen4_fit(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 [..., 128], scales float32 [...]) of blocks g [..., 128]: d starts at
    max|w| / 7.5 and takes _FIT_STEPS least-squares steps (d = sum(w l) / sum(l^2) over the
    levels l = c - 7.5 of the current codes); the codes are those of the final f32 d."""
    g = np.asarray(g, dtype=np.float64)
    d = (np.abs(g).max(axis=-1) / 7.5).astype(np.float32)
    for _ in range(_FIT_STEPS):
        lv = _codes(g, d).astype(np.float64) - 7.5
        num, den = (g * lv).sum(axis=-1), (lv * lv).sum(axis=-1)
        d = np.where(d > 0, num / np.where(den > 0, den, 1.0), 0.0).astype(np.float32)
        d = np.maximum(d, 0)   # lv and g share signs, so num >= 0; guard rounding anyway
    return _codes(g, d), d


def quantize_screen4(w: np.ndarray) -> np.ndarray:
    """The screen4 layout (this module's docstring) of a float matrix w [rows, cols]."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"screen4 needs a matrix, got shape {w.shape}")
    rows, cols = w.shape
    tiles, tile_bytes = screen4_shape(rows, cols)
    if not np.all(np.isfinite(w)):
        raise ValueError("screen4 needs finite weights")
    G = cols // SCREEN_GROUP
    padded = np.zeros((tiles * SCREEN_ROWS, cols), dtype=np.float32)
    padded[:rows] = w
    codes, d = screen4_fit(padded.reshape(tiles, SCREEN_ROWS, G, SCREEN_GROUP))
    half = SCREEN_GROUP // 2
    packed = (codes[..., :half] | (codes[..., half:] << 4)).astype(np.uint8)   # [t, r, g, 64]
    out = np.empty((tiles, tile_bytes), dtype=np.uint8)
    out[:, :G * 256] = packed.transpose(0, 2, 1, 3).reshape(tiles, G * 256)
    out[:, G * 256:] = d.transpose(0, 2, 1).astype("<f4").reshape(tiles, -1).view(np.uint8)
    return out


def _unpack(packed: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 [rows, G, 128], scales float32 [rows, G]) of a stored screen4 matrix."""
    p = np.asarray(packed, dtype=np.uint8)
    tiles, tile_bytes = screen4_shape(rows, cols)
    if p.shape != (tiles, tile_bytes):
        raise ValueError(f"screen4 [{rows}, {cols}] is stored as uint8 {(tiles, tile_bytes)}, "
                         f"got {p.dtype} {p.shape}")
    G = cols // SCREEN_GROUP
    b = p[:, :G * 256].reshape(tiles, G, SCREEN_ROWS, 64).transpose(0, 2, 1, 3)
    codes = np.concatenate([b & 15, b >> 4], axis=-1).reshape(tiles * SCREEN_ROWS, G, SCREEN_GROUP)
    d = np.ascontiguousarray(p[:, G * 256:]).view("<f4").reshape(tiles, G, SCREEN_ROWS)
    d = d.transpose(0, 2, 1).reshape(tiles * SCREEN_ROWS, G).astype(np.float32)
    return codes[:rows], d[:rows]


def dequantize_screen4(packed: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """float32 [rows, cols]: d * (c - 7.5) of every weight."""
    codes, d = _unpack(packed, rows, cols)
    return ((codes.astype(np.float32) - 7.5) * d[..., None]).reshape(rows, cols)


def screen4_quantize_x(x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """(q int8 [..., cols], step a / 127 float32 [...]) of x, per row as the kernel does."""
    x = np.asarray(x, dtype=np.float32)
    a = np.abs(x).max(axis=-1)
    with np.errstate(divide="ignore"):
        inv = np.where(a > 0, np.float32(127) / a, np.float32(0)).astype(np.float32)
    q = np.rint(x * inv[..., None]).astype(np.int8)
    return q, (a / np.float32(127)).astype(np.float32)


def screen4_logits(packed: np.ndarray, rows: int, cols: int, x: np.ndarray) -> np.ndarray:
    """The decode product s [..., rows] of x [..., cols] (f64 sums of the exact integer dots)."""
    codes, d = _unpack(packed, rows, cols)
    q, step = screen4_quantize_x(x)
    G = cols // SCREEN_GROUP
    qg = q.astype(np.float32).reshape(*q.shape[:-1], G, SCREEN_GROUP)
    s = np.zeros((*q.shape[:-1], rows), dtype=np.float64)
    for g in range(G):   # integer dots, exact in f32 (|c . q| <= 128 * 15 * 127 < 2^24)
        dot = qg[..., g, :] @ codes[:, g, :].astype(np.float32).T
        corr = dot.astype(np.float64) - 7.5 * qg[..., g, :].sum(axis=-1, keepdims=True)
        s += corr * d[:, g].astype(np.float64)
    return step[..., None].astype(np.float64) * s
