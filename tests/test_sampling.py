"""The sampler against exact distributions computed here from the equations (float64, a full
sort): chi-square goodness of fit of many draws with a fixed seed, and the exact set of
surviving tokens on a Gemma-sized vocabulary.

The chain (llama.cpp's order): penalties over the last repeat_last_n tokens -> top_k -> top_p
-> min_p on the untempered distribution -> temperature last -> draw.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from spark_infer.sampling import Sampler, SamplingParams

DRAWS = 20000
P_MIN = 1e-3   # the fixed seed makes each p-value a fixed number; a wrong distribution gives ~0


def exact_probs(logits: np.ndarray, p: SamplingParams, history=()) -> np.ndarray:
    """The next-token distribution, straight from the equations (see sampling.py)."""
    x = np.asarray(logits, dtype=np.float64).copy()
    n = p.repeat_last_n
    window = list(history)[-n:] if n > 0 else list(history) if n == -1 else []
    for t, c in Counter(window).items():
        r = p.repetition_penalty
        x[t] = x[t] / r if x[t] > 0 else x[t] * r
        x[t] -= p.frequency_penalty * c + p.presence_penalty * (c > 0)
    q = np.zeros(x.size)
    if p.temperature == 0:
        q[np.argmax(x)] = 1.0
        return q
    order = np.argsort(-x, kind="stable")
    if p.top_k > 0:
        order = order[:p.top_k]
    prob = np.exp(x[order] - x[order[0]])
    prob /= prob.sum()
    if p.top_p < 1:
        cum = np.cumsum(prob)
        keep = int(np.argmax(cum >= p.top_p)) + 1   # the token that crosses top_p stays
        # The test data must not sit on the edge, where the sampler's float32 weights (each
        # within 6e-8 relative, so the mass within ~1.2e-7) could decide otherwise.
        edge = 2e-7
        assert abs(cum[keep - 1] - p.top_p) > edge and (keep == 1 or abs(cum[keep - 2] - p.top_p) > edge)
        order, prob = order[:keep], prob[:keep]
    if p.min_p > 0:
        order = order[prob >= p.min_p * prob[0]]
    w = np.exp((x[order] - x[order].max()) / p.temperature)
    q[order] = w / w.sum()
    return q


def chi2_sf_closed_form(stat: float, df: int) -> float:
    """P(chi-square with df degrees of freedom >= stat): the regularized upper incomplete
    gamma Q(df/2, stat/2) in closed form (integer df)."""
    h = stat / 2
    if df % 2 == 0:
        return math.exp(-h) * sum(h ** i / math.factorial(i) for i in range(df // 2))
    return math.erfc(math.sqrt(h)) + math.exp(-h) * sum(
        h ** (i - 0.5) / math.gamma(i + 0.5) for i in range(1, (df + 1) // 2))


def chi2_sf(stat: float, df: int) -> float:
    try:
        from scipy.stats import chi2   # not a dependency: used when installed
    except ImportError:
        return chi2_sf_closed_form(stat, df)
    return float(chi2.sf(stat, df))


@pytest.mark.parametrize("stat, df", [(3.841459, 1), (5.991465, 2), (18.307038, 10),
                                      (30.143527, 19)])
def test_chi2_sf_closed_form(stat, df):
    # Tabulated 95 % quantiles: 5 % of the distribution lies above each.
    assert chi2_sf_closed_form(stat, df) == pytest.approx(0.05, rel=1e-5)
    assert chi2_sf(stat, df) == pytest.approx(0.05, rel=1e-5)


def draw_counts(logits: np.ndarray, p: SamplingParams, history=(), n: int = DRAWS) -> np.ndarray:
    sampler = Sampler(p)
    counts = np.zeros(logits.size, dtype=np.int64)
    for _ in range(n):
        counts[sampler(logits, history)] += 1
    return counts


def goodness_of_fit(counts: np.ndarray, q: np.ndarray) -> float:
    """p-value of the counts under q; tokens q drops must never be drawn."""
    n = int(counts.sum())
    assert counts[q == 0].sum() == 0, np.flatnonzero((q == 0) & (counts > 0))
    e, o = n * q[q > 0], counts[q > 0].astype(np.float64)
    small = e < 5   # pool rare tokens into one bin, as the test's approximation needs
    if small.any():
        e = np.append(e[~small], e[small].sum())
        o = np.append(o[~small], o[small].sum())
    if e.size == 1:
        return 1.0
    return chi2_sf(float(np.sum((o - e) ** 2 / e)), e.size - 1)


LOGITS = (np.random.default_rng(7).normal(0.0, 2.0, 48)).astype(np.float32)
HISTORY = [int(np.argmax(LOGITS))] * 3 + [5, 5, 9, 30, 31] + [int(np.argsort(LOGITS)[-2])] * 2

CASES = {
    "temperature 1": dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    "temperature 0.6": dict(temperature=0.6, top_k=0, top_p=1.0, min_p=0.0),
    "top_k 8, t 1.7": dict(temperature=1.7, top_k=8, top_p=1.0, min_p=0.0),
    "top_p 0.8, t 0.5": dict(temperature=0.5, top_k=0, top_p=0.8, min_p=0.0),
    "top_p 0.9, t 2": dict(temperature=2.0, top_k=0, top_p=0.9, min_p=0.0),
    "min_p 0.05, t 2": dict(temperature=2.0, top_k=0, top_p=1.0, min_p=0.05),
    "defaults": dict(),
    "all filters, t 1.3": dict(temperature=1.3, top_k=20, top_p=0.9, min_p=0.02),
    "penalties, window 6": dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                                repetition_penalty=1.5, frequency_penalty=0.4,
                                presence_penalty=0.3, repeat_last_n=6),
    "penalties, whole history": dict(temperature=0.9, top_k=0, top_p=0.95, min_p=0.0,
                                     repetition_penalty=1.3, frequency_penalty=-0.2,
                                     presence_penalty=0.5, repeat_last_n=-1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_draws_follow_the_exact_distribution(name):
    p = SamplingParams(seed=1234, **CASES[name])
    q = exact_probs(LOGITS, p, HISTORY)
    counts = draw_counts(LOGITS, p, HISTORY)
    assert goodness_of_fit(counts, q) > P_MIN, (name, counts, np.round(q * DRAWS))


@pytest.mark.parametrize("name", ["top_p 0.8, t 0.5", "top_p 0.9, t 2", "min_p 0.05, t 2"])
def test_filters_see_the_untempered_distribution(name):
    # These cases tell llama.cpp's order from "temperature first": the two keep different sets.
    p = SamplingParams(**CASES[name])
    tempered_first = exact_probs(LOGITS / p.temperature,
                                 SamplingParams(**{**CASES[name], "temperature": 1.0}))
    q = exact_probs(LOGITS, p)
    assert set(np.flatnonzero(q)) != set(np.flatnonzero(tempered_first))


def test_penalties_count_only_the_window():
    # The window holds the last 2 tokens; the top token seen before it is not penalized.
    top = int(np.argmax(LOGITS))
    other = int(np.argsort(LOGITS)[0])
    p = SamplingParams(temperature=0, repetition_penalty=50.0, repeat_last_n=2)
    assert Sampler(p)(LOGITS, [top, other, other]) == top
    assert Sampler(p)(LOGITS, [other, top, other]) != top
    off = SamplingParams(temperature=0, repetition_penalty=50.0, repeat_last_n=0)
    assert Sampler(off)(LOGITS, [top] * 5) == top


def test_penalty_equations():
    x = np.array([2.0, -1.0, 0.5, 3.0], dtype=np.float32)
    p = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25,
                       repeat_last_n=-1)
    got = Sampler(p).penalize(x, [0, 0, 0, 1, 3])
    # positive logits divided, negative multiplied; then count * 0.5 + 0.25 once.
    np.testing.assert_allclose(got, [2 / 2 - 1.5 - 0.25, -2 - 0.5 - 0.25, 0.5, 3 / 2 - 0.5 - 0.25])
    assert x[0] == 2.0   # the caller's logits are untouched


VOCAB = 262144   # Gemma 3's


@pytest.mark.parametrize("kw", [
    dict(top_k=0, top_p=0.5, min_p=0.0),      # spread-out mass: the sort grows to most of V
    dict(top_k=0, top_p=0.93, min_p=0.0),
    dict(top_k=0, top_p=0.85, min_p=0.05),
    dict(top_k=0, top_p=1.0, min_p=0.01),
    dict(top_k=1000, top_p=0.7, min_p=0.0),
    dict(top_k=40, top_p=1.0, min_p=0.0),
])
@pytest.mark.parametrize("shape", ["flat", "peaked"])
def test_survivors_on_a_full_vocabulary(kw, shape):
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.0 if shape == "flat" else 3.0, VOCAB).astype(np.float32)
    p = SamplingParams(temperature=1.0, **kw)
    ids, kept = Sampler(p).candidates(x)
    got = set(range(VOCAB)) if ids is None else set(ids.tolist())
    assert got == set(np.flatnonzero(exact_probs(x, p)).tolist())
    if ids is not None:
        np.testing.assert_array_equal(kept, x[ids])


def test_draws_on_a_full_vocabulary():
    # 30 likely tokens spread over a vocabulary that is not a multiple of the sampler's blocks
    # (one in the last, partial block); the rest are ~e^-33 each, never drawn in practice.
    V = VOCAB + 100
    rng = np.random.default_rng(11)
    x = np.full(V, -40.0, dtype=np.float32)
    hot = rng.choice(VOCAB, 30, replace=False)
    hot[-1] = V - 3
    x[hot] = rng.normal(0.0, 1.5, hot.size)
    p = SamplingParams(temperature=1.2, top_k=0, top_p=1.0, min_p=0.0, seed=99)
    counts = draw_counts(x, p, n=5000)
    assert counts[hot].sum() == 5000
    assert goodness_of_fit(counts, exact_probs(x, p)) > P_MIN


def test_greedy_is_the_argmax_after_penalties():
    top = int(np.argmax(LOGITS))
    p = SamplingParams(temperature=0, repetition_penalty=100.0)
    assert Sampler(p)(LOGITS) == top
    assert Sampler(p)(LOGITS, [top]) == int(np.argmax(exact_probs(LOGITS, p, [top])))
    assert Sampler(p)(LOGITS, [top]) != top


@pytest.mark.parametrize("kwargs", [
    dict(repeat_last_n=-2), dict(repeat_last_n=1.5), dict(repeat_last_n=True),
    dict(frequency_penalty=2.5), dict(presence_penalty=-3.0), dict(presence_penalty=float("nan")),
    dict(frequency_penalty="1"), dict(top_k=2.0), dict(repetition_penalty=-1.0),
])
def test_bad_values_are_value_errors(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kwargs)
