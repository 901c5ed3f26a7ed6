"""Every kernel of spark_infer._core against float64 numpy, on every SIMD target.

References are float64 numpy written from each kernel's equation, never another kernel call:
int8 weights are compared on their dequantized values (q * scale), bf16 weights on the bf16
values themselves (rounded from f32 in numpy, round-to-nearest-even).

Placement: every array a kernel sees sits one element past a 64-byte boundary (so never 32-byte
aligned, still C-contiguous) inside a larger buffer whose surrounding elements are canaries:
NaN in inputs (a read past the end that reaches a result poisons it) and a NaN with a marked
payload in outputs (a write past the end, or an element left unwritten, shows).

Tolerances. U = 2^-24 is the f32 unit roundoff. A sum of n products computed in f32, in any
order, with or without FMA, is within gamma_n * sum |terms| of the exact sum, gamma_n =
nU / (1 - nU) (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., §3.1); a scale
product adds one rounding. We use (n + 2) * U * sum |terms| for every dot and vec-mat: it holds
for any summation order, so it does not tie the test to one kernel's blocking. It is loose for
large n, so each product kernel is also run on integer-valued inputs whose every partial sum is
exactly representable: there the result must be exact, which catches a dropped or doubled
element at any size, tails included.
"""

from __future__ import annotations

import math
import statistics
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from conftest import bf16_modes, set_bf16, set_vnni, vnni_modes
from spark_infer import _core

U = 2.0**-24  # f32 unit roundoff
PAD = 64  # canary elements on each side: more than one 64-byte vector of any lane type
OUT_CANARY = 0x7FC0DEAD  # a quiet NaN no kernel produces: marks unwritten output
IN_CANARY: dict[Any, int] = {
    np.dtype(np.float32): 0x7FC00000,  # NaN
    np.dtype(np.uint16): 0x7FC1,  # bf16 NaN
    np.dtype(np.int8): 127,  # int8 has no NaN: the largest value
    np.dtype(np.int32): 0x7FFFFFFF,  # an index far out of range
    np.dtype(np.uint8): 0xFF,  # q4: read as block parameters, 0xFFFF is an f16 NaN
}
DTYPES = ["f32", "bf16", "int8"]


