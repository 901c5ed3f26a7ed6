"""The weight types (spark_infer.weights): each type's encoder against an independent reference
(bf16: float64 nearest-even and ml_dtypes; int8: its error bound; q4: gguf's Q4_1 decoder and a
brute-force nearest level), and the stored-shape rules. The engine file's use of them is
test_fileformat.py; the kernels' decoding of the same layouts, test_kernels*.py."""

import ml_dtypes
import numpy as np
import pytest

from spark_infer.weights import (
    DTYPES, ST_DTYPE, bf16_to_f32, decode, dequantize_int8, dequantize_q4, dequantize_q5,
    f32_to_bf16, logical_shape, q4_codes, q4_pack, quantize_int8, quantize_q4, quantize_q5,
    stored_shape, stored_type)


# ------------------------------------------------------------------------------ bf16

def bf16_nearest_even_f64(x32: np.ndarray) -> np.ndarray:
    """Independent bf16 rounding: pick the nearer of the two neighbouring bf16 values in float64
    arithmetic, the even one on a tie (finite, non-NaN inputs)."""
    bits = x32.view(np.uint32)
    lo = (bits >> 16).astype(np.uint32)                     # truncation toward zero
    hi = lo + 1                                             # next bf16 away from zero
    v = x32.astype(np.float64)
    v_lo = (lo << 16).view(np.float32).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        v_hi = (hi << 16).view(np.float32).astype(np.float64)
        d_lo, d_hi = np.abs(v - v_lo), np.abs(v_hi - v)
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (lo % 2 == 1))
    return np.where(pick_hi, hi, lo).astype(np.uint16)


def test_bf16_matches_float64_nearest_even_on_random_bits():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x)]
    # Keep values whose upper neighbour is finite: the inf case is tested below.
    x = x[np.abs(x) < np.float32(3.38e38)]
    np.testing.assert_array_equal(f32_to_bf16(x), bf16_nearest_even_f64(x))
    np.testing.assert_array_equal(f32_to_bf16(x), x.astype(ml_dtypes.bfloat16).view(np.uint16))


def test_bf16_ties_go_to_even():
    # Exactly halfway values: kept part even -> truncate, odd -> round up.
    kept = np.array([0x3F80, 0x3F81, 0xBF80, 0xBF81, 0x0000, 0x0001, 0x7F7E], dtype=np.uint32)
    x = ((kept << 16) | 0x8000).view(np.float32)
    expect = np.array([0x3F80, 0x3F82, 0xBF80, 0xBF82, 0x0000, 0x0002, 0x7F7E], dtype=np.uint16)
    np.testing.assert_array_equal(f32_to_bf16(x), expect)
    np.testing.assert_array_equal(bf16_nearest_even_f64(x), expect)
    # Just above / below halfway.
    above = ((kept << 16) | 0x8001).view(np.float32)
    below = ((kept << 16) | 0x7FFF).view(np.float32)
    np.testing.assert_array_equal(f32_to_bf16(above), (kept + 1).astype(np.uint16))
    np.testing.assert_array_equal(f32_to_bf16(below), kept.astype(np.uint16))


def test_bf16_specials():
    x = np.array([np.inf, -np.inf, 0.0, -0.0, np.float32(3.4e38), 1e-45, 1.0, -2.5],
                 dtype=np.float32)
    b = f32_to_bf16(x)
    assert b[0] == 0x7F80 and b[1] == 0xFF80
    assert b[2] == 0x0000 and b[3] == 0x8000
    assert b[4] == 0x7F80              # past the largest bf16 (~3.39e38): rounds to inf
    assert b[5] == 0x0000              # smallest f32 subnormal rounds to +0
    assert bf16_to_f32(b[6:]).tolist() == [1.0, -2.5]
    nans = np.array([0x7FC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF], np.uint32).view(np.float32)
    out = f32_to_bf16(nans)
    assert np.all(np.isnan(bf16_to_f32(out)))
    assert out[2] & 0x8000              # sign kept
    assert out.dtype == np.uint16


# ------------------------------------------------------------------------------ int8

