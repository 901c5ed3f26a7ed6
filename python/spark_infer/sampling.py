"""Sampling parameters (declared once) and the sampler over one row of logits.

Order, as in llama.cpp: repetition penalty -> temperature -> top-k -> top-p -> min-p -> draw.
temperature == 0 is greedy (argmax after the repetition penalty).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = ["SamplingParams", "Sampler"]


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. Names and defaults follow llama-cpp-python.

    temperature: 0 is greedy; > 0 divides the logits.
    top_k: keep the k most likely tokens (0: all).
    top_p: keep the smallest set whose probability reaches top_p (1.0: all).
    min_p: drop tokens whose probability is below min_p times the most likely one's (0: none).
    repetition_penalty: divide positive (multiply negative) logits of tokens already seen
        (prompt and output) by this; 1.0 is none.
    seed: seeds the draw, so the same seed gives the same text; None draws a fresh seed.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise bad(name, "a finite number")
        if self.temperature < 0:
            raise bad("temperature", ">= 0")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1]")
        if not 0 <= self.min_p < 1:
            raise bad("min_p", "in [0, 1)")
        if self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "> 0")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))
                                      or self.seed < 0):
            raise bad("seed", "None or an integer >= 0")


class Sampler:
    """Draws token ids from logits with one SamplingParams and its own random generator."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        p = self.params
        x = np.asarray(logits, dtype=np.float64)
        if p.repetition_penalty != 1.0 and len(history):
            x = x.copy()
            seen = np.unique(np.asarray(history, dtype=np.int64))
            v = x[seen]
            x[seen] = np.where(v > 0, v / p.repetition_penalty, v * p.repetition_penalty)
        if p.temperature == 0:
            return int(np.argmax(x))
        x = x / p.temperature
        # Candidates: top-k by partition (O(V)), then sorted descending for top-p.
        if 0 < p.top_k < x.size:
            cand = np.argpartition(-x, p.top_k - 1)[:p.top_k]
        else:
            cand = np.arange(x.size)
        cand = cand[np.argsort(-x[cand], kind="stable")]
        probs = np.exp(x[cand] - x[cand[0]])
        probs /= probs.sum()
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            cand, probs = cand[:keep], probs[:keep]
        if p.min_p > 0:
            mask = probs >= p.min_p * probs[0]
            cand, probs = cand[mask], probs[mask]
        probs = probs / probs.sum()
        return int(cand[self._rng.choice(cand.size, p=probs)])
