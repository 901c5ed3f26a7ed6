"""Kernels called from several Python threads at once (the GIL is released) stay correct."""

from __future__ import annotations

import threading

import numpy as np

from spark_infer import _core


def test_concurrent_callers_get_correct_results():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4096, 512)).astype(np.float32)
    x = rng.standard_normal(512).astype(np.float32)
    expected = w.astype(np.float64) @ x
    wrong = []

    def work() -> None:
        out = np.zeros(4096, np.float32)
        for _ in range(400):
            out[:] = np.nan
            _core.matvec(w, x, out)
            if not np.all(np.abs(out - expected) < 1e-3):
                wrong.append(1)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong  # before the fix, ~2 % of calls mixed up two callers' jobs


# --------------------------------------------------------------------------- engines and threads

import pytest  # noqa: E402

from spark_infer.config import ModelConfig  # noqa: E402
from spark_infer.random_model import make_random_model  # noqa: E402


def _config(**overrides) -> ModelConfig:
    """Large enough that every kernel really splits between threads (d_model 512, d_ff 2048),
    one KV head for four query heads (decode has a single attention item per layer)."""
    base = dict(arch="gemma3", vocab_size=1000, d_model=512, n_layers=3, n_heads=4,
                n_kv_heads=1, head_dim=128, d_ff=2048, query_scale=128 ** -0.5,
                layer_types=("local", "global", "local"), sliding_window=24, qk_norm=True,
                rope_base_global=1e6, rope_base_local=1e4)
    base.update(overrides)
    return ModelConfig(**base)


KINDS = {
    "dense": _config(),
    "spark": _config(ffn_predictor_dim=128, ffn_topk_fraction=0.1, attn_predictor_dim=32,
                     attn_topk=12),
    "sparsified": _config(ffn_sparse_fraction=0.5, attn_sparse_topk=8, attn_sparse_dim=32,
                          attn_sparse_recent=4),
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def model_path(request, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("threads") / f"{request.param}.spark")
    make_random_model(path, KINDS[request.param], dtype="bf16", seed=3)
    return path


PROMPT = np.random.default_rng(5).integers(0, 1000, 40).astype(np.int32)
DECODE = [7, 99, 512, 3, 800, 41]


def _run(engine: _core.Engine) -> np.ndarray:
    """All logits of a chunked prefill, then each decode step's: [40 + 6, vocab]."""
    engine.reset()
    rows = [engine.prefill(PROMPT, chunk=16, all_logits=True)]
    rows += [engine.decode(t)[None] for t in DECODE]
    return np.concatenate(rows)


def test_logits_are_bit_identical_for_1_2_3_threads(model_path):
    runs = {}
    for threads in (1, 2, 3):
        engine = _core.Engine(model_path, 128, 16)
        engine.threads = threads
        runs[threads] = _run(engine)
    assert np.isfinite(runs[1]).all()
    for threads in (2, 3):
        # Bit-identical: no kernel may depend on how the work is split between threads.
        np.testing.assert_array_equal(runs[threads], runs[1], err_msg=f"{threads} threads")


def test_two_engines_with_different_threads_decode_concurrently(model_path):
    """Each engine owns its pool and scratch: one engine's thread count cannot make the other
    index per-part scratch it does not have (before: a process-wide count, set by whichever
    engine ran last, sized one and indexed the other)."""
    solo = {}
    for threads in (1, 4):
        engine = _core.Engine(model_path, 128, 16)
        engine.threads = threads
        solo[threads] = _run(engine)
    engines = {}
    for threads in (1, 4):
        engines[threads] = _core.Engine(model_path, 128, 16)
        engines[threads].threads = threads
    results: dict[int, list[np.ndarray]] = {1: [], 4: []}
    errors: list[BaseException] = []

    def work(threads: int) -> None:
        try:
            for _ in range(4):
                results[threads].append(_run(engines[threads]))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    workers = [threading.Thread(target=work, args=(n,)) for n in (1, 4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    for threads in (1, 4):
        assert len(results[threads]) == 4
        for r in results[threads]:
            np.testing.assert_array_equal(r, solo[threads])


def test_a_second_caller_gets_engine_busy_error(model_path):
    """A call into an engine another thread is inside is refused at once (before: both ran,
    sharing its buffers and cache position)."""
    tokens = np.tile(PROMPT, 10)
    engine = _core.Engine(model_path, 512, 64)
    expected = engine.prefill(tokens, chunk=64)
    refused: list[Exception] = []
    outcome: list[np.ndarray] = []

    def retry(call):
        while True:
            try:
                return call()
            except _core.EngineBusyError:
                continue  # the main thread was inside for a moment

    def worker() -> None:
        while len(outcome) < 2 or not refused:
            retry(engine.reset)
            outcome.append(retry(lambda: engine.prefill(tokens, chunk=64)))
            if len(outcome) == 200:
                return

    t = threading.Thread(target=worker)
    t.start()
    # No-ops when they run between the worker's calls; refused while it is inside prefill.
    calls = (lambda: engine.rewind(0), lambda: setattr(engine, "threads", engine.threads),
             lambda: setattr(engine, "chunk_sparse_cache_bytes", engine.chunk_sparse_cache_bytes))
    while t.is_alive():
        for call in calls:
            try:
                call()
            except _core.EngineBusyError as e:
                refused.append(e)
    t.join()
    assert refused, "no call was refused while another thread was inside the engine"
    assert isinstance(refused[0], RuntimeError) and "busy" in str(refused[0])
    for logits in outcome:   # the refused calls changed nothing
        np.testing.assert_array_equal(logits, expected)


def test_chunk_is_bounded_by_the_context(model_path):
    engine = _core.Engine(model_path, 64, 2 ** 62)   # before: accepted, then overflowed
    assert engine.max_chunk == 64
    logits = engine.prefill(PROMPT, chunk=2 ** 62)
    fresh = _core.Engine(model_path, 64, 16)
    np.testing.assert_array_equal(logits, fresh.prefill(PROMPT, chunk=40))


def test_buffers_larger_than_memory_are_refused(tmp_path):
    # 8 layers x 8 KV heads x 2^24 positions x 2 x 256 dims x 4 bytes = 2 TiB of KV cache.
    cfg = _config(d_model=64, n_layers=8, n_heads=8, n_kv_heads=8, head_dim=256, d_ff=64,
                  vocab_size=256, layer_types=("global",) * 8)
    path = str(tmp_path / "wide.spark")
    make_random_model(path, cfg, dtype="f32")
    with pytest.raises(ValueError, match="more than this machine's"):
        _core.Engine(path, 2 ** 24, 16)
    engine = _core.Engine(path, 1024, 16)
    with pytest.raises(ValueError, match="threads must be in"):
        engine.threads = 10 ** 6
    with pytest.raises(ValueError, match="threads must be in"):
        engine.threads = 0
    assert engine.threads == _core.physical_cores()
    logits = engine.prefill(np.arange(10, dtype=np.int32), chunk=4)
    assert np.isfinite(logits).all()
