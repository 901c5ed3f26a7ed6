"""q4: 4-bit, asymmetric, in blocks of 32 weights along a row (GGML's Q4_1 block).

Stored as uint8 [rows, cols / 32 * 20]: block b of row r (weights w[r, 32b : 32b + 32]) is 20
bytes, f16 d, f16 m (little-endian), then 16 code bytes, byte j = q_j | q_(j+16) << 4; w ~ d q + m.
cols must be a multiple of 32. The C++ side of the same layout is cpp/weights/types.h.

Encoding is three steps, public so that other fits (convert/) can reuse them: `q4_fit` (d, m per
block by weighted least squares), `q4_stored_params` (d, m as the file stores them: f16) and
`q4_codes` (each weight's nearest level under the stored d, m), then `q4_pack`. `quantize_q4`
chains them for a whole matrix; `dequantize_q4` decodes.
"""

from __future__ import annotations

import numpy as np

Q4_GROUP = 32         # weights per block, along a row
Q4_BLOCK_BYTES = 20   # f16 d, f16 m, 16 bytes of codes
_F16_MAX = 65504.0


def block_matrix(w: np.ndarray, name: str) -> np.ndarray:
    """float32 w, checked for a block type `name` (q4, q5): 2-D, rows of a multiple of 32
    weights, |w| within the f16 range of the block parameters. ValueError otherwise."""
    w32 = np.asarray(w, dtype=np.float32)
    if w32.ndim != 2:
        raise ValueError(f"quantize_{name} wants a 2-D matrix, got shape {w32.shape}")
    if w32.shape[1] % Q4_GROUP:
        raise ValueError(f"{name} needs rows of a multiple of {Q4_GROUP} weights, got {w32.shape[1]}")
    if w32.size and np.max(np.abs(w32)) > _F16_MAX:
        raise ValueError(f"{name} cannot hold weights beyond the f16 range (|w| > 65504)")
    return w32


def q4_fit(g: np.ndarray, wt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d, m) float32 per block of g [n, 32]: the step and offset minimizing the weighted
    squared error sum wt (d c + m - w)^2 (wt [n, 32] > 0), best of a few code assignments. A
    candidate assigns c = clip(round((w - min) * k / (max - min)), 0, 15) for a span k, fits d, m
    to those codes by weighted least squares, and scores the fit by its residual
    sum wt w^2 - d sum wt c w - m sum wt w (exact for a least-squares fit). Integer spans 1..15
    refit exactly a block that a 4-bit format (Q4_K) quantized before; spans just past 15 trade
    a clipped extreme for a finer step. The first candidate is min/max (d = range / 15, m = min)."""
    lo, hi = g.min(axis=1), g.max(axis=1)
    rng = hi - lo
    inv = np.divide(np.float32(1.0), rng, out=np.zeros_like(rng), where=rng > 0)
    centered = g - lo[:, None]
    wg = wt * g
    s_w, s_x, s_xx = wt.sum(axis=1), wg.sum(axis=1), np.einsum("ij,ij->i", wg, g)
    best_d, best_m = rng / np.float32(15.0), lo.copy()
    r = np.clip(np.rint(centered * (np.float32(15.0) * inv)[:, None]), 0.0, 15.0)
    r = r * best_d[:, None] + best_m[:, None] - g
    best = np.einsum("ij,ij->i", wt * r, r)
    for span in (*range(1, 15), 15.25, 15.5, 15.75, 16.0, 16.5):
        c = np.clip(np.rint(centered * (np.float32(span) * inv)[:, None]), 0.0, 15.0)
        wc = wt * c
        s_c, s_cc, s_cx = wc.sum(axis=1), np.einsum("ij,ij->i", wc, c), np.einsum("ij,ij->i", wc, g)
        det = s_w * s_cc - s_c * s_c
        ok = det > 0
        det = np.where(ok, det, np.float32(1.0))
        d = (s_w * s_cx - s_c * s_x) / det
        m = (s_cc * s_x - s_c * s_cx) / det
        e = s_xx - d * s_cx - m * s_x
        better = ok & (d > 0) & (e < best)
        best = np.where(better, e, best)
        best_d, best_m = np.where(better, d, best_d), np.where(better, m, best_m)
    return best_d.astype(np.float32), best_m.astype(np.float32)


def q4_stored_params(d: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d and m [n] as a block stores them: rounded to f16 (nearest even), as float32 values."""
    return (np.asarray(d, np.float32).astype(np.float16).astype(np.float32),
            np.asarray(m, np.float32).astype(np.float16).astype(np.float32))


