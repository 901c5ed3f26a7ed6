"""llama-cpp-python-shaped calls (create_completion, create_chat_completion), log-probabilities
against numpy, the streamer callback that cancels, and Model as a context manager."""

from __future__ import annotations

import numpy as np
import pytest

import spark_infer
from spark_infer import ContextLengthError, ModelClosedError



@pytest.fixture()
def model(tiny_model_path):
    with spark_infer.load(tiny_model_path, context_length=128) as m:
        yield m


def log_softmax(row: np.ndarray) -> np.ndarray:
    x = row.astype(np.float64)
    return x - (x.max() + np.log(np.exp(x - x.max()).sum()))


def greedy_chain(model, ids: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """n greedy tokens after ids and the log-softmax rows they were chosen from, from one
    all-positions logits() call per step (numpy, independent of the generation loop)."""
    ids = list(ids)
    out, rows = [], []
    for _ in range(n):
        row = log_softmax(model.logits(ids)[-1])
        token = int(np.argmax(row))
        out.append(token)
        rows.append(row)
        ids.append(token)
    return out, np.array(rows)


def test_completion_shape_text_and_usage(model):
    prompt = "Ruth said"
    out = model.create_completion(prompt, max_tokens=7, temperature=0)
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-")
    assert isinstance(out["created"], int) and out["model"] == "tiny.spark"
    (choice,) = out["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    ids = model.tokenize(prompt)
    chain, _ = greedy_chain(model, ids, 7)
    ends = {model.tokenizer.eos_id, model.tokenizer.end_of_turn_id}
    n = next((i for i, t in enumerate(chain) if t in ends), 7)
    assert choice["text"] == model.detokenize(chain[:n])
    assert choice["finish_reason"] == ("length" if n == 7 else "stop")
    assert out["usage"] == {"prompt_tokens": len(ids), "completion_tokens": n,
                            "total_tokens": len(ids) + n}
    assert model(prompt, max_tokens=7, temperature=0)["choices"][0]["text"] == choice["text"]


def test_completion_stream_chunks_join_to_the_text(model):
    whole = model.create_completion("Naomi", max_tokens=12, temperature=0)
    chunks = list(model.create_completion("Naomi", max_tokens=12, temperature=0, stream=True,
                                          stream_options={"include_usage": True}))
    assert all(c["id"] == chunks[0]["id"] and c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == whole["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]][-1] == \
        whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    plain = list(model.create_completion("Naomi", max_tokens=3, temperature=0, stream=True))
    assert all(c["choices"] and "usage" not in c for c in plain)


def test_completion_logprobs_equal_numpy_log_softmax(model):
    prompt = "Ruth said"
    k = 3
    out = model.create_completion(prompt, max_tokens=6, temperature=0, logprobs=k)
    lp = out["choices"][0]["logprobs"]
    n = len(lp["tokens"])
    assert n == out["usage"]["completion_tokens"] > 0
    chain, rows = greedy_chain(model, model.tokenize(prompt), n)
    tok = model.tokenizer
    text = lambda i: tok.token_bytes(i).decode("utf-8", errors="replace")  # noqa: E731
    assert lp["tokens"] == [text(t) for t in chain]
    np.testing.assert_allclose(lp["token_logprobs"], rows[np.arange(n), chain], atol=1e-3)
    for step, top in enumerate(lp["top_logprobs"]):
        best = np.argsort(-rows[step])[:k]
        want = {text(i): rows[step, i] for i in best}
        assert set(top) == set(want)
        for s, v in top.items():
            assert v == pytest.approx(want[s], abs=1e-3)
    # offsets count from the prompt's start: each token's text begins where the last ended
    full = prompt + out["choices"][0]["text"]
    for off, t in zip(lp["text_offset"], lp["tokens"]):
        assert full[off:off + len(t)] == t


def test_chat_completion_and_system_folding(model):
    system = "Answer briefly."
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "Who is Ruth?"}]
    out = model.create_chat_completion(msgs, max_tokens=5, temperature=0, logprobs=True,
                                       top_logprobs=2)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    (choice,) = out["choices"]
    assert choice["message"]["role"] == "assistant"
    # Gemma has no system role: the system text opens the first user turn.
    folded = [{"role": "user", "content": system + "\n\n" + "Who is Ruth?"}]
    ids = model.chat_ids(folded)
    assert model.chat_ids(msgs) == ids
    assert out["usage"]["prompt_tokens"] == len(ids)
    n = out["usage"]["completion_tokens"]
    chain, rows = greedy_chain(model, ids, n)
    assert choice["message"]["content"] == model.detokenize(chain)
    content = choice["logprobs"]["content"]
    assert [c["bytes"] for c in content] == [list(model.tokenizer.token_bytes(t)) for t in chain]
    np.testing.assert_allclose([c["logprob"] for c in content], rows[np.arange(n), chain],
                               atol=1e-3)
    for c, row in zip(content, rows):
        assert len(c["top_logprobs"]) == 2
        assert c["top_logprobs"][0]["logprob"] == pytest.approx(row.max(), abs=1e-3)
    parts = [{"role": "developer", "content": system},
             {"role": "user", "content": [{"type": "text", "text": "Who is "},
                                          {"type": "text", "text": "Ruth?"}]}]
    again = model.create_chat_completion(parts, max_tokens=5, temperature=0)
    assert again["choices"][0]["message"] == choice["message"]


def test_chat_stream_deltas(model):
    msgs = [{"role": "user", "content": "Naomi said"}]
    whole = model.create_chat_completion(msgs, max_tokens=8, temperature=0)
    chunks = list(model.create_chat_completion(msgs, max_tokens=8, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_stop_string_cuts_text_and_logprobs(model):
    base = model.create_completion("Ruth said", max_tokens=16, temperature=0)["choices"][0]["text"]
    stop = base[6:9]
    assert stop and stop in base
    out = model.create_completion("Ruth said", max_tokens=16, temperature=0, stop=[stop],
                                  logprobs=0)
    (choice,) = out["choices"]
    assert choice["text"] == base[:base.index(stop)] and choice["finish_reason"] == "stop"
    # only tokens whose text starts inside the answer are reported
    offs = [o - len("Ruth said") for o in choice["logprobs"]["text_offset"]]
    assert all(o < len(choice["text"]) for o in offs)
    assert len(offs) == out["usage"]["completion_tokens"]


def test_bad_arguments(model):
    with pytest.raises(TypeError, match="unknown argument"):
        model.create_completion("x", temprature=0.5)
    with pytest.raises(ValueError, match="temperature"):
        model.create_completion("x", temperature=-1)
    with pytest.raises(ValueError, match="logprobs"):
        model.create_completion("x", logprobs=99)
    with pytest.raises(ValueError, match="top_logprobs needs logprobs"):
        model.create_chat_completion([{"role": "user", "content": "x"}], top_logprobs=2)
    with pytest.raises(ContextLengthError, match="200 tokens but the context holds 128"):
        model.create_completion([2] + [7] * 199)
    with pytest.raises(ValueError, match="stream_options"):
        model.create_completion("x", stream=True, stream_options={"usage": True})
    out = model.create_completion("x", max_tokens=2, temperature=0)
    assert out["usage"]["completion_tokens"] <= 2


def test_streamer_false_cancels_generation(model):
    seen = []

    def stop_after_two(piece: str) -> bool:
        seen.append(piece)
        return len(seen) < 2

    text = model.generate("Ruth said", max_new_tokens=40, temperature=0, streamer=stop_after_two)
    assert len(seen) == 2 and text == "".join(seen)
    full = model.generate("Ruth said", max_new_tokens=40, temperature=0)
    assert full.startswith(text) and len(full) > len(text)
    model.generate("Ruth said", max_new_tokens=40, temperature=0, streamer=lambda p: False)
    assert model.last_stats.generated_tokens <= 2 and model.last_stats.finish_reason == ""
    # None (a callback that returns nothing) never cancels
    assert model.generate("Ruth said", max_new_tokens=40, temperature=0,
                          streamer=lambda p: None) == full


def test_context_manager_closes(tiny_model_path):
    with spark_infer.load(tiny_model_path, context_length=64) as m:
        assert m.generate("Ruth", max_new_tokens=2, temperature=0) is not None
    with pytest.raises(ModelClosedError, match="closed"):
        m.generate("Ruth", max_new_tokens=2)
    with pytest.raises(ValueError):  # ModelClosedError is a ValueError
        m.logits([2, 5])
    m.close()  # idempotent
