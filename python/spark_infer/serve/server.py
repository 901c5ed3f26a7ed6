"""`spark-infer serve`: load the engines, build the app, run uvicorn (or Ray Serve)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_arguments", "run", "load_models", "served_name"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from spark_infer.cli import _positive_int

    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=_positive_int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (not on /health, /metrics)")
    p.add_argument("--parallel", type=_positive_int, default=1,
                   help="engines (each one generation at a time; they share the mapped file)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for an engine; more get 503 (default: 64)")
    p.add_argument("--name", default=None,
                   help="model name clients use (default: the -m value, or the embedded name)")
    p.add_argument("--ray", action="store_true",
                   help="deploy on Ray Serve as --replicas CPU replicas (needs [ray])")
    p.add_argument("--replicas", type=_positive_int, default=2, help="Ray Serve replicas")


def served_name(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The name clients use, and the other names they may use (path, file name)."""
    from spark_infer.model import DEFAULT_MODEL

    given = args.model or DEFAULT_MODEL
    name = args.name or (os.path.basename(given) if os.path.exists(given) else given)
    return name, [given, os.path.basename(given)]


def load_models(args: argparse.Namespace) -> list[Any]:
    """`--parallel` Models of the same file; threads split between them unless given."""
    from spark_infer.model import load

    def one(threads: int | None) -> Any:
        return load(args.model, threads=threads, context_length=args.context_length,
                    dtype=args.dtype, embed_dtype=args.embed_dtype,
                    use_mmap=bool(getattr(args, "mmap", False)))

    first = one(args.threads)
    if args.threads is None and args.parallel > 1:
        first.threads = max(1, first.threads // args.parallel)
    return [first] + [one(first.threads) for _ in range(args.parallel - 1)]


def run(args: argparse.Namespace) -> int:
    if args.max_queue < 0:
        raise ValueError(f"--max-queue must be >= 0, got {args.max_queue}")
    if args.ray:
        from spark_infer.serve import ray as ray_serve

        return ray_serve.run(args)
    import uvicorn

    from spark_infer.serve import create_app

    models = load_models(args)
    name, aliases = served_name(args)
    app = create_app(models, model_name=name, aliases=aliases, api_key=args.api_key,
                     max_queue=args.max_queue)
    print(f"spark-infer: serving {name!r} ({len(models)} engine(s) x {models[0].threads} "
          f"threads, context {models[0].context_length}) on http://{args.host}:{args.port}/v1",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