def test_int8_quantization_error_bound():
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((33, 77)) * rng.uniform(0.01, 10, (33, 1))).astype(np.float32)
    w[5] = 0.0
    w[6, 3] = -40.0                      # a row whose max is negative
    q, scale = quantize_int8(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (33,)
    np.testing.assert_array_equal(scale, (np.abs(w).max(axis=1) / np.float32(127)))
    assert scale[5] == 0 and np.all(q[5] == 0)
    assert np.abs(q).max() == 127 and q.min() >= -127
    assert q[6, 3] == -127
    err = np.abs(dequantize_int8(q, scale).astype(np.float64) - w)
    # Half a step plus f32 rounding of w / scale and of scale * q.
    bound = scale[:, None].astype(np.float64) * (0.5 + 1e-5)
    assert np.all(err <= bound)


# ------------------------------------------------------------------------------ q4

def test_q4_layout_is_q4_1_and_rounds_to_nearest():
    from gguf.quants import GGMLQuantizationType, dequantize

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((33, 96)) * rng.uniform(0.01, 10, (33, 1))).astype(np.float32)
    w[5] = 0.0                            # a zero row: d = 0, every code 0
    w[6, 32:64] = -1.5                    # a constant block
    w[7, :32] = rng.uniform(3.0, 4.0, 32)  # a block with a positive minimum
    b = quantize_q4(w)
    assert b.dtype == np.uint8 and b.shape == (33, 3 * 20)
    deq = dequantize_q4(b)
    # gguf's Q4_1 reads the same bytes the same way (an independent decoder of the layout).
    np.testing.assert_array_equal(
        dequantize(b.reshape(-1), GGMLQuantizationType.Q4_1).reshape(w.shape), deq)
    blocks = b.reshape(33, 3, 20)
    d = blocks[..., 0:2].copy().view("<f2")[..., 0].astype(np.float64)
    m = blocks[..., 2:4].copy().view("<f2")[..., 0].astype(np.float64)
    g = w.reshape(33, 3, 32).astype(np.float64)
    assert np.all(deq[5] == 0) and np.all(deq[6, 32:64] == np.float16(-1.5))
    # Codes: the nearest of the 16 levels d q + m of the stored d, m (up to f32 rounding).
    levels = d[..., None, None] * np.arange(16) + m[..., None, None]      # [33, 3, 1, 16]
    best = np.abs(g[..., None] - levels).min(axis=3)
    err = np.abs(deq.reshape(33, 3, 32).astype(np.float64) - g)
    assert np.all(err <= best + 1e-6 * (np.abs(g) + 1))
    # Parameters: no worse than min/max (d = range / 15, m = min) per block, up to f16 rounding.
    lo, span = g.min(axis=2), g.max(axis=2) - g.min(axis=2)
    mm = lo[..., None] + span[..., None] / 15 * np.clip(
        np.rint((g - lo[..., None]) / np.where(span > 0, span / 15, 1)[..., None]), 0, 15)
    sse, sse_minmax = (err ** 2).sum(axis=2), ((mm - g) ** 2).sum(axis=2)
    assert np.all(sse <= sse_minmax * (1 + 2e-3) + 1e-3 * (span / 15) ** 2 * 32)
    assert sse.sum() < 0.95 * sse_minmax.sum()


def test_q4_refits_blocks_already_on_a_4_bit_grid():
    # Values d q + m with codes spanning fewer than 16 levels (as in a Q4_K sub-block): found
    # again up to the f16 rounding of d and m.
    rng = np.random.default_rng(4)
    d = rng.uniform(0.001, 0.05, (64, 1)).astype(np.float32)
    m = rng.uniform(-0.5, 0.5, (64, 1)).astype(np.float32)
    q = np.stack([rng.integers(lo, lo + span + 1, 32) for lo, span in
                  zip(rng.integers(0, 4, 64), rng.integers(5, 12, 64))])
    q[:, 0] = q.min(axis=1)
    x = d * q + m
    err = np.abs(dequantize_q4(quantize_q4(x)) - x)
    assert np.all(err <= 2.0**-11 * (np.abs(d) * 15 + np.abs(m)) * 2)


