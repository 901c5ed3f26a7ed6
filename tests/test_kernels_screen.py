"""The LM-head screen's kernel (_core.screen_scores, cpp/ops/screen.h) on every SIMD target,
with and without AVX512_VNNI, against the product written from its definition in float64
(the integer dots of the codes with x's per-row int8 quantization, computed here in int64)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import set_vnni, vnni_modes
from spark_infer import _core
from spark_infer.weights.screen4 import SCREEN_GROUP, quantize_screen4, screen4_shape


def scores_from_definition(packed: np.ndarray, rows: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s [rows], bound [rows]) from screen.h's formula, reading the bytes as the layout says:
    tile t = row // 4, r = row % 4; block g's codes at [(4 g + r) * 64, +64), low nibble column
    128 g + j, high 128 g + 64 + j; its f32 d at 256 G + (4 g + r) * 4. bound: a float32
    rounding allowance (the kernel sums in f32)."""
    cols = x.shape[0]
    G = cols // SCREEN_GROUP
    a = np.float32(np.abs(x).max())
    inv = np.float32(127) / a if a > 0 else np.float32(0)
    q = np.rint(x.astype(np.float32) * inv).astype(np.int64)
    s = np.zeros(rows)
    mag = np.zeros(rows)
    for v in range(rows):
        tile, r = packed[v // 4], v % 4
        for g in range(G):
            b = tile[(4 * g + r) * 64:(4 * g + r + 1) * 64].astype(np.int64)
            c = np.concatenate([b & 15, b >> 4])
            d = float(tile[256 * G + (4 * g + r) * 4:256 * G + (4 * g + r + 1) * 4].view("<f4")[0])
            qg = q[g * SCREEN_GROUP:(g + 1) * SCREEN_GROUP]
            s[v] += d * (int(c @ qg) - 7.5 * int(qg.sum()))
            mag[v] += abs(d) * (np.abs(c - 7.5) * np.abs(qg)).sum()
    step = float(a) / 127
    return step * s, step * mag * (4 * G + 8) * 2.0 ** -24


@pytest.mark.parametrize("rows,cols", [(1, 128), (3, 256), (4, 128), (9, 640), (70, 384)])
def test_screen_scores_match_definition(target: str, rows: int, cols: int) -> None:
    rng = np.random.default_rng(rows * 1000 + cols)
    w = rng.standard_normal((rows, cols)).astype(np.float32) * rng.uniform(0.01, 3, (rows, 1)).astype(np.float32)
    w[0, :SCREEN_GROUP] = 0            # a block with d == 0
    packed = quantize_screen4(w)
    x = (rng.standard_normal(cols) * 2).astype(np.float32)
    x[5] = np.abs(x).max() * 1.0       # ties between the largest |x|
    want, bound = scores_from_definition(packed, rows, x)
    for vnni in vnni_modes(target):
        set_vnni(vnni)
        out = np.full(rows, np.nan, dtype=np.float32)
        _core.screen_scores(packed, rows, x, out)
        assert np.all(np.abs(out - want) <= bound + 1e-30), (target, vnni, np.abs(out - want).max())
    set_vnni(None)


def test_screen_scores_extremes(target: str) -> None:
    """Codes 0 and 15 everywhere against q = +-127 (the largest integer dots), x == 0 (all
    scores 0), and NaN / inf in x (all scores NaN, never a stale or partial result)."""
    rows, cols = 6, 256
    w = np.where(np.arange(cols) % 2 == 0, 1.0, -1.0).astype(np.float32) * np.ones((rows, 1), np.float32)
    packed = quantize_screen4(w)
    x = np.where(np.arange(cols) % 2 == 0, 3.0, -3.0).astype(np.float32)
    want, bound = scores_from_definition(packed, rows, x)
    for vnni in vnni_modes(target):
        set_vnni(vnni)
        out = np.zeros(rows, dtype=np.float32)
        _core.screen_scores(packed, rows, x, out)
        assert np.all(np.abs(out - want) <= bound), (target, vnni)
        assert np.allclose(out, 3 * cols, rtol=1e-6)    # every level is +-1 exactly: d * 7.5 == 1
        _core.screen_scores(packed, rows, np.zeros(cols, np.float32), out)
        assert np.all(out == 0)
        for bad in (np.nan, np.inf):
            xb = x.copy()
            xb[7] = bad
            _core.screen_scores(packed, rows, xb, out)
            assert np.all(np.isnan(out))
    set_vnni(None)


def test_screen_scores_threads_identical() -> None:
    """Threads split tiles, never sums: any thread count gives the same bits."""
    rng = np.random.default_rng(7)
    rows, cols = 4099, 640          # many parts, and a last tile with 3 real rows
    packed = quantize_screen4(rng.standard_normal((rows, cols)).astype(np.float32))
    x = rng.standard_normal(cols).astype(np.float32)
    before = _core.num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            _core.set_num_threads(n)
            out = np.zeros(rows, dtype=np.float32)
            _core.screen_scores(packed, rows, x, out)
            outs.append(out)
    finally:
        _core.set_num_threads(before)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    want, bound = scores_from_definition(packed[:3], 12, x)
    assert np.all(np.abs(outs[0][:12] - want) <= bound)


def test_screen_scores_bad_input() -> None:
    packed = quantize_screen4(np.ones((5, 128), np.float32))
    out = np.zeros(5, np.float32)
    x = np.ones(128, np.float32)
    with pytest.raises(ValueError):
        _core.screen_scores(packed, 0, x, out)
    with pytest.raises(ValueError):
        _core.screen_scores(packed, 5, np.ones(100, np.float32), out)
    with pytest.raises((ValueError, TypeError)):
        _core.screen_scores(packed[:1], 5, x, out)      # too few tiles for 5 rows
    with pytest.raises((ValueError, TypeError)):
        _core.screen_scores(packed, 5, x.astype(np.float64), out)
    with pytest.raises((ValueError, TypeError)):
        _core.screen_scores(packed, 5, x, np.zeros(4, np.float32))
    assert screen4_shape(5, 128) == packed.shape


@pytest.mark.parametrize("case", ["normal", "ties", "few_values", "all_equal", "one", "wide", "inf"])
def test_kth_largest_is_exact(case: str) -> None:
    """_core.kth_largest (the screened head's cap on flat distributions) against np.partition."""
    rng = np.random.default_rng(len(case))
    x = {"normal": rng.standard_normal(100_000) * 3,
         "ties": np.round(rng.standard_normal(50_000) * 4) / 4,
         "few_values": rng.choice([-1.0, 0.5, 2.0], 9_000),
         "all_equal": np.full(5_000, 1.25),
         "one": np.array([7.0]),
         "wide": np.concatenate([rng.standard_normal(3_000), [3e38, -3e38, 1e-40, -1e-40]]),
         "inf": np.concatenate([rng.standard_normal(3_000), [np.inf, -np.inf, np.inf]])}[case]
    x = x.astype(np.float32)
    for k in sorted({1, min(2, len(x)), len(x) // 3 + 1, min(4096, len(x)), len(x)}):
        want = -np.partition(-x, k - 1)[k - 1]
        assert _core.kth_largest(x, k) == want, (case, k)
    with pytest.raises(ValueError):
        _core.kth_largest(x, 0)
    with pytest.raises(ValueError):
        _core.kth_largest(x, len(x) + 1)
    with pytest.raises(ValueError):
        _core.kth_largest(np.array([1.0, np.nan], np.float32), 1)


@pytest.mark.parametrize("case", ["peaked", "flat", "ties_at_kth", "few", "nan", "all_equal"])
def test_screen_kept_matches_definition(target: str, case: str) -> None:
    """_core.screen_kept (which logits the screened head recomputes) against numpy from the
    definition: x_i >= max(max(x) - margin, the cap-th largest), NaN never kept."""
    rng = np.random.default_rng(len(case))
    n = 262_144 if case in ("peaked", "flat") else 20_000
    x = {"peaked": rng.standard_normal(n) * 3,            # few within the margin: no cap
         "flat": rng.standard_normal(n) * 0.5,             # most within it: the cap binds
         "ties_at_kth": np.round(rng.standard_normal(n) * 2) / 2,
         "few": rng.standard_normal(n),
         "nan": rng.standard_normal(n),
         "all_equal": np.zeros(n)}[case].astype(np.float32)
    if case == "nan":
        x[rng.integers(0, n, 50)] = np.nan
    valid = x[~np.isnan(x)]
    for margin, cap in [(10.0, 4096), (1.0, 4096), (3.0, 64), (14.0, 4096), (0.0, 1), (10.0, n + 5)]:
        floor = valid.max() - np.float32(margin)
        kth = -np.partition(-valid, cap - 1)[cap - 1] if cap <= len(valid) else -np.inf
        want = np.flatnonzero(x >= max(floor, kth))
        got = _core.screen_kept(x, margin, cap)
        assert np.array_equal(got, want), (case, margin, cap, len(got), len(want))


def test_screen_kept_bad_input() -> None:
    x = np.zeros(10, np.float32)
    for margin in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError):
            _core.screen_kept(x, margin, 4)
    with pytest.raises(ValueError):
        _core.screen_kept(x, 1.0, 0)
    with pytest.raises((ValueError, TypeError)):
        _core.screen_kept(x.astype(np.float64), 1.0, 4)
    assert len(_core.screen_kept(np.zeros(0, np.float32), 1.0, 4)) == 0


def test_screen_scores_of_several_rows(target: str) -> None:
    """x [T, cols] (a prefill chunk, one pass over the screen): each row against the definition,
    bit-identical to scoring it alone, and a row with a NaN gets NaN scores while the others
    keep theirs."""
    rng = np.random.default_rng(11)
    rows, cols, T = 37, 256, 5
    packed = quantize_screen4(rng.standard_normal((rows, cols)).astype(np.float32))
    x = (rng.standard_normal((T, cols)) * rng.uniform(0.1, 10, (T, 1))).astype(np.float32)
    x[3, 17] = np.nan
    for vnni in vnni_modes(target):
        set_vnni(vnni)
        out = np.zeros((T, rows), dtype=np.float32)
        _core.screen_scores(packed, rows, x, out)
        for t in range(T):
            alone = np.zeros(rows, dtype=np.float32)
            _core.screen_scores(packed, rows, np.ascontiguousarray(x[t]), alone)
            if t == 3:
                assert np.all(np.isnan(out[t])) and np.all(np.isnan(alone))
                continue
            assert np.array_equal(out[t], alone), (target, vnni, t)
            want, bound = scores_from_definition(packed, rows, x[t])
            assert np.all(np.abs(out[t] - want) <= bound), (target, vnni, t)
    set_vnni(None)
    with pytest.raises((ValueError, TypeError)):
        _core.screen_scores(packed, rows, x, np.zeros((T - 1, rows), np.float32))