def q4_codes(g: np.ndarray, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """uint8 codes [n, 32] of g [n, 32] under stored d, m [n] (`q4_stored_params`):
    q = clip(round_half_even((w - m) / d), 0, 15), the level nearest each weight (0 where
    d == 0)."""
    q = np.zeros(g.shape, dtype=np.float32)
    np.divide(g - m[:, None], d[:, None], out=q, where=d[:, None] > 0)
    np.rint(q, out=q)
    np.clip(q, 0.0, 15.0, out=q)
    return q.astype(np.uint8)


def q4_pack(d: np.ndarray, m: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Blocks uint8 [n, 20] of stored d, m [n] (exact in f16) and codes [n, 32] (0..15)."""
    out = np.empty((codes.shape[0], Q4_BLOCK_BYTES), dtype=np.uint8)
    out[:, 0:2] = np.asarray(d).astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:4] = np.asarray(m).astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 4:] = codes[:, :16] | (codes[:, 16:] << 4)
    return out


def q4_encode(g: np.ndarray, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Blocks uint8 [n, 20] of g [n, 32] with fitted d, m [n] (`q4_fit`): the params rounded to
    f16 (`q4_stored_params`), then each weight's nearest level under them (`q4_codes`)."""
    sd, sm = q4_stored_params(d, m)
    return q4_pack(sd, sm, q4_codes(g, sd, sm))


def quantize_q4(w: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    """4-bit, asymmetric, per block of 32 weights along each row: uint8 [rows, cols / 32 * 20]
    (the layout is in this module's docstring). d and m are a least-squares fit (`q4_fit`),
    stored as f16; with the stored values the codes are q = clip(round_half_even((w - m) / d),
    0, 15) (0 when d == 0): round to nearest, the level nearest each weight. importance:
    optional [cols] >= 0, how much an error in each column costs (e.g. the mean square of the
    inputs that column multiplies); the fit then weighs column c by
    importance[c] / mean(importance) + 1e-3 (the floor keeps every weight in play).
    cols must be a multiple of 32; |w| must fit f16 (65504).
    """
    w32 = block_matrix(w, "q4")
    rows, cols = w32.shape
    g = w32.reshape(-1, Q4_GROUP)
    if importance is None:
        wt = np.ones_like(g)
    else:
        imp = np.asarray(importance, dtype=np.float64)
        if imp.shape != (cols,) or not np.all(np.isfinite(imp)) or np.any(imp < 0):
            raise ValueError(f"q4 importance must be {cols} finite values >= 0")
        imp = imp / max(float(imp.mean()), 1e-30) + 1e-3
        wt = np.broadcast_to(imp.astype(np.float32).reshape(1, -1, Q4_GROUP),
                             (rows, cols // Q4_GROUP, Q4_GROUP)).reshape(-1, Q4_GROUP)
    return q4_encode(g, *q4_fit(g, wt)).reshape(rows, -1)


def split_blocks(blocks: np.ndarray, block_bytes: int, name: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(blocks uint8 [rows, n, block_bytes], each block's leading f16 d as float32 [rows, n])
    of a block type's rows uint8 [rows, n * block_bytes]; ValueError for another shape."""
    b = np.asarray(blocks, dtype=np.uint8)
    if b.ndim != 2 or b.shape[1] % block_bytes:
        raise ValueError(f"{name} blocks are uint8 [rows, k * {block_bytes}], got {b.shape}")
    g = np.ascontiguousarray(b).reshape(b.shape[0], -1, block_bytes)
    return g, g[..., 0:2].copy().view("<f2")[..., 0].astype(np.float32)


def dequantize_q4(blocks: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] of q4 blocks uint8 [rows, cols / 32 * 20]: w = d * q + m."""
    g, d = split_blocks(blocks, Q4_BLOCK_BYTES, "q4")
    rows = g.shape[0]
    m = g[..., 2:4].copy().view("<f2")[..., 0].astype(np.float32)
    c = g[..., 4:]
    q = np.concatenate([c & 15, c >> 4], axis=2).astype(np.float32)
    return (d[..., None] * q + m[..., None]).reshape(rows, -1)