def test_q4_importance_weighs_the_fit():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    np.testing.assert_array_equal(quantize_q4(w, np.full(64, 3.0)), quantize_q4(w))
    imp = rng.uniform(0, 1, 64) ** 4          # a few columns matter much more than the rest
    cost = lambda b: float((((dequantize_q4(b) - w) ** 2) * imp).sum())  # noqa: E731
    assert cost(quantize_q4(w, imp)) < cost(quantize_q4(w))
    for bad in (np.ones(63), np.full(64, np.nan), -np.ones(64)):
        with pytest.raises(ValueError, match="importance"):
            quantize_q4(w, bad)


# ------------------------------------------------------------------------------ q4 steps

def test_q4_codes_pick_the_nearest_level():
    rng = np.random.default_rng(6)
    g = rng.standard_normal((200, 32)).astype(np.float32) * 3
    d = rng.uniform(0.05, 0.6, 200).astype(np.float16).astype(np.float32)
    m = rng.uniform(-4.0, 0.0, 200).astype(np.float16).astype(np.float32)
    d[7] = 0.0                                # no step: every code 0
    c = q4_codes(g, d, m)
    assert c.dtype == np.uint8 and c.shape == (200, 32) and c.max() <= 15
    assert np.all(c[7] == 0)
    levels = d[:, None, None].astype(np.float64) * np.arange(16) + m[:, None, None]
    dist = np.abs(g[..., None].astype(np.float64) - levels)            # [200, 32, 16]
    chosen = np.take_along_axis(dist, c[..., None].astype(np.intp), axis=2)[..., 0]
    ok = np.arange(200) != 7
    assert np.all(chosen[ok] <= dist[ok].min(axis=2) + 1e-6 * (np.abs(g[ok]) + 1))


