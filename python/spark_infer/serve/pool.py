"""Engines and the bounded queue in front of them, plus the counters /metrics shows.

Each of the N Models (`--parallel N`, each mapping the same file, so the OS keeps one copy of
the weights) runs one generation at a time on its own worker thread; the engines release the
GIL, so N generations run at once. A request waits for a free engine in a FIFO of at most
`max_queue` entries; beyond that it is refused (QueueFull, HTTP 503) rather than piling up.

The pool lives on the event loop's thread: acquire/release and the counters are touched only
there (workers report back through the loop), so they need no lock.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["EnginePool", "QueueFull", "Metrics"]


class QueueFull(RuntimeError):
    """Every engine is busy and the queue holds max_queue requests already."""


class EnginePool:
    def __init__(self, models: Sequence[Any], max_queue: int):
        if not models:
            raise ValueError("the pool needs at least one model")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.models = list(models)
        self.max_queue = max_queue
        self._free = list(models)
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(models), thread_name_prefix="spark-infer-engine")

    @property
    def queue_depth(self) -> int:
        return sum(not w.done() for w in self._waiters)

    @property
    def running(self) -> int:
        return len(self.models) - len(self._free)

    async def acquire(self, score: Callable[[Any], int]) -> Any:
        """A free model, the one with the highest score(model) (the longest cached prefix of
        the prompt, so a conversation returns to the engine that holds it); waits in the FIFO
        when none is free. Raises QueueFull when the FIFO is full."""
        if self._free and not self._waiters:
            best = max(self._free, key=score)
            self._free.remove(best)
            return best
        if self.queue_depth >= self.max_queue:
            raise QueueFull(f"all {len(self.models)} engines are busy and {self.max_queue} "
                            f"requests are waiting; retry later")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())   # handed over just as the client left
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self, model: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(model)
                return
        self._free.append(model)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class Metrics:
    """Counters since start, written as Prometheus text."""

    def __init__(self) -> None:
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()
        self.cancelled = 0          # generations stopped because the client went away
        self.rejected = 0           # refused: queue full
        self.prompt_tokens = 0
        self.cached_prompt_tokens = 0   # prompt tokens reused from an engine's KV cache
        self.prefill_tokens = 0
        self.completion_tokens = 0
        self.prefill_seconds = 0.0
        self.decode_seconds = 0.0

    def count_request(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, status)] += 1

    def record(self, gen: Any) -> None:
        """Add one finished (or cancelled) completion.Generation."""
        self.cancelled += gen.cancelled
        self.completion_tokens += gen.completion_tokens
        s = gen.stats
        if s is not None:
            self.prompt_tokens += s.prompt_tokens
            self.cached_prompt_tokens += s.prompt_tokens - s.prefill_tokens
            self.prefill_tokens += s.prefill_tokens
            self.prefill_seconds += s.prefill_seconds
            self.decode_seconds += s.decode_seconds

    def render(self, pool: EnginePool) -> str:
        def rate(tokens: float, seconds: float) -> float:
            return tokens / seconds if seconds > 0 else 0.0

        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP spark_infer_{name} {help_}")
            out.append(f"# TYPE spark_infer_{name} {kind}")
            out.extend(f"spark_infer_{name}{labels} {value:g}" for labels, value in samples)

        metric("requests_total", "counter", "HTTP requests by endpoint and status code.",
               [(f'{{endpoint="{e}",status="{s}"}}', n)
                for (e, s), n in sorted(self.requests.items())] or [("", 0)])
        metric("requests_cancelled_total", "counter",
               "Generations stopped because the client disconnected.", [("", self.cancelled)])
        metric("requests_rejected_total", "counter", "Requests refused because the queue was "
               "full.", [("", self.rejected)])
        metric("prompt_tokens_total", "counter", "Prompt tokens of finished generations.",
               [("", self.prompt_tokens)])
        metric("prompt_tokens_cached_total", "counter",
               "Prompt tokens reused from an engine's KV cache (not prefilled).",
               [("", self.cached_prompt_tokens)])
        metric("prefill_tokens_total", "counter", "Prompt tokens prefilled.",
               [("", self.prefill_tokens)])
        metric("completion_tokens_total", "counter", "Generated tokens.",
               [("", self.completion_tokens)])
        metric("prefill_seconds_total", "counter", "Seconds spent in prefill.",
               [("", self.prefill_seconds)])
        metric("decode_seconds_total", "counter", "Seconds spent decoding.",
               [("", self.decode_seconds)])
        metric("prefill_tokens_per_second", "gauge", "Prefill speed over all requests.",
               [("", rate(self.prefill_tokens, self.prefill_seconds))])
        metric("decode_tokens_per_second", "gauge", "Decode speed over all requests (per engine).",
               [("", rate(self.completion_tokens, self.decode_seconds))])
        metric("queue_depth", "gauge", "Requests waiting for an engine.",
               [("", pool.queue_depth)])
        metric("requests_running", "gauge", "Generations running now.", [("", pool.running)])
        metric("engines", "gauge", "Engines (--parallel).", [("", len(pool.models))])
        return "\n".join(out) + "\n"
