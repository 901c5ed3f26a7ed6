"""The chunk (CSR) Spark FFN kernels against numpy, on every SIMD target: for T tokens, the
active (token, neuron) pairs grouped by neuron; each weight row is used by all its tokens.
bf16 and int8 weights with T >= 2 take their input (x of K2, u of V) rounded to bf16, as the
chunk matmuls do (numpy: reference.round_x_bf16), on AVX3 with and without the AVX512_BF16
tile."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import bf16_modes, set_bf16
from spark_infer import _core
from spark_infer.reference import round_x_bf16
from spark_infer.weights import bf16_to_f32, f32_to_bf16, quantize_int8, dequantize_int8, \
    quantize_q4, quantize_q5


def weights(rng, rows, cols, dtype):
    """(w as the kernel takes it, scale or None, values float64, |values| float64 for the error
    bound). q4 is dequantized by gguf's Q4_1 (the same block layout), not by our code; its bound
    uses |d q| + |m| per weight (the kernels may sum d (q . x) and m sum(x) apart). q5 likewise,
    by gguf's Q5_0, with m = -16 d (|d q| + |m| <= |w| + 32 |d|), its blocks passed as
    [rows, cols / 32, 22] (the kernels' way to tell them from q4's)."""
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    if dtype == "f32":
        return w, None, w.astype(np.float64), np.abs(w.astype(np.float64))
    if dtype == "bf16":
        b = f32_to_bf16(w)
        v = bf16_to_f32(b).astype(np.float64)
        return b, None, v, np.abs(v)
    if dtype == "q4":
        from gguf.quants import GGMLQuantizationType, dequantize

        b = quantize_q4(w)
        v = dequantize(b.reshape(-1), GGMLQuantizationType.Q4_1).reshape(rows, cols)
        g = b.reshape(rows, -1, 20)
        m = np.abs(g[..., 2:4].copy().view("<f2")[..., 0].astype(np.float64))
        return b, None, v.astype(np.float64), np.abs(v) + 2 * np.repeat(m, 32, axis=1)
    if dtype == "q5":
        from gguf.quants import GGMLQuantizationType, dequantize

        b = quantize_q5(w)
        v = dequantize(b.reshape(-1), GGMLQuantizationType.Q5_0).reshape(rows, cols)
        g = b.reshape(rows, -1, 22)
        d = np.abs(g[..., 0:2].copy().view("<f2")[..., 0].astype(np.float64))
        return g, None, v.astype(np.float64), np.abs(v) + 32 * np.repeat(d, 32, axis=1)
    q, s = quantize_int8(w)
    v = dequantize_int8(q, s).astype(np.float64)
    return q, s, v, np.abs(v)


def csr(rng, rows, T, density, full_rows=()):
    """Random active pairs: (offsets [rows+1], tokens [nnz]) with tokens ascending per row;
    the neurons in full_rows are kept by every token."""
    active = rng.random((T, rows)) < density
    active[:, list(full_rows)] = True
    offsets = np.concatenate([[0], np.cumsum(active.sum(0))]).astype(np.int32)
    tokens = np.concatenate([np.nonzero(active[:, i])[0] for i in range(rows)] or [[]])
    return offsets, tokens.astype(np.int32), active


# Masked: (50, 1003, 64) gives rows with ~19 tokens (several register passes of 1-8 tokens)
# and a column tail. Sparse: 300 rows span several neuron blocks of the token-major walk, the
# last one partial; 1003 columns end in a partial panel, vector and scalar tails.
CASES_MASKED = [(d, r, c, t) for d in ("f32", "bf16", "int8")
                for r, c, t in [(1, 1, 1), (7, 63, 5), (130, 1000, 17), (64, 13, 64),
                                (50, 1003, 64), (130, 200, 64)]] + [
    (q, r, c, t) for q in ("q4", "q5") for r, c, t in [(1, 32, 1), (7, 64, 5), (130, 1056, 17),
                                                       (64, 96, 64), (50, 1056, 64)]]
CASES_SPARSE = [(d, r, c, t) for d in ("f32", "bf16", "int8")
                for r, c, t in [(1, 1, 1), (9, 63, 4), (200, 1000, 17), (64, 2304, 8),
                                (300, 1003, 33), (130, 200, 64)]] + [
    (q, r, c, t) for q in ("q4", "q5") for r, c, t in [(1, 32, 1), (9, 96, 4), (200, 1056, 17),
                                                       (64, 2304, 8), (300, 1056, 33)]]


def chunk_input(x, dtype, T):
    """x as the CSR kernels take it (float64): rounded to bf16 for bf16 / int8 weights in a
    chunk of 2 or more tokens."""
    return round_x_bf16(x) if dtype in ("bf16", "int8") and T > 1 else np.asarray(x, np.float64)


def poison(w, scale, unused, dtype):
    """w, scale with the rows no token uses made NaN (q4, q5: f16 NaN block parameters; int8:
    a NaN scale), so any read of them shows in the result."""
    w = w.copy()
    if dtype == "int8":
        scale = scale.copy()
        scale[unused] = np.nan
    elif dtype == "bf16":
        w[unused] = 0x7FC0
    else:
        w[unused] = np.nan if dtype == "f32" else 0xFF
    return w, scale


@pytest.mark.parametrize("dtype, rows, cols, T", CASES_MASKED)
def test_csr_masked_matmul(target, dtype, rows, cols, T):
    rng = np.random.default_rng(rows * 1000 + cols)
    w, scale, wd, wa = weights(rng, rows, cols, dtype)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    offsets, tokens, _ = csr(rng, rows, T, 0.3, full_rows=[rows // 2])
    w, scale = poison(w, scale, np.diff(offsets) == 0, dtype)
    row_of = np.repeat(np.arange(rows), np.diff(offsets))
    xc = chunk_input(x, dtype, T)
    expected = np.einsum("kc,kc->k", wd[row_of], xc[tokens])
    # f32 accumulation over `cols` terms: error <= cols * 2^-24 * sum |w x| (generous x4)
    bound = 4 * cols * 2.0**-24 * np.einsum("kc,kc->k", wa[row_of], np.abs(xc[tokens]))
    for mode in bf16_modes(target):
        set_bf16(mode)
        out = np.full(len(tokens) + 1, np.nan, np.float32)
        _core.csr_masked_matmul(w, x, offsets, tokens, out[:len(tokens)], scale=scale)
        assert np.all(np.abs(out[:len(tokens)] - expected) <= bound + 1e-30), mode
        assert np.isnan(out[-1])  # nothing written past the end
    set_bf16(None)


@pytest.mark.parametrize("dtype, rows, cols, T", CASES_SPARSE)
def test_csr_sparse_matmul(target, dtype, rows, cols, T):
    rng = np.random.default_rng(rows + cols)
    w, scale, wd, wa = weights(rng, rows, cols, dtype)
    offsets, tokens, active = csr(rng, rows, T, 0.2, full_rows=[rows - 1])
    u = rng.standard_normal(len(tokens)).astype(np.float32)
    # Rows no token uses must never be read: poison them.
    w, scale = poison(w, scale, np.diff(offsets) == 0, dtype)
    row_of = np.repeat(np.arange(rows), np.diff(offsets))
    uc = chunk_input(u, dtype, T)
    expected = np.zeros((T, cols))
    np.add.at(expected, tokens, uc[:, None] * wd[row_of])
    bound = 4 * rows * 2.0**-24 * (np.abs(uc)[:, None] * wa[row_of]).sum(0).max() + 1e-30
    for mode in bf16_modes(target):
        set_bf16(mode)
        out = np.full((T, cols), np.nan, np.float32)
        _core.csr_sparse_matmul(w, u, offsets, tokens, out, scale=scale)
        assert np.all(np.isfinite(out)), mode
        assert np.abs(out - expected).max() <= bound, mode
    set_bf16(None)


@pytest.mark.parametrize("kernel", ["masked", "sparse"])
def test_csr_bf16_rounds_the_input(kernel):
    """The chunk kernels of bf16 weights use x (u) rounded to bf16, not f32 x: with x between
    two bf16 values an f32 result would be off by far more than its rounding bound."""
    rows, cols, T = 3, 64, 2
    w = f32_to_bf16(np.ones((rows, cols), np.float32))
    offsets = np.array([0, 2, 2, 4], np.int32)   # neuron 1 is kept by no token
    tokens = np.array([0, 1, 0, 1], np.int32)
    x = np.full((T, cols), 1 + 2.0**-10, np.float32)  # bf16: 1
    if kernel == "masked":
        out = np.empty(4, np.float32)
        _core.csr_masked_matmul(w, x, offsets, tokens, out)
        np.testing.assert_array_equal(out, np.full(4, cols, np.float32))
    else:
        out = np.empty((T, cols), np.float32)
        _core.csr_sparse_matmul(w, x[0, :4].copy(), offsets, tokens, out)
        np.testing.assert_array_equal(out, np.full((T, cols), 2, np.float32))


def test_csr_bad_input():
    w = np.zeros((4, 8), np.float32)
    x = np.zeros((3, 8), np.float32)
    out = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="offsets"):
        _core.csr_masked_matmul(w, x, np.array([0, 1, 2, 2, 1], np.int32),
                                np.array([0, 1], np.int32), out)
    with pytest.raises(IndexError):
        _core.csr_masked_matmul(w, x, np.array([0, 1, 2, 2, 2], np.int32),
                                np.array([0, 3], np.int32), out)
    with pytest.raises(TypeError):
        _core.csr_masked_matmul(w, x, np.array([0, 1, 2, 2, 2], np.int64),
                                np.array([0, 1], np.int32), out)


@pytest.mark.parametrize("offset", [0, 2, 16, 62])
def test_csr_sparse_matmul_any_row_alignment(target, offset):
    """bf16 rows of whole cache lines starting at any even byte (engine files align a tensor to
    its element size only): the tiles' column grid follows the rows' alignment, every column
    is still computed once."""
    rng = np.random.default_rng(offset)
    rows, cols, T = 40, 320, 9
    w, _, wd, wa = weights(rng, rows, cols, "bf16")
    buf = np.zeros(rows * cols + 64, np.uint16)
    start = (-buf.ctypes.data % 64 + offset) // 2
    wb = buf[start:start + rows * cols].reshape(rows, cols)
    wb[:] = w
    assert wb.ctypes.data % 64 == offset
    offsets, tokens, _ = csr(rng, rows, T, 0.3, full_rows=[0])
    u = rng.standard_normal(len(tokens)).astype(np.float32)
    row_of = np.repeat(np.arange(rows), np.diff(offsets))
    uc = round_x_bf16(u)
    expected = np.zeros((T, cols))
    np.add.at(expected, tokens, uc[:, None] * wd[row_of])
    bound = 4 * rows * 2.0**-24 * (np.abs(uc)[:, None] * wa[row_of]).sum(0).max()
    for mode in bf16_modes(target):
        set_bf16(mode)
        out = np.full((T, cols), np.nan, np.float32)
        _core.csr_sparse_matmul(wb, u, offsets, tokens, out)
        assert np.abs(out - expected).max() <= bound, mode
    set_bf16(None)


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_csr_kernels_do_not_depend_on_the_thread_count(target, dtype):
    """Threads split V's columns on the tiles' grid (and K2's neurons): 1, 2 and 3 threads give
    bit-identical results, rows starting off a cache line included."""
    rng = np.random.default_rng(3)
    rows, cols, T = 150, 1280, 33
    w, scale, _, _ = weights(rng, rows, cols, dtype)
    buf = np.zeros(rows * cols + 64, w.dtype)
    start = (-buf.ctypes.data % 64 + 16) // w.itemsize
    wb = buf[start:start + rows * cols].reshape(rows, cols)
    wb[:] = w
    offsets, tokens, _ = csr(rng, rows, T, 0.1)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    u = rng.standard_normal(len(tokens)).astype(np.float32)
    before = _core.num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            _core.set_num_threads(threads)
            outk = np.empty(len(tokens), np.float32)
            outv = np.empty((T, cols), np.float32)
            _core.csr_masked_matmul(wb, x, offsets, tokens, outk, scale=scale)
            _core.csr_sparse_matmul(wb, u, offsets, tokens, outv, scale=scale)
            results.append((outk, outv))
    finally:
        _core.set_num_threads(before)
    for outk, outv in results[1:]:
        np.testing.assert_array_equal(outk, results[0][0])
        np.testing.assert_array_equal(outv, results[0][1])
