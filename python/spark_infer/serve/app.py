"""The FastAPI app: OpenAI's /v1/completions, /v1/chat/completions and /v1/models, plus
/health, /metrics (Prometheus text), /tokenize and /detokenize (llama-server's shapes).

A request is checked and tokenized on the event loop (so every bad request is a 4xx before
anything streams), waits for an engine in the pool's bounded queue, then runs on that engine's
worker thread; streamed chunks come back through the loop as server-sent events
(`data: {chunk}` ... `data: [DONE]`). A cancel flag, checked before each token is kept, ends the
generation when the client disconnects (SSE: the stream is closed; otherwise: polled).
Errors use OpenAI's {"error": {"message", "type", "param", "code"}} shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from spark_infer import completion
from spark_infer.errors import ContextLengthError
from spark_infer.serve.pool import EnginePool, Metrics, QueueFull
from spark_infer.serve.schemas import (ChatRequest, CompletionRequest, DetokenizeRequest,
                                       TokenizeRequest, sampling_kwargs)

__all__ = ["create_app", "APIError"]

_DISCONNECT_POLL_S = 0.1  # how often a non-streamed request checks that its client is there


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code = param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type,
                                       "param": self.param, "code": self.code}},
                            status_code=self.status, headers=self.headers)


def _bad(e: Exception, param: str | None = None) -> APIError:
    code = "context_length_exceeded" if isinstance(e, ContextLengthError) else None
    return APIError(400, str(e), param=param, code=code)


class _CountAndLabel:
    """ASGI middleware (not BaseHTTPMiddleware, which would sit between a streaming response and
    its client): counts each response by path and status, and adds fixed headers. Paths that
    are not endpoints count as "other", so scans cannot grow the metrics without bound."""

    def __init__(self, app: Any, metrics: Metrics, headers: dict[str, str], paths: set[str]):
        self.app, self.metrics, self.paths = app, metrics, paths
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                path = scope["path"] if scope["path"] in self.paths else "other"
                self.metrics.count_request(path, message["status"])
                message["headers"] = list(message.get("headers", [])) + self.headers
            await send(message)

        await self.app(scope, receive, send_counted)


def create_app(models: Sequence[Any], *, model_name: str, aliases: Sequence[str] = (),
               api_key: str | None = None, max_queue: int = 64,
               response_headers: dict[str, str] | None = None) -> FastAPI:
    """An app serving `models` (one or more Models of the same file; one generation each at a
    time) under the name `model_name` (requests may also name any of `aliases`).

    api_key: when set, every endpoint but /health and /metrics needs
      `Authorization: Bearer <api_key>` (401 otherwise).
    max_queue: requests that may wait for an engine; more are refused with 503.
    response_headers: added to every response (the Ray deployment names its replica here).
    """
    pool = EnginePool(models, max_queue)
    metrics = Metrics()
    names = {model_name, *aliases}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        pool.close()

    app = FastAPI(title="spark-infer", lifespan=lifespan)
    app.state.pool, app.state.metrics = pool, metrics

    paths: set[str] = set()  # filled once the routes exist (end of this function)
    app.add_middleware(_CountAndLabel, metrics=metrics, headers=response_headers or {},
                       paths=paths)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return APIError(400, f"{where}: {first.get('msg', 'invalid request')}" if where
                        else first.get("msg", "invalid request"), param=where or None).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        return APIError(500, f"{type(e).__name__}: {e}", type="server_error").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return APIError(e.status_code, str(e.detail), type="invalid_request_error").response()

    async def authorized(request: Request) -> None:
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            raise APIError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                           type="authentication_error", code="invalid_api_key")

    def check_model(name: str | None) -> None:
        if name is not None and name not in names:
            raise APIError(404, f"model {name!r} is not served here (this server serves "
                                f"{model_name!r})", param="model", code="model_not_found")

    def check_common(body: Any) -> dict[str, Any]:
        check_model(body.model)
        if body.n != 1:
            raise APIError(400, f"n must be 1 (one choice per request), got {body.n}", param="n")
        if body.logit_bias:
            raise APIError(400, "logit_bias is not supported", param="logit_bias")
        try:
            return sampling_kwargs(body)
        except ValueError as e:
            raise _bad(e) from None

    # ------------------------------------------------------------------- generation plumbing

    async def generate(request: Request, prepare: Callable[[Any], completion.Prepared],
                       chunks: Callable[..., Iterator[dict]], merge: Callable, stream: bool,
                       include_usage: bool) -> Any:
        try:  # all checks, before queueing; in a thread: a long prompt's tokenizing is no stall
            first = await asyncio.to_thread(prepare, pool.models[0])
        except (ValueError, TypeError) as e:
            raise _bad(e) from None
        try:
            model = await pool.acquire(lambda m: m.cached_prefix(first.ids))
        except QueueFull as e:
            metrics.rejected += 1
            raise APIError(503, str(e), type="server_error", code="queue_full",
                           headers={"Retry-After": "1"}) from None
        try:
            # chat: the ids of the answers this engine gave
            req = first if model is pool.models[0] else await asyncio.to_thread(prepare, model)
        except BaseException as e:
            pool.release(model)
            if isinstance(e, (ValueError, TypeError)):
                raise _bad(e) from None
            raise
        cancel = threading.Event()
        gen = completion.Generation(model, req, cancel.is_set)
        it = chunks(model, req, model_name=model_name, include_usage=include_usage or not stream,
                    gen=gen)
        loop = asyncio.get_running_loop()

        def done(_: Any) -> None:
            pool.release(model)
            metrics.record(gen)

        if not stream:
            fut = loop.run_in_executor(pool.executor, merge, it)
            fut.add_done_callback(done)
            try:
                while not fut.done():
                    await asyncio.wait([fut], timeout=_DISCONNECT_POLL_S)
                    if not fut.done() and await request.is_disconnected():
                        cancel.set()
                return await fut
            finally:
                cancel.set()  # no-op once finished; stops the engine if this handler is cancelled

        queue: asyncio.Queue = asyncio.Queue()
        end = object()

        def work() -> None:
            try:
                for c in it:
                    loop.call_soon_threadsafe(queue.put_nowait, c)
            except Exception as e:  # reported in the stream; the headers are already sent
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, end)

        loop.run_in_executor(pool.executor, work).add_done_callback(done)

        async def events() -> AsyncIterator[dict]:
            try:
                while (item := await queue.get()) is not end:
                    if isinstance(item, Exception):
                        yield {"data": json.dumps({"error": {"message": str(item),
                                                             "type": "server_error"}})}
                        return
                    yield {"data": json.dumps(item)}
                yield {"data": "[DONE]"}
            finally:
                cancel.set()  # the client left (or we are done): stop between tokens

        # background: runs when the response ends however it ends, also when the client left
        # before events() ever started (then its finally never runs).
        return EventSourceResponse(events(), ping=15, background=BackgroundTask(cancel.set))

    # ------------------------------------------------------------------------- endpoints

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(body: CompletionRequest, request: Request) -> Any:
        sampling = check_common(body)
        for name, bad in (("echo", body.echo), ("suffix", body.suffix is not None),
                          ("best_of", body.best_of not in (None, 1))):
            if bad:
                raise APIError(400, f"{name} is not supported", param=name)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "one prompt per request (got a list of "
                                    f"{len(prompt)})", param="prompt")
            prompt = prompt[0]

        def prepare(m: Any) -> completion.Prepared:
            return completion.prepare_completion(m, prompt, max_tokens=body.max_tokens,
                                                 stop=body.stop, logprobs=body.logprobs,
                                                 **sampling)

        usage = bool(body.stream_options and body.stream_options.include_usage)
        return await generate(request, prepare, completion.completion_chunks,
                              completion.merge_completion, body.stream, usage)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        sampling = check_common(body)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None \
            else body.max_tokens

        def prepare(m: Any) -> completion.Prepared:
            return completion.prepare_chat(m, body.messages, max_tokens=max_tokens,
                                           stop=body.stop, logprobs=body.logprobs,
                                           top_logprobs=body.top_logprobs, **sampling)

        usage = bool(body.stream_options and body.stream_options.include_usage)
        return await generate(request, prepare, completion.chat_chunks, completion.merge_chat,
                              body.stream, usage)

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def list_models() -> dict:
        m = pool.models[0]
        return {"object": "list", "data": [{
            "id": model_name, "object": "model", "created": int(started), "owned_by": "spark-infer",
            "context_length": m.context_length, "engines": len(pool.models)}]}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "engines": len(pool.models), "running": pool.running,
                "queue_depth": pool.queue_depth}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(pool),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/tokenize", dependencies=[Depends(authorized)])
    async def tokenize(body: TokenizeRequest) -> dict:
        check_model(body.model)
        try:
            return {"tokens": pool.models[0].tokenize(body.content, add_bos=body.add_special)}
        except (ValueError, TypeError) as e:
            raise _bad(e, "content") from None

    @app.post("/detokenize", dependencies=[Depends(authorized)])
    async def detokenize(body: DetokenizeRequest) -> dict:
        check_model(body.model)
        try:
            return {"content": pool.models[0].detokenize(body.tokens)}
        except (ValueError, TypeError) as e:
            raise _bad(e, "tokens") from None

    started = time.time()
    paths.update(r.path for r in app.routes)  # ours, and FastAPI's /docs and /openapi.json
    return app
