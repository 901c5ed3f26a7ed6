"""llama-cpp-python's calls over a Model: `create_completion` and `create_chat_completion`,
returning OpenAI-shaped dicts (streamed as chunk dicts), with log-probabilities.

Layers, as in llama-cpp-python: `prepare_completion` / `prepare_chat` check the arguments and
tokenize (every error is raised there, before a generator exists); `Generation` runs the prompt
through `Model._stream` and records each sampled token (its text offset and, when asked, its
log-probability); `completion_chunks` / `chat_chunks` turn that into chunk dicts; a non-streamed
result is the same chunks merged, so both paths give the same text and tokens. The server
(`spark_infer.serve`) uses the same functions with a cancel check between tokens.

Log-probabilities are the log-softmax of the raw logits the token was drawn from (before the
repetition penalty, temperature and the top-k/top-p/min-p cut), computed in float64.

Gemma has no system role: a system message is folded into the first user turn ("system\\n\\n
user"), as Gemma's own chat template does.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from spark_infer.errors import ContextLengthError
from spark_infer.sampling import SamplingParams

__all__ = ["create_completion", "create_chat_completion", "prepare_completion", "prepare_chat",
           "completion_chunks", "chat_chunks", "sampling_params", "SAMPLING_FIELDS",
           "MAX_TOP_LOGPROBS", "Prepared", "Generation"]

# Every field SamplingParams accepts is a keyword of the calls below (so new sampling options
# arrive here without being listed twice).
SAMPLING_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))
MAX_TOP_LOGPROBS = 20  # OpenAI's bound for top_logprobs

Chunk = dict[str, Any]


def sampling_params(**kwargs: Any) -> SamplingParams:
    """SamplingParams from keyword arguments; an unknown name is a TypeError naming the known."""
    unknown = sorted(set(kwargs) - set(SAMPLING_FIELDS))
    if unknown:
        raise TypeError(f"unknown argument(s) {', '.join(unknown)} (sampling arguments: "
                        f"{', '.join(SAMPLING_FIELDS)})")
    return SamplingParams(**kwargs)


@dataclasses.dataclass
class Prepared:
    """A checked request: prompt ids and everything the generation needs."""

    ids: list[int]
    max_tokens: int
    params: SamplingParams
    stops: list[str]
    top_logprobs: int | None     # None: no log-probabilities; k >= 0: the k most likely too
    chat: bool
    prompt_chars: int = 0        # completions: text_offset counts from the prompt's start
    text_ids: list[int] | None = None  # chat: the messages' text ids, for the penalties


def _check_max_tokens(model: Any, max_tokens: int | None, n_prompt: int) -> int:
    room = max(1, model.context_length - n_prompt)
    if max_tokens is None:
        return room
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)):
        raise ValueError(f"max_tokens must be an integer or None, got {max_tokens!r}")
    return room if max_tokens <= 0 else int(max_tokens)  # <= 0: until the context is full


def _check_top(name: str, k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) \
            or not 0 <= k <= MAX_TOP_LOGPROBS:
        raise ValueError(f"{name} must be an integer in [0, {MAX_TOP_LOGPROBS}], got {k!r}")
    return int(k)


def _check_fits(model: Any, ids: list[int]) -> None:
    if len(ids) > model.context_length:
        raise ContextLengthError(f"the prompt has {len(ids)} tokens but the context holds "
                                 f"{model.context_length} tokens")


def prepare_completion(model: Any, prompt: str | Sequence[int], *, max_tokens: int | None = 16,
                       stop: str | Sequence[str] | None = None, logprobs: int | None = None,
                       **sampling: Any) -> Prepared:
    """Check a completion request against `model` and tokenize it (see create_completion)."""
    params = sampling_params(**sampling)
    stops = model._check_generation_args(1, stop)
    ids = model._prompt_ids(prompt)
    model._tok()
    _check_fits(model, ids)
    top = None if logprobs is None else _check_top("logprobs", logprobs)
    return Prepared(ids, _check_max_tokens(model, max_tokens, len(ids)), params, stops, top,
                    chat=False, prompt_chars=len(prompt) if isinstance(prompt, str) else 0)


def _message_text(i: int, content: Any) -> str:
    """OpenAI content: a str, or a list of {"type": "text", "text": ...} parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise ValueError(f"messages[{i}]: only text content parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise ValueError(f"messages[{i}] must have a str 'content' (or a list of text parts)")


def prepare_chat(model: Any, messages: Sequence[Mapping[str, Any]], *,
                 max_tokens: int | None = None, stop: str | Sequence[str] | None = None,
                 logprobs: bool = False, top_logprobs: int | None = None,
                 **sampling: Any) -> Prepared:
    """Check a chat request against `model` and build its prompt ids (see
    create_chat_completion)."""
    params = sampling_params(**sampling)
    stops = model._check_generation_args(1, stop)
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of {'role', 'content'} dicts")
    plain = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")
        role = "system" if m.get("role") == "developer" else m.get("role")  # OpenAI's new name
        plain.append({"role": role, "content": _message_text(i, m.get("content"))})
    ids, text_ids = model._chat_template(plain)
    _check_fits(model, ids)
    if top_logprobs is not None and not logprobs:
        raise ValueError("top_logprobs needs logprobs=True")
    top = (_check_top("top_logprobs", top_logprobs or 0)) if logprobs else None
    return Prepared(ids, _check_max_tokens(model, max_tokens, len(ids)), params, stops, top,
                    chat=True, text_ids=text_ids)


@dataclasses.dataclass
class TokenRecord:
    """One generated token: its id, where its text starts in the output, its log-probability
    and the `k` most likely tokens' [(id, logprob)] at that step."""

    id: int
    offset: int
    logprob: float | None = None
    top: list[tuple[int, float]] = dataclasses.field(default_factory=list)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    top = x.max()
    return x - (top + np.log(np.exp(x - top).sum()))


class Generation:
    """One generation of a Prepared request on `model`. Iterating yields (text piece, the
    TokenRecords whose text starts in what has been shown so far); afterwards
    `finish_reason` ("stop", "length", or "cancelled"), `completion_tokens`, `stats`
    (the Model's GenerationStats) and `cancelled` are set.

    `cancel()` is asked before each sampled token is kept: True ends the generation there.
    """

    def __init__(self, model: Any, req: Prepared, cancel: Callable[[], bool] | None = None):
        self.model, self.req, self.cancel = model, req, cancel
        self.records: list[TokenRecord] = []
        self.cancelled = False
        self.finish_reason: str | None = None
        self.stats = None
        self._pushed = 0           # characters the tokens produced so far
        self._decoder = model._tok().stream()

    @property
    def completion_tokens(self) -> int:
        return len(self.records)

    def _on_token(self, token: int, logits: np.ndarray) -> bool:
        if self.cancel is not None and self.cancel():
            self.cancelled = True
            return False
        rec = TokenRecord(token, self._pushed)
        k = self.req.top_logprobs
        if k is not None:
            lp = _log_softmax(logits)
            rec.logprob = float(lp[token])
            if k:
                best = np.argpartition(-lp, k - 1)[:k]
                best = best[np.argsort(-lp[best], kind="stable")]
                rec.top = [(int(i), float(lp[i])) for i in best]
        self.records.append(rec)
        self._pushed += len(self._decoder.push(token))
        return True

    def __iter__(self) -> Iterator[tuple[str, list[TokenRecord]]]:
        r = self.req
        pieces = self.model._stream(r.ids, r.max_tokens, r.params, r.stops,
                                    remember_answer=r.chat, on_token=self._on_token,
                                    text_ids=r.text_ids)
        shown = sent = 0
        try:
            for piece in pieces:
                shown += len(piece)
                new = sent
                while new < len(self.records) and self.records[new].offset < shown:
                    new += 1
                yield piece, self.records[sent:new]
                sent = new
        finally:
            pieces.close()
        # Tokens whose text a stop string cut off are not part of the answer; otherwise the
        # rest (e.g. the bytes of a character completed only by the final flush) is.
        if shown < self._pushed:
            del self.records[sent:]
        self.stats = self.model.last_stats
        self.finish_reason = "cancelled" if self.cancelled else (self.stats.finish_reason or "stop")
        if sent < len(self.records):
            yield "", self.records[sent:]

    def usage(self) -> dict[str, int]:
        n_prompt = len(self.req.ids)
        return {"prompt_tokens": n_prompt, "completion_tokens": self.completion_tokens,
                "total_tokens": n_prompt + self.completion_tokens}


def _token_text(tok: Any, token: int) -> str:
    return tok.token_bytes(token).decode("utf-8", errors="replace")


def _completion_logprobs(tok: Any, recs: list[TokenRecord], prompt_chars: int) -> dict[str, list]:
    """The legacy completions shape (llama-cpp-python's): parallel lists."""
    tops = []
    for r in recs:
        top = {_token_text(tok, i): lp for i, lp in r.top}
        top[_token_text(tok, r.id)] = r.logprob  # the chosen token is always listed
        tops.append(top)
    return {"tokens": [_token_text(tok, r.id) for r in recs],
            "text_offset": [prompt_chars + r.offset for r in recs],
            "token_logprobs": [r.logprob for r in recs], "top_logprobs": tops}


def _chat_logprobs(tok: Any, recs: list[TokenRecord]) -> dict[str, list]:
    """The chat shape: one entry per token with its bytes and its top alternatives."""
    def entry(i: int, lp: float | None) -> dict[str, Any]:
        return {"token": _token_text(tok, i), "logprob": lp, "bytes": list(tok.token_bytes(i))}

    return {"content": [dict(entry(r.id, r.logprob),
                             top_logprobs=[entry(i, lp) for i, lp in r.top]) for r in recs]}


def _model_name(model: Any, name: str | None) -> str:
    return name if name is not None else os.path.basename(model.path)


def completion_chunks(model: Any, req: Prepared, *, model_name: str | None = None,
                      include_usage: bool = False, cancel: Callable[[], bool] | None = None,
                      gen: Generation | None = None) -> Iterator[Chunk]:
    """The text_completion chunks of one generation: one per text piece, then one with the
    finish_reason, then (include_usage) one with no choices and the usage."""
    gen = gen or Generation(model, req, cancel)
    tok = model._tok()
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": _model_name(model, model_name)}

    def chunk(text: str, recs: list[TokenRecord], finish: str | None) -> Chunk:
        lp = None if req.top_logprobs is None else _completion_logprobs(tok, recs, req.prompt_chars)
        return dict(head, choices=[{"text": text, "index": 0, "logprobs": lp,
                                    "finish_reason": finish}])

    for piece, recs in gen:
        yield chunk(piece, recs, None)
    yield chunk("", [], gen.finish_reason)
    if include_usage:
        yield dict(head, choices=[], usage=gen.usage())


def chat_chunks(model: Any, req: Prepared, *, model_name: str | None = None,
                include_usage: bool = False, cancel: Callable[[], bool] | None = None,
                gen: Generation | None = None) -> Iterator[Chunk]:
    """The chat.completion.chunk dicts of one generation: the role, one per text piece, one
    with the finish_reason, then (include_usage) one with no choices and the usage."""
    gen = gen or Generation(model, req, cancel)
    tok = model._tok()
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": _model_name(model, model_name)}

    def chunk(delta: dict[str, str], recs: list[TokenRecord], finish: str | None) -> Chunk:
        lp = None if req.top_logprobs is None or not recs else _chat_logprobs(tok, recs)
        return dict(head, choices=[{"index": 0, "delta": delta, "logprobs": lp,
                                    "finish_reason": finish}])

    yield chunk({"role": "assistant", "content": ""}, [], None)
    for piece, recs in gen:
        yield chunk({"content": piece}, recs, None)
    yield chunk({}, [], gen.finish_reason)
    if include_usage:
        yield dict(head, choices=[], usage=gen.usage())


def merge_completion(chunks: Iterator[Chunk]) -> Chunk:
    """A whole text_completion from its chunks (the last must carry the usage)."""
    text: list[str] = []
    lp: dict[str, list] | None = None
    out: Chunk = {}
    for c in chunks:
        out = c
        for ch in c["choices"]:
            text.append(ch["text"])
            finish = ch["finish_reason"]
            if ch["logprobs"] is not None:
                lp = lp or {k: [] for k in ch["logprobs"]}
                for k, v in ch["logprobs"].items():
                    lp[k] += v
    return dict(out, choices=[{"text": "".join(text), "index": 0, "logprobs": lp,
                               "finish_reason": finish}])


def merge_chat(chunks: Iterator[Chunk]) -> Chunk:
    """A whole chat.completion from its chunks (the last must carry the usage)."""
    text: list[str] = []
    content: list | None = None
    out: Chunk = {}
    for c in chunks:
        out = c
        for ch in c["choices"]:
            text.append(ch["delta"].get("content", ""))
            finish = ch["finish_reason"]
            if ch["logprobs"] is not None:
                content = (content or []) + ch["logprobs"]["content"]
    return dict(out, object="chat.completion", choices=[{
        "index": 0, "message": {"role": "assistant", "content": "".join(text)},
        "logprobs": None if content is None else {"content": content},
        "finish_reason": finish}])


def _include_usage(stream_options: Mapping[str, Any] | None) -> bool:
    if stream_options is None:
        return False
    if not isinstance(stream_options, Mapping) or set(stream_options) - {"include_usage"}:
        raise ValueError(f"stream_options takes only 'include_usage', got {stream_options!r}")
    return bool(stream_options.get("include_usage", False))


def create_completion(model: Any, prompt: str | Sequence[int], *, max_tokens: int | None = 16,
                      stop: str | Sequence[str] | None = None, stream: bool = False,
                      logprobs: int | None = None,
                      stream_options: Mapping[str, Any] | None = None,
                      **sampling: Any) -> Chunk | Iterator[Chunk]:
    """Continue `prompt` (text or token ids); llama-cpp-python's `create_completion`.

    Args:
      max_tokens: tokens to generate at most (None or <= 0: until the context is full).
      stop: a stop string or a list of them (not included in the text).
      stream: return an iterator of chunk dicts (one per text piece, then one with the
        finish_reason) instead of the whole result.
      logprobs: None for no log-probabilities; k (0-20) gives each token's logprob and the
        k most likely tokens' (`top_logprobs`, a dict that also lists the chosen token).
        `text_offset` counts from the start of the prompt text.
      stream_options: {"include_usage": True} adds a last chunk with no choices and the usage.
      **sampling: any SamplingParams field (temperature, top_k, top_p, min_p, seed, ...).

    Returns:
      {"id", "object": "text_completion", "created", "model", "choices": [{"text", "index",
      "logprobs", "finish_reason": "stop" | "length"}], "usage": {"prompt_tokens",
      "completion_tokens", "total_tokens"}}.

    Raises:
      ValueError / TypeError (bad argument), ContextLengthError (the prompt does not fit),
      ModelBusyError (another stream of this Model is still open).

    Example:
      >>> out = model.create_completion("The capital of France is", max_tokens=8, temperature=0)
      >>> out["choices"][0]["text"]
    """
    req = prepare_completion(model, prompt, max_tokens=max_tokens, stop=stop, logprobs=logprobs,
                             **sampling)
    if stream:
        return completion_chunks(model, req, include_usage=_include_usage(stream_options))
    return merge_completion(completion_chunks(model, req, include_usage=True))


def create_chat_completion(model: Any, messages: Sequence[Mapping[str, Any]], *,
                           max_tokens: int | None = None,
                           stop: str | Sequence[str] | None = None, stream: bool = False,
                           logprobs: bool = False, top_logprobs: int | None = None,
                           stream_options: Mapping[str, Any] | None = None,
                           **sampling: Any) -> Chunk | Iterator[Chunk]:
    """Answer a conversation; llama-cpp-python's `create_chat_completion`.

    `messages`: [{"role": "system" | "developer" | "user" | "assistant", "content": str or a
    list of {"type": "text", "text": str} parts}]. Gemma has no system role: the system message
    is folded into the first user turn. The KV cache is kept between calls, so the next turn
    (same history plus new messages) prefills only its new tokens.

    Args:
      max_tokens: tokens to generate at most (None or <= 0: until the context is full).
      logprobs: True adds each token's logprob; top_logprobs (0-20) the most likely tokens'.
      stop, stream, stream_options, **sampling: as create_completion.

    Returns:
      {"id", "object": "chat.completion", "created", "model", "choices": [{"index",
      "message": {"role": "assistant", "content"}, "logprobs", "finish_reason"}], "usage"};
      streamed: "chat.completion.chunk" dicts with a "delta" (the role first, then content).
    """
    req = prepare_chat(model, messages, max_tokens=max_tokens, stop=stop, logprobs=logprobs,
                       top_logprobs=top_logprobs, **sampling)
    if stream:
        return chat_chunks(model, req, include_usage=_include_usage(stream_options))
    return merge_chat(chat_chunks(model, req, include_usage=True))
