"""The Python API on a tiny random model: generation, sampling, streaming, stops, chat, logits."""

from __future__ import annotations

import numpy as np
import pytest

import spark_infer
from spark_infer import reference
from spark_infer.fileformat import read_engine_file

from tiny_model import write_tiny_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("api") / "tiny.spark")
    write_tiny_model(path)
    return path


@pytest.fixture()
def model(model_path):
    return spark_infer.load(model_path, context_length=96)


def test_version_and_exports():
    assert spark_infer.__version__ == "0.1.0"
    for name in spark_infer.__all__:
        assert hasattr(spark_infer, name)


def test_logits_equal_reference(model, model_path):
    cfg, _, weights = read_engine_file(model_path, dequantize=True)
    ids = model.tokenize("Ruth said, Intreat me not to leave thee.")
    got = model.logits(ids)
    expected = reference.forward(cfg, weights, ids, kv_dtype="bf16")   # the default cache
    assert got.shape == (len(ids), cfg.vocab_size)
    # 1e-3, not 1e-4: see test_engine.REL_TOL_BF16_KV.
    assert np.max(np.abs(got - expected)) < 1e-3 * np.max(np.abs(expected))
    exact = spark_infer.load(model_path, context_length=96, kv_dtype="f32").logits(ids)
    expected = reference.forward(cfg, weights, ids)
    assert np.max(np.abs(exact - expected)) < 1e-4 * np.max(np.abs(expected))
    with pytest.raises(ValueError, match="kv_dtype"):
        spark_infer.load(model_path, kv_dtype="f16")
    mapped = spark_infer.load(model_path, context_length=96, kv_dtype="f32", use_mmap=True)
    np.testing.assert_array_equal(mapped.logits(ids), exact)   # the same bytes, mapped
    with pytest.raises(ValueError, match="use_mmap"):
        spark_infer.load(model_path, use_mmap="yes")


def test_greedy_is_the_argmax_chain(model, model_path):
    cfg, _, weights = read_engine_file(model_path, dequantize=True)
    prompt = model.tokenize("And Naomi said")
    model.generate(prompt, max_new_tokens=6, temperature=0)
    ids = list(prompt)
    # Independent check: extend by the reference's argmax, one token at a time.
    end = {cfg.eos_id, cfg.end_of_turn_id}
    expected = []
    for _ in range(6):
        nxt = int(np.argmax(reference.forward(cfg, weights, ids)[-1]))
        if nxt in end:
            break
        expected.append(nxt)
        ids.append(nxt)
    text = model.generate(prompt, max_new_tokens=6, temperature=0)
    assert text == model.detokenize(expected)


