"""Scale-out on Ray Serve: the same FastAPI app (`create_app`) as N CPU replicas behind one
HTTP endpoint. Needs the optional extra: `pip install 'spark-infer[ray]'`.

Each replica reserves `threads` CPUs (`ray_actor_options={"num_cpus": threads}`) and runs
`parallel` engines of `threads // parallel` kernel threads each, so a replica never uses more
cores than Ray gave it. Every response carries `x-spark-infer-replica: <replica id>`.
Ray Serve's proxy spreads requests over the replicas; each replica keeps its own bounded queue
and prefix cache (a conversation's next turn may land on another replica and be prefilled in
full there).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

__all__ = ["ReplicaConfig", "deployment", "run", "REPLICA_HEADER"]

REPLICA_HEADER = "x-spark-infer-replica"


@dataclasses.dataclass(frozen=True)
class ReplicaConfig:
    """What one replica loads and how it serves (passed to each replica's constructor)."""

    model: str | None
    model_name: str
    aliases: tuple[str, ...] = ()
    threads: int = 1
    parallel: int = 1
    context_length: int | None = None
    dtype: str | None = None         # embedded models only (see load())
    embed_dtype: str | None = None
    use_mmap: bool = False           # see load()
    api_key: str | None = None
    max_queue: int = 64


class _Replica:
    """One Ray Serve replica: loads its engines, then serves create_app's FastAPI app."""

    def __init__(self, cfg: ReplicaConfig):
        from ray import serve

        from spark_infer.model import load

        per_engine = max(1, cfg.threads // cfg.parallel)
        self.cfg = cfg
        self.models = [load(cfg.model, threads=per_engine, context_length=cfg.context_length,
                            dtype=cfg.dtype, embed_dtype=cfg.embed_dtype, use_mmap=cfg.use_mmap)
                       for _ in range(cfg.parallel)]
        self.replica_id = serve.get_replica_context().replica_id.unique_id

    def __serve_build_asgi_app__(self) -> Any:  # Ray Serve calls it after __init__
        from spark_infer.serve.app import create_app

        c = self.cfg
        return create_app(self.models, model_name=c.model_name, aliases=c.aliases,
                          api_key=c.api_key, max_queue=c.max_queue,
                          response_headers={REPLICA_HEADER: self.replica_id})


def deployment(cfg: ReplicaConfig, replicas: int) -> Any:
    """The bound Ray Serve application: `replicas` replicas of `cfg.threads` CPUs each."""
    try:
        from ray import serve
    except ImportError as e:
        raise ImportError("spark-infer serve --ray needs the [ray] extra: "
                          "pip install 'spark-infer[ray]'") from e
    if replicas < 1 or cfg.threads < 1:
        raise ValueError(f"replicas and threads must be >= 1, got {replicas} and {cfg.threads}")
    cls = serve.ingress()(type("SparkInferReplica", (_Replica,), {}))
    dep = serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": cfg.threads},
                           max_ongoing_requests=cfg.parallel + cfg.max_queue)(cls)
    return dep.bind(cfg)


def run(args: argparse.Namespace) -> int:
    """`spark-infer serve --ray`: start (or join) a local Ray, deploy, block."""
    import ray
    from ray import serve

    from spark_infer.serve.server import served_name

    name, aliases = served_name(args)
    cfg = ReplicaConfig(model=args.model, model_name=name, aliases=tuple(aliases),
                        threads=args.threads or 1, parallel=args.parallel,
                        context_length=args.context_length, dtype=args.dtype,
                        embed_dtype=args.embed_dtype, use_mmap=bool(getattr(args, "mmap", False)),
                        api_key=args.api_key,
                        max_queue=args.max_queue)
    ray.init(ignore_reinit_error=True, include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    print(f"spark-infer: serving {name!r} on Ray Serve, {args.replicas} replica(s) x "
          f"{cfg.threads} CPU(s), on http://{args.host}:{args.port}/v1", file=sys.stderr,
          flush=True)
    serve.run(deployment(cfg, args.replicas), name="spark-infer", route_prefix="/",
              blocking=True)
    return 0
