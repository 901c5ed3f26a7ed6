"""`spark-infer bench` / `python -m spark_infer.bench`: the options, their checks, and `run`, which
resolves the models, measures them and writes the table, --json and --plot."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spark_infer.bench.engine_runner import EngineRunner
from spark_infer.bench.machine import BandwidthProbe, _commit, machine_info
from spark_infer.bench.measure import measure
from spark_infer.bench.peers import _make_peers
from spark_infer.bench.plotting import plot
from spark_infer.bench.report import SCHEMA, format_table
from spark_infer.bench.specs import resolve_spec
from spark_infer.bench.stats import _default_pairs, ratios
from spark_infer.config import PRESETS

log = logging.getLogger("spark_infer.bench")

DEFAULT_CONTEXTS = (256, 1024, 4096)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `spark-infer bench` options."""
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="engine file, config .json, or a preset name: "
                             + ", ".join(PRESETS) + " (gemma3-270m = the real model when "
                             "installed; random:NAME forces random weights; NAME@int8 sets "
                             "the dtype of one model)")
    parser.add_argument("--vs", nargs=2, metavar=("A", "B"),
                        help="benchmark A and B in alternation and report tok/s(A)/tok/s(B)")
    parser.add_argument("--dtype", nargs="+", default=["bf16"], choices=["bf16", "int8", "q4", "q5", "f32"],
                        help="weight type(s) of generated/converted models (default bf16)")
    parser.add_argument("--threads", nargs="+", type=int, default=None,
                        help="thread counts (default: the physical cores)")
    parser.add_argument("--context", nargs="+", type=int, default=list(DEFAULT_CONTEXTS),
                        help="decode context lengths (default 256 1024 4096)")
    parser.add_argument("--prefill-tokens", type=int, default=256,
                        help="tokens of the prefill sample (default 256)")
    parser.add_argument("--chunk", type=int, default=64, help="prefill chunk (default 64)")
    parser.add_argument("--steps", type=int, default=8,
                        help="decode steps per sample (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="kept samples (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded samples (default 1)")
    parser.add_argument("--modes", nargs="+", default=["prefill", "decode"],
                        choices=["prefill", "decode"])
    parser.add_argument("--llama-bench", default=None, metavar="PATH",
                        help="the llama-bench executable of the llama-bench peer (default: PATH)")
    parser.add_argument("--peers", nargs="*", default=[],
                        choices=["llama.cpp", "llama-bench", "transformers"],
                        help="also run these on the Gemma 3 270M GGUF, when installed")
    parser.add_argument("--gguf-types", nargs="+", default=["Q4_K_M"],
                        choices=["Q4_K_M", "Q8_0", "BF16", "F16", "F32"],
                        help="llama.cpp GGUF types (non-Q4_K_M are requantized; default Q4_K_M)")
    parser.add_argument("--hf-dtypes", nargs="+", default=["bf16"], choices=["bf16", "f32"],
                        help="transformers weight types (default bf16)")
    parser.add_argument("--kv-dtype", default="bf16", choices=["bf16", "f32"],
                        help="our engine's KV cache element type (default bf16)")
    parser.add_argument("--seed", type=int, default=0, help="weights and token seed")
    parser.add_argument("--tokens", default="random", choices=["random", "text"],
                        help="context and decode tokens: seeded random ids (default), or the "
                             "shipped calibration text (models with a tokenizer), which the "
                             "screened LM head and sparsified FFNs respond to as in real use")
    parser.add_argument("--lm-head-screen", type=float, default=0.0, metavar="MARGIN",
                        help="random-weight models (presets, config JSON) get the screened LM "
                             "head with this margin (README, \"The screened LM head\"; default 0: "
                             "none). Embedded real models carry their own setting")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON")
    parser.add_argument("--plot", metavar="PATH", help="draw the report as a PNG")
    parser.add_argument("--cache-dir", help="random model files (default <cache>/bench)")
    parser.add_argument("--bandwidth-bytes", type=int, default=1 << 29,
                        help="buffer of the bandwidth probe (default 512 MiB; 0 skips it)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _check_args(args: argparse.Namespace) -> None:
    from spark_infer import _core

    if args.vs and args.models:
        raise ValueError("give models either as arguments or with --vs A B, not both")
    if not args.vs and not args.models:
        raise ValueError("no model: give one or more MODEL arguments or --vs A B")
    if args.threads is None:
        args.threads = [int(_core.physical_cores())]
    for name in ("prefill_tokens", "chunk", "steps", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        raise ValueError("--warmup must be at least 0")
    if any(t < 1 for t in args.threads):
        raise ValueError("--threads must be at least 1")
    if any(c < 1 for c in args.context):
        raise ValueError("--context must be at least 1")
    if not math.isfinite(args.lm_head_screen) or args.lm_head_screen < 0:
        raise ValueError(f"--lm-head-screen must be a finite margin >= 0, got {args.lm_head_screen}")


def run(args: argparse.Namespace) -> int:
    """`spark-infer bench`: measure, print the table, write --json / --plot. Returns 0."""
    import contextlib

    from spark_infer import _core

    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    _check_args(args)
    t_start = time.perf_counter()
    notes: list[str] = []
    specs = list(args.vs) if args.vs else list(args.models)
    resolved: list[tuple[str, Path, str]] = []
    for spec in specs:
        for dtype in args.dtype:
            item = resolve_spec(spec, dtype, args, notes)
            if item[2] == "file":
                # Two files of one name (runs/a/model.spark, runs/b/model.spark) would share a
                # label and the second be dropped as the first: files are labelled by folder
                # and name when their names collide.
                same = [x for x in specs if os.path.basename(x) == item[1].name]
                if len({os.path.realpath(x) for x in same}) > 1:
                    item = (f"{item[1].parent.name}/{item[1].name}", *item[1:])
            if item[0] not in [x[0] for x in resolved]:
                resolved.append(item)
    pairs: list[tuple[str, str]] = []
    if args.vs:
        labels = [x[0] for x in resolved]
        half = len(labels) // 2
        pairs = list(zip(labels[:half], labels[half:]))

    max_ctx = max(args.context) if "decode" in args.modes else 0
    capacity = max(max_ctx + args.steps + 1, args.prefill_tokens + 1)
    report: dict[str, Any] = {
        "schema": SCHEMA, "command": list(getattr(args, "argv", None) or sys.argv),
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"threads": args.threads, "contexts": sorted(set(args.context)),
                     "prefill_tokens": args.prefill_tokens, "chunk": args.chunk,
                     "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
                     "seed": args.seed, "tokens": args.tokens, "modes": args.modes,
                     "kv_dtype": getattr(args, "kv_dtype", "bf16")},
    }
    probe = BandwidthProbe(args.bandwidth_bytes)
    for t in args.threads:
        gbs = probe(t)
        if gbs is not None:
            log.info("read bandwidth, %d threads: %.1f GB/s", t, gbs)

    with contextlib.ExitStack() as stack:
        runners: list[Any] = []
        for label, path, source in resolved:
            log.info("loading %s (%s)", label, path)
            r = EngineRunner(label, path, source, capacity, args.chunk,
                             getattr(args, "kv_dtype", "bf16"))
            stack.callback(r.close)
            runners.append(r)
        peers = _make_peers(args, capacity, notes, stack)
        for p in peers:
            stack.callback(p.close)
        runners += peers
        if not args.vs:
            pairs += _default_pairs(runners)
        report["models"] = [r.info() for r in runners]
        report["results"] = measure(runners, args, probe)
    report["bandwidth_gbs"] = {str(t): probe.median(t) for t in sorted(probe.samples)}
    report["bandwidth_samples"] = {str(t): v for t, v in sorted(probe.samples.items())}
    report["ratios"] = ratios(report["results"], pairs)
    report["notes"] = notes
    report["elapsed_s"] = time.perf_counter() - t_start
    try:
        report["machine"]["loadavg_end"] = list(os.getloadavg())
    except OSError:
        report["machine"]["loadavg_end"] = None

    sys.stdout.write(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        log.info("wrote %s", args.json)
    if args.plot:
        plot(report, args.plot)
        log.info("wrote %s", args.plot)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A standalone parser of the bench options (`python -m spark_infer.bench`)."""
    doc = sys.modules[__package__].__doc__ or ""   # the package docstring's first line
    parser = argparse.ArgumentParser(prog="spark-infer bench", description=doc.split("\n")[0])
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = ["python", "-m", "spark_infer.bench",
                 *(sys.argv[1:] if argv is None else list(argv))]
    try:
        return run(args)
    except ValueError as e:
        parser.error(str(e))
        return 2
