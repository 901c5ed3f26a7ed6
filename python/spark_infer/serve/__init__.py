"""`spark-infer serve`: an OpenAI-compatible HTTP server (FastAPI, uvicorn, server-sent events).

Needs the optional extra: `pip install 'spark-infer[server]'`. `create_app(models, ...)` builds
the app for any ASGI server; `spark_infer.serve.server.run` is the command line's entry. The
package imports without the extra (the command line lists `serve` either way); the app does not.
It may import the runtime (`model`, `completion`, `errors`, `cli`'s shared options), never
`convert`, `train` or `bench`; nothing but `cli` imports it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "APIError"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(name)
    try:
        from spark_infer.serve import app
    except ImportError as e:
        raise ImportError(f"spark-infer serve needs the [server] extra ({e.name} is missing): "
                          "pip install 'spark-infer[server]'") from e
    return getattr(app, name)
