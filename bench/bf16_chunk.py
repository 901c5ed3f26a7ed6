"""bf16 chunk matmul speed (prefill, T tokens), GFLOP/s, at Gemma 3 270M's matrix shapes.

With bf16 weights and T > 1 the matmul rounds x to bf16 (cpp/ops/matvec.h); on AVX3 with
AVX512_BF16 it multiplies with vdpbf16ps, else the f32 tile on a decoded panel. This runs each
shape with the AVX512_BF16 tile on and off (`_core.set_avx512_bf16`, where the build has it: an
older build has only the f32 path on f32 x, reported as "f32 tile"), alternating, and first
checks each result against numpy on the bf16-rounded x (float64 dot; an older build: on x).

    python bench/bf16_chunk.py [--threads 1 2] [--tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from spark_infer import _core
from spark_infer.bench import machine_info
from spark_infer.weights import bf16_to_f32, f32_to_bf16

# Gemma 3 270M (d_model 640, d_ff 2048, 4 query heads and 1 KV head of 256): Q/K/V together,
# the output projection, gate/up together, down.
SHAPES = {"qkv": (1536, 640), "o": (640, 1024), "gate_up": (4096, 640), "down": (640, 2048)}


def tiles() -> list[bool | None]:
    """The tiles this build and CPU run: True (AVX512_BF16), False (f32); None: no switch."""
    if not hasattr(_core, "set_avx512_bf16"):
        return [None]
    return [True, False] if _core.has_avx512_bf16() else [False]


def set_tile(tile: bool | None) -> None:
    if tile is not None:
        _core.set_avx512_bf16(tile)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=64, help="T, the chunk (default 64)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (median of 7 each)")
    args = ap.parse_args(argv)
    T = args.tokens
    rng = np.random.default_rng(0)
    data = {}
    for name, (rows, cols) in SHAPES.items():
        w = f32_to_bf16(rng.standard_normal((rows, cols)).astype(np.float32))
        x = rng.standard_normal((T, cols)).astype(np.float32)
        # An older build (no switch) keeps x in f32.
        xr = bf16_to_f32(f32_to_bf16(x)) if tiles() != [None] else x
        want = xr.astype(np.float64) @ bf16_to_f32(w).astype(np.float64).T
        data[name] = (w, x, want, np.zeros((T, rows), np.float32))
    for tile in tiles():
        set_tile(tile)
        for name, (w, x, want, out) in data.items():
            _core.matmul(w, x, out)
            err = np.max(np.abs(out - want)) / np.max(np.abs(want))
            if not err < 1e-5:
                raise SystemExit(f"{name} (tile {tile}): off by {err:.2e} of the largest output")
    info = machine_info()
    label = {True: "vdpbf16ps", False: "f32 tile", None: "f32 tile"}
    print(f"# {info['cpu']}, Highway {info['highway_target']}, T = {T}, bf16 W, "
          f"GFLOP/s (median of 7 x 20 calls per round), rounds alternate the tiles")
    for threads in args.threads:
        _core.set_num_threads(threads)
        speeds: dict[tuple[str, bool | None], list[float]] = {}
        for _ in range(args.rounds):
            for tile in tiles():
                set_tile(tile)
                for name, (w, x, _, out) in data.items():
                    ts = []
                    for _ in range(7):
                        t = time.perf_counter()
                        for _ in range(20):
                            _core.matmul(w, x, out)
                        ts.append((time.perf_counter() - t) / 20)
                    rows, cols = SHAPES[name]
                    speeds.setdefault((name, tile), []).append(2 * T * rows * cols / statistics.median(ts) / 1e9)
        for (name, tile), v in speeds.items():
            rows, cols = SHAPES[name]
            print(f"{threads} thr {label[tile]:9s} {name:8s} [{rows}, {cols}] " + " ".join(f"{g:6.1f}" for g in v))
    set_tile(tiles()[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
