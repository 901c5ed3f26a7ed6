"""Model arguments to engine files: an engine file, a config JSON or a preset name (random weights,
written once into the cache), or a real model when its package is installed."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from spark_infer.config import PRESETS, ModelConfig, preset

log = logging.getLogger("spark_infer.bench")


def _cache_root(args: argparse.Namespace) -> Path:
    if args.cache_dir:
        return Path(args.cache_dir)
    from spark_infer.models import cache_dir

    return cache_dir() / "bench"


def _random_model_file(cfg: ModelConfig, name: str, dtype: str, seed: int, root: Path,
                       lm_head_screen: float = 0.0) -> Path:
    """The cached random-weight engine file of (config, dtype, seed), written on first use;
    dtype "D/E" gives the embedding dtype E; lm_head_screen > 0 adds the screened LM head with
    that margin (the config, and so the file's key, then says so)."""
    import hashlib

    from spark_infer.fileformat import FORMAT_VERSION
    from spark_infer.random_model import make_random_model

    if lm_head_screen > 0:
        cfg = cfg.replace(lm_head_screen_margin=float(lm_head_screen))
    dtype, _, embed_dtype = dtype.partition("/")
    digest = hashlib.sha256(cfg.to_json().encode()).hexdigest()[:10]
    setting = f"{dtype}-embed_{embed_dtype}" if embed_dtype else dtype
    path = root / f"{name}.{digest}.{setting}.seed{seed}.v{FORMAT_VERSION}.spark"
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        log.info("writing random %s (%s) to %s ...", name, dtype, path)
        t0 = time.perf_counter()
        make_random_model(path, cfg, dtype=dtype, seed=seed, embed_dtype=embed_dtype or None)
        log.info("  written in %.1f s", time.perf_counter() - t0)
    return path


def resolve_spec(spec: str, dtype: str, args: argparse.Namespace, notes: list[str]
                 ) -> tuple[str, Path, str]:
    """(label, engine file, source) of one model argument (module docstring, "Models")."""
    from spark_infer import models

    if "@" in spec and not os.path.exists(spec):
        spec, dtype = spec.rsplit("@", 1)
    # Random-weight models given the screened LM head say so in their label.
    screen = f" +screen{args.lm_head_screen:g}" if args.lm_head_screen > 0 else ""
    force_random = spec.startswith("random:")
    name = spec[len("random:"):] if force_random else spec
    if os.path.exists(name) and not force_random:
        p = Path(name)
        if p.suffix == ".json":
            cfg = ModelConfig.from_json(p.read_text())
            return (f"{p.stem} {dtype}{screen}", _random_model_file(cfg, p.stem, dtype, args.seed,
                                                            _cache_root(args),
                                                            args.lm_head_screen), "random")
        return p.name, p, "file"
    if name in models.MODELS and not force_random:
        try:
            matrices, _, embed = dtype.partition("/")
            return (f"{name} {dtype}", models.resolve_model(name, matrices,
                                                            embed_dtype=embed or None), "real")
        except models.ModelNotAvailable as e:
            notes.append(f"{name}: the real model is not installed ({e}); using random weights")
    if name not in PRESETS:
        raise ValueError(f"model {spec!r} is neither a file nor one of: {', '.join(PRESETS)}")
    label = f"{name} {dtype}{screen}" + (" (random)" if name in models.MODELS else "")
    return label, _random_model_file(preset(name), name, dtype, args.seed, _cache_root(args),
                                     args.lm_head_screen), "random"
