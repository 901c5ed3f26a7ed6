"""Sampling parameters (declared once) and the sampler over one row of logits.

The chain is llama.cpp's default order (the `samplers` of common/common.h: penalties -> dry ->
top_n_sigma -> top_k -> typical -> top_p -> min_p -> xtc -> temperature, then the draw; dry,
top_n_sigma, typical and xtc are off by default there and absent here), temperature LAST:

1. penalties, on the logits of the tokens among the last `repeat_last_n` of the history (the
   caller passes prompt text tokens and generated tokens, not the chat template's control ids):
   with c the token's count there, `l <- l / r if l > 0 else l * r` (r = repetition_penalty),
   then `l <- l - frequency_penalty * c - presence_penalty * [c > 0]` (OpenAI's definition);
2. top_k: keep the k largest logits (k = 0: all);
3. top_p: softmax over what is left (untempered); keep the smallest prefix, most likely first,
   whose mass reaches top_p (the token that crosses it is kept);
4. min_p: keep tokens whose untempered probability is at least min_p times the largest's
   (the same as logit >= max logit + log(min_p));
5. temperature: divide the survivors' logits by it and draw from their softmax.

top_p and min_p each keep a prefix of the same descending order, so together they keep the
shorter one: the result does not depend on which runs first, and min_p's set (found in O(V),
no sort) bounds what top_p must sort. temperature == 0 is greedy: the argmax after the
penalties (steps 2-4 never drop the argmax).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["SamplingParams", "Sampler"]

# top_p without top_k / min_p: sort the largest logits first, growing by this factor until their
# mass reaches top_p (a peaked distribution sorts tens of tokens, not the whole vocabulary).
_FIRST_SORT = 64
_GROW = 8
# _largest: the sample (every _STRIDE-th entry) whose k-th largest bounds the candidates.
_STRIDE = 16
_BLOCK = 512   # _draw's block


def _largest(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries of x, in no order (ties at the k-th value: any of them).

    argpartition over the 262k logits costs ~2 ms; instead the k-th largest v of a strided
    sample is a bound: at least k entries of x are >= v (those of the sample), so they hold the
    k largest, and there are about _STRIDE * k of them to partition (~0.2 ms for k = 40).
    """
    n = x.size
    if k >= n:
        return np.arange(n)
    sample = x[::_STRIDE]
    if sample.size <= k:
        return np.argpartition(x, n - k)[n - k:]
    v = np.partition(sample, sample.size - k)[sample.size - k]
    c = np.flatnonzero(x >= v)
    return c[np.argpartition(x[c], c.size - k)[c.size - k:]]


def _draw(w: np.ndarray, u: float) -> int:
    """Index i drawn with probability w[i] / sum(w) (w >= 0 float32, u uniform in [0, 1)).

    A float64 cumsum over 262k weights costs ~2.5 ms; sums of blocks of _BLOCK entries pick
    the block, then a cumsum inside it picks the entry.
    """
    n = w.size
    nb = n // _BLOCK if n > 8 * _BLOCK else 0
    sums = np.append(w[:nb * _BLOCK].reshape(nb, _BLOCK).sum(axis=1, dtype=np.float64),
                     w[nb * _BLOCK:].sum(dtype=np.float64))
    cum = np.cumsum(sums)
    target = u * cum[-1]
    j = min(int(np.searchsorted(cum, target, side="right")), nb)
    while sums[j] == 0:   # rounding can land on an empty block: step back to a weighted one
        j -= 1
    lo = j * _BLOCK
    seg = w[lo:lo + _BLOCK] if j < nb else w[lo:]
    inner = np.cumsum(seg, dtype=np.float64)
    i = int(np.searchsorted(inner, target - (cum[j - 1] if j else 0.0), side="right"))
    # The block's sum and its cumsum round differently: never step past its last weighted entry.
    return lo + min(i, int(np.flatnonzero(seg)[-1]))


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. Names and defaults follow llama-cpp-python; the order of
    the steps is llama.cpp's (see the module docstring).

    temperature: 0 is greedy; > 0 divides the logits that survive the filters, last.
    top_k: keep the k most likely tokens (0: all).
    top_p: keep the smallest set whose probability reaches top_p (1.0: all), in (0, 1].
    min_p: drop tokens whose probability is below min_p times the most likely one's (0: none),
        in [0, 1).
    repetition_penalty: divide positive (multiply non-positive) logits of tokens in the penalty
        window by this; 1.0 is none; > 0.
    repeat_last_n: the penalty window: the last n tokens of the prompt's text and the output
        (64; 0: no penalties; -1: the whole context).
    frequency_penalty: subtract this times the token's count in the window (OpenAI), in [-2, 2].
    presence_penalty: subtract this once from every token in the window (OpenAI), in [-2, 2].
    seed: seeds the draw, so the same seed gives the same text; None draws a fresh seed.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repetition_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        def is_int(value: object) -> bool:
            return not isinstance(value, bool) and isinstance(value, (int, np.integer))

        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty",
                     "presence_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise bad(name, "a finite number")
        if self.temperature < 0:
            raise bad("temperature", ">= 0")
        if not is_int(self.top_k) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0 (0 keeps every token)")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1]")
        if not 0 <= self.min_p < 1:
            raise bad("min_p", "in [0, 1)")
        if self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "> 0 (1.0 is no penalty)")
        if not is_int(self.repeat_last_n) or self.repeat_last_n < -1:
            raise bad("repeat_last_n", "an integer >= -1 (0: no penalties, -1: the whole context)")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise bad(name, "between -2 and 2")
        if self.seed is not None and (not is_int(self.seed) or self.seed < 0):
            raise bad("seed", "None or an integer >= 0")

    @property
    def penalizes(self) -> bool:
        return self.repeat_last_n != 0 and (self.repetition_penalty != 1.0 or
                                            self.frequency_penalty != 0.0 or
                                            self.presence_penalty != 0.0)