def test_seed_reproducible_and_different_seeds_differ(model):
    kw = dict(max_new_tokens=24, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    a = model.generate("Ruth", seed=1, **kw)
    b = model.generate("Ruth", seed=1, **kw)
    c = model.generate("Ruth", seed=2, **kw)
    assert a == b
    assert a != c


def test_stream_joins_to_text(model):
    kw = dict(max_new_tokens=30, temperature=0.9, seed=5)
    pieces = list(model.generate("Boaz", stream=True, **kw))
    assert len(pieces) > 1
    assert "".join(pieces) == model.generate("Boaz", **kw)


def test_stream_never_splits_utf8(model):
    # The tiny vocabulary has no CJK or emoji pieces: these become byte-fallback tokens, 3-4
    # per character, and the streaming decoder must hold them until each character is whole.
    text = "日本語 ✓ é 🙂 end"
    ids = model.tokenize(text, add_bos=False)
    assert len(ids) > len(text)  # really byte tokens
    decoder = model.tokenizer.stream()
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert any(p == "" for p in pieces)  # something was held back


def test_stop_strings(model):
    full = model.generate("Ruth", max_new_tokens=40, temperature=0)
    assert len(full) > 6
    stop = full[3:6]
    cut = model.generate("Ruth", max_new_tokens=40, temperature=0, stop=[stop])
    assert cut == full[:full.index(stop)]
    assert model.last_stats.finish_reason == "stop"
    streamed = "".join(model.generate("Ruth", max_new_tokens=40, temperature=0, stop=[stop],
                                      stream=True))
    assert streamed == cut


def test_max_new_tokens_and_stats(model):
    model.generate("Ruth", max_new_tokens=5, temperature=0)
    s = model.last_stats
    assert s.generated_tokens <= 5
    assert s.prompt_tokens == len(model.tokenize("Ruth"))
    if s.generated_tokens == 5:
        assert s.finish_reason == "length"


def test_prefix_reuse_prefills_only_new_tokens(model):
    a = model.tokenize("And Ruth the Moabitess said unto Naomi")
    model.generate(a, max_new_tokens=2, temperature=0)
    assert model.last_stats.prefill_tokens == len(a)
    model.generate(a + model.tokenize(" and", add_bos=False), max_new_tokens=2, temperature=0)
    # Everything up to the first generated token the new prompt does not share is cached.
    assert model.last_stats.prefill_tokens < len(a)


def test_chat_second_turn_prefills_only_new_tokens(model):
    msgs = [{"role": "user", "content": "Who is Naomi?"}]
    answer = model.chat(msgs, max_new_tokens=8, temperature=0)
    first_pos = model.engine.pos
    msgs += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And Ruth?"}]
    model.chat(msgs, max_new_tokens=8, temperature=0)
    full = model.chat_ids(msgs)
    new = model.last_stats.prefill_tokens
    # The cache held the first prompt and the answer: only the tail after them is prefilled.
    assert new == len(full) - first_pos
    assert new < len(full) // 2 + 1


def test_chat_template_tokens(model):
    tok = model.tokenizer
    ids = model.chat_ids([{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hi"}])
    assert ids[0] == tok.bos_id and ids[1] == tok.start_of_turn_id
    assert ids.count(tok.start_of_turn_id) == 2 and ids.count(tok.end_of_turn_id) == 1
    assert tok.decode(ids) == "user\nBe brief.\n\nHi\nmodel\n"


@pytest.mark.parametrize("kwargs", [
    dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1), dict(min_p=1.0),
    dict(repetition_penalty=0.0), dict(max_new_tokens=0), dict(seed=-3), dict(stop=[""]),
    dict(temperature=float("nan")),
])
def test_bad_sampling_values_raise_value_error(model, kwargs):
    with pytest.raises(ValueError):
        model.generate("Ruth", **kwargs)
    assert model.generate("Ruth", max_new_tokens=2, temperature=0) is not None  # still usable


def test_prompt_longer_than_context(model):
    long = "Ruth " * 400
    with pytest.raises(spark_infer.ContextLengthError, match="context"):
        model.generate(long)
    assert isinstance(model.generate("Ruth", max_new_tokens=2, temperature=0), str)


def test_bad_files_and_names(tmp_path, model_path):
    with pytest.raises(FileNotFoundError):
        spark_infer.load(str(tmp_path / "nope.spark"))
    bad = tmp_path / "bad.spark"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 14)
    with pytest.raises(spark_infer.FormatError):
        spark_infer.load(str(bad))
    with pytest.raises(ValueError):
        spark_infer.load(model_path, threads=0)
    with pytest.raises(ValueError, match="embedded model"):   # a file has its own dtypes
        spark_infer.load(model_path, dtype="int8")


def test_unknown_format_version_is_a_format_error(tmp_path, model_path):
    import json
    with open(model_path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["__metadata__"]["format_version"] = "7"
    new = json.dumps(header).encode()
    path = tmp_path / "v7.spark"
    path.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n:])
    with pytest.raises(spark_infer.FormatError, match="version"):
        spark_infer.load(str(path))


def test_closing_a_stream_early_keeps_the_model_usable(model):
    stream = model.generate("Ruth", max_new_tokens=30, temperature=0, stream=True)
    next(stream)
    with pytest.raises(spark_infer.ModelBusyError):
        model.generate("Naomi", max_new_tokens=2)
    stream.close()
    full = model.generate("Ruth", max_new_tokens=30, temperature=0)
    model.reset()
    assert full == model.generate("Ruth", max_new_tokens=30, temperature=0)


def test_perplexity_matches_logits(model):
    text = "And Ruth said, Intreat me not to leave thee"
    ids = model.tokenize(text)
    logits = model.logits(ids).astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    expected = float(np.exp(-np.mean([logp[i, ids[i + 1]] for i in range(len(ids) - 1)])))
    assert model.perplexity(text) == pytest.approx(expected, rel=1e-6)


def test_two_threads_on_one_model_never_corrupt_it(model):
    # prefill/decode release the GIL: a second thread must get ModelBusyError (or run after
    # the first), never share the KV cache; reset() too, which used to rewind the cache under
    # an open generation. A tiny switch interval makes the threads interleave often.
    import sys
    import threading

    prompts = ["Ruth said", "And Naomi said unto her two daughters in law", "Boaz"]
    expected = {p: model.generate(p, max_new_tokens=10, temperature=0) for p in prompts}
    results, busy, errors = [], [], []

    def worker(k: int) -> None:
        for i in range(40):
            p = prompts[(i + k) % len(prompts)]
            try:
                if i % 2:
                    results.append((p, "".join(model.generate(p, max_new_tokens=10,
                                                              temperature=0, stream=True))))
                else:
                    results.append((p, model.generate(p, max_new_tokens=10, temperature=0)))
            except spark_infer.ModelBusyError:
                busy.append(k)
            except BaseException as e:  # noqa: BLE001 - any other error is the bug
                errors.append(e)

    def resetter() -> None:
        for _ in range(400):
            try:
                model.reset()
            except spark_infer.ModelBusyError:
                pass
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
        threads.append(threading.Thread(target=resetter))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[:3]
    assert len(results) + len(busy) == 120 and results
    assert all(text == expected[p] for p, text in results)
    assert model.generate("Boaz", max_new_tokens=10, temperature=0) == expected["Boaz"]


def test_the_model_is_released_on_every_way_out(model):
    import gc

    expected = model.generate("Ruth", max_new_tokens=12, temperature=0)
    stream = model.generate("Ruth", max_new_tokens=30, temperature=0, stream=True)
    next(stream)
    with pytest.raises(spark_infer.ModelBusyError):
        model.reset()
    with pytest.raises(spark_infer.ModelBusyError):
        model.logits([2, 10])
    del stream            # abandoned, never closed: collecting it lets go of the model
    gc.collect()
    assert model.generate("Ruth", max_new_tokens=12, temperature=0) == expected

    class Failing:        # the engine fails in the middle of a generation
        def __init__(self, engine):
            self.engine, self.calls = engine, 0

        def __getattr__(self, name):
            return getattr(self.engine, name)

        def decode(self, token):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("decode failed")
            return self.engine.decode(token)

    engine = model.engine
    model.engine = Failing(engine)
    try:
        with pytest.raises(RuntimeError, match="decode failed"):
            model.generate("Ruth", max_new_tokens=12, temperature=0)
    finally:
        model.engine = engine
    assert model.generate("Ruth", max_new_tokens=12, temperature=0) == expected


def _assistant_body(model, messages, answer):
    """The ids chat() puts in the template for `answer` after `messages`."""
    head = model.chat_ids(messages)
    ids = model.chat_ids(messages + [{"role": "assistant", "content": answer},
                                     {"role": "user", "content": "And?"}])
    assert ids[:len(head)] == head
    return ids[len(head):ids.index(model.tokenizer.end_of_turn_id, len(head))]


def test_chat_history_ids_are_what_was_shown(model):
    msgs = [{"role": "user", "content": "Who is Naomi?"}]
    full = model.chat(msgs, max_new_tokens=24, temperature=0)
    assert len(full) > 8
    generated = _assistant_body(model, msgs, full)
    assert model.detokenize(generated) == full
    for stop in (full[4:7], full[5:6]):
        answer = model.chat(msgs, max_new_tokens=24, temperature=0, stop=[stop])
        assert answer == full[:full.index(stop)]
        body = _assistant_body(model, msgs, answer)
        # Exactly the shown text (no stop string, nothing held back), and when the cut falls on
        # a token boundary, the ids the model produced (so the cache is reused).
        assert model.detokenize(body) == answer
        if any(model.detokenize(generated[:k]) == answer for k in range(len(generated) + 1)):
            assert body == generated[:len(body)]
    # A stream closed early: the ids are those of the pieces handed out.
    stream = model.chat(msgs, max_new_tokens=24, temperature=0, stream=True)
    shown = next(stream) + next(stream)
    stream.close()
    assert model.detokenize(_assistant_body(model, msgs, shown)) == shown


def test_chat_answer_cache_is_bounded(model):
    from spark_infer.model import _ANSWER_CACHE

    msgs = [{"role": "user", "content": "Tell me of Boaz."}]
    answers = [model.chat(msgs, max_new_tokens=4, temperature=1.5, top_k=0, top_p=1.0,
                          min_p=0.0, seed=s) for s in range(_ANSWER_CACHE + 8)]
    assert len(set(answers)) > _ANSWER_CACHE
    assert len(model._answer_ids) <= _ANSWER_CACHE
    assert answers[-1] in model._answer_ids and answers[0] not in model._answer_ids


def test_penalties_see_the_text_not_the_template(model, monkeypatch):
    from spark_infer import model as model_module

    seen = []

    class Recording(model_module.Sampler):
        def __call__(self, logits, history=()):
            seen.append(list(history))
            return super().__call__(logits, history)

    monkeypatch.setattr(model_module, "Sampler", Recording)
    tok = model.tokenizer
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Who is Naomi?"}]
    model.chat(msgs, max_new_tokens=3, temperature=0, repetition_penalty=1.2)
    assert seen[0] == tok.encode("Be brief.\n\nWho is Naomi?", add_bos=False)
    seen.clear()
    model.generate("Ruth said", max_new_tokens=3, temperature=0)
    assert seen[0] == tok.encode("Ruth said", add_bos=False)   # no <bos>


def test_repetition_penalty_changes_greedy_text(model):
    kw = dict(max_new_tokens=40, temperature=0)
    plain = model.generate("Ruth", **kw)
    ids = model.tokenize(plain, add_bos=False)
    assert len(set(ids)) < len(ids)   # the greedy chain repeats itself on this random model
    penalized = model.generate("Ruth", repetition_penalty=3.0, repeat_last_n=-1,
                               frequency_penalty=1.0, presence_penalty=1.0, **kw)
    assert penalized != plain
    assert model.generate("Ruth", repetition_penalty=3.0, repeat_last_n=0, **kw) == plain


def test_fit_chat_drops_the_oldest_turns(model):
    turns = [{"role": "system", "content": "Be brief."}]
    for i in range(12):
        turns += [{"role": "user", "content": f"Question {i} about Naomi and Ruth?"},
                  {"role": "assistant", "content": f"Answer {i}: they went to Bethlehem."}]
    turns.append({"role": "user", "content": "And then?"})
    assert len(model.chat_ids(turns)) > model.context_length
    kept = model.fit_chat(turns, room=20)
    assert kept[0] == turns[0] and kept[1]["role"] == "user"
    assert kept[1:] == turns[len(turns) - len(kept) + 1:]      # the latest turns, in order
    assert len(model.chat_ids(kept)) + 20 <= model.context_length
    # No more was dropped than needed: one more exchange (user + assistant) would not fit.
    assert len(model.chat_ids(turns[:1] + turns[len(turns) - len(kept) - 1:])) + 20 \
        > model.context_length
    assert model.fit_chat(turns[-1:], room=20) == turns[-1:]
    with pytest.raises(spark_infer.ContextLengthError):
        model.fit_chat([{"role": "user", "content": "Ruth " * 200}])
    with pytest.raises(ValueError, match="room"):
        model.fit_chat(turns, room=-1)


def test_ring_buffers_rerun_a_prompt_they_no_longer_hold(model_path):
    """chunk_size 4 gives the window-16 layers a ring of 19 rows. Generating the same prompt
    twice: the first answer runs past what the ring keeps of the prompt, so the second run
    prefills the whole prompt again (the whole-context cache reuses it), with the same text."""
    ring = spark_infer.load(model_path, context_length=96, chunk_size=4)
    whole = spark_infer.load(model_path, context_length=96, chunk_size=4, swa_full=True)
    assert ring.engine.kv_ring_rows == 16 + 3 and whole.engine.kv_ring_rows == 0
    assert ring.engine.kv_bytes < whole.engine.kv_bytes
    prompt = "Ruth said, Intreat me not to leave thee."
    n = len(ring.tokenize(prompt))
    answers = []
    for m in (ring, whole):
        answers.append(m.generate(prompt, max_new_tokens=30, temperature=0))
        assert m.last_stats.generated_tokens > 4
        answers.append(m.generate(prompt, max_new_tokens=30, temperature=0))
    assert ring.last_stats.prefill_tokens == n and whole.last_stats.prefill_tokens == 1
    ids = ring.tokenize(prompt)
    assert ring.cached_prefix(ids) == 0 and whole.cached_prefix(ids) == n  # what serve routes by
    assert answers[0] == answers[1] == answers[2] == answers[3]
