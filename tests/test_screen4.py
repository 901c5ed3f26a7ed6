"""screen4, the LM-head screen's layout (python/spark_infer/weights/screen4.py): the encoder,
decoder and decode product against the module docstring's definitions, written again here
with plain loops (byte and nibble positions, little-endian f32 scales, padding rows, the
nearest level, the least-squares fit of d) and a float64 brute force of the product."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from spark_infer.weights import (dequantize_screen4, quantize_screen4, screen4_fit,
                                 screen4_logits, screen4_quantize_x, screen4_shape)

LEVELS = np.arange(16) - 7.5          # a weight is d * (c - 7.5), c in 0..15


def parse(packed: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes int [rows + padding, cols], scales float [rows + padding, cols / 128]) read
    byte by byte from the docstring's layout."""
    G = cols // 128
    tiles = -(-rows // 4)
    assert packed.shape == (tiles, G * 272) and packed.dtype == np.uint8
    codes = np.zeros((tiles * 4, cols), np.int64)
    scales = np.zeros((tiles * 4, G), np.float64)
    for t in range(tiles):
        tile = packed[t].tobytes()
        for r in range(4):
            for g in range(G):
                base = (4 * g + r) * 64
                for j in range(64):
                    byte = tile[base + j]
                    codes[4 * t + r, 128 * g + j] = byte & 15
                    codes[4 * t + r, 128 * g + 64 + j] = byte >> 4
                off = 256 * G + (4 * g + r) * 4
                scales[4 * t + r, g] = struct.unpack("<f", tile[off:off + 4])[0]
    return codes, scales


def blocks_of(w: np.ndarray) -> np.ndarray:
    return w.reshape(w.shape[0], -1, 128)


def test_known_codes_and_scales_land_at_their_bytes():
    """Blocks whose weights sit on the levels of a power-of-two d, with codes 0 and 15 in each
    (so max |w| = 7.5 d): the fit keeps that d and those codes, and the bytes say so."""
    rng = np.random.default_rng(0)
    rows, cols = 6, 256                               # 2 tiles, the second half padding
    codes = rng.integers(0, 16, size=(rows, cols))
    codes[:, ::128], codes[:, 1::128] = 0, 15         # each block spans every level
    d = 2.0 ** rng.integers(-8, 2, size=(rows, cols // 128))
    w = (np.repeat(d, 128, axis=1) * LEVELS[codes]).astype(np.float32)
    packed = quantize_screen4(w)
    assert packed.shape == screen4_shape(rows, cols) == (2, 2 * 272)
    got_codes, got_d = parse(packed, rows, cols)
    np.testing.assert_array_equal(got_codes[:rows], codes)
    np.testing.assert_array_equal(got_d[:rows], d)
    # Padding rows 6, 7: codes 0 and scale 0, i.e. zero bytes.
    assert not got_codes[rows:].any() and not got_d[rows:].any()
    # One byte by hand: tile 1, row 1 (matrix row 5), block 1, byte 3.
    assert packed[1, (4 * 1 + 1) * 64 + 3] == codes[5, 128 + 3] | codes[5, 128 + 64 + 3] << 4
    assert packed[1, 256 * 2 + (4 * 1 + 1) * 4:][:4].tobytes() == struct.pack("<f", d[5, 1])
    np.testing.assert_array_equal(dequantize_screen4(packed, rows, cols), w)


def fit(block: np.ndarray, steps: int = 2) -> tuple[np.ndarray, np.float32]:
    """The docstring's fit of one block: d = max|w| / 7.5, then `steps` least-squares steps
    over the levels of the current nearest codes; the codes are those of the final f32 d."""
    def nearest(d):
        if d == 0:
            return np.zeros(128, np.int64)
        return np.abs(block[:, None] - float(d) * LEVELS[None, :]).argmin(axis=1)
    d = np.float32(np.abs(block).max() / 7.5)
    for _ in range(steps):
        lv = LEVELS[nearest(d)]
        d = np.float32(block @ lv / (lv @ lv)) if d > 0 else np.float32(0)
    return nearest(d), d


def test_fit_follows_the_docstring_on_gaussian_rows():
    rng = np.random.default_rng(1)
    rows, cols = 9, 384
    scale = rng.uniform(0.01, 3, size=(rows, 1))
    w = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    w[2, 128:256] *= 50                                  # an outlier block
    packed = quantize_screen4(w)
    codes, d = parse(packed, rows, cols)
    wb = blocks_of(w.astype(np.float64))
    for r in range(rows):
        for g in range(cols // 128):
            want_codes, want_d = fit(wb[r, g])
            assert d[r, g] == pytest.approx(float(want_d), rel=1e-6)
            # Each weight on the level nearest it, given the stored d.
            dist = np.abs(wb[r, g][:, None] - d[r, g] * LEVELS[None, :])
            chosen = dist[np.arange(128), codes[r, 128 * g:128 * (g + 1)]]
            assert np.all(chosen <= dist.min(axis=1) + 1e-12 * d[r, g])
            np.testing.assert_array_equal(codes[r, 128 * g:128 * (g + 1)], want_codes)
            # The fit's steps lower the block's squared error below the starting d's.
            d0 = np.float32(np.abs(wb[r, g]).max() / 7.5)
            err0 = np.sum((wb[r, g] - d0 * LEVELS[fit(wb[r, g], 0)[0]]) ** 2)
            err = np.sum((wb[r, g] - d[r, g] * LEVELS[codes[r, 128 * g:128 * (g + 1)]]) ** 2)
            assert err <= err0
    # The decoder gives d * (c - 7.5) of the stored codes and scales.
    want = (np.repeat(d, 128, axis=1) * LEVELS[codes])[:rows]
    np.testing.assert_array_equal(dequantize_screen4(packed, rows, cols), want.astype(np.float32))
    # screen4_fit on the blocks agrees with the bytes.
    c2, d2 = screen4_fit(blocks_of(w))
    np.testing.assert_array_equal(c2, codes[:rows].reshape(rows, -1, 128))
    np.testing.assert_array_equal(d2, d[:rows])


def test_zero_rows_and_blocks():
    w = np.zeros((3, 256), np.float32)
    w[1, 128:] = np.linspace(-1, 1, 128)
    packed = quantize_screen4(w)
    codes, d = parse(packed, 3, 256)
    assert d[0, 0] == d[0, 1] == d[1, 0] == d[2, 0] == 0 and d[1, 1] > 0
    assert not codes[0].any() and not codes[2].any() and not codes[1, :128].any()
    back = dequantize_screen4(packed, 3, 256)
    assert not back[0].any() and not back[2].any() and not back[1, :128].any()
    # A zero row scores 0 against any x.
    s = screen4_logits(packed, 3, 256, np.random.default_rng(2).standard_normal(256))
    assert s[0] == 0 and s[2] == 0 and s[1] != 0


def brute_logits(packed, rows, cols, x):
    """float64 s_v = (a / 127) * sum_j d_vj (c_vj - 7.5) q_j, x quantized per row in f32."""
    codes, d = parse(packed, rows, cols)
    w = (np.repeat(d, 128, axis=1) * LEVELS[codes])[:rows]
    x = np.atleast_2d(np.asarray(x, np.float32))
    out = np.zeros((x.shape[0], rows))
    for i, xi in enumerate(x):
        a = np.abs(xi).max()
        if a == 0:
            continue
        q = np.rint(xi * (np.float32(127) / a)).astype(np.float64)   # ties to even
        assert np.abs(q).max() <= 127
        out[i] = float(a / np.float32(127)) * (w @ q)
    return out


def test_logits_match_the_brute_force_per_row():
    rng = np.random.default_rng(3)
    rows, cols = 13, 256
    packed = quantize_screen4(rng.standard_normal((rows, cols)).astype(np.float32))
    x = rng.standard_normal((5, cols)).astype(np.float32) * np.array([[1e-3], [1], [30], [1], [1]],
                                                                     np.float32)
    x[3] = 0                                              # x == 0 scores 0
    x[4, 7] = 1e3                                         # one large entry: the rest round to 0
    want = brute_logits(packed, rows, cols, x)
    got = screen4_logits(packed, rows, cols, x)
    assert got.shape == (5, rows)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    assert not got[3].any()
    # Each row is quantized on its own: the rows of a batch score as they do alone.
    for i in range(5):
        np.testing.assert_array_equal(screen4_logits(packed, rows, cols, x[i]), got[i])
    # The product is of the 4-bit weights, not of the float ones it came from.
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    s = screen4_logits(quantize_screen4(w), rows, cols, x[1])
    assert np.abs(s - w @ x[1]).max() > 1e-3 * np.abs(w @ x[1]).max()


def test_x_quantized_per_row_nearest_ties_to_even():
    x = np.array([[127, 0.5, 1.5, 2.5, -0.5, -1.5, -127, 63.5] + [0] * 120,
                  [0] * 128], np.float32)
    q, step = screen4_quantize_x(x)
    assert q.dtype == np.int8 and step.dtype == np.float32
    assert list(q[0, :8]) == [127, 0, 2, 2, 0, -2, -127, 64]
    assert step[0] == np.float32(1) and step[1] == 0 and not q[1].any()


@pytest.mark.parametrize("shape", [(4, 64), (4, 200), (0, 128), (128,), (2, 2, 128)])
def test_bad_shapes_are_refused(shape):
    with pytest.raises(ValueError, match="screen4"):
        quantize_screen4(np.ones(shape, np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(bad):
    w = np.ones((5, 128), np.float32)
    w[4, 100] = bad
    with pytest.raises(ValueError, match="finite"):
        quantize_screen4(w)


def test_wrong_stored_shapes_are_refused():
    packed = quantize_screen4(np.ones((5, 128), np.float32))
    assert screen4_shape(5, 128) == (2, 272) and screen4_shape(8, 256) == (2, 544)
    for rows, cols in ((9, 128), (5, 256), (5, 100)):
        with pytest.raises(ValueError, match="screen4"):
            dequantize_screen4(packed, rows, cols)
        with pytest.raises(ValueError, match="screen4"):
            screen4_logits(packed, rows, cols, np.ones(cols, np.float32))
    with pytest.raises(ValueError, match="screen4"):
        dequantize_screen4(packed[:, :-1], 5, 128)