class Sampler:
    """Draws token ids from logits with one SamplingParams and its own random generator."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def penalize(self, logits: np.ndarray, history: Sequence[int] = ()) -> np.ndarray:
        """Step 1: the logits (float32) after the penalties over the window of `history`."""
        p = self.params
        x = np.asarray(logits, dtype=np.float32)
        if not p.penalizes or not len(history):
            return x
        window = history[-p.repeat_last_n:] if p.repeat_last_n > 0 else history
        ids, counts = np.unique(np.asarray(window, dtype=np.int64), return_counts=True)
        x = x.copy()
        v = x[ids]
        if p.repetition_penalty != 1.0:
            v = np.where(v > 0, v / np.float32(p.repetition_penalty),
                         v * np.float32(p.repetition_penalty))
        x[ids] = v - np.float32(p.frequency_penalty) * counts.astype(np.float32) \
            - np.float32(p.presence_penalty)
        return x

    def candidates(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Steps 2-4 on penalized float32 logits: (token ids, their logits) of the survivors,
        in no particular order; ids None means all of x, in order (nothing was dropped)."""
        p = self.params
        V = x.size
        ids, xs = None, x
        if 0 < p.top_k < V:
            ids = _largest(x, p.top_k)
            xs = x[ids]
        top = xs.max()
        sub = None                                      # survivors, as indices into xs
        if p.min_p > 0:
            # min_p keeps a prefix of the descending order: found in O(V), without sorting.
            sub = np.flatnonzero(xs >= top + np.float32(math.log(p.min_p)))
        if p.top_p < 1.0:
            w = np.exp(xs - top)                        # untempered weights of the candidates
            target = p.top_p * float(w.sum(dtype=np.float64))
            ws = w if sub is None else w[sub]
            # If min_p's set holds less than top_p of the mass, top_p's prefix is the longer
            # one and min_p alone decides; otherwise find top_p's prefix inside min_p's set.
            if sub is None or float(ws.sum(dtype=np.float64)) >= target:
                k = min(_FIRST_SORT, ws.size)
                while True:
                    part = _largest(ws, k)
                    part = part[np.argsort(-ws[part], kind="stable")]
                    mass = np.cumsum(ws[part], dtype=np.float64)
                    if mass[-1] >= target or k == ws.size:
                        part = part[:min(int(np.searchsorted(mass, target)) + 1, k)]
                        break
                    k = min(k * _GROW, ws.size)
                sub = part if sub is None else sub[part]
        if sub is None:
            return ids, xs
        return (sub if ids is None else ids[sub]), xs[sub]

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        x = self.penalize(logits, history)
        if self.params.temperature == 0:
            return int(np.argmax(x))
        ids, kept = self.candidates(x)
        # Step 5: the temperature, last, on the survivors only.
        i = _draw(np.exp((kept - kept.max()) / np.float32(self.params.temperature)),
                  self._rng.random())
        return i if ids is None else int(ids[i])