# --------------------------------------------------------------------------------- helpers


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """f32 -> bf16 bit patterns (uint16), round to nearest even. Finite inputs only."""
    b = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_to_f64(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


class Placed:
    """A copy of `values` at a misaligned address inside a canary-filled buffer."""

    def __init__(self, values: np.ndarray, canary_bits: int) -> None:
        dt = values.dtype
        self.bits_dtype = np.dtype(f"u{dt.itemsize}")
        self.canary = np.array(canary_bits, self.bits_dtype)
        buf = np.empty(values.size + 2 * PAD + 64, dt)
        buf.view(self.bits_dtype)[:] = self.canary
        base, isz = buf.ctypes.data, dt.itemsize
        # First element at or after PAD that lies one element past a 64-byte boundary.
        self.lo = next(k for k in range(PAD, PAD + 64) if (base + k * isz) % 64 == isz)
        self.hi = self.lo + values.size
        self.buf = buf
        self.a = buf[self.lo : self.hi].reshape(values.shape)
        self.a[...] = values
        self.original = np.array(self.a, copy=True)
        assert self.a.flags.c_contiguous
        assert values.size == 0 or self.a.ctypes.data % 32 != 0  # numpy may move empty views

    @classmethod
    def input(cls, values: np.ndarray) -> Placed:
        return cls(values, IN_CANARY[values.dtype])

    @classmethod
    def output(cls, shape: tuple[int, ...] | int) -> Placed:
        values = np.empty(shape, np.float32)
        values.view(np.uint32)[...] = OUT_CANARY
        return cls(values, OUT_CANARY)

    def canaries_intact(self) -> bool:
        bits = self.buf.view(self.bits_dtype)
        return bool((bits[: self.lo] == self.canary).all() and (bits[self.hi :] == self.canary).all())

    def unchanged(self) -> bool:
        return self.canaries_intact() and np.array_equal(
            self.a.view(self.bits_dtype), self.original.view(self.bits_dtype)
        )

    def fully_written(self) -> bool:
        return self.canaries_intact() and bool((self.a.view(np.uint32) != OUT_CANARY).all())


def check_io(out: Placed, *inputs: Placed) -> None:
    """The kernel wrote every element of out, nothing around it, and left its inputs alone."""
    assert out.fully_written(), "output canary overwritten, or an output element left unwritten"
    for p in inputs:
        assert p.unchanged(), "an input (or the canary around it) was modified"


def make_weights(
    dtype: str, rows: int, cols: int, rng: np.random.Generator, integer: bool = False
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Returns (w as the kernel takes it, scale or None, w as float64 values).

    integer=True: small integers (|w| <= 15; int8 scale 0.5, a power of two) so that every
    partial sum in a kernel is exact (see the module docstring).
    """
    if integer:
        v = rng.integers(-15, 16, size=(rows, cols)).astype(np.float32)
    else:
        v = rng.standard_normal((rows, cols)).astype(np.float32)
    if dtype == "f32":
        return v, None, v.astype(np.float64)
    if dtype == "bf16":
        bits = bf16_bits(v)
        return bits, None, bf16_to_f64(bits)
    if integer:
        q = v.astype(np.int8)
        scale = np.full(rows, 0.5, np.float32)
    else:
        q = rng.integers(-127, 128, size=(rows, cols), dtype=np.int8)
        scale = (rng.uniform(0.5, 2.0, rows) / 127).astype(np.float32)
    return q, scale, q.astype(np.float64) * scale.astype(np.float64)[:, None]


def make_x(shape: tuple[int, ...] | int, rng: np.random.Generator, integer: bool) -> np.ndarray:
    """Activations: standard normal, or integers in [-8, 8] for the exact runs."""
    if integer:
        return rng.integers(-8, 9, size=shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def placed_weights(w: np.ndarray, scale: np.ndarray | None) -> tuple[Placed, Placed | None]:
    return Placed.input(w), (Placed.input(scale) if scale is not None else None)


def assert_within(actual: np.ndarray, expected: np.ndarray, tol: np.ndarray) -> None:
    err = np.abs(actual.astype(np.float64) - expected)
    bad = ~(err <= tol)  # also catches NaN
    if bad.any():
        i = int(np.argmax(bad.ravel()))
        raise AssertionError(
            f"{int(bad.sum())} of {bad.size} outside tolerance; first at flat index {i}: "
            f"got {actual.ravel()[i]!r}, want {expected.ravel()[i]!r}, tol {tol.ravel()[i]!r}"
        )


def dot_tol(n_terms: int, abs_sum: np.ndarray) -> np.ndarray:
    # (n + 2) U sum |terms|: any-order f32 summation plus the scale product (module docstring).
    return (n_terms + 2) * U * abs_sum


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """Seeded per test (by its id), so every test is reproducible on its own."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


@pytest.fixture
def threads() -> Iterator[Callable[[int], None]]:
    """set_num_threads for one test; the previous count is restored afterwards."""
    saved = _core.num_threads()
    yield _core.set_num_threads
    _core.set_num_threads(saved)


# Sizes: 0, 1, N-1, N, N+1, 2N+3 for every lane count N in {1, 4, 8, 16} (f32 lanes of SCALAR,
# SSE4, AVX2, AVX3) and for bf16/int8 rows, then 1000+ and 13824 (the Spark FFN width).
COLS = [0, 1, 3, 4, 5, 7, 8, 9, 11, 15, 16, 17, 19, 31, 32, 33, 35, 63, 64, 65, 1003, 13824]
ROWS = [1, 2, 3, 4, 5, 6, 7, 9]  # around the 4-row decode tile
MATVEC_SHAPES = [(ROWS[i % len(ROWS)], c) for i, c in enumerate(COLS)] + [
    (0, 5),
    (63, 63),
    (1003, 67),  # several thread parts
    (13824, 3),
]


# ------------------------------------------------------------------------------- q4
# q4 (weights/types.h, docs/engine-file.md): uint8 [rows, cols / 32 * 20], per block of 32 weights
# along a row f16 d, f16 m, then 16 code bytes, byte j = q_j | q_(j+16) << 4; w = d * q + m.
# The blocks are packed here from random codes and parameters, independently of the converter.
# The kernels may compute d (q . x) + m sum(x) per block, whose f32 rounding is bounded by the
# terms |d q x| and |m x| rather than |w x| (they can cancel): the tolerance uses
# |w|~ = |d q| + |m| per weight and 2 cols terms. Decode (matvec, masked matvec: the 4-row tiles)
# quantizes x per block of 32 to int8 (weights/load-inl.h, Q4X): s = max|x_block| / 127 in f32
# (1 for a zero block), q = round-half-even(x / s) in f32; each row's integer dots c . q (q4 codes
# 0..15, q5 codes - 16) and sum(q) are exact, so its reference (decode_reference) is
# d s (c . q) + m s sum(q) per block, and the tolerance only the float sums': on AVX3 both the
# AVX512_VNNI tile and the plain one run (vnni_modes).


def make_q4(rows: int, cols: int, rng: np.random.Generator, integer: bool = False
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(blocks uint8 [rows, cols / 32 * 20], w float64 [rows, cols], |d q| + |m|, |d q|).

    integer=True: d = 0.5, m = -4 (so w in [-4, 3.5], multiples of 1/2): with integer x every
    partial sum of either way of computing a dot is exact."""
    assert cols % 32 == 0
    g = cols // 32
    q = rng.integers(0, 16, size=(rows, g, 32))
    if integer:
        d = np.full((rows, g), 0.5, np.float16)
        m = np.full((rows, g), -4.0, np.float16)
    else:
        d = rng.uniform(0.01, 0.3, (rows, g)).astype(np.float16)
        m = rng.uniform(-2.0, 1.0, (rows, g)).astype(np.float16)
    blocks = np.empty((rows, g, 20), np.uint8)
    blocks[..., 0:2] = d.astype("<f2").view(np.uint8).reshape(rows, g, 2)
    blocks[..., 2:4] = m.astype("<f2").view(np.uint8).reshape(rows, g, 2)
    blocks[..., 4:] = q[..., :16] | (q[..., 16:] << 4)
    d64, m64 = d.astype(np.float64)[..., None], m.astype(np.float64)[..., None]
    w64 = (d64 * q + m64).reshape(rows, cols)
    a64 = (np.abs(d64 * q) + np.abs(m64)).reshape(rows, cols)
    return blocks.reshape(rows, g * 20), w64, a64, np.abs(d64 * q).reshape(rows, cols)


def make_q5(rows: int, cols: int, rng: np.random.Generator, integer: bool = False
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(blocks uint8 [rows, cols / 32, 22], w float64 [rows, cols], |d| (q + 16), |w|) of q5 (GGML's
    Q5_0: f16 d, u32 qh with bit j the fifth bit of code j, 16 bytes of low nibbles as q4's;
    w = d (q - 16)), packed here from random codes and d. The kernels take q5 blocks with their
    block axis apart (a row's bytes alone could be either type's). Like q4's, the kernels may
    compute d q + m with m = -16 d, whose terms are bounded by |d| (q + 16), not |w|; decode's
    integer dot takes q - 16 itself, so its x rounding costs |w| per weight.

    integer=True: d = 0.5 (w in [-8, 7.5], multiples of 1/2), as make_q4's."""
    assert cols % 32 == 0
    g = cols // 32
    q = rng.integers(0, 32, size=(rows, g, 32)).astype(np.uint32)
    if integer:
        d = np.full((rows, g), 0.5, np.float16)
    else:
        d = (rng.uniform(0.01, 0.15, (rows, g)) * rng.choice([-1, 1], (rows, g))).astype(np.float16)
    blocks = np.empty((rows, g, 22), np.uint8)
    blocks[..., 0:2] = d.astype("<f2").view(np.uint8).reshape(rows, g, 2)
    qh = ((q >> 4) << np.arange(32, dtype=np.uint32)).sum(axis=2, dtype=np.uint32)
    blocks[..., 2:6] = qh.astype("<u4").view(np.uint8).reshape(rows, g, 4)
    blocks[..., 6:] = (q[..., :16] & 15) | ((q[..., 16:] & 15) << 4)
    d64, q64 = d.astype(np.float64)[..., None], q.astype(np.float64)
    w64 = (d64 * (q64 - 16)).reshape(rows, cols)
    return blocks, w64, (np.abs(d64) * (q64 + 16)).reshape(rows, cols), np.abs(w64)


MAKE_BLOCKS = {"q4": make_q4, "q5": make_q5}


def q4_tol(n_terms: int, abs_sum: np.ndarray) -> np.ndarray:
    return (2 * n_terms + 4) * U * abs_sum


def quantize_x_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode's int8 x (Q4X) from its definition: (q int64 [cols / 32, 32], s float32 [cols / 32])."""
    xb = np.asarray(x, np.float32).reshape(-1, 32)
    amax = np.abs(xb).max(axis=1)
    s = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.rint(xb / s[:, None])  # float32 division; np.rint rounds half to even
    assert np.all(np.abs(q) <= 127)
    return q.astype(np.int64), s


def block_fields(fmt: str, blocks: np.ndarray, rows: int, cols: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d float64 [rows, g], m float64 [rows, g], c int64 [rows, g, 32]) read from the bytes, with
    w = d c + m: q4's codes and m; q5's codes minus 16 and m = 0."""
    b = blocks.reshape(rows, cols // 32, 20 if fmt == "q4" else 22)
    d = b[..., 0:2].copy().view("<f2")[..., 0].astype(np.float64)
    first = 4 if fmt == "q4" else 6
    c = np.concatenate([b[..., first:] & 15, b[..., first:] >> 4], axis=2).astype(np.int64)
    if fmt == "q4":
        return d, b[..., 2:4].copy().view("<f2")[..., 0].astype(np.float64), c
    qh = b[..., 2:6].copy().view("<u4")[..., 0].astype(np.int64)
    return d, np.zeros_like(d), c + 16 * ((qh[..., None] >> np.arange(32)) & 1) - 16


def decode_reference(fmt: str, blocks: np.ndarray, rows: int, cols: int, x: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(expected float64 [rows], tolerance [rows]) of a decode dot of each row with x: the
    dequantized weights times the dequantized x, per block d s (c . q) + m s sum(q), the integer
    dots exact (int64). The kernels' f32 sums: d s and m s sum(q), one FMA per block (in up to 8
    lanes), the lanes' sum."""
    d, m, c = block_fields(fmt, blocks, rows, cols)
    q, s = quantize_x_int8(x)
    s64 = s.astype(np.float64)[None]
    want = (d * s64 * (c * q[None]).sum(axis=2) + m * s64 * q.sum(axis=1)[None]).sum(axis=1)
    terms = (np.abs(d) * s64 * np.abs(c * q[None]).sum(axis=2)
             + np.abs(m) * s64 * np.abs(q).sum(axis=1)[None]).sum(axis=1)
    return want, (2 * (cols // 32) + 16) * U * terms


def int8_exact_x(x: np.ndarray) -> np.ndarray:
    """Integer x (|x| <= 8) with 127 at the start of every block of 32: then decode's step is 1
    and its int8 q is x itself, so the decode result must be exact as any other kernel's."""
    x = np.array(x, np.float32)
    x[..., ::32] = 127
    return x


Q4_COLS = [0, 32, 64, 96, 160, 1056, 13824]
Q4_MATVEC_SHAPES = [(ROWS[i % len(ROWS)], c) for i, c in enumerate(Q4_COLS)] + [
    (9, 32), (63, 96), (1003, 64), (0, 32)]


@pytest.mark.parametrize("fmt", ["q4", "q5"])
@pytest.mark.parametrize("shape", Q4_MATVEC_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_q4_matvec(target: str, fmt: str, shape: tuple[int, int], rng: np.random.Generator) -> None:
    rows, cols = shape
    for vnni in vnni_modes(target):
        set_vnni(vnni)
        for integer in (False, True):
            w, w64, _, _ = MAKE_BLOCKS[fmt](rows, cols, rng, integer)
            x = make_x(cols, rng, integer)
            if integer:
                x = int8_exact_x(x)
            pw, px, out = Placed.input(w), Placed.input(x), Placed.output(rows)
            _core.matvec(pw.a, px.a, out.a)
            check_io(out, pw, px)
            if integer:
                np.testing.assert_array_equal(out.a, (w64 @ x.astype(np.float64)).astype(np.float32))
            else:
                assert_within(out.a, *decode_reference(fmt, w, rows, cols, x))
    set_vnni(None)


def special_x(cols: int, rng: np.random.Generator) -> np.ndarray:
    """x whose blocks cycle through normal, zero, huge (1e30), tiny (1e-30), and a block of a
    single nonzero."""
    x = rng.standard_normal(cols).astype(np.float32).reshape(-1, 32)
    x[1::5] = 0
    x[2::5] *= np.float32(1e30)
    x[3::5] *= np.float32(1e-30)
    x[4::5, 1:] = 0
    return x.reshape(cols)


@pytest.mark.parametrize("fmt", ["q4", "q5"])
@pytest.mark.parametrize("shape", [(1, 32), (7, 64), (9, 160), (13, 640), (5, 2048), (6, 2048)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_q4_decode_special_x(target: str, fmt: str, shape: tuple[int, int],
                             rng: np.random.Generator) -> None:
    """Decode's int8 x on blocks of zeros, huge and tiny values (the step follows each block's
    own scale), on the AVX3 tiles with and without VNNI; odd row counts and several widths."""
    rows, cols = shape
    w = MAKE_BLOCKS[fmt](rows, cols, rng)[0]
    x = special_x(cols, rng)
    for vnni in vnni_modes(target):
        set_vnni(vnni)
        out = np.empty(rows, np.float32)
        _core.matvec(w, x, out)
        assert_within(out, *decode_reference(fmt, w, rows, cols, x))
        # Each block alone: a huge block must not drown out the others' checks.
        for k in range(min(cols // 32, 5)):
            xk = np.zeros_like(x)
            xk[32 * k:32 * k + 32] = x[32 * k:32 * k + 32]
            _core.matvec(w, xk, out)
            assert_within(out, *decode_reference(fmt, w, rows, cols, xk))
    set_vnni(None)


@pytest.mark.parametrize("fmt", ["q4", "q5"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_q4_decode_non_finite_x_gives_nan(target: str, fmt: str, bad: float,
                                          rng: np.random.Generator) -> None:
    """A NaN or infinity in x makes its block's step NaN: every decode output is NaN (not a
    finite number from codes times a clamped q), as an f32 dot would give NaN or +-inf."""
    rows, cols = 9, 640
    w = MAKE_BLOCKS[fmt](rows, cols, rng)[0]
    x = make_x(cols, rng, False)
    x[100] = bad
    for vnni in vnni_modes(target):
        set_vnni(vnni)
        out = np.empty(rows, np.float32)
        _core.matvec(w, x, out)
        assert np.isnan(out).all()
        idx = np.array([3, 0, 8], np.int32)
        outm = np.empty(3, np.float32)
        _core.masked_matvec(w, x, idx, outm)
        assert np.isnan(outm).all()
    set_vnni(None)


@pytest.mark.parametrize("feature", ["avx512_vnni", "avx512_bf16"])
def test_cpu_feature_switch(feature: str) -> None:
    has, use, switch = (getattr(_core, f"{k}_{feature}") for k in ("has", "use", "set"))
    if not has():
        assert not use()
        with pytest.raises(ValueError, match=f"no {feature.upper()}"):
            switch(True)
        return
    assert use()
    switch(False)
    assert not use()
    switch(True)
    assert use()


@pytest.mark.parametrize("shape", [(1, 3, 32), (2, 5, 64), (3, 9, 96), (5, 6, 160), (64, 33, 64),
                                   (7, 1003, 32), (3, 4, 13824), (0, 4, 32)],
                         ids=lambda s: "T{}_{}x{}".format(*s))
@pytest.mark.parametrize("fmt", ["q4", "q5"])
def test_q4_matmul(target: str, fmt: str, shape: tuple[int, int, int], rng: np.random.Generator) -> None:
    T, rows, cols = shape
    for integer in (False, True):
        w, w64, a64, _ = MAKE_BLOCKS[fmt](rows, cols, rng, integer)
        x = make_x((T, cols), rng, integer)
        if integer and T == 1:
            x = int8_exact_x(x)
        pw, px, out = Placed.input(w), Placed.input(x), Placed.output((T, rows))
        _core.matmul(pw.a, px.a, out.a)
        check_io(out, pw, px)
        x64 = x.astype(np.float64)
        if integer:
            np.testing.assert_array_equal(out.a, (x64 @ w64.T).astype(np.float32))
        elif T == 1:  # one token is a decode: x quantized to int8 (see above)
            assert_within(out.a, *(v[None] for v in decode_reference(fmt, w, rows, cols, x[0])))
        else:
            assert_within(out.a, x64 @ w64.T, q4_tol(cols, np.abs(x64) @ a64.T))


Q4_SPARSE_SHAPES = [(1, 32, 1), (7, 32, 0), (9, 64, 5), (64, 96, 8), (100, 160, 37),
                    (50, 1056, 13), (16, 13824, 3), (13824, 32, 1106)]


@pytest.mark.parametrize("fmt", ["q4", "q5"])
@pytest.mark.parametrize("shape", Q4_SPARSE_SHAPES, ids=lambda s: "{}x{}_n{}".format(*s))
def test_q4_masked_matvec_and_sparse_vecmat(target: str, fmt: str, shape: tuple[int, int, int],
                                            rng: np.random.Generator) -> None:
    rows, cols, n = shape
    for vnni in vnni_modes(target):
        set_vnni(vnni)
        for integer in (False, True):
            w, w64, a64, _ = MAKE_BLOCKS[fmt](rows, cols, rng, integer)
            x, u = make_x(cols, rng, integer), make_x(n, rng, integer)
            if integer:
                x = int8_exact_x(x)
            idx = make_idx(rows, n, rng)
            pw, px, pu, pi = Placed.input(w), Placed.input(x), Placed.input(u), Placed.input(idx)
            out_m, out_s = Placed.output(n), Placed.output(cols)
            _core.masked_matvec(pw.a, px.a, pi.a, out_m.a)
            _core.sparse_vecmat(pw.a, pu.a, pi.a, out_s.a)
            check_io(out_m, pw, px, pi)
            check_io(out_s, pw, pu, pi)
            x64, u64 = x.astype(np.float64), u.astype(np.float64)
            if integer:
                np.testing.assert_array_equal(out_m.a, (w64[idx] @ x64).astype(np.float32))
                np.testing.assert_array_equal(out_s.a, (u64 @ w64[idx]).astype(np.float32))
            else:
                want, tol = decode_reference(fmt, w, rows, cols, x)
                assert_within(out_m.a, want[idx], tol[idx])
                assert_within(out_s.a, u64 @ w64[idx], q4_tol(n, np.abs(u64) @ a64[idx]))
    set_vnni(None)


@pytest.mark.parametrize("fmt", ["q4", "q5"])
def test_q4_sparse_kernels_never_read_unlisted_rows(target: str, fmt: str,
                                                    rng: np.random.Generator) -> None:
    rows, cols, n = 1000, 96, 80
    w = MAKE_BLOCKS[fmt](rows, cols, rng)[0]
    idx = make_idx(rows, n, rng)
    x, u = make_x(cols, rng, False), make_x(n, rng, False)
    w2 = w.copy()
    unlisted = np.setdiff1d(np.arange(rows), idx)
    # f16 NaN parameters (SSE4's emulated f16 widening reads them as -131008), codes 15 (31).
    w2[unlisted] = 0xFF
    for fn, vec, out_len in ((_core.masked_matvec, x, n), (_core.sparse_vecmat, u, cols)):
        clean, poisoned = np.empty(out_len, np.float32), np.empty(out_len, np.float32)
        fn(w, vec, idx, clean)
        fn(w2, vec, idx, poisoned)
        assert np.isfinite(poisoned).all()
        np.testing.assert_array_equal(poisoned.view(np.uint32), clean.view(np.uint32))
    # The poison is live: a kernel that reads those rows gets other values.
    full, full2 = np.empty(rows, np.float32), np.empty(rows, np.float32)
    _core.matvec(w, x, full)
    _core.matvec(w2, x, full2)
    assert not np.any(full2[unlisted] == full[unlisted])


def test_q4_bad_weights() -> None:
    x = np.ones(32, np.float32)
    with pytest.raises(ValueError, match="20-byte blocks"):
        _core.matvec(np.zeros((4, 30), np.uint8), x, np.empty(4, np.float32))
    with pytest.raises(ValueError, match="scale is only for int8"):
        _core.matvec(np.zeros((4, 20), np.uint8), x, np.empty(4, np.float32),
                     scale=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="q4 \\(20-byte\\) or q5 \\(22-byte\\) blocks, got 21-byte"):
        _core.matvec(np.zeros((4, 1, 21), np.uint8), x, np.empty(4, np.float32))
    with pytest.raises(ValueError, match="2-D weight matrix"):
        _core.matvec(np.zeros((4, 1, 22), np.float32), x, np.empty(4, np.float32))
    with pytest.raises(ValueError, match="scale is only for int8"):
        _core.matvec(np.zeros((4, 1, 22), np.uint8), x, np.empty(4, np.float32),
                     scale=np.ones(4, np.float32))


# ----------------------------------------------------------------------------- dense


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", MATVEC_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matvec(target: str, dtype: str, shape: tuple[int, int], rng: np.random.Generator) -> None:
    rows, cols = shape
    for integer in (False, True):
        w, scale, w64 = make_weights(dtype, rows, cols, rng, integer)
        x = make_x(cols, rng, integer)
        pw, ps = placed_weights(w, scale)
        px, out = Placed.input(x), Placed.output(rows)
        _core.matvec(pw.a, px.a, out.a, scale=ps.a if ps else None)
        check_io(out, pw, px, *([ps] if ps else []))
        x64 = x.astype(np.float64)
        want = w64 @ x64
        if integer:
            np.testing.assert_array_equal(out.a, want.astype(np.float32))
        else:
            assert_within(out.a, want, dot_tol(cols, np.abs(w64) @ np.abs(x64)))


MATMUL_SHAPES = [  # (T, rows, cols)
    (0, 4, 4),
    (1, 7, 7),
    (2, 5, 17),
    (3, 9, 35),
    (5, 6, 65),
    (64, 33, 63),
    (7, 1003, 19),
    (3, 4, 13824),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", MATMUL_SHAPES, ids=lambda s: "T{}_{}x{}".format(*s))
def test_matmul(target: str, dtype: str, shape: tuple[int, int, int], rng: np.random.Generator) -> None:
    T, rows, cols = shape
    for integer in (False, True):
        w, scale, w64 = make_weights(dtype, rows, cols, rng, integer)
        x = make_x((T, cols), rng, integer)
        pw, ps = placed_weights(w, scale)
        # bf16 and int8 chunk matmuls round x to bf16 (ops/matvec.cc, RoundsXToBF16).
        rounds = dtype in ("bf16", "int8")
        x64 = chunk_x(x) if rounds else x.astype(np.float64)
        want = x64 @ w64.T  # out[t, r] = w[r, :] . x[t, :]
        for mode in bf16_modes(target) if rounds else [None]:
            set_bf16(mode)
            px, out = Placed.input(x), Placed.output((T, rows))
            _core.matmul(pw.a, px.a, out.a, scale=ps.a if ps else None)
            check_io(out, pw, px, *([ps] if ps else []))
            if integer:
                np.testing.assert_array_equal(out.a, want.astype(np.float32))
            else:
                assert_within(out.a, want, dot_tol(cols, np.abs(x64) @ np.abs(w64).T))
    set_bf16(None)


# ------------------------------------------------------------------- bf16 chunk matmul
# With bf16 weights and T > 1, matmul rounds x to bf16 first (round to nearest even, NaN stays
# NaN: ops/matvec.h), so every product is of two bf16 values, exact in f32, and only the f32
# sums differ between targets (and tiles: on AVX3 with AVX512_BF16, vdpbf16ps and the plain
# f32 tile, both run). T == 1 (matvec, decode) keeps x in f32.


def chunk_x(x: np.ndarray) -> np.ndarray:
    """x [T, cols] as the bf16 chunk matmul takes it (float64): bf16-rounded when T > 1."""
    if x.shape[0] < 2:
        return x.astype(np.float64)
    r = bf16_to_f64(bf16_bits(np.nan_to_num(x)))
    r[np.isnan(x)] = np.nan
    r[np.isinf(x)] = x[np.isinf(x)]
    return r


BF16_SHAPES = [  # (T, rows, cols): rows around the 4-row tile, cols of Gemma matrices
    (2, 1, 64), (3, 5, 64), (67, 7, 64), (5, 6, 640), (17, 9, 640), (64, 4, 640), (7, 3, 2048),
    (33, 13, 2048), (65, 2, 2304), (9, 11, 2304), (3, 70, 33), (4, 5, 95), (2, 3, 1),
]


@pytest.mark.parametrize("shape", BF16_SHAPES, ids=lambda s: "T{}_{}x{}".format(*s))
def test_bf16_chunk_matmul(target: str, shape: tuple[int, int, int], rng: np.random.Generator) -> None:
    T, rows, cols = shape
    for integer in (False, True):
        w, _, w64 = make_weights("bf16", rows, cols, rng, integer)
        x = make_x((T, cols), rng, integer)
        if not integer:
            x *= rng.uniform(0.01, 100.0, size=(T, 1)).astype(np.float32)  # scales per token
        x64 = chunk_x(x)
        want = x64 @ w64.T
        pw, px = Placed.input(w), Placed.input(x)
        for mode in bf16_modes(target):
            set_bf16(mode)
            out = Placed.output((T, rows))
            _core.matmul(pw.a, px.a, out.a)
            check_io(out, pw, px)
            if integer:  # |w| <= 15, |x| <= 8: bf16 values, every partial sum exact
                np.testing.assert_array_equal(out.a, want.astype(np.float32))
            else:
                assert_within(out.a, want, dot_tol(cols, np.abs(x64) @ np.abs(w64).T))
    set_bf16(None)


def test_bf16_chunk_rounds_x_to_nearest_even(target: str) -> None:
    """W = I (bf16 ones) reads back x as the kernel rounded it: exactly bf16 round-to-nearest-
    even of each f32 x, ties included, on every tile; a single token (T == 1) keeps x. Then
    W = [[1]] (one column: no 0 * inf) for the values that round to inf, and NaN."""
    cols = 64
    ulp = np.float32(2.0**-7)  # bf16 spacing in [1, 2)
    cases = np.array([
        1 + ulp / 2,                      # tie, 1.0 is even: down
        1 + ulp + ulp / 2,                # tie, odd below: up to 1 + 2 ulp
        1 + ulp / 2 + 2.0**-23,           # just past the tie: up
        1 + ulp / 2 - 2.0**-23,           # just under: down
        -(1 + ulp + ulp / 2),             # negative tie: to even (away from 0 here)
        3.0e38, -0.0, 0.0, 65504.5, 123456.789, 1.0e-30,
    ], np.float32)
    x = np.resize(cases, (3, cols)).astype(np.float32)
    x[2] = np.random.default_rng(5).standard_normal(cols).astype(np.float32)
    w = bf16_bits(np.eye(cols, dtype=np.float32))
    want = chunk_x(x)  # independent numpy rounding (bf16_bits)
    assert want[0, 0] == 1.0 and want[0, 1] == float(1 + 2 * ulp)
    big = np.array([3.4028235e38, -3.4028235e38, 3.3e38, np.nan, -np.nan, 1.0] * 4, np.float32)[:, None]
    for mode in bf16_modes(target):
        set_bf16(mode)
        out = np.empty((3, cols), np.float32)
        _core.matmul(w, x, out)
        np.testing.assert_array_equal(out, want.astype(np.float32))
        one_token = np.empty((1, cols), np.float32)
        _core.matmul(w, x[2:3], one_token)
        np.testing.assert_array_equal(one_token, x[2:3])
        out_big = np.empty((big.shape[0], 1), np.float32)
        _core.matmul(bf16_bits(np.ones((1, 1), np.float32)), big, out_big)
        np.testing.assert_array_equal(out_big, chunk_x(big).astype(np.float32))  # inf, NaN
    assert np.isinf(chunk_x(big)[:2]).all() and np.isfinite(chunk_x(big)[2])
    set_bf16(None)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_bf16_chunk_non_finite(target: str, bad: float, rng: np.random.Generator) -> None:
    """NaN / inf in x or w as IEEE f32 gives them: a NaN x makes its token's outputs NaN; an
    inf x gives +-inf where its weight is non-zero (NaN where zero or NaN elsewhere)."""
    T, rows, cols = 5, 6, 640
    w, _, w64 = make_weights("bf16", rows, cols, rng)
    w[:, 7] = bf16_bits(np.array([0.0, 1.5, -2.0, 0.5, 0.0, 3.0], np.float32))
    w64 = bf16_to_f64(w)
    x = make_x((T, cols), rng, False)
    x[1, 7] = bad
    x[3, 600] = bad
    x64 = chunk_x(x)
    with np.errstate(invalid="ignore"):
        want = (x64[:, None, :] * w64[None, :, :]).sum(axis=-1)
    for mode in bf16_modes(target):
        set_bf16(mode)
        out = np.empty((T, rows), np.float32)
        _core.matmul(w, x, out)
        finite = np.isfinite(want)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
        np.testing.assert_array_equal(out[np.isinf(want)], want[np.isinf(want)])
        assert_within(out[finite], want[finite],
                      dot_tol(cols, (np.where(np.isfinite(x64), np.abs(x64), 0) @ np.abs(w64).T)[finite]))
    set_bf16(None)


def test_bf16_chunk_tiny_values(target: str) -> None:
    """Subnormals. vdpbf16ps (AVX3 with AVX512_BF16) treats subnormal inputs as 0 and flushes
    subnormal products and sums to 0 (DAZ / FTZ); the f32 tiles keep subnormals (a product under
    f32's subnormal range is 0 in both). Either way a result is within 2^-126 (sum |w| +
    sum |x| + 2 cols) of the exact dot of the bf16 values: a product |w x| < 2^-126 lost, or one
    of a subnormal x (w), under |w| 2^-126 (|x| 2^-126). 2^-126 is 1e-38: normal-range data
    never comes near."""
    T, rows, cols = 3, 5, 64
    tiny = np.float32(2.0**-70)  # normal in bf16; w x = 2^-140, subnormal in f32
    w = bf16_bits(np.full((rows, cols), tiny, np.float32))
    w[1] = bf16_bits(np.full(cols, 2.0**60, np.float32))  # times the subnormal x below: normal
    x = np.full((T, cols), tiny, np.float32)
    x[1] = np.float32(1.0e-39)  # subnormal f32 (and bf16)
    x[2] = np.float32(1.0)
    x64, w64 = chunk_x(x), bf16_to_f64(w)
    want = x64 @ w64.T
    bound = 2.0**-126 * (np.abs(w64).sum(axis=1)[None, :] + np.abs(x64).sum(axis=1)[:, None] + 2 * cols)
    for mode in bf16_modes(target):
        set_bf16(mode)
        out = np.empty((T, rows), np.float32)
        _core.matmul(w, x, out)
        assert_within(out, want, bound)
        # 64 products of 2^-140 (exact subnormals in f32: 2^-134); 1e-39 x times 2^60
        flushed = target == "AVX3" and _core.use_avx512_bf16()
        assert out[0, 0] == (0.0 if flushed else np.float32(2.0**-134))
        assert (out[1, 1] == 0.0) == flushed
        np.testing.assert_array_equal(out[2], want[2].astype(np.float32))  # normal: exact
    set_bf16(None)


# ---------------------------------------------------------------------------- sparse

SPARSE_SHAPES = [  # (rows, cols, n_idx)
    (1, 1, 1),
    (7, 7, 0),
    (9, 17, 5),
    (64, 33, 8),
    (100, 65, 37),
    (300, 129, 150),
    (50, 1003, 13),
    (16, 13824, 3),
    (13824, 7, 1106),  # Spark FFN rows, 8 % active
]


def make_idx(rows: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n row indices, unsorted; with a repeat when n allows (the kernels must not assume
    sorted or distinct indices)."""
    idx = rng.choice(rows, size=n, replace=n > rows).astype(np.int32)
    if n >= 3:
        idx[-1] = idx[0]
    return idx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SPARSE_SHAPES, ids=lambda s: "{}x{}_n{}".format(*s))
def test_masked_matvec(
    target: str, dtype: str, shape: tuple[int, int, int], rng: np.random.Generator
) -> None:
    rows, cols, n = shape
    for integer in (False, True):
        w, scale, w64 = make_weights(dtype, rows, cols, rng, integer)
        x = make_x(cols, rng, integer)
        idx = make_idx(rows, n, rng)
        pw, ps = placed_weights(w, scale)
        px, pi, out = Placed.input(x), Placed.input(idx), Placed.output(n)
        _core.masked_matvec(pw.a, px.a, pi.a, out.a, scale=ps.a if ps else None)
        check_io(out, pw, px, pi, *([ps] if ps else []))
        x64 = x.astype(np.float64)
        want = w64[idx] @ x64  # out[j] = w[idx[j], :] . x
        if integer:
            np.testing.assert_array_equal(out.a, want.astype(np.float32))
        else:
            assert_within(out.a, want, dot_tol(cols, np.abs(w64[idx]) @ np.abs(x64)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SPARSE_SHAPES, ids=lambda s: "{}x{}_n{}".format(*s))
def test_sparse_vecmat(
    target: str, dtype: str, shape: tuple[int, int, int], rng: np.random.Generator
) -> None:
    rows, cols, n = shape
    for integer in (False, True):
        w, scale, w64 = make_weights(dtype, rows, cols, rng, integer)
        u = make_x(n, rng, integer)
        idx = make_idx(rows, n, rng)
        pw, ps = placed_weights(w, scale)
        pu, pi, out = Placed.input(u), Placed.input(idx), Placed.output(cols)
        _core.sparse_vecmat(pw.a, pu.a, pi.a, out.a, scale=ps.a if ps else None)
        check_io(out, pw, pu, pi, *([ps] if ps else []))
        u64 = u.astype(np.float64)
        want = u64 @ w64[idx]  # out[c] = sum_j u[j] w[idx[j], c]
        if integer:
            np.testing.assert_array_equal(out.a, want.astype(np.float32))
        else:
            assert_within(out.a, want, dot_tol(n, np.abs(u64) @ np.abs(w64[idx])))


def poison_unlisted(
    dtype: str, w: np.ndarray, scale: np.ndarray | None, idx: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Copies of (w, scale) whose rows not in idx are NaN (f32, bf16) or, for int8, other
    random values with a NaN scale: any read of an unlisted row changes or poisons the result."""
    unlisted = np.setdiff1d(np.arange(w.shape[0]), idx)
    w2 = w.copy()
    s2 = None if scale is None else scale.copy()
    if dtype == "f32":
        w2[unlisted] = np.nan
    elif dtype == "bf16":
        w2[unlisted] = 0x7FC1
    else:
        w2[unlisted] = rng.integers(-128, 128, size=(len(unlisted), w.shape[1]), dtype=np.int8)
        assert s2 is not None
        s2[unlisted] = np.nan
    return w2, s2


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_kernels_never_read_unlisted_rows(
    target: str, dtype: str, rng: np.random.Generator
) -> None:
    rows, cols, n = 1000, 67, 80
    w, scale, _ = make_weights(dtype, rows, cols, rng)
    idx = make_idx(rows, n, rng)
    x, u = make_x(cols, rng, False), make_x(n, rng, False)
    w2, s2 = poison_unlisted(dtype, w, scale, idx, rng)
    for fn, vec, out_len in ((_core.masked_matvec, x, n), (_core.sparse_vecmat, u, cols)):
        clean, poisoned = np.empty(out_len, np.float32), np.empty(out_len, np.float32)
        fn(w, vec, idx, clean, scale=scale)
        fn(w2, vec, idx, poisoned, scale=s2)
        assert np.isfinite(poisoned).all()
        np.testing.assert_array_equal(poisoned.view(np.uint32), clean.view(np.uint32))


@pytest.mark.parametrize("fn", ["masked_matvec", "sparse_vecmat"])
@pytest.mark.parametrize("bad", [-1, 10, 2**31 - 1, -(2**31)])
def test_sparse_index_out_of_range(fn: str, bad: int) -> None:
    w = np.ones((10, 8), np.float32)
    idx = np.array([0, 3, bad, 9], np.int32)
    vec = np.ones(8 if fn == "masked_matvec" else 4, np.float32)
    out = np.full(4 if fn == "masked_matvec" else 8, 7.0, np.float32)
    with pytest.raises(IndexError):
        getattr(_core, fn)(w, vec, idx, out)
    assert (out == 7.0).all()  # checked before anything is written


# ----------------------------------------------------------------------- statistical top-k


@pytest.mark.parametrize(
    "p, q", [(0.92, 1.4050716), (0.95, 1.6448536), (0.5, 0.0), (0.001, -3.0902323)]
)
def test_inv_normal_cdf_known_quantiles(p: float, q: float) -> None:
    assert abs(_core.inv_normal_cdf(p) - q) <= 1e-6


def q_reference(p: float) -> float:
    """Q(p) to ~1e-15: mpmath root of log Phi(x) = log p at 50 digits (log form: fine in the far
    tails), else bisection on the same equation with math.erfc in float64."""
    lower = p < 0.5
    tail = p if lower else 1.0 - p  # exact for p >= 0.5 (Sterbenz)
    try:
        import mpmath
    except ImportError:
        def g(x: float) -> float:  # log of the upper-tail mass beyond x, minus log tail
            return math.log(0.5 * math.erfc(x / math.sqrt(2.0))) - math.log(tail)

        lo, hi = 0.0, 40.0  # g decreasing; g(0) >= 0 >= g(40) for tail in [1e-300, 0.5]
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if g(mid) > 0 else (lo, mid)
        x = 0.5 * (lo + hi)
    else:
        with mpmath.workdps(50):
            t = mpmath.mpf(tail)
            x = float(mpmath.findroot(lambda z: mpmath.log(mpmath.ncdf(-z)) - mpmath.log(t),
                                      mpmath.sqrt(-2 * mpmath.log(t)) + mpmath.mpf("0.1")))
    return -x if lower else x


def test_inv_normal_cdf_sweep() -> None:
    rng = np.random.default_rng(7)
    ps = np.concatenate([10.0 ** rng.uniform(-300, -0.31, 150), rng.uniform(0.0, 0.9999, 150)])
    for p in map(float, ps):
        if not 0.0 < p < 1.0 or p == 0.5:
            continue
        want = q_reference(p)
        # topk.h promises |error| < 1e-13 (Acklam + one Halley step); we allow 1e-12 relative to
        # max(1, |Q|). Past p ~ 0.9999 the Halley step evaluates Phi(x) - p as erfc(..) ~ 2 minus
        # p, which cancels, so accuracy decays (to ~1e-8 at 1 - 1e-14); the sweep stops there.
        assert abs(_core.inv_normal_cdf(p) - want) <= 1e-12 * max(1.0, abs(want)), p
    for k in range(5, 16):  # the upper tail: Acklam's 1.15e-9 plus the cancellation above
        p = 1.0 - 10.0**-k
        want = q_reference(p)
        assert abs(_core.inv_normal_cdf(p) - want) <= 2e-9 * abs(want), p


def topk_reference_theta(x: np.ndarray, fraction: float) -> float:
    """mean + std(ddof=0) * Q(1 - fraction), in float64, with Q rounded to f32 as the kernel
    receives it (Q from the standard library, independent of the kernel)."""
    q32 = float(np.float32(statistics.NormalDist().inv_cdf(1.0 - fraction)))
    x64 = x.astype(np.float64)
    return float(x64.mean() + x64.std(ddof=0) * q32)


def test_topk_threshold_exact_on_dyadic_input(target: str, rng: np.random.Generator) -> None:
    # x = 4 + d with d multiples of 2^-4 in [-2, 2], each d paired with -d. Every sum the kernel
    # forms is then exact in f32 in any order: sum x = 4n <= 2^16 in steps of 2^-4 (20 bits),
    # sum d^2 <= 4n < 2^16 in steps of 2^-8 (24 bits). So mean is exact and std has two
    # roundings (divide, sqrt), theta at most two more, each <= U relative: |theta - ref| <=
    # 4U (mean + std q) + U std q (the rounding of q to f32 is in the reference too). This is far
    # below what the sample std (ddof=1) would move theta: std q / (2n) ~ 5.8e-5 here.
    n = 13824
    d = np.round(np.clip(rng.standard_normal(n // 2), -2, 2) * 16) / 16
    x = (4.0 + np.concatenate([d, -d])[rng.permutation(n)]).astype(np.float32)
    px = Placed.input(x)
    idx, shifted, theta = _core.statistical_topk(px.a, 0.08)
    assert px.unchanged()
    want = topk_reference_theta(x, 0.08)
    std_q = x.astype(np.float64).std() * 1.4050716
    tol = 4 * U * (4.0 + std_q) + U * std_q
    assert abs(theta - want) <= tol
    ddof1 = 4.0 + x.astype(np.float64).std(ddof=1) * float(np.float32(1.4050716))
    assert abs(ddof1 - want) > 10 * tol  # the check above can tell the two stds apart
    np.testing.assert_array_equal(idx, np.flatnonzero(x > np.float32(theta)))


@pytest.mark.parametrize("n", [1, 2, 7, 15, 16, 17, 63, 1003, 13824])
def test_topk_matches_threshold_rule(target: str, n: int, rng: np.random.Generator) -> None:
    x = (rng.standard_normal(n) * 2.0 + 0.5).astype(np.float32)
    px = Placed.input(x)
    idx, shifted, theta = _core.statistical_topk(px.a, 0.08)
    assert px.unchanged()
    assert idx.dtype == np.int32 and shifted.dtype == np.float32 and len(idx) == len(shifted)
    # The kernel's own comparison is exact: indices, ascending, of exactly x > theta (f32).
    t32 = np.float32(theta)
    np.testing.assert_array_equal(idx, np.flatnonzero(x > t32))
    np.testing.assert_array_equal(shifted, x[idx] - t32)
    # theta vs float64 numpy. mean and the sum of squares are f32 sums of n terms: by the any-order
    # bound each is within n U sum|term|, so |dmean| <= n U mean|x|, |dvar| <= (n + 2) U var,
    # |dstd| <= (n/2 + 2) U std; plus 3U |theta| for q's and the final roundings.
    x64 = x.astype(np.float64)
    want = topk_reference_theta(x, 0.08)
    q = 1.4050716
    tol = n * U * np.abs(x64).mean() + (n / 2 + 2) * U * x64.std() * q + 3 * U * abs(want)
    assert abs(theta - want) <= tol
    # Against the reference threshold, membership may differ only within tol of it.
    ref_set = x64 > want
    got = np.zeros(n, bool)
    got[idx] = True
    assert (np.abs(x64[got != ref_set] - want) <= tol).all()


def test_topk_kept_count_near_k() -> None:
    # On N(0, 1) inputs the count is random around k = 0.08 d = 1105.9: binomial sd ~32, plus ~17
    # each from the estimated mean and std moving theta (sd ~40 in all, 3.6 % of k). Seeded, so
    # deterministic; bounds: every seed within 15 % (3.7 sd), the mean of 20 within 3 % (3.7 sd).
    d, f = 13824, 0.08
    counts = []
    for seed in range(20):
        x = np.random.default_rng(seed).standard_normal(d).astype(np.float32)
        counts.append(len(_core.statistical_topk(x, f)[0]))
    k = f * d
    assert all(abs(c - k) <= 0.15 * k for c in counts), counts
    assert abs(np.mean(counts) - k) <= 0.03 * k, counts


def test_topk_edge_cases() -> None:
    idx, shifted, theta = _core.statistical_topk(np.zeros(0, np.float32), 0.08)
    assert len(idx) == 0 and len(shifted) == 0
    idx, _, theta = _core.statistical_topk(np.full(9, 3.0, np.float32), 0.08)  # std 0: theta = x
    assert theta == 3.0 and len(idx) == 0  # strict: x > theta keeps nothing
    idx, shifted, theta = _core.statistical_topk(np.array([-1.0, 1.0], np.float32), 0.5)
    assert theta == 0.0 and idx.tolist() == [1] and shifted.tolist() == [1.0]


# ---------------------------------------------------------------- norms, RoPE, activations

VEC_SIZES = [0, 1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 19, 35, 63, 1003, 13824]


@pytest.mark.parametrize("n", VEC_SIZES)
def test_rms_norm(target: str, n: int, rng: np.random.Generator) -> None:
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    w = (rng.standard_normal(n) * 0.5).astype(np.float32)
    eps = 1e-6
    px, pw, out = Placed.input(x), Placed.input(w), Placed.output(n)
    _core.rms_norm(px.a, pw.a, out.a, eps)
    check_io(out, px, pw)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    ms = (x64**2).mean() if n else 0.0
    want = x64 / np.sqrt(ms + eps) * (1.0 + w64)
    # sum x^2: (n + 2) U relative (any order); mean, +eps, sqrt, 1/.. each <= U, halved by the
    # sqrt for the sum: the scale is within (n/2 + 4) U; then 1 + w (U |1 + w| abs, since w is
    # exact) and two products (2U).
    tol = ((n / 2 + 4) * U + 3 * U) * np.abs(want) + U * np.abs(x64 / np.sqrt(ms + eps))
    assert_within(out.a, want, tol)
    # In place (out is x) gives the same bits.
    inplace = Placed.input(x)
    _core.rms_norm(inplace.a, pw.a, inplace.a, eps)
    np.testing.assert_array_equal(inplace.a.view(np.uint32), out.a.view(np.uint32))


@pytest.mark.parametrize("m", [0, 2, 8, 14, 16, 30, 32, 34, 38, 128, 256, 2006])
def test_rope(target: str, m: int, rng: np.random.Generator) -> None:
    h = m // 2
    x = rng.standard_normal(m).astype(np.float32)
    ang = rng.uniform(-np.pi, np.pi, h)
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    px, pc, ps = Placed(x, OUT_CANARY), Placed.input(cos), Placed.input(sin)
    _core.rope(px.a, pc.a, ps.a)
    assert px.canaries_intact() and pc.unchanged() and ps.unchanged()
    a, b = x[:h].astype(np.float64), x[h:].astype(np.float64)
    c64, s64 = cos.astype(np.float64), sin.astype(np.float64)
    want = np.concatenate([a * c64 - b * s64, b * c64 + a * s64])
    # two products and a sum (or one FMA): <= 2U (|a c| + |b s|), resp. 2U (|b c| + |a s|)
    mag = np.concatenate([np.abs(a * c64) + np.abs(b * s64), np.abs(b * c64) + np.abs(a * s64)])
    assert_within(px.a, want, 2 * U * mag)


@pytest.mark.parametrize("pos", [0.0, 1.0, 17.0, 8191.5])
@pytest.mark.parametrize("base", [10000.0, 1e6])
@pytest.mark.parametrize("m", [2, 128, 256])
def test_rope_angles(pos: float, base: float, m: int) -> None:
    cos, sin = _core.rope_angles(pos, base, m)
    i = np.arange(m // 2, dtype=np.float64)
    ang = pos * base ** (-2.0 * i / m)
    # double, then rounded to f32: within half an f32 ulp of the float64 value, plus the angle's
    # float64 error (|ang| * 4 * 2^-53 from pow and the product) times |d cos| <= 1.
    for got, want in ((cos, np.cos(ang)), (sin, np.sin(ang))):
        tol = 0.5 * np.spacing(np.abs(want).astype(np.float32)).astype(np.float64) + ang * 2.0**-51
        assert_within(got, want, tol)


def gelu64(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_tol(x64: np.ndarray) -> np.ndarray:
    # inner = sqrt(2/pi)(x + 0.044715 x^3): 4 roundings, so |d inner| <= 4U |inner|-ish terms;
    # tanh moves it by (1 - t^2) |d inner| and adds its own 4 ulp (Highway Tanh, <= 8U absolute
    # as |t| <= 1); 1 + t and two products add 3U |out|. Twice that, for the loose 4-ulp claims.
    inner = math.sqrt(2.0 / math.pi) * (np.abs(x64) + 0.044715 * np.abs(x64) ** 3)
    t = np.tanh(math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64**3))
    dt = (1.0 - t * t) * 4 * U * inner + 8 * U
    return 2.0 * (0.5 * np.abs(x64) * (dt + U) + 3 * U * np.abs(gelu64(x64)))


def activation_input(n: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal(n) * 4.0
    extremes = [-100.0, -30.0, -9.0, -1e-3, 0.0, 1e-30, 9.0, 30.0, 100.0]
    x[: min(n, len(extremes))] = extremes[: min(n, len(extremes))]
    return x.astype(np.float32)


def run_unary(fn: Callable[..., None], x: np.ndarray, *args: float) -> np.ndarray:
    """Runs fn(x, *args, out) on placed buffers, checks them, checks in-place gives the same
    bits; returns the output."""
    px, out = Placed.input(x), Placed.output(len(x))
    fn(px.a, *args, out.a)
    check_io(out, px)
    inplace = Placed.input(x)
    fn(inplace.a, *args, inplace.a)
    np.testing.assert_array_equal(inplace.a.view(np.uint32), out.a.view(np.uint32))
    return out.a


@pytest.mark.parametrize("n", VEC_SIZES)
def test_gelu_tanh(target: str, n: int, rng: np.random.Generator) -> None:
    x = activation_input(n, rng)
    got = run_unary(_core.gelu_tanh, x)
    x64 = x.astype(np.float64)
    assert_within(got, gelu64(x64), gelu_tol(x64) + 1e-37)


@pytest.mark.parametrize("n", VEC_SIZES)
def test_gelu_mul(target: str, n: int, rng: np.random.Generator) -> None:
    g, u = activation_input(n, rng), (rng.standard_normal(n) * 2).astype(np.float32)
    pg, pu, out = Placed.input(g), Placed.input(u), Placed.output(n)
    _core.gelu_mul(pg.a, pu.a, out.a)
    check_io(out, pg, pu)
    g64, u64 = g.astype(np.float64), u.astype(np.float64)
    want = gelu64(g64) * u64
    assert_within(out.a, want, gelu_tol(g64) * np.abs(u64) + U * np.abs(want) + 1e-37)


@pytest.mark.parametrize("n", VEC_SIZES)
def test_softplus(target: str, n: int, rng: np.random.Generator) -> None:
    x = activation_input(n, rng)
    got = run_unary(_core.softplus, x)
    x64 = x.astype(np.float64)
    want = np.maximum(x64, 0) + np.log1p(np.exp(-np.abs(x64)))
    # max(x, 0) exact; exp (1 ulp) then log1p (2 ulp, derivative <= 1) give <= 6U |log1p term|
    # relative, and the add U |out|; doubled. exp(-100) is below f32's normal range: 2^-126 abs.
    assert_within(got, want, 2 * (6 * U * np.log1p(np.exp(-np.abs(x64))) + U * want) + 2.0**-126)


@pytest.mark.parametrize("n", VEC_SIZES)
@pytest.mark.parametrize("cap", [30.0, 50.0])
def test_softcap(target: str, n: int, cap: float, rng: np.random.Generator) -> None:
    x = activation_input(n, rng) * np.float32(10)
    got = run_unary(_core.softcap, x, cap)
    x64 = x.astype(np.float64)
    a = x64 / cap
    t = np.tanh(a)
    # x * (1/cap): 2U relative on a, moved by (1 - t^2); tanh 4 ulp (<= 8U |t|); the product U.
    tol = 2 * cap * ((1 - t * t) * 2 * U * np.abs(a) + 8 * U * np.abs(t) + U * np.abs(t))
    assert_within(got, cap * t, tol + 1e-37)


@pytest.mark.parametrize("n", [s for s in VEC_SIZES if s > 0])
def test_softmax(target: str, n: int, rng: np.random.Generator) -> None:
    x = activation_input(n, rng)
    got = run_unary(_core.softmax, x)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max())
    want = e / e.sum()
    # x - max: U |x - max| absolute on the exponent (relative on e); exp 1 ulp; the sum of n
    # terms (n + 2) U relative; 1/sum and the product 2U. Doubled for the exp claim's slack.
    rel = 2 * ((np.abs(x64 - x64.max()) + 1) * U + (n + 4) * U)
    assert_within(got, want, rel * want + 2.0**-126)
    assert abs(float(got.astype(np.float64).sum()) - 1.0) <= 2 * (n + 4) * U


# ------------------------------------------------------------- threads, GIL, zero-copy


@pytest.mark.parametrize("dtype", DTYPES + ["q4", "q5"])
def test_thread_count_does_not_change_results(
    dtype: str, threads: Callable[[int], None], rng: np.random.Generator
) -> None:
    # Kernels split outputs (rows, index ranges, column tiles) between threads, never a sum: the
    # bits must not depend on the thread count. Shapes give every kernel several parts.
    if dtype in MAKE_BLOCKS:
        w, scale = MAKE_BLOCKS[dtype](2000, 2304, rng)[0], None
    else:
        w, scale, _ = make_weights(dtype, 2000, 2304, rng)
    x = make_x(2304, rng, False)
    xt = make_x((5, 2304), rng, False)
    idx = make_idx(2000, 400, rng)
    u = make_x(400, rng, False)
    runs: dict[int, list[np.ndarray]] = {}
    for n in (1, 2):
        threads(n)
        outs = [np.empty(2000, np.float32), np.empty((5, 2000), np.float32),
                np.empty(400, np.float32), np.empty(2304, np.float32)]
        _core.matvec(w, x, outs[0], scale=scale)
        _core.matmul(w, xt, outs[1], scale=scale)
        _core.masked_matvec(w, x, idx, outs[2], scale=scale)
        _core.sparse_vecmat(w, u, idx, outs[3], scale=scale)
        runs[n] = outs
    for a, b in zip(runs[1], runs[2]):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def ticks_during(call: Callable[[], object], margin: float) -> tuple[int, float]:
    """Runs call() while a ticker thread stamps the time about every ms (each stamp needs the
    GIL). Returns (stamps more than `margin` s inside the call, the call's duration)."""
    stamps: list[float] = []
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0.001)

    th = threading.Thread(target=ticker)
    th.start()
    try:
        time.sleep(0.02)
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
    finally:
        stop.set()
        th.join()
    return sum(t0 + margin < s < t1 - margin for s in stamps), t1 - t0


def long_call(make: Callable[[int], Callable[[], object]], n: int, seconds: float
              ) -> tuple[Callable[[], object], int]:
    """(make(m), m) for an m whose call lasts about `seconds`: grows n until one call takes a
    quarter of that (so fixed costs and a cold first call do not skew the estimate), then
    scales linearly."""
    while True:
        call = make(n)
        t = time.perf_counter()
        call()
        dt = time.perf_counter() - t
        if dt >= seconds / 4:
            break
        n *= 4
    m = int(n * seconds / dt) + 1
    return make(m), m


def test_gil_released_during_kernel(threads: Callable[[int], None]) -> None:
    # One matmul lasting ~0.6 s. Had it held the GIL, the ticker could stamp only around the
    # call: the interpreter hands the GIL over at most every switch interval (5 ms by default),
    # so a held GIL admits stamps at most a few ms past the start or before the end. Stamps more
    # than 0.15 s inside prove it was released; released, the ticker stamps ~300 times there,
    # so requiring one cannot flake. A negative control, a C call that holds the GIL as long,
    # shows the method tells the two apart. The slowest target keeps the buffers small.
    threads(1)
    margin = 0.15
    assert margin >= 20 * sys.getswitchinterval()
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1024, 1024)).astype(np.float32)

    def matmul(tokens: int) -> Callable[[], object]:
        x = rng.standard_normal((tokens, 1024)).astype(np.float32)
        out = np.empty((tokens, 1024), np.float32)
        return lambda: _core.matmul(w, x, out)

    _core.set_target(_core.supported_targets()[-1][1])
    try:
        call, tokens = long_call(matmul, 4, 0.6)
        ticks, dt = ticks_during(call, margin)
        if dt < 3 * margin:  # the machine sped up since calibration: once more, longer
            ticks, dt = ticks_during(matmul(2 * tokens), margin)
    finally:
        _core.set_target(0)
    assert dt >= 3 * margin, f"kernel too short ({dt:.3f} s) to judge"
    assert ticks > 0, f"no ticks during a {dt:.3f} s kernel: the GIL was held"

    if getattr(sys, "_is_gil_enabled", lambda: True)():
        # sum() over a range is one C loop that never runs bytecode, so never yields the GIL.
        call, n = long_call(lambda n: lambda: sum(range(n)), 10**5, 0.6)
        ticks, dt = ticks_during(call, margin)
        if dt < 3 * margin:
            ticks, dt = ticks_during(lambda: sum(range(2 * n)), margin)
        assert dt >= 3 * margin and ticks == 0, (ticks, dt)


def test_outputs_written_in_place() -> None:
    # The kernel writes into the caller's array (a view into buf), never a converted copy.
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    x = np.ones(4, np.float32)
    buf = np.zeros(10, np.float32)
    out = buf[5:8]
    _core.matvec(w, x, out)
    assert buf[5:8].tolist() == [6.0, 22.0, 38.0] and (buf[:5] == 0).all() and (buf[8:] == 0).all()
    y = np.full(7, -1.0, np.float32)
    _core.gelu_tanh(np.zeros(7, np.float32), y)
    assert (y == 0).all()


# ---------------------------------------------------------------------------- bad input


def good_args() -> dict[str, dict[str, np.ndarray]]:
    """Valid keyword arguments per kernel; the bad-input tests break one at a time."""
    f32 = np.float32
    return {
        "matvec": dict(w=np.ones((6, 5), f32), x=np.ones(5, f32), out=np.empty(6, f32)),
        "matmul": dict(w=np.ones((6, 5), f32), x=np.ones((3, 5), f32), out=np.empty((3, 6), f32)),
        "masked_matvec": dict(w=np.ones((6, 5), f32), x=np.ones(5, f32),
                              idx=np.array([1, 4], np.int32), out=np.empty(2, f32)),
        "sparse_vecmat": dict(w=np.ones((6, 5), f32), u=np.ones(2, f32),
                              idx=np.array([1, 4], np.int32), out=np.empty(5, f32)),
        "rms_norm": dict(x=np.ones(5, f32), w=np.ones(5, f32), out=np.empty(5, f32)),
        "gelu_tanh": dict(x=np.ones(5, f32), out=np.empty(5, f32)),
        "gelu_mul": dict(gate=np.ones(5, f32), up=np.ones(5, f32), out=np.empty(5, f32)),
        "softplus": dict(x=np.ones(5, f32), out=np.empty(5, f32)),
        "softmax": dict(x=np.ones(5, f32), out=np.empty(5, f32)),
    }


ARG_CASES = [(k, a) for k, args in good_args().items() for a in args]


def call(kernel: str, args: dict[str, Any]) -> None:
    getattr(_core, kernel)(**args)


def test_good_args_are_good() -> None:  # so that each failure below is due to its one change
    for kernel, args in good_args().items():
        call(kernel, args)


@pytest.mark.parametrize("kernel, name", ARG_CASES, ids=[f"{k}-{a}" for k, a in ARG_CASES])
def test_wrong_dtype_is_type_error(kernel: str, name: str) -> None:
    args = good_args()[kernel]
    a = args[name]
    args[name] = a.astype(np.float64 if a.dtype != np.float64 else np.float32)
    with pytest.raises(TypeError):
        call(kernel, args)
    if name == "w":
        args[name] = a.astype(np.int16)
        with pytest.raises(TypeError):
            call(kernel, args)


@pytest.mark.parametrize("kernel, name", ARG_CASES, ids=[f"{k}-{a}" for k, a in ARG_CASES])
def test_non_contiguous_is_value_error(kernel: str, name: str) -> None:
    args = good_args()[kernel]
    a = args[name]
    strided = np.empty((2 * a.shape[0],) + a.shape[1:], a.dtype)[::2]
    strided[...] = a
    args[name] = strided
    with pytest.raises(ValueError):
        call(kernel, args)
    if a.ndim == 2:  # Fortran order: right shape, wrong layout
        args[name] = np.asfortranarray(a)
        with pytest.raises(ValueError):
            call(kernel, args)


@pytest.mark.parametrize("kernel, name", ARG_CASES, ids=[f"{k}-{a}" for k, a in ARG_CASES])
def test_shape_mismatch_is_value_error(kernel: str, name: str) -> None:
    args = good_args()[kernel]
    a = args[name]
    bad_shapes = [a.shape[:-1] + (a.shape[-1] + 1,), a.shape + (1,), ()]
    if name == "out" and kernel in ("masked_matvec", "sparse_vecmat", "matvec"):
        bad_shapes.append((a.shape[0] - 1,))
    for shape in bad_shapes:
        args[name] = np.zeros(shape, a.dtype)
        if kernel in ("gelu_tanh", "softplus", "softmax") and name == "x" and len(shape) == 1:
            args["out"] = np.empty(shape, np.float32)  # a longer x with a matching out is valid
            continue
        if kernel == "rms_norm" and name == "x" and len(shape) == 1:
            continue  # x fixes n; w and out then mismatch, covered by their own cases
        if kernel == "gelu_mul" and name == "gate" and len(shape) == 1:
            continue
        if kernel in ("masked_matvec", "sparse_vecmat") and name == "idx" and len(shape) == 1:
            continue  # idx fixes n; out (or u) then mismatches, covered by their own cases
        with pytest.raises(ValueError):
            call(kernel, args)
        args = good_args()[kernel]


@pytest.mark.parametrize("kernel", list(good_args()))
def test_read_only_out_is_value_error(kernel: str) -> None:
    args = good_args()[kernel]
    args["out"].flags.writeable = False
    with pytest.raises(ValueError):
        call(kernel, args)
    x = np.ones(4, np.float32)
    x.flags.writeable = False
    with pytest.raises(ValueError):  # rope writes x
        _core.rope(x, np.ones(2, np.float32), np.ones(2, np.float32))


def test_weight_scale_rules() -> None:
    q = np.ones((3, 4), np.int8)
    x, out = np.ones(4, np.float32), np.empty(3, np.float32)
    with pytest.raises(ValueError):  # int8 needs a scale
        _core.matvec(q, x, out)
    with pytest.raises(ValueError):  # a scale is only for int8
        _core.matvec(np.ones((3, 4), np.uint16), x, out, scale=np.ones(3, np.float32))
    with pytest.raises(ValueError):
        _core.matvec(q, x, out, scale=np.ones(4, np.float32))
    with pytest.raises(TypeError):
        _core.matvec(q, x, out, scale=np.ones(3, np.float64))


def test_bad_scalars() -> None:
    x = np.ones(8, np.float32)
    for f in (0.0, 1.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError):
            _core.statistical_topk(x, f)
    with pytest.raises(TypeError):
        _core.statistical_topk(x.astype(np.float64), 0.08)
    for p in (0.0, 1.0, float("nan"), -1.0):
        with pytest.raises(ValueError):
            _core.inv_normal_cdf(p)
    with pytest.raises(ValueError):
        _core.softmax(np.zeros(0, np.float32), np.zeros(0, np.float32))
    with pytest.raises(ValueError):
        _core.softcap(x, 0.0, np.empty(8, np.float32))
    with pytest.raises(ValueError):
        _core.rope(np.ones(5, np.float32), np.ones(2, np.float32), np.ones(2, np.float32))
    for m in (0, 3):
        with pytest.raises(ValueError):
            _core.rope_angles(1.0, 10000.0, m)
    with pytest.raises(ValueError):
        _core.set_num_threads(0)
    with pytest.raises(ValueError):
        _core.set_target(12345)


# ------------------------------------------------------------------------ bandwidth probe


def test_read_bandwidth_probe(threads: Callable[[int], None]) -> None:
    threads(2)
    samples = _core.read_bandwidth_samples(nbytes=1 << 20, threads=1, repeats=3)
    assert len(samples) == 3 and all(math.isfinite(s) and s > 0 for s in samples)
    assert _core.num_threads() == 2  # restored after forcing 1
    gbps = _core.read_bandwidth(nbytes=(1 << 20) + 3, threads=None, repeats=1)
    assert math.isfinite(gbps) and gbps > 0
    for bad in (dict(nbytes=0), dict(threads=0), dict(repeats=0)):
        with pytest.raises(ValueError):
            _core.read_bandwidth(**bad)
