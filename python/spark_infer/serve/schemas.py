"""Request bodies of the OpenAI-compatible endpoints (pydantic), and how their sampling fields
map onto SamplingParams.

Unknown fields are refused (400 naming the field) rather than ignored, so a client never
believes an option took effect when it did not. Sampling fields pass through to
SamplingParams under their own names; one SamplingParams does not know is a 400 unless it
holds the neutral value (OpenAI clients send presence_penalty=0 and the like).
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field

from spark_infer.completion import SAMPLING_FIELDS

__all__ = ["CompletionRequest", "ChatRequest", "TokenizeRequest", "DetokenizeRequest",
           "sampling_kwargs"]

# Request name -> SamplingParams name; the value a field has when it changes nothing.
_ALIASES = {"repeat_penalty": "repetition_penalty"}  # llama-server's name
_NEUTRAL = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
            "repeat_penalty": 1.0}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Generation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    max_tokens: int | None = None
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None
    logit_bias: dict[str, float] | None = None
    # sampling (SamplingParams fields; absent means SamplingParams' default)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None


class CompletionRequest(_Generation):
    prompt: Union[str, list[int], list[str]]
    max_tokens: int | None = 16          # OpenAI's default for completions
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class ChatRequest(_Generation):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = None   # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: int | None = None


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    content: str
    add_special: bool = True        # <bos> first


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    tokens: list[int]


def sampling_kwargs(req: _Generation) -> dict[str, Any]:
    """SamplingParams keywords from a request. Raises ValueError for a field set to a value
    this build's SamplingParams cannot honour."""
    out: dict[str, Any] = {}
    for name in ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty",
                 "frequency_penalty", "repetition_penalty", "repeat_penalty", "repeat_last_n"):
        value = getattr(req, name)
        if value is None:
            continue
        target = _ALIASES.get(name, name)
        if target in SAMPLING_FIELDS:
            if target in out and out[target] != value:
                raise ValueError(f"{name} and {target} disagree")
            out[target] = value
        elif value != _NEUTRAL.get(name):
            raise ValueError(f"{name} is not supported by this server")
    return out