def test_q4_pack_is_q4_1():
    from gguf.quants import GGMLQuantizationType, dequantize

    rng = np.random.default_rng(7)
    codes = rng.integers(0, 16, (50, 32)).astype(np.uint8)
    d = rng.uniform(0.01, 0.3, 50).astype(np.float16).astype(np.float32)
    m = rng.uniform(-2.0, 1.0, 50).astype(np.float16).astype(np.float32)
    b = q4_pack(d, m, codes)
    assert b.dtype == np.uint8 and b.shape == (50, 20)
    want = d[:, None].astype(np.float64) * codes + m[:, None]
    np.testing.assert_allclose(dequantize(b.reshape(-1), GGMLQuantizationType.Q4_1).reshape(50, 32),
                               want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dequantize_q4(b), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stored_shape_holds_the_matrix(dtype):
    shape = stored_shape((5, 96), dtype)
    assert shape == {"q4": (5, 60), "q5": (5, 66)}.get(dtype, (5, 96))
    assert logical_shape(shape, dtype) == (5, 96)
    assert stored_type(ST_DTYPE[dtype], shape, 96) == dtype


def test_stored_type_refuses_other_row_bytes():
    with pytest.raises(ValueError, match="neither q4 nor q5"):
        stored_type("U8", (5, 64), 96)
    with pytest.raises(ValueError, match="neither q4 nor q5"):
        stored_type("U8", (5, 60), 95)


# ------------------------------------------------------------------------------------ q5
# GGML's Q5_0 block (docs/engine-file.md): f16 d, u32 qh (bit j: fifth bit of code j), 16 bytes
# of low nibbles; w = d (q - 16). gguf's numpy dequantizer is the independent decoder.


def q5_blocks_from_codes(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Blocks uint8 [n, 22] packed from d [n] (f16 values) and codes q [n, 32] in 0..31."""
    q = q.astype(np.uint32)
    out = np.empty((len(d), 22), np.uint8)
    out[:, 0:2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:6] = ((q >> 4) << np.arange(32, dtype=np.uint32)).sum(1, dtype=np.uint32) \
        .astype("<u4").view(np.uint8).reshape(-1, 4)
    out[:, 6:] = (q[:, :16] & 15) | ((q[:, 16:] & 15) << 4)
    return out


def test_q5_decoder_matches_gguf():
    from gguf.quants import GGMLQuantizationType, dequantize

    rng = np.random.default_rng(5)
    d = rng.uniform(-0.3, 0.3, 64).astype(np.float16)
    q = rng.integers(0, 32, (64, 32))
    b = q5_blocks_from_codes(d, q)
    want = d.astype(np.float64)[:, None] * (q - 16)
    np.testing.assert_array_equal(dequantize(b.reshape(-1), GGMLQuantizationType.Q5_0)
                                  .reshape(64, 32), want)
    np.testing.assert_array_equal(dequantize_q5(b.reshape(2, -1)), want.reshape(2, -1))
    np.testing.assert_array_equal(decode(b.reshape(2, -1, 22)), want.reshape(2, -1))


def test_q5_encoder_follows_the_ggml_rule():
    """quantize_q5 against the rule written out per block: d = (the first weight of largest
    |w|) / -16, q = min(31, floor(w / d + 16.5)) (x * (1 / d) in f32, as GGML), and its blocks
    decode (by gguf) to within d / 2 of each weight (d / 1 at the clipped top code)."""
    from gguf.quants import GGMLQuantizationType, dequantize

    rng = np.random.default_rng(6)
    w = (rng.standard_normal((8, 256)) * rng.uniform(0.01, 3, (8, 1))).astype(np.float32)
    w[0, :32] = 0.0                      # an all-zero block: d = 0, codes 16
    w[1, 3] = -np.abs(w[1, :32]).max() - 1  # a negative extreme: d > 0
    b = quantize_q5(w)
    assert b.shape == (8, 8 * 22) and b.dtype == np.uint8
    for r in range(8):
        for k in range(8):
            g = w[r, 32 * k:32 * k + 32]
            m = g[int(np.argmax(np.abs(g)))]
            d = np.float32(m / np.float32(-16))
            inv = np.float32(1) / d if d else np.float32(0)
            q = np.minimum(31, np.floor(g * inv + np.float32(16.5))).astype(np.int64)
            np.testing.assert_array_equal(b[r, 22 * k:22 * k + 22],
                                          q5_blocks_from_codes(np.array([d]), q[None])[0])
    back = dequantize(b.reshape(-1), GGMLQuantizationType.Q5_0).reshape(8, 256)
    dd = np.abs(np.repeat(b.reshape(8, 8, 22)[..., 0:2].copy().view("<f2")[..., 0]
                          .astype(np.float64), 32, axis=1))
    assert np.all(np.abs(back - w) <= dd * 1.0 + 1e-7)
    np.testing.assert_array_equal(dequantize_q5(b), back)
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q5(np.zeros((2, 40), np.float32))
    with pytest.raises(ValueError, match="f16 range"):
        quantize_q5(np.full((1, 32), 7e4, np.float32))


def test_q5_round_trip_is_exact_on_q5_values():
    """Weights that are a Q5_0 block's values (d (q - 16), f16 d, a code 0 at the largest |w|,
    as GGML's encoder always leaves one) come back as the same bytes."""
    rng = np.random.default_rng(7)
    d = rng.uniform(-0.3, 0.3, 200).astype(np.float16)
    q = rng.integers(0, 32, (200, 32))
    q[np.arange(200), rng.integers(0, 32, 200)] = 0
    b = q5_blocks_from_codes(d, q)
    w = dequantize_q5(b.reshape(1, -1)).reshape(200, 32)
    np.testing.assert_array_equal(quantize_q5(w.reshape(1, -1)).reshape(200, 22), b)


def test_kv_cache_bf16_rounding_equals_the_encoder():
    """The C++ rounding of the bf16 KV cache (weights/types.h) against the independent float64
    reference on random bit patterns, and against f32_to_bf16 on the specials and NaN payloads
    (which must stay NaN of their sign, not carry into inf or -0)."""
    from spark_infer import _core

    rng = np.random.default_rng(2)
    x = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    finite = x[np.isfinite(x) & (np.abs(x) < np.float32(3.38e38))]
    np.testing.assert_array_equal(_core.bf16_bits(finite), bf16_nearest_even_f64(finite))
    specials = np.concatenate([
        np.array([np.inf, -np.inf, 0.0, -0.0, 3.4e38, -3.4e38, 1e-45], np.float32),
        np.array([0x7FC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7F80FFFF],
                 np.uint32).view(np.float32)])
    got = _core.bf16_bits(specials)
    np.testing.assert_array_equal(got, f32_to_bf16(specials))
    nan = np.isnan(specials)
    assert np.all(np.isnan(bf16_to_f32(got[nan])))
    np.testing.assert_array_equal(got[nan] >> 15, specials[nan].view(np.uint32) >> 31)
