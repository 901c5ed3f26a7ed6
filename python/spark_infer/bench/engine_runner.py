"""One timed sample, and the runner of our own engine (`_core.Engine` over one engine file).
Every runner (this one and the peers') has the same methods: info, set_threads, prefill,
extend, decode, close."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from spark_infer.bench.bytes_model import _engine_config, tensor_bytes

COMPONENTS = ("embed", "attention", "ffn", "logits", "other")


@dataclasses.dataclass
class Sample:
    """One timed sample: `tokens` tokens in `seconds`, with engine counters when known."""

    tokens: int
    seconds: float
    times: dict[str, float] | None = None        # seconds per component, summed over calls
    ffn_active: list[float] | None = None        # per layer, mean over calls
    attn_tokens: list[float] | None = None       # per layer, mean over calls
    lm_head_rows: float | None = None            # screened LM head: rows rescored, mean over calls

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds


class EngineRunner:
    """spark_infer._core.Engine over one engine file."""

    kind = "engine"

    def __init__(self, label: str, path: Path, source: str, context: int, chunk: int,
                 kv_dtype: str = "bf16") -> None:
        from spark_infer import _core

        self.label, self.path, self.source, self.kv_dtype = label, path, source, kv_dtype
        self.cfg = _engine_config(path)
        self.tb = tensor_bytes(path)
        t0 = time.perf_counter()
        self.engine = _core.Engine(str(path), context, max_chunk=chunk, kv_dtype=kv_dtype)
        self.engine.decode(0)          # first call: touches the buffers (cold start)
        self.load_s = time.perf_counter() - t0
        self.engine.reset()
        self.dtype = self.engine.weight_type
        self.vocab = self.cfg.vocab_size

    def info(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind, "source": self.source,
                "path": str(self.path), "dtype": self.dtype,
                "spark": self.cfg.is_spark_ffn or self.cfg.is_spark_attn,
                "config": self.cfg.to_dict(), "weight_bytes": int(self.engine.weight_bytes),
                "kv_bytes": int(self.engine.kv_bytes), "kv_dtype": self.kv_dtype,
                "load_s": self.load_s}

    def set_threads(self, n: int) -> None:
        self.engine.threads = n

    def _counters(self) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        s = self.engine.stats()
        return (dict(self.engine.times()), np.asarray(s["ffn_active_fraction"], np.float64),
                np.asarray(s["attn_mean_tokens"], np.float64))

    def prefill(self, tokens: np.ndarray, chunk: int) -> Sample:
        self.engine.reset()
        t0 = time.perf_counter()
        self.engine.prefill(tokens, chunk=chunk)
        dt = time.perf_counter() - t0
        times, ffn, att = self._counters()
        return Sample(len(tokens), dt, times, ffn.tolist(), att.tolist())

    def extend(self, tokens: np.ndarray, context: int, chunk: int) -> None:
        """Make the cache hold tokens[:context] (prefilling only what is missing)."""
        pos = self.engine.pos
        if pos > context:
            self.engine.reset()
            pos = 0
        if pos < context:
            self.engine.prefill(tokens[pos:context], chunk=chunk)

    def decode(self, context: int, steps: np.ndarray) -> Sample:
        e = self.engine
        seconds = 0.0
        times = dict.fromkeys(COMPONENTS, 0.0)
        ffn = np.zeros(self.cfg.n_layers)
        att = np.zeros(self.cfg.n_layers)
        rescored = 0.0
        for tok in steps:
            if e.pos != context:
                raise RuntimeError(f"{self.label}: cache at {e.pos}, expected {context}")
            t0 = time.perf_counter()
            e.decode(int(tok))
            seconds += time.perf_counter() - t0
            t, f, a = self._counters()
            for k in COMPONENTS:
                times[k] += t[k]
            ffn += f
            att += a
            rescored += e.screen_rescored
            e.rewind(context)
        n = len(steps)
        return Sample(n, seconds, times, (ffn / n).tolist(), (att / n).tolist(), rescored / n)

    def close(self) -> None:
        del self.engine
