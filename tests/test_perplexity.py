"""Model.perplexity: strided sliding windows, against an independent numpy reference (float64
forward pass of spark_infer.reference on each window), argument errors, cache bookkeeping,
and bounded memory on the real Gemma 3 270M."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

import gemma3_real as real
import spark_infer
from spark_infer import reference
from spark_infer.fileformat import read_engine_file

from tiny_model import write_tiny_model

CONTEXT = 48
REL_TOL = 1e-4   # f32 weights: engine against the float64 reference


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ppl") / "tiny.spark")
    write_tiny_model(path)
    return path


@pytest.fixture(scope="module")
def ref_model(model_path):
    cfg, _, weights = read_engine_file(model_path, dequantize=True)
    return cfg, weights


@pytest.fixture()
def model(model_path):
    # chunk_size 8: each window's logits come in several pieces of 8 rows
    return spark_infer.load(model_path, context_length=CONTEXT, chunk_size=8, kv_dtype="f32")


def _ids(n: int, seed: int = 0, bos: int = 2, vocab: int = 400) -> list[int]:
    rng = np.random.default_rng(seed)
    return [bos] + [int(t) for t in rng.integers(6, vocab, size=n - 1)]


def _logsoftmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return x - (np.log(np.exp(x - m).sum(axis=1, keepdims=True)) + m)


def reference_nll(cfg, weights, ids: list[int], window: int, stride: int
                  ) -> tuple[float, int, int]:
    """Hugging Face's strided evaluation written out: windows of `window` tokens,
    [bos] + body[begin:end] with begin = 0, stride, 2*stride, ...; each scores body[prev_end:end]
    (the first: everything); stops at the window that reaches the end. (nll sum, count, windows)"""
    bos, body = ids[0], ids[1:]
    nll, count, windows, prev_end = 0.0, 0, 0, 0
    scored = np.zeros(len(body), dtype=int)
    for begin in range(0, len(body), stride):
        end = min(begin + window - 1, len(body))
        seq = [bos] + body[begin:end]
        assert len(seq) <= window
        logp = _logsoftmax(reference.forward(cfg, weights, seq))
        for t in range(prev_end, end):          # body[t] sits at window position t - begin + 1
            nll -= logp[t - begin, body[t]]
            scored[t] += 1
            if windows > 0:
                assert t - begin + 1 >= window - stride   # context, <bos> included
        count += end - prev_end
        windows += 1
        prev_end = end
        if end == len(body):
            break
    assert np.all(scored == 1)
    return nll, count, windows


@pytest.mark.parametrize("window, stride", [(16, 8), (16, 15), (16, 1), (20, 7), (2, 1),
                                            (CONTEXT, 13)])
def test_strided_perplexity_equals_reference(model, ref_model, window, stride):
    cfg, weights = ref_model
    ids = _ids(101, seed=window * 100 + stride)
    nll, count, windows = reference_nll(cfg, weights, ids, window, stride)
    assert count == len(ids) - 1
    details = model.perplexity_details(ids, window=window, stride=stride)
    assert details.scored_tokens == count
    assert details.windows == windows
    assert (details.window, details.stride) == (window, stride)
    assert details.nll_sum == pytest.approx(nll, rel=REL_TOL)
    assert details.perplexity == pytest.approx(math.exp(nll / count), rel=REL_TOL)
    assert model.perplexity(ids, window=window, stride=stride) == \
        pytest.approx(details.perplexity, rel=1e-9)


def test_defaults_are_the_context_and_half_of_it(model, ref_model):
    cfg, weights = ref_model
    ids = _ids(130, seed=7)
    nll, count, _ = reference_nll(cfg, weights, ids, CONTEXT, CONTEXT // 2)
    d = model.perplexity_details(ids)
    assert (d.window, d.stride, d.scored_tokens) == (CONTEXT, CONTEXT // 2, count)
    assert d.perplexity == pytest.approx(math.exp(nll / count), rel=REL_TOL)


def test_short_text_is_one_window_of_all_tokens(model, ref_model):
    cfg, weights = ref_model
    text = "And Ruth said, Intreat me not to leave thee"
    ids = model.tokenize(text)
    assert 2 < len(ids) <= CONTEXT
    logp = _logsoftmax(reference.forward(cfg, weights, ids))
    expected = math.exp(-np.mean([logp[i, ids[i + 1]] for i in range(len(ids) - 1)]))
    assert model.perplexity(text) == pytest.approx(expected, rel=REL_TOL)
    assert model.perplexity(ids) == pytest.approx(expected, rel=REL_TOL)
    assert model.perplexity(np.asarray(ids)) == pytest.approx(expected, rel=REL_TOL)
    d = model.perplexity_details(text)
    assert (d.windows, d.scored_tokens) == (1, len(ids) - 1)


def test_long_text_with_a_small_window(model, ref_model):
    cfg, weights = ref_model
    with open(os.path.join(real.DATA, "kjv_ruth_1_2.txt"), encoding="utf-8") as f:
        text = f.read()[:1500]
    ids = model.tokenize(text)
    assert len(ids) > 3 * CONTEXT
    nll, count, _ = reference_nll(cfg, weights, ids, 32, 16)
    got = model.perplexity(text, window=32, stride=16)
    assert got == pytest.approx(math.exp(nll / count), rel=REL_TOL)


def test_cache_stays_consistent(model, model_path, ref_model):
    cfg, weights = ref_model
    prompt = "Ruth said"
    fresh = spark_infer.load(model_path, context_length=CONTEXT, kv_dtype="f32")
    expected = fresh.generate(prompt, max_new_tokens=12, temperature=0)
    ids = _ids(90, seed=3)
    first = model.perplexity(ids, window=24, stride=10)
    assert len(model._cached) == model.engine.pos
    assert model.perplexity(ids, window=24, stride=10) == pytest.approx(first, rel=1e-6)
    # generation after perplexity reuses (or drops) the cache correctly
    assert model.generate(prompt, max_new_tokens=12, temperature=0) == expected
    assert model.perplexity(ids, window=24, stride=10) == pytest.approx(first, rel=1e-6)
    got = model.logits(ids[:20])
    assert np.max(np.abs(got - reference.forward(cfg, weights, ids[:20]))) < 1e-3


@pytest.mark.parametrize("kwargs, match", [
    (dict(window=1), "at least 2"),
    (dict(window=0), "at least 2"),
    (dict(window=CONTEXT + 1), "longer than the context"),
    (dict(window=16, stride=0), "between 1 and window - 1"),
    (dict(window=16, stride=16), "between 1 and window - 1"),
    (dict(window=16, stride=-3), "between 1 and window - 1"),
    (dict(window=2, stride=2), "between 1 and window - 1"),
    (dict(window=8.0), "integer"),
    (dict(stride="4"), "integer"),
    (dict(window=True), "integer"),
])
def test_bad_window_and_stride(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.perplexity(_ids(30), **kwargs)
    assert model.perplexity(_ids(30), window=8, stride=4) > 0   # still usable


def test_bad_texts(model):
    with pytest.raises(ValueError, match="at least one token after <bos>"):
        model.perplexity("")
    with pytest.raises(ValueError, match="at least one token after <bos>"):
        model.perplexity([2])
    with pytest.raises(ValueError, match="at least one token after <bos>"):
        model.perplexity([])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.perplexity([2, 400])
    with pytest.raises(TypeError):
        model.perplexity([2, 1.5])
    with pytest.raises(TypeError):
        model.perplexity(b"Ruth")


def test_busy_while_a_stream_is_open(model):
    stream = model.generate("Ruth", max_new_tokens=8, temperature=0, stream=True)
    next(stream)
    with pytest.raises(spark_infer.ModelBusyError):
        model.perplexity(_ids(20))
    stream.close()
    assert model.perplexity(_ids(20)) > 0


def test_calibration_text_ships_with_the_package():
    from spark_infer.data import calibration_text, calibration_text_path

    path = calibration_text_path()
    assert path.is_file() and path.name == "calibration.txt"
    text = calibration_text()
    assert text.startswith("NORTHANGER ABBEY") and "ECCLESIASTES" in text
    evaluation = (real.DATA / "austen_persuasion_1_2.txt").read_text(encoding="utf-8")
    ruth = (real.DATA / "kjv_ruth_1_2.txt").read_text(encoding="utf-8")
    for other in (evaluation, ruth):   # no shared passage (any 80-character run)
        assert not any(text[i:i + 80] in other for i in range(0, len(text) - 80, 40))


def test_long_calibration_text_starts_with_the_short_one_and_shares_no_evaluation_passage():
    """calibration_long.txt (the down refit's text) begins with calibration.txt, so whatever
    reads only its first 2048 tokens reads the same; it shares no passage with the
    evaluation texts."""
    from spark_infer.data import calibration_text, long_calibration_text_path

    text = long_calibration_text_path().read_text(encoding="utf-8")
    short = calibration_text()
    assert text.startswith(short.rstrip("\n") + "\n\n") and len(text) > 8 * len(short)
    for name in ("austen_persuasion_1_2.txt", "kjv_ruth_1_2.txt"):
        other = (real.DATA / name).read_text(encoding="utf-8")
        assert not any(text[i:i + 80] in other for i in range(0, len(text) - 80, 40)), name


def test_cli_window_and_stride(model_path, tmp_path):
    model = spark_infer.load(model_path, context_length=CONTEXT)   # as the CLI loads it
    text_file = tmp_path / "text.txt"
    with open(os.path.join(real.DATA, "kjv_ruth_1_2.txt"), encoding="utf-8") as f:
        text_file.write_text(f.read()[:600], encoding="utf-8")
    text = text_file.read_text(encoding="utf-8")
    d = model.perplexity_details(text, window=24, stride=10)
    cli = [sys.executable, "-m", "spark_infer.cli", "perplexity", "--text", str(text_file),
           "-m", model_path, "-c", str(CONTEXT)]
    r = subprocess.run(cli + ["--window", "24", "--stride", "10"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"perplexity: {d.perplexity:.4f} over {d.scored_tokens} tokens" in r.stdout
    assert f"{d.windows} windows of 24 tokens, stride 10" in r.stdout
    assert d.scored_tokens == len(model.tokenize(text)) - 1
    r = subprocess.run(cli + ["--window", "24", "--stride", "24"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "stride" in r.stderr and "Traceback" not in r.stderr


class _PeakRss:
    """Samples this process's resident set every 20 ms (Linux /proc); growth over the start."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return self.peak - self.base


@real.needs_gemma3
def test_real_model_evaluation_text_in_bounded_memory():
    text = (real.DATA / "austen_persuasion_1_2.txt").read_text(encoding="utf-8")
    model = spark_infer.load(str(real.engine_file("bf16")), context_length=2048)
    ids = model.tokenize(text)
    assert len(ids) >= 4000
    has_proc = os.path.exists("/proc/self/statm")
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        if has_proc:
            with _PeakRss() as rss:
                d = model.perplexity_details(text, window=2048)
        else:  # pragma: no cover - not Linux
            d = model.perplexity_details(text, window=2048)
        _, numpy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    seconds = time.perf_counter() - t0
    print(f"\nperplexity bf16 of {len(ids) - 1} tokens, window 2048 stride 1024: "
          f"{d.perplexity:.4f} in {d.windows} windows, {seconds:.1f} s; traced peak "
          f"{numpy_peak / 2**20:.0f} MiB" + (f", RSS growth {rss.growth / 2**20:.0f} MiB"
                                           if has_proc else ""))
    assert d.scored_tokens == len(ids) - 1
    assert d.windows == 5
    assert math.isfinite(d.perplexity) and 1 < d.perplexity < 100
    assert numpy_peak < 1 << 30          # logits of 64 rows, not [tokens, vocab]
    if has_proc:
        assert rss.growth < 4 << 30
