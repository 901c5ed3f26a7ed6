"""Decode matvec speed of the block types (q4, q5) against int8, one thread, weights L2-resident.

The q4 and q5 decode tiles (cpp/ops/matvec-inl.h) are compute-bound on this kind of machine, so
their GFLOP/s here is what their share of a decode step costs. Each result is first checked
against numpy on the dequantized weights (the kernel rounds x to int8 per block: ~3e-3).

    python bench/block_decode.py [--shape 2048 640] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from spark_infer import _core
from spark_infer.bench import machine_info
from spark_infer.weights import dequantize_q4, dequantize_q5, quantize_q4, quantize_q5


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=2, default=[2048, 640], metavar=("ROWS", "COLS"))
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (median of 7 each)")
    args = ap.parse_args(argv)
    rows, cols = args.shape
    rng = np.random.default_rng(0)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal(cols).astype(np.float32)
    scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)
    kinds = {
        "int8": (np.round(w / scale[:, None]).astype(np.int8), scale,
                 np.round(w / scale[:, None]) * scale[:, None]),
        "q4": (quantize_q4(w), None, None),
        "q5": (quantize_q5(w).reshape(rows, cols // 32, 22), None, None),
    }
    kinds["q4"] = (kinds["q4"][0], None, dequantize_q4(kinds["q4"][0]))
    kinds["q5"] = (kinds["q5"][0], None, dequantize_q5(kinds["q5"][0].reshape(rows, -1)))
    _core.set_num_threads(1)
    out = np.zeros(rows, np.float32)
    for name, (wq, s, deq) in kinds.items():
        _core.matvec(wq, x, out, s)
        want = deq.astype(np.float64) @ x
        err = np.max(np.abs(out - want)) / np.max(np.abs(want))
        if not err < 2e-2:  # decode quantizes x to int8 per block (~2^-8 of a block's max)
            raise SystemExit(f"{name}: matvec off by {err:.2e} of the largest output")
    info = machine_info()
    print(f"# {info['cpu']}, Highway {info['highway_target']}, 1 thread, W [{rows}, {cols}], "
          f"GFLOP/s (median of 7 x 200 calls per round)")
    speeds: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for name, (wq, s, _) in kinds.items():
            ts = []
            for _ in range(7):
                t = time.perf_counter()
                for _ in range(200):
                    _core.matvec(wq, x, out, s)
                ts.append((time.perf_counter() - t) / 200)
            speeds[name].append(2 * rows * cols / statistics.median(ts) / 1e9)
    for name, v in speeds.items():
        print(f"{name:5s} " + " ".join(f"{g:6.1f}" for g in v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
