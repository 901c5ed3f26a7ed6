"""Where a prefill chunk's FFN time goes: dense GeGLU vs Spark FFN, kernel by kernel, one layer.

    python bench/profile_ffn.py --dense gemma2-2b --spark spark-2b --chunk 64 --threads 2

Times, on random bf16 weights of one layer of each preset (numpy-made, no engine file), the
kernels the engine calls for one chunk of T tokens (cpp/model/ffn.cc):
  dense: gate and up chunk matmuls [d_ff, d] x T, down [d, d_ff] x T (GELU-mul omitted: small);
  Spark: K1 chunk matmul [d_ff, r] x T, statistical top-k over d_ff per token, then the chunk
  kernels the engine uses for T > 1 (the active (token, neuron) pairs grouped by neuron, CSR):
  csr_masked_matmul over K2 [d_ff, d - r] and csr_sparse_matmul over V [d_ff, d], each weight
  row read once per chunk; for reference also the per-token path (decode's kernels run T times:
  masked matvec over K2, tiled sparse vec-mat over V, each active row read once per token);
and prints milliseconds per chunk, per token, GFLOP/s (FMA = 2) and GB/s of weight rows read.
Each kernel cycles through --layers distinct layers' weights (default 12: ~1.5 GB per model,
5x this machine's 300 MB L3, so weights come from DRAM as in a real forward pass); the time is
the median over --repeats passes x layers, after one warm-up pass. Multiply by n_layers to
compare with `spark-infer bench`'s FFN time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from spark_infer import _core
from spark_infer.config import preset
from spark_infer.weights import f32_to_bf16


def _bf16(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    w = (rng.random((rows, cols), dtype=np.float32) - 0.5) * np.float32(2 * 3 ** 0.5 / cols ** 0.5)
    return f32_to_bf16(w)


def _time(fn: Callable[[int], None], layers: int, repeats: int) -> float:
    """Median seconds of fn(layer) over `repeats` passes through all layers (one warm-up)."""
    for i in range(layers):
        fn(i)
    out = []
    for _ in range(repeats):
        for i in range(layers):
            t0 = time.perf_counter()
            fn(i)
            out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dense", default="gemma2-2b")
    ap.add_argument("--spark", default="spark-2b")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=12)
    args = ap.parse_args()
    _core.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    T = args.chunk
    rows: list[tuple[str, float, float, float]] = []   # name, seconds, flops, bytes

    dc = preset(args.dense)
    d, ff = dc.d_model, dc.d_ff
    x = rng.standard_normal((T, d), dtype=np.float32)
    nl, reps = args.layers, args.repeats
    # gate and up have the same shape and kernel: 2 x gate.
    gate = [_bf16(rng, ff, d) for _ in range(2 * nl)]
    down = [_bf16(rng, d, ff) for _ in range(nl)]
    h = np.empty((T, ff), np.float32)
    y = np.empty((T, d), np.float32)
    t = _time(lambda i: _core.matmul(gate[i], x, h), 2 * nl, reps)
    rows.append((f"{args.dense} gate (= up) matmul", t, 2.0 * T * ff * d, 2.0 * ff * d))
    rows.append((f"{args.dense} up matmul", t, 2.0 * T * ff * d, 2.0 * ff * d))
    del gate
    t = _time(lambda i: _core.matmul(down[i], h, y), nl, reps)
    rows.append((f"{args.dense} down matmul", t, 2.0 * T * ff * d, 2.0 * ff * d))
    dense_total = sum(r[1] for r in rows)
    del down

    sc = preset(args.spark)
    d, ff, r = sc.d_model, sc.d_ff, sc.ffn_predictor_dim
    x = rng.standard_normal((T, d), dtype=np.float32)
    x1, x2 = np.ascontiguousarray(x[:, :r]), np.ascontiguousarray(x[:, r:])
    k1 = [_bf16(rng, ff, r) for _ in range(nl)]
    k2 = [_bf16(rng, ff, d - r) for _ in range(nl)]
    v = [_bf16(rng, ff, d) for _ in range(nl)]
    s = np.empty((T, ff), np.float32)
    t_k1 = _time(lambda i: _core.matmul(k1[i], x1, s), nl, reps)
    _core.matmul(k1[0], x1, s)   # the selection of layer 0 serves every layer (same statistics)
    sel = [_core.statistical_topk(s[i], sc.ffn_topk_fraction) for i in range(T)]
    active = float(np.mean([len(i) for i, _, _ in sel]))
    u = np.empty(ff, np.float32)
    out = np.empty(d, np.float32)

    def topk(layer: int) -> None:
        for i in range(T):
            _core.statistical_topk(s[i], sc.ffn_topk_fraction)

    def k2_rows(layer: int) -> None:
        for i in range(T):
            idx = sel[i][0]
            _core.masked_matvec(k2[layer], x2[i], idx, u[:len(idx)])

    def v_rows(layer: int) -> None:
        for i in range(T):
            idx = sel[i][0]
            _core.sparse_vecmat(v[layer], sel[i][1], idx, out)

    # CSR by neuron, tokens ascending within a neuron (what cpp/model/ffn.cc builds).
    pairs = sorted((int(n), t, float(sh)) for t, (idx, shifted, _) in enumerate(sel)
                   for n, sh in zip(idx, shifted))
    nnz = len(pairs)
    counts = np.bincount([p[0] for p in pairs], minlength=ff)
    offsets = np.zeros(ff + 1, np.int32)
    offsets[1:] = np.cumsum(counts)
    tokens = np.array([p[1] for p in pairs], np.int32)
    cu = np.array([p[2] for p in pairs], np.float32)
    cout = np.empty(nnz, np.float32)
    y = np.empty((T, d), np.float32)
    touched = int(np.count_nonzero(counts))
    t_topk = _time(topk, 1, reps)
    t_k2 = _time(k2_rows, nl, reps)
    t_v = _time(v_rows, nl, reps)
    t_ck2 = _time(lambda i: _core.csr_masked_matmul(k2[i], x2, offsets, tokens, cout), nl, reps)
    t_cv = _time(lambda i: _core.csr_sparse_matmul(v[i], cu, offsets, tokens, y), nl, reps)
    rows.append((f"{args.spark} K1 matmul (predictor)", t_k1, 2.0 * T * ff * r, 2.0 * ff * r))
    rows.append((f"{args.spark} top-k x {T} tokens", t_topk, 0.0, 4.0 * T * ff))
    rows.append((f"{args.spark} K2 CSR masked matmul", t_ck2, 2.0 * nnz * (d - r),
                 2.0 * touched * (d - r)))
    rows.append((f"{args.spark} V CSR sparse matmul", t_cv, 2.0 * nnz * d, 2.0 * touched * d))
    rows.append((f"  (per token: K2 masked matvec x {T})", t_k2, 2.0 * T * active * (d - r),
                 2.0 * T * active * (d - r)))
    rows.append((f"  (per token: V sparse vec-mat x {T})", t_v, 2.0 * T * active * d,
                 2.0 * T * active * d))
    spark_total = t_k1 + t_topk + t_ck2 + t_cv

    print(f"one layer (median over {nl} layers' weights), chunk of {T} tokens, "
          f"{args.threads} threads, bf16 weights, "
          f"Highway {_core.current_target()}; Spark active rows per token: {active:.0f} of {ff} "
          f"({100 * active / ff:.1f}%); rows active for some token of the chunk: {touched} "
          f"({100 * touched / ff:.1f}%)")
    print(f"{'kernel':<40} {'ms/chunk':>9} {'ms/token':>9} {'GFLOP/s':>8} {'GB/s':>7}")
    for name, sec, flops, nbytes in rows:
        print(f"{name:<40} {1e3 * sec:9.2f} {1e3 * sec / T:9.3f} {flops / sec / 1e9:8.1f} "
              f"{nbytes / sec / 1e9:7.1f}")
    print(f"{'dense FFN total':<40} {1e3 * dense_total:9.2f} {1e3 * dense_total / T:9.3f}")
    print(f"{'Spark FFN total (engine path, CSR)':<40} {1e3 * spark_total:9.2f} "
          f"{1e3 * spark_total / T:9.3f}")
    print(f"dense / Spark FFN time: {dense_total / spark_total:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
