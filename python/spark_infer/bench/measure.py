"""The measuring loop: the seeded token streams, and every (mode, threads, context) point of
every runner with the runners' samples interleaved (package docstring, "What is measured")."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from spark_infer.bench.engine_runner import Sample
from spark_infer.bench.machine import BandwidthProbe
from spark_infer.bench.stats import _point

log = logging.getLogger("spark_infer.bench")

# Pause between samples of different runner kinds: OpenMP runtimes of other libraries (torch,
# ggml) keep their worker threads spinning for a moment after a call; 20 ms lets them sleep.
_SWITCH_PAUSE_S = 0.02


def bench_tokens(seed: int, vocab: int, n: int, stream: int = 0) -> np.ndarray:
    """int32 [n] uniform token ids in [0, vocab), a function of (seed, stream) only."""
    rng = np.random.default_rng([seed, stream])
    return rng.integers(0, vocab, size=n, dtype=np.int32)


def text_tokens(runners: list[Any], n: int) -> np.ndarray:
    """int32 [n] token ids of the shipped calibration text (repeated as needed), by the
    tokenizer of the first engine runner whose file has one. What real text changes: the
    screened LM head recomputes the logits near the top (a few hundred per token on text, its
    cap of 4096 on random ids, whose next-token distributions are flat), and a sparsified FFN's
    realised fraction."""
    from ..data import calibration_text
    from ..tokenizer import Tokenizer

    for r in runners:
        path = getattr(r, "path", None)
        if r.kind == "engine" and path is not None:
            try:
                tok = Tokenizer.from_engine_file(path)
            except ValueError:
                continue
            piece = tok.encode(calibration_text(), add_bos=False)
            reps = -(-n // len(piece))
            return np.asarray([tok.bos_id] + (piece * reps)[:n - 1], np.int32)
    raise ValueError("--tokens text needs a model whose engine file has a tokenizer "
                     "(an embedded model, or a file converted with one)")


class _Alternator:
    """Runs one sample per runner in turn, pausing when the kind of runner changes."""

    def __init__(self) -> None:
        self.last_kind: str | None = None

    def __call__(self, runner: Any, fn: Callable[[], Sample]) -> Sample:
        if self.last_kind is not None and self.last_kind != runner.kind:
            time.sleep(_SWITCH_PAUSE_S)
        self.last_kind = runner.kind
        return fn()


def measure(runners: list[Any], args: argparse.Namespace, probe: BandwidthProbe
            ) -> list[dict[str, Any]]:
    """Every (mode, threads, context) point for every runner, samples interleaved."""
    vocab = min(r.vocab for r in runners)
    contexts = sorted(set(args.context))
    max_ctx = max(contexts + [args.prefill_tokens]) if "decode" in args.modes else \
        args.prefill_tokens
    if getattr(args, "tokens", "random") == "text":
        # Decode steps continue the text after each context.
        ctx_tokens = text_tokens(runners, max_ctx + args.steps)
        def steps_at(ctx: int) -> np.ndarray:
            return ctx_tokens[ctx:ctx + args.steps]
    else:
        ctx_tokens = bench_tokens(args.seed, vocab, max_ctx, stream=0)
        random_steps = bench_tokens(args.seed, vocab, args.steps, stream=1)
        def steps_at(ctx: int) -> np.ndarray:
            return random_steps
    turn = _Alternator()
    results: list[dict[str, Any]] = []
    n_samples = args.warmup + args.repeats

    if "prefill" in args.modes:
        prompt = ctx_tokens[:args.prefill_tokens]
        for threads in args.threads:
            for r in runners:
                r.set_threads(threads)
            samples: dict[str, list[Sample]] = {r.label: [] for r in runners}
            for i in range(n_samples):
                for r in runners:
                    s = turn(r, lambda r=r: r.prefill(prompt, args.chunk))
                    if i >= args.warmup:
                        samples[r.label].append(s)
            for r in runners:
                res = _point(r, "prefill", threads, args.prefill_tokens, samples[r.label],
                             None, args.prefill_tokens)
                results.append(res)
                log.info("  %-28s prefill  t=%d  %8.2f tok/s", r.label, threads,
                         res["tok_s"]["median"])

    if "decode" in args.modes:
        for ctx in contexts:
            for r in runners:
                r.set_threads(max(args.threads))
                t0 = time.perf_counter()
                r.extend(ctx_tokens, ctx, args.chunk)
                log.info("  %-28s context %d ready (%.1f s)", r.label, ctx,
                         time.perf_counter() - t0)
            for threads in args.threads:
                for r in runners:
                    r.set_threads(threads)
                samples = {r.label: [] for r in runners}
                probes: list[float] = []
                for i in range(n_samples):
                    for r in runners:
                        s = turn(r, lambda r=r: r.decode(ctx, steps_at(ctx)))
                        if i >= args.warmup:
                            samples[r.label].append(s)
                    if i >= args.warmup:
                        gbs = probe(threads)
                        if gbs is not None:
                            probes.append(gbs)
                for r in runners:
                    res = _point(r, "decode", threads, ctx, samples[r.label], probes,
                                 args.prefill_tokens)
                    results.append(res)
                    log.info("  %-28s decode   t=%d  L=%-5d %8.2f tok/s", r.label, threads, ctx,
                             res["tok_s"]["median"])
    return results
