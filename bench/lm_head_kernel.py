"""The LM head's decode kernels on Gemma 3 270M's shape: the screen4 screen against the int8 head
and a q4 (GGML Q4_1) copy, the earlier screen's layout, 1 and 2 threads, weights far larger
than the caches (262144 x 640: 89 / 168 / 105 MB), so read bandwidth and the kernels' arithmetic
decide. Random weights; each kernel is first checked against numpy.

    python bench/lm_head_kernel.py [--rows 262144] [--cols 640] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from spark_infer import _core
from spark_infer.bench import machine_info
from spark_infer.weights import dequantize_q4, quantize_int8, quantize_q4
from spark_infer.weights.screen4 import quantize_screen4, screen4_logits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=262144)
    ap.add_argument("--cols", type=int, default=640)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (median of 9 each)")
    args = ap.parse_args(argv)
    rows, cols = args.rows, args.cols
    rng = np.random.default_rng(0)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal(cols).astype(np.float32)
    q8, s8 = quantize_int8(w)
    q4 = quantize_q4(w)
    screen = quantize_screen4(w)
    out = np.zeros(rows, np.float32)
    kernels = {
        "screen4": (screen.nbytes, lambda: _core.screen_scores(screen, rows, x, out)),
        "int8": (q8.nbytes + s8.nbytes, lambda: _core.matvec(q8, x, out, s8)),
        "q4": (q4.nbytes, lambda: _core.matvec(q4, x, out, None)),
    }
    check = rng.choice(rows, 512, replace=False)
    for name, (_, run) in kernels.items():   # correct first
        run()
        if name == "screen4":
            want = screen4_logits(screen, rows, cols, x)[check]
            tol = 1e-4
        else:
            deq = (q8[check] * s8[check, None]) if name == "int8" else dequantize_q4(q4[check])
            want = deq.astype(np.float64) @ x
            tol = 2e-2   # decode quantizes x to int8 (q4) or keeps f32 (int8)
        err = np.max(np.abs(out[check] - want)) / np.max(np.abs(want))
        if not err < tol:
            raise SystemExit(f"{name}: off by {err:.2e} of the largest output")
    info = machine_info()
    print(f"# {info['cpu']}, Highway {info['highway_target']}, W [{rows}, {cols}], "
          f"ms per call and GB/s read (median of 9 calls per round, rounds alternate)")
    for threads in (1, 2):
        _core.set_num_threads(threads)
        times: dict[str, list[float]] = {k: [] for k in kernels}
        for _ in range(args.rounds):
            for name, (_, run) in kernels.items():
                ts = []
                for _ in range(9):
                    t = time.perf_counter()
                    run()
                    ts.append(time.perf_counter() - t)
                times[name].append(statistics.median(ts))
        for name, (nbytes, _) in kernels.items():
            print(f"threads {threads} {name:8s} {nbytes / 1e6:6.1f} MB  ms " +
                  " ".join(f"{t * 1e3:6.2f}" for t in times[name]) + "  GB/s " +
                  " ".join(f"{nbytes / t / 1e9:5.1f}" for t in times[name]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
