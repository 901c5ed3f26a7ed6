"""Decode with the weights read into huge pages (load()'s default) against the file mapped
(load(use_mmap=True)): both engines in one process, their decode steps interleaved in blocks,
so the host's bandwidth swings reach both alike; medians of the per-token times and their ratio.

    python bench/weights_in_memory.py [--models gemma3-270m@q4 ...] [--context 256 4000]
        [--blocks 60] [--output FILE]

A model is an embedded name with its dtype (gemma3-270m@q4) or an engine file's path. Prompts
are the shipped calibration text when the model has a tokenizer (the bench's `--tokens text`),
random ids otherwise (`spark_infer.bench.bench_tokens`). Also prints each load's seconds: the
read copies the file (from the page cache when it was read before), the map defers the reads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import spark_infer
from spark_infer.bench import bench_tokens, machine_info
from spark_infer.data import calibration_text

STEPS_PER_BLOCK = 4


def load(model: str, use_mmap: bool, context: int, threads: int) -> spark_infer.Model:
    name, _, dtype = model.partition("@")
    kw = {"context_length": context, "use_mmap": use_mmap, "threads": threads}
    if os.path.exists(name):
        return spark_infer.load(name, **kw)
    return spark_infer.load(name, dtype=dtype or None, **kw)


def prompt_ids(m: spark_infer.Model, n: int) -> np.ndarray:
    if m.tokenizer is None:
        return bench_tokens(0, m.config.vocab_size, n)
    ids = m.tokenize(calibration_text())
    return np.resize(np.asarray(ids, np.int32), n)   # repeated as needed


def measure(model: str, context: int, blocks: int, threads: int) -> dict[str, float]:
    steps = blocks * STEPS_PER_BLOCK
    engines, load_s = {}, {}
    for mode in ("read", "mmap"):
        t = time.perf_counter()
        engines[mode] = load(model, mode == "mmap", context + steps + 8, threads)
        load_s[mode] = time.perf_counter() - t
    ids = prompt_ids(engines["read"], context + steps)
    for m in engines.values():
        m.engine.reset()
        m.engine.prefill(ids[:context], 64, False)
    times: dict[str, list[float]] = {mode: [] for mode in engines}
    for b in range(blocks):
        order = ("read", "mmap") if b % 2 == 0 else ("mmap", "read")
        for mode in order:
            e = engines[mode].engine
            for k in range(STEPS_PER_BLOCK):
                tok = int(ids[context + b * STEPS_PER_BLOCK + k])
                t = time.perf_counter()
                e.decode(tok)
                times[mode].append(time.perf_counter() - t)
    read, mapped = (statistics.median(times[m]) * 1e3 for m in ("read", "mmap"))
    return {"read_ms": read, "mmap_ms": mapped, "mmap_over_read": mapped / read,
            "read_load_s": load_s["read"], "mmap_load_s": load_s["mmap"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["gemma3-270m@q4", "gemma3-270m@int8"])
    ap.add_argument("--context", type=int, nargs="+", default=[256, 4000])
    ap.add_argument("--blocks", type=int, default=60, help="blocks of 4 steps per engine")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", help="also write the results as JSON")
    args = ap.parse_args(argv)
    info = machine_info()
    thp = "unknown"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as f:
            thp = f.read().strip()
    except OSError:
        pass
    print(f"# {info['cpu']}, Highway {info['highway_target']}, THP {thp}, "
          f"{args.threads} threads; decode ms per token, median of "
          f"{args.blocks * STEPS_PER_BLOCK} steps each, interleaved in blocks of {STEPS_PER_BLOCK}")
    results = []
    for model in args.models:
        for context in args.context:
            r = measure(model, context, args.blocks, args.threads)
            r.update(model=model, context=context)
            results.append(r)
            print(f"{model:24s} ctx {context:5d}  read {r['read_ms']:7.3f}  mmap {r['mmap_ms']:7.3f}  "
                  f"mmap / read {r['mmap_over_read']:.3f}  load s read {r['read_load_s']:.2f} "
                  f"mmap {r['mmap_load_s']:.2f}", flush=True)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"machine": info, "thp": thp, "threads": args.threads,
                       "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
